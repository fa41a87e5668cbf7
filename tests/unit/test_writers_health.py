"""The supervisor's one health address for `--processes N`: /healthz of all writers,
/metrics of each with a `writer` label, served over real HTTP from fake writers."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from metering.settings import Settings, SettingsError
from metering.worker_processes import run_worker_processes
from metering.writers_health import (
    Answer,
    Writer,
    WritersHealthServer,
    writers_health,
    writers_metrics,
)
from streams.metrics import Metrics

ONE = """# TYPE govmeter_events_counted_total counter
govmeter_events_counted_total 7
# TYPE govmeter_events_rejected_total counter
govmeter_events_rejected_total{reason="invalid_json"} 2
# TYPE govmeter_consumer_lag gauge
govmeter_consumer_lag{topic="usage.events",partition="0"} 3
"""
TWO = """# TYPE govmeter_events_counted_total counter
govmeter_events_counted_total 5
# TYPE govmeter_events_rejected_total counter
# TYPE govmeter_consumer_lag gauge
govmeter_consumer_lag{topic="usage.events",partition="1"} 0
"""


def test_every_sample_gets_its_writer_and_each_family_is_listed_once() -> None:
    text = writers_metrics([("w-1", ONE), ("w-2", TWO), ("w-3", None)])
    assert text == (
        "# TYPE govmeter_events_counted_total counter\n"
        'govmeter_events_counted_total{writer="w-1"} 7\n'
        'govmeter_events_counted_total{writer="w-2"} 5\n'
        "# TYPE govmeter_events_rejected_total counter\n"
        'govmeter_events_rejected_total{writer="w-1",reason="invalid_json"} 2\n'
        "# TYPE govmeter_consumer_lag gauge\n"
        'govmeter_consumer_lag{writer="w-1",topic="usage.events",partition="0"} 3\n'
        'govmeter_consumer_lag{writer="w-2",topic="usage.events",partition="1"} 0\n'
        "# TYPE govmeter_writer_up gauge\n"
        'govmeter_writer_up{writer="w-1"} 1\n'
        'govmeter_writer_up{writer="w-2"} 1\n'
        'govmeter_writer_up{writer="w-3"} 0\n'
    )


def test_a_writers_real_metrics_keep_every_sample() -> None:
    metrics = Metrics()
    metrics.events_in.inc(11)
    own = metrics.prometheus()
    combined = writers_metrics([("w-1", own)])
    samples = [line for line in own.splitlines() if line and not line.startswith("#")]
    labelled = [line for line in combined.splitlines() if 'writer="w-1"' in line]
    assert len(labelled) == len(samples) + 1  # and govmeter_writer_up
    assert 'govmeter_events_in_total{writer="w-1"} 11' in combined.splitlines()


def _answer(status: int, body: dict[str, object]) -> Answer:
    return Answer(status, orjson.dumps(body))


def test_healthy_only_when_every_writer_is() -> None:
    ok = _answer(200, {"status": "ok", "flushes": 3})
    down = _answer(503, {"status": "store_unavailable", "store_failing_seconds": 130})
    assert writers_health([("w-1", ok), ("w-2", ok)]) == (
        200,
        {
            "status": "ok",
            "writers": {
                "w-1": {"status": "ok", "flushes": 3},
                "w-2": {"status": "ok", "flushes": 3},
            },
        },
    )
    code, body = writers_health([("w-1", ok), ("w-2", down), ("w-3", None)])
    assert (code, body["status"]) == (503, "store_unavailable")
    assert body["writers"] == {
        "w-1": {"status": "ok", "flushes": 3},
        "w-2": {"status": "store_unavailable", "store_failing_seconds": 130},
        "w-3": {"status": "writer_unavailable"},
    }
    assert writers_health([("w-1", None), ("w-2", down)])[1]["status"] == "writer_unavailable"


class _FakeWriter:
    """A writer's health endpoint answering fixed /healthz and /metrics."""

    def __init__(self, health: tuple[int, bytes], metrics: str) -> None:
        outer = self
        self.health, self.metrics_text = health, metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = (
                    outer.health if self.path == "/healthz" else (200, outer.metrics_text.encode())
                )
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


@pytest.fixture
def served() -> Iterator[tuple[WritersHealthServer, _FakeWriter]]:
    first = _FakeWriter((200, b'{"status": "ok"}'), ONE)
    second = _FakeWriter((200, b'{"status": "ok"}'), TWO)
    server = WritersHealthServer(
        "127.0.0.1", 0, [Writer("w-1", first.url), Writer("w-2", second.url)]
    )
    server.start()
    try:
        yield server, second
    finally:
        server.stop()
        first.server.shutdown()
        second.server.shutdown()


def test_the_supervisor_answers_for_all_writers_over_http(
    served: tuple[WritersHealthServer, _FakeWriter],
) -> None:
    server, second = served
    base = f"http://127.0.0.1:{server.port}"
    code, body = _get(f"{base}/healthz")
    assert (code, orjson.loads(body)) == (
        200,
        {"status": "ok", "writers": {"w-1": {"status": "ok"}, "w-2": {"status": "ok"}}},
    )
    code, body = _get(f"{base}/metrics")
    assert code == 200
    assert body.decode() == writers_metrics([("w-1", ONE), ("w-2", TWO)])
    second.health = (503, b'{"status": "dead_letters_unavailable"}')
    code, body = _get(f"{base}/healthz")
    assert (code, orjson.loads(body)["status"]) == (503, "dead_letters_unavailable")
    assert _get(f"{base}/nothing")[0] == 404


def test_health_ports_past_the_last_one_name_the_setting() -> None:
    settings = Settings(CLICKHOUSE_URL="http://127.0.0.1:1", METERING_HEALTH_PORT=65534)  # type: ignore[call-arg]
    with pytest.raises(SettingsError, match=r"METERING_HEALTH_PORT: writer i of --processes 2"):
        run_worker_processes(settings, 2, ["worker"])
