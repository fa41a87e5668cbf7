"""Health and metrics over HTTP, served from inside the worker's asyncio loop.

`GET /healthz` answers 200 with a small JSON state while the worker is healthy and
503 once the store, or the publishing of dead letters, has failed continuously for
longer than `unhealthy_after_seconds`;
`GET /metrics` answers the worker's counters in Prometheus text format, plus the
consumer lag per partition when a lag callable is given. Bound to 127.0.0.1 by
default: nothing here needs to be reachable from outside the host (or pod).

`WorkerHealth` turns a `Metrics` object into the state callable; it needs no
changes to the sink: it watches the flush, store-error and dead-letter-error counters,
and shows the last failure of each (its cause, and whether it is transient: a failure
that is not transient stops the worker after METERING_STORE_FATAL_TRIES tries).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from aiohttp import web

from streams.metrics import Counter, Metrics, prometheus_label

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
    `"status"`; the answer is 503 when `state()["store_failing_seconds"]` (status
    `store_unavailable`) or `state()["dead_letter_failing_seconds"]` (status
    `dead_letters_unavailable`) exceeds `unhealthy_after_seconds`, or when `state()`
    itself raises. Port 0 picks a free port: read it from `runner.addresses`.
    """

    def too_long(value: object) -> bool:
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > unhealthy_after_seconds
        )

    async def healthz(request: web.Request) -> web.Response:
        try:
            current = dict(state())
        except Exception:
            log.exception("health state failed")
            return _json({"status": "error"}, 503)
        status = "ok"
        if too_long(current.get("store_failing_seconds")):
            status = "store_unavailable"
        elif too_long(current.get("dead_letter_failing_seconds")):
            status = "dead_letters_unavailable"
        body = {"status": status, **current}
        return _json(body, 200 if status == "ok" else 503)

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
            f'govmeter_consumer_lag{{topic="{prometheus_label(topic)}",'
            f'partition="{partition}"}} {value}'
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


def _json(body: dict[str, object], status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=str), status=status, content_type="application/json"
    )


class _FailureWatch:
    """Continuous failure of one kind, from a counter of failed attempts.

    Failing from the first failure seen after the last completed flush, for as long as
    failures keep arriving (retries come at least every `quiet_after / 2`, so a quiet
    spell longer than `quiet_after` means they succeed) and no flush completes.
    """

    def __init__(self, counter: Counter, quiet_after: float) -> None:
        self._counter = counter
        self._quiet_after = quiet_after
        self.seen = counter.value
        self._last_at: float | None = None
        self._since: float | None = None

    def observe(self, now: float) -> None:
        value = self._counter.value
        if value != self.seen:
            self.seen = value
            self._last_at = now
            if self._since is None:
                self._since = now
        if (
            self._since is not None
            and self._last_at is not None
            and now - self._last_at > self._quiet_after
        ):
            self._since = None

    def flushed(self) -> None:
        self._since = None

    def failing_seconds(self, now: float) -> float:
        return 0.0 if self._since is None else round(now - self._since, 3)


class WorkerHealth:
    """The /healthz state of a worker, read from its `Metrics` counters.

    The store counts as failing continuously from the first store error seen after
    the last completed flush, for as long as errors keep arriving (the sink retries
    at least every `retry_max_seconds`, so a quiet spell longer than twice that
    means the retries succeed) and no flush completes. Dead-letter publishing is
    watched the same way, apart. Times are taken when a change is observed: call
    `state()` often, or run `watch()` as a task for 1 s precision.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        retry_max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        quiet_after = 2 * retry_max_seconds + 1.0
        self._clock = clock
        self._started = clock()
        self._flushes = metrics.flushes.value
        self._last_flush_at: float | None = None
        self._store = _FailureWatch(metrics.store_errors, quiet_after)
        self._dead_letters = _FailureWatch(metrics.dead_letter_failures.total, quiet_after)

    def observe(self) -> None:
        now = self._clock()
        self._store.observe(now)
        self._dead_letters.observe(now)
        flushes = self._metrics.flushes.value
        if flushes != self._flushes:
            self._flushes = flushes
            self._last_flush_at = now
            self._store.flushed()
            self._dead_letters.flushed()

    def state(self) -> dict[str, object]:
        self.observe()
        now = self._clock()
        store, letters = self._metrics.store_failures, self._metrics.dead_letter_failures
        return {
            "uptime_seconds": round(now - self._started, 3),
            "last_flush_age_seconds": (
                None if self._last_flush_at is None else round(now - self._last_flush_at, 3)
            ),
            "store_errors": self._store.seen,
            "store_transient_errors": store.transient.value,
            "store_fatal_errors": store.fatal.value,
            "store_failing_seconds": self._store.failing_seconds(now),
            "store_last_error": store.last,
            "dead_letter_errors": self._dead_letters.seen,
            "dead_letter_failing_seconds": self._dead_letters.failing_seconds(now),
            "dead_letter_last_error": letters.last,
            "offsets_expired": sum(self._metrics.expired_offsets().values()),
        }

    async def watch(self, interval: float = 1.0) -> None:
        """Observe the counters every `interval` seconds until cancelled."""
        while True:
            self.observe()
            await asyncio.sleep(interval)
