"""One health address for all the writers of `metering worker --processes N`.

Each writer serves its own `/healthz` and `/metrics` (`metering.health`) on the health
port plus its number (writer 1 on METERING_HEALTH_PORT + 1, ...); the supervisor
serves METERING_HEALTH_PORT itself, so whatever watched a single worker keeps working:

  - `GET /healthz`: 200 `{"status": "ok", "writers": {name: its state}}` when every
    writer answers 200; else 503 with the first failing writer's own status, or
    `writer_unavailable` when one does not answer (starting, restarting, stopped);
  - `GET /metrics`: every writer's metrics with a `writer` label added (sum them in the
    query: `sum(govmeter_events_counted_total)`), each family once with its TYPE line,
    and `govmeter_writer_up{writer=...}` 1 or 0.

Served from a thread of the supervisor; each request asks all the writers at once,
then and there (2 s at most), so nothing is cached or stale.
"""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

import orjson

from metering.health import PROMETHEUS_CONTENT_TYPE
from streams.metrics import prometheus_label

__all__ = ["Writer", "WritersHealthServer", "writers_health", "writers_metrics"]

ASK_TIMEOUT_SECONDS: Final = 2.0
_SAMPLE: Final = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)\s*$")
_TYPE: Final = re.compile(r"^#\s*TYPE\s+([A-Za-z_:][A-Za-z0-9_:]*)\s+(\S+)\s*$")


@dataclass(frozen=True)
class Writer:
    name: str
    base_url: str  # http://host:port of its own health endpoint


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def _ask(url: str) -> Answer | None:
    """The writer's answer (any HTTP status), or None when it does not answer."""
    if not url.startswith("http://"):
        raise ValueError(f"a writer's health address must be http://, not {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=ASK_TIMEOUT_SECONDS) as response:  # noqa: S310
            return Answer(int(response.status), response.read())
    except urllib.error.HTTPError as error:
        return Answer(int(error.code), error.read())
    except (OSError, ValueError):
        return None


def writers_health(answers: Sequence[tuple[str, Answer | None]]) -> tuple[int, dict[str, object]]:
    """The combined /healthz status code and body from each writer's answer."""
    writers: dict[str, object] = {}
    failing: str | None = None
    for name, answer in answers:
        state: object
        if answer is None:
            state, ok = {"status": "writer_unavailable"}, False
        else:
            try:
                state = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                state = {"status": "writer_unavailable", "answer": answer.status}
            ok = answer.status == 200
        writers[name] = state
        if not ok and failing is None:
            status = state.get("status") if isinstance(state, dict) else None
            failing = status if isinstance(status, str) and status != "ok" else "writer_unavailable"
    if failing is None:
        return 200, {"status": "ok", "writers": writers}
    return 503, {"status": failing, "writers": writers}


def _of_family(metric: str, family: str) -> bool:
    return metric == family or metric in (f"{family}_bucket", f"{family}_sum", f"{family}_count")


def writers_metrics(texts: Sequence[tuple[str, str | None]]) -> str:
    """Every writer's Prometheus text with `writer="name"` added to each sample, the
    samples of one family together under its TYPE line, then `govmeter_writer_up`."""
    kinds: dict[str, str] = {}
    samples: dict[str, list[str]] = {}
    for name, text in texts:
        if text is None:
            continue
        writer = f'writer="{prometheus_label(name)}"'
        family: str | None = None
        for line in text.splitlines():
            typed = _TYPE.match(line)
            if typed is not None:
                family = typed.group(1)
                kinds.setdefault(family, typed.group(2))
                samples.setdefault(family, [])
                continue
            sample = _SAMPLE.match(line)
            if sample is None:
                continue  # comments, blank lines
            metric, labels, value = sample.groups()
            key = family if family is not None and _of_family(metric, family) else metric
            kinds.setdefault(key, "untyped")
            labelled = f"{writer},{labels}" if labels else writer
            samples.setdefault(key, []).append(f"{metric}{{{labelled}}} {value}")
    lines: list[str] = []
    for family, kind in kinds.items():
        lines.append(f"# TYPE {family} {kind}")
        lines.extend(samples.get(family, []))
    lines.append("# TYPE govmeter_writer_up gauge")
    for name, text in texts:
        lines.append(
            f'govmeter_writer_up{{writer="{prometheus_label(name)}"}} {0 if text is None else 1}'
        )
    return "\n".join(lines) + "\n"


class WritersHealthServer:
    """The supervisor's /healthz and /metrics on `host:port`, asking `writers`."""

    def __init__(self, host: str, port: int, writers: Sequence[Writer]) -> None:
        self._writers = list(writers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    code, body = outer.health()
                    self._answer(code, orjson.dumps(body), "application/json")
                elif path == "/metrics":
                    self._answer(200, outer.metrics().encode("utf-8"), PROMETHEUS_CONTENT_TYPE)
                else:
                    self._answer(404, b'{"status": "not_found"}', "application/json")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # no access log, like the writers' endpoints

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="writers-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _ask_all(self, path: str) -> list[tuple[str, Answer | None]]:
        """Every writer's answer to `path`, asked at once: a probe waits for the slowest
        writer, not for the sum of them."""
        with ThreadPoolExecutor(max_workers=len(self._writers)) as pool:
            answers = pool.map(_ask, [f"{w.base_url}{path}" for w in self._writers])
            return list(zip([w.name for w in self._writers], answers, strict=True))

    def health(self) -> tuple[int, dict[str, object]]:
        return writers_health(self._ask_all("/healthz"))

    def metrics(self) -> str:
        return writers_metrics(
            [
                (name, answer.body.decode("utf-8") if answer and answer.status == 200 else None)
                for name, answer in self._ask_all("/metrics")
            ]
        )
