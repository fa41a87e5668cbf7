"""/healthz and /metrics on a real port of 127.0.0.1, read with urllib."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

from aiohttp import web

from metering.health import WorkerHealth, render_lag, start_health_server
from streams.metrics import Metrics


def _metrics() -> Metrics:
    metrics = Metrics()
    metrics.events_in.inc(10)
    metrics.counted.inc(6)
    metrics.duplicates.inc(2)
    metrics.rejected_by_reason["content_not_allowed"] += 1
    metrics.rejected_by_reason["invalid_json"] += 1
    metrics.flushes.inc(3)
    metrics.store_errors.inc(4)
    metrics.last_flush_seconds = 0.25
    return metrics


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy


def _get(url: str) -> tuple[int, str, str]:
    try:
        with _DIRECT.open(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def _serve(
    metrics: Metrics,
    state: Callable[[], dict[str, object]],
    paths: list[str],
    lag: Callable[[], Awaitable[dict[tuple[str, int], int]]] | None = None,
) -> list[tuple[int, str, str]]:
    async def run() -> list[tuple[int, str, str]]:
        runner = await start_health_server(
            "127.0.0.1", 0, metrics, state, lag, unhealthy_after_seconds=60
        )
        try:
            assert isinstance(runner, web.AppRunner)
            host, port = runner.addresses[0][:2]
            assert host == "127.0.0.1"
            return [await asyncio.to_thread(_get, f"http://{host}:{port}{p}") for p in paths]
        finally:
            await runner.cleanup()

    return asyncio.run(run())


EXPECTED_COUNTERS = """\
# TYPE govmeter_events_in_total counter
govmeter_events_in_total 10
# TYPE govmeter_events_counted_total counter
govmeter_events_counted_total 6
# TYPE govmeter_events_duplicate_total counter
govmeter_events_duplicate_total 2
# TYPE govmeter_events_rejected_total counter
govmeter_events_rejected_total{reason="content_not_allowed"} 1
govmeter_events_rejected_total{reason="invalid_json"} 1
govmeter_events_rejected_total{reason="schema_violation"} 0
govmeter_events_rejected_total{reason="too_large"} 0
govmeter_events_rejected_total{reason="unsupported_schema_version"} 0
# TYPE govmeter_flushes_total counter
govmeter_flushes_total 3
# TYPE govmeter_flushes_refused_total counter
govmeter_flushes_refused_total 0
# TYPE govmeter_commits_retried_total counter
govmeter_commits_retried_total 0
# TYPE govmeter_flushes_redone_total counter
govmeter_flushes_redone_total 0
# TYPE govmeter_store_errors_total counter
govmeter_store_errors_total 4
# TYPE govmeter_store_transient_errors_total counter
govmeter_store_transient_errors_total 0
# TYPE govmeter_store_fatal_errors_total counter
govmeter_store_fatal_errors_total 0
# TYPE govmeter_store_errors_by_cause_total counter
# TYPE govmeter_dead_letter_errors_total counter
govmeter_dead_letter_errors_total 0
# TYPE govmeter_dead_letter_errors_by_cause_total counter
# TYPE govmeter_offsets_expired_total counter
# TYPE govmeter_flush_seconds_last gauge
govmeter_flush_seconds_last 0.250000
"""


def test_metrics_are_prometheus_text_with_consumer_lag() -> None:
    async def lag() -> dict[tuple[str, int], int]:
        return {("usage.events", 1): 7, ("usage.events", 0): 0}

    [(status, content_type, body)] = _serve(_metrics(), dict, ["/metrics"], lag)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert body == EXPECTED_COUNTERS + (
        "# TYPE govmeter_consumer_lag gauge\n"
        'govmeter_consumer_lag{topic="usage.events",partition="0"} 0\n'
        'govmeter_consumer_lag{topic="usage.events",partition="1"} 7\n'
        "# TYPE govmeter_consumer_lag_available gauge\n"
        "govmeter_consumer_lag_available 1\n"
    )


def test_metrics_without_lag_and_with_a_failing_lag_probe() -> None:
    async def broken() -> dict[tuple[str, int], int]:
        raise ConnectionError("broker down")

    [(_, _, plain)] = _serve(_metrics(), dict, ["/metrics"])
    assert plain == EXPECTED_COUNTERS
    [(status, _, body)] = _serve(_metrics(), dict, ["/metrics"], broken)
    assert status == 200
    assert body == EXPECTED_COUNTERS + (
        "# TYPE govmeter_consumer_lag_available gauge\ngovmeter_consumer_lag_available 0\n"
    )


def test_healthz_ok_then_503_when_the_store_fails_too_long() -> None:
    state: dict[str, object] = {
        "last_flush_age_seconds": 1.5,
        "store_errors": 4,
        "store_failing_seconds": 59.0,
    }
    [(status, content_type, body)] = _serve(_metrics(), lambda: state, ["/healthz"])
    assert status == 200
    assert content_type.startswith("application/json")
    assert json.loads(body) == {"status": "ok", **state}

    state["store_failing_seconds"] = 61.0
    [(status, _, body)] = _serve(_metrics(), lambda: state, ["/healthz"])
    assert status == 503
    assert json.loads(body)["status"] == "store_unavailable"


def test_healthz_is_503_when_the_state_cannot_be_read() -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("no state")

    [(status, _, body)] = _serve(_metrics(), broken, ["/healthz"])
    assert status == 503
    assert json.loads(body) == {"status": "error"}


def test_unknown_path_is_404() -> None:
    [(status, _, _)] = _serve(_metrics(), dict, ["/nothing"])
    assert status == 404


def test_render_lag_escapes_label_values() -> None:
    assert render_lag({('a"b', 2): 5}) == (
        '# TYPE govmeter_consumer_lag gauge\ngovmeter_consumer_lag{topic="a\\"b",partition="2"} 5\n'
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_worker_health_tracks_continuous_store_failure() -> None:
    metrics, clock = Metrics(), _Clock()
    health = WorkerHealth(metrics, retry_max_seconds=30, clock=clock)
    first = health.state()
    assert first == {
        "uptime_seconds": 0.0,
        "last_flush_age_seconds": None,
        "store_errors": 0,
        "store_transient_errors": 0,
        "store_fatal_errors": 0,
        "store_failing_seconds": 0.0,
        "store_last_error": None,
        "dead_letter_errors": 0,
        "dead_letter_failing_seconds": 0.0,
        "dead_letter_last_error": None,
        "offsets_expired": 0,
    }
    metrics.flushes.inc()
    clock.now += 5
    assert health.state()["last_flush_age_seconds"] == 0.0
    metrics.store_errors.inc()
    clock.now += 10
    assert health.state()["store_failing_seconds"] == 0.0  # failing from now on
    for _ in range(4):  # retries every 30 s, still failing, no flush
        clock.now += 30
        metrics.store_errors.inc()
        health.observe()
    state = health.state()
    assert state["store_failing_seconds"] == 120.0
    assert state["last_flush_age_seconds"] == 130.0
    assert state["store_errors"] == 5
    metrics.flushes.inc()  # the store is back
    clock.now += 1
    assert health.state()["store_failing_seconds"] == 0.0


def test_worker_health_forgets_failures_once_errors_stop() -> None:
    metrics, clock = Metrics(), _Clock()
    health = WorkerHealth(metrics, retry_max_seconds=5, clock=clock)
    metrics.store_errors.inc()
    health.observe()
    clock.now += 10
    assert health.state()["store_failing_seconds"] == 10.0
    clock.now += 2  # no error for 12 s > 2 x 5 s + 1 s: the retries succeeded
    assert health.state()["store_failing_seconds"] == 0.0
