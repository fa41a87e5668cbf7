"""Health and metrics over HTTP, served from inside the worker's asyncio loop.

`GET /healthz` answers 200 with a small JSON state while the worker is healthy and
503 once the store has failed continuously for longer than `unhealthy_after_seconds`;
`GET /metrics` answers the worker's counters in Prometheus text format, plus the
consumer lag per partition when a lag callable is given. Bound to 127.0.0.1 by
default: nothing here needs to be reachable from outside the host (or pod).

`WorkerHealth` turns a `Metrics` object into the state callable; it needs no
changes to the sink: it watches the flush and store-error counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from aiohttp import web

from streams.metrics import Metrics

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_UNHEALTHY_AFTER_SECONDS",
    "PROMETHEUS_CONTENT_TYPE",
    "LagProbe",
    "WorkerHealth",
    "render_lag",
    "start_health_server",
]

log = logging.getLogger("govmeter.health")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_UNHEALTHY_AFTER_SECONDS: Final = 120.0
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LAG_TIMEOUT_SECONDS: Final = 5.0

LagProbe = Callable[[], Awaitable[dict[tuple[str, int], int]]]


async def start_health_server(
    host: str,
    port: int,
    metrics: Metrics,
    state: Callable[[], dict[str, object]],
    lag: LagProbe | None = None,
    *,
    unhealthy_after_seconds: float = DEFAULT_UNHEALTHY_AFTER_SECONDS,
) -> web.AppRunner:
    """Serve /healthz and /metrics on host:port; stop with `await runner.cleanup()`.

    `state()` is called on every /healthz request. Its dict is returned as is, after
    `"status"`; the answer is 503 when `state()["store_failing_seconds"]` exceeds
    `unhealthy_after_seconds` (or when `state()` itself raises). Port 0 picks a
    free port: read it from `runner.addresses`.
    """

    async def healthz(request: web.Request) -> web.Response:
        try:
            current = dict(state())
        except Exception:
            log.exception("health state failed")
            return _json({"status": "error"}, 503)
        failing = current.get("store_failing_seconds")
        healthy = not (
            isinstance(failing, int | float)
            and not isinstance(failing, bool)
            and failing > unhealthy_after_seconds
        )
        body = {"status": "ok" if healthy else "store_unavailable", **current}
        return _json(body, 200 if healthy else 503)

    async def prometheus(request: web.Request) -> web.Response:
        text = metrics.prometheus()
        if lag is not None:
            text += await _lag_text(lag)
        return web.Response(
            body=text.encode("utf-8"), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("health server listening", extra={"addresses": [str(a) for a in runner.addresses]})
    return runner


def render_lag(lag: dict[tuple[str, int], int]) -> str:
    """`govmeter_consumer_lag{topic="..",partition=".."} N` lines, sorted, with a TYPE line."""
    lines = ["# TYPE govmeter_consumer_lag gauge"]
    for (topic, partition), value in sorted(lag.items()):
        lines.append(
            f'govmeter_consumer_lag{{topic="{_label(topic)}",partition="{partition}"}} {value}'
        )
    return "\n".join(lines) + "\n"


async def _lag_text(lag: LagProbe) -> str:
    try:
        async with asyncio.timeout(LAG_TIMEOUT_SECONDS):
            values = await lag()
    except Exception as error:
        log.warning("consumer lag unavailable", extra={"error": type(error).__name__})
        return "# TYPE govmeter_consumer_lag_available gauge\ngovmeter_consumer_lag_available 0\n"
    return (
        render_lag(values)
        + "# TYPE govmeter_consumer_lag_available gauge\ngovmeter_consumer_lag_available 1\n"
    )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _json(body: dict[str, object], status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=str), status=status, content_type="application/json"
    )


class WorkerHealth:
    """The /healthz state of a worker, read from its `Metrics` counters.

    The store counts as failing continuously from the first store error seen after
    the last completed flush, for as long as errors keep arriving (the sink retries
    at least every `retry_max_seconds`, so a quiet spell longer than twice that
    means the retries succeed) and no flush completes. Times are taken when a change
    is observed: call `state()` often, or run `watch()` as a task for 1 s precision.
    """

    def __init__(
        self,
        metrics: Metrics,
        role: str,
        *,
        retry_max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._role = role
        self._quiet_after = 2 * retry_max_seconds + 1.0
        self._clock = clock
        self._started = clock()
        self._flushes = metrics.flushes.value
        self._errors = metrics.store_errors.value
        self._last_flush_at: float | None = None
        self._last_error_at: float | None = None
        self._failing_since: float | None = None

    def observe(self) -> None:
        now = self._clock()
        errors = self._metrics.store_errors.value
        if errors != self._errors:
            self._errors = errors
            self._last_error_at = now
            if self._failing_since is None:
                self._failing_since = now
        flushes = self._metrics.flushes.value
        if flushes != self._flushes:
            self._flushes = flushes
            self._last_flush_at = now
            self._failing_since = None
        if (
            self._failing_since is not None
            and self._last_error_at is not None
            and now - self._last_error_at > self._quiet_after
        ):
            self._failing_since = None

    def state(self) -> dict[str, object]:
        self.observe()
        now = self._clock()
        return {
            "role": self._role,
            "uptime_seconds": round(now - self._started, 3),
            "last_flush_age_seconds": (
                None if self._last_flush_at is None else round(now - self._last_flush_at, 3)
            ),
            "store_errors": self._errors,
            "store_failing_seconds": (
                0.0 if self._failing_since is None else round(now - self._failing_since, 3)
            ),
        }

    async def watch(self, interval: float = 1.0) -> None:
        """Observe the counters every `interval` seconds until cancelled."""
        while True:
            self.observe()
            await asyncio.sleep(interval)
