"""`python -m bench.freshness`: how long until a produced event shows in the contract views.

Produces events at a steady rate (each one's `occurred_at` is the moment it is sent, by
librdkafka, the fastest producer here) to a fresh one-partition topic while `metering
worker` counts them into a local ClickHouse server of its own (the default set-up,
`infra/clickhouse/start`; `--store embedded` for the in-process engine). Two clocks:

  * produce-to-view, as a reader sees it: a reader polls `sum(messages)` of
    `metering.agency_daily` over HTTP every `--poll` seconds; on one partition events
    become visible in the order they were sent, so event number i is visible at the
    first poll (its answer's arrival) whose sum exceeds i. Only with the server.
  * produce-to-commit, from the worker's side: each "flush committed" line (logged
    after the rollups were folded in) carries the flush's message count, and event i is
    visible when the first flush whose cumulative count exceeds i commits.

After the run the worker is stopped with SIGTERM and its store is checked against the
produced events.

    python -m bench.freshness --rate 1000 --seconds 60 [--bootstrap 127.0.0.1:9092]
    python -m bench.freshness --rate 20000 --seconds 60
"""

from __future__ import annotations

import argparse
import bisect
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Producer

from bench.reference import Reference
from bench.rows import BenchRun, free_server_ports
from bench.runner import LogLine, Running
from bench.topic import create_topic, delete_topics_containing
from bench.worklog import worker_timeline
from metering.simulate import SimulationPlan, generate_events
from store.connection import connect
from store.local_server.config import ServerLayout
from store.local_server.control import LocalServer, ServerOptions

__all__ = ["Freshness", "main", "percentile", "seen_by_reader", "visibility"]

_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Freshness:
    measured: int
    visible: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def visibility(
    sent_at: Sequence[float], flushes: Sequence[tuple[int, float]], skip: int = 0
) -> Freshness:
    """Latency of events `skip..` given (messages, committed wall time) per flush, in order."""
    cumulative: list[int] = []
    total = 0
    for messages, _ in flushes:
        total += messages
        cumulative.append(total)
    latencies: list[float] = []
    for i in range(skip, len(sent_at)):
        k = bisect.bisect_right(cumulative, i)  # first flush whose cumulative count > i
        if k < len(flushes):
            latencies.append(flushes[k][1] - sent_at[i])
    latencies.sort()
    return Freshness(
        measured=len(sent_at) - skip,
        visible=len(latencies),
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p99=percentile(latencies, 99),
        max=latencies[-1] if latencies else None,
    )


def seen_by_reader(
    sent_at: Sequence[float], polls: Sequence[tuple[float, int]], skip: int = 0
) -> Freshness:
    """Latency of events `skip..` given (answer arrival time, visible count) per poll."""
    flushes: list[tuple[int, float]] = []
    shown = 0
    for at, visible in polls:
        if visible > shown:
            flushes.append((visible - shown, at))
            shown = visible
    return visibility(sent_at, flushes, skip)


_PLACEHOLDER = b"1970-01-01T00:00:00.000Z"


def _templates(count: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    """(key, before the timestamp, after it) per event: stamped at send time, cheaply."""
    out: list[tuple[bytes, bytes, bytes]] = []
    for line in generate_events(SimulationPlan(messages=count, seed=seed)):
        event = orjson.loads(line)
        event["occurred_at"] = _PLACEHOLDER.decode()
        before, after = orjson.dumps(event).split(_PLACEHOLDER)
        out.append((str(event["agency_id"]).encode(), before, after))
    return out


def _stamp(now: float) -> bytes:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].encode() + b"Z"


def _produce(
    bootstrap: str, topic: str, rate: float, templates: Sequence[tuple[bytes, bytes, bytes]]
) -> tuple[list[float], list[bytes]]:
    """Send the events at `rate`/s in order, each stamped with its send time; return
    every send time and line once the broker acknowledged them all."""
    failures: list[object] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all", "enable.idempotence": True}
    )
    sent_at: list[float] = []
    lines: list[bytes] = []
    began = time.time()
    i, total = 0, len(templates)
    while i < total:
        now = time.time()
        due = min(total, int((now - began) * rate) + 1)
        if due <= i:
            time.sleep(min(0.0005, (i + 1) / rate - (now - began)))
            continue
        stamp = _stamp(now)
        for key, before, after in templates[i:due]:
            line = before + stamp + after
            producer.produce(topic, value=line, key=key, on_delivery=delivered)
            sent_at.append(now)
            lines.append(line)
        i = due
        producer.poll(0)
    if producer.flush(60) != 0 or failures:
        raise RuntimeError(f"the broker did not acknowledge every event: {failures[:3]}")
    return sent_at, lines


class _Poller:
    """Polls the visible message count from the server until stopped."""

    def __init__(self, url: str, period: float, env: dict[str, str]) -> None:
        self._client = connect(url, env)  # as the local server's writer
        self._period = period
        self._stop = threading.Event()
        self.polls: list[tuple[float, int]] = []
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="freshness-poller", daemon=True)

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                visible = self._client.command(
                    "SELECT toUInt64(sum(messages)) FROM metering.agency_daily"
                )
                self.polls.append((time.time(), int(visible)))  # type: ignore[arg-type]
            except Exception:  # the store starts empty: the views appear with the worker
                self.errors += 1
            self._stop.wait(self._period)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.freshness", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rate", type=float, default=1000.0, help="events per second")
    p.add_argument("--seconds", type=float, default=60.0, help="measured production time")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds produced, not measured")
    p.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--store",
        choices=("server", "embedded"),
        default="server",
        help="a local ClickHouse server of the run's own (default) or the embedded engine",
    )
    p.add_argument("--poll", type=float, default=0.05, help="seconds between reader polls")
    p.add_argument("--batch-max-seconds", type=float, help="METERING_BATCH_MAX_SECONDS")
    p.add_argument("--batch-max-events", type=int, help="METERING_BATCH_MAX_EVENTS")
    p.add_argument("--keep", action="store_true", help="keep the work directory and topics")
    return p


def _say(text: str) -> None:
    print(f"[freshness {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _row(label: str, fresh: Freshness) -> str:
    return (
        f"| {label} | {fresh.measured:,} | {fresh.visible:,} | {_s(fresh.p50)} | "
        f"{_s(fresh.p90)} | {_s(fresh.p99)} | {_s(fresh.max)} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    topic = f"govmeter-fresh-{run_id}"
    work = Path(tempfile.mkdtemp(prefix="govmeter-fresh-"))
    warm = round(args.rate * args.warmup)
    count = warm + round(args.rate * args.seconds)
    reference = Reference()
    bench = BenchRun(
        bootstrap=args.bootstrap, topic=topic, partitions=1, work=work, repo=_REPO,
        reference=reference,
    )  # fmt: skip
    store = work / "pipeline-store"
    server: LocalServer | None = None
    if args.store == "server":
        http_port, tcp_port = free_server_ports()
        server = LocalServer(
            ServerOptions(
                layout=ServerLayout.for_data_dir(store, None),
                http_port=http_port,
                tcp_port=tcp_port,
            )
        )
    url = server.options.http_url if server is not None else f"chdb://{store}"
    worker_env = {
        "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
        "METERING_EVENTS_TOPIC": topic,
        "METERING_DLQ_TOPIC": f"{topic}.dlq",
        "METERING_CORRECTIONS_TOPIC": f"{topic}.corrections",
        "CLICKHOUSE_URL": url,
        "METERING_CONSUMER_GROUP": f"{topic}-worker",
        # the local server's directory, where commands find its writer's password
        **(
            {
                "CLICKHOUSE_DATA_DIR": str(store),
                "CLICKHOUSE_HTTP_PORT": str(server.options.http_port),
            }
            if server is not None
            else {}
        ),
        "METERING_TOPIC_PARTITIONS": "1",
    }
    if args.batch_max_seconds is not None:
        worker_env["METERING_BATCH_MAX_SECONDS"] = str(args.batch_max_seconds)
    if args.batch_max_events is not None:
        worker_env["METERING_BATCH_MAX_EVENTS"] = str(args.batch_max_events)
    env = bench.env(**worker_env)
    status = 1
    try:
        _say(f"preparing {count:,} events ...")
        templates = _templates(count, args.seed)
        if server is not None:
            _say(f"local ClickHouse server: {server.start()}")
        create_topic(args.bootstrap, topic, 1)
        worker = Running(
            [sys.executable, "-m", "metering.cli", "worker"],
            env=env,
            cwd=_REPO,
            log_path=work / "worker.stderr.log",
            stdout_path=work / "worker.stdout.log",
        )
        if worker.wait_for_line("worker consuming", timeout=120) is None:
            worker.terminate()
            run = worker.wait(30)
            _say(f"worker did not start: {run.failure()}")
            return 1
        _say(f"worker consuming; producing {count:,} events at {args.rate:,.0f}/s ...")
        poller = _Poller(url, args.poll, worker_env) if server is not None else None
        began = time.time()
        if poller is not None:
            with poller:
                sent_at, lines = _produce(args.bootstrap, topic, args.rate, templates)
                produced_for = time.time() - began
                _wait_for_flushes(worker, count)
                time.sleep(max(0.2, 3 * args.poll))  # a poll after the last flush
        else:
            sent_at, lines = _produce(args.bootstrap, topic, args.rate, templates)
            produced_for = time.time() - began
            _wait_for_flushes(worker, count)
        for line in lines:
            reference.add(line)
        worker.terminate()
        run = worker.wait(60)
        timeline = worker_timeline(run)
        committed = visibility(
            sent_at, [(f.messages, f.committed) for f in timeline.flushes], skip=warm
        )
        seen = seen_by_reader(sent_at, poller.polls, skip=warm) if poller is not None else None
        verdict = bench.read_back(store, "pipeline", url=url if server is not None else None)
        steady = [f for f in timeline.flushes if f.committed >= sent_at[warm]] or timeline.flushes
        sizes = sorted(f.messages for f in steady)
        durations = sorted(f.seconds for f in steady)
        busy = run.exited - run.spawned
        batch_seconds = worker_env.get(
            "METERING_BATCH_MAX_SECONDS", os.environ.get("METERING_BATCH_MAX_SECONDS", "1.0")
        )
        rows = [_row("flush committed (worker log)", committed)]
        if seen is not None and poller is not None:
            rows.insert(0, _row(f"seen by a reader (poll every {args.poll:g} s)", seen))
        print(
            "\n".join(
                [
                    f"govmeter freshness bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
                    f"store: {'local ClickHouse server over HTTP' if server else 'embedded'}",
                    f"produced {count:,} events in {produced_for:.1f} s "
                    f"({count / produced_for:,.0f}/s; the first {warm:,} are warm-up) to "
                    f"{topic} (1 partition), broker {args.bootstrap}",
                    f"worker: METERING_BATCH_MAX_SECONDS={batch_seconds}, stopped by SIGTERM "
                    f"(exit {run.returncode}); CPU {run.cpu_seconds:.1f} s over {busy:.0f} s, "
                    f"peak RSS {run.max_rss_mb:.0f} MB",
                    "",
                    "| latency to | events measured | visible | p50 | p90 | p99 | max |",
                    "|---|---|---|---|---|---|---|",
                    *rows,
                    "",
                    "latency = when the event was visible in metering.agency_daily - its send time",
                    f"flushes while measuring: {len(steady)}, messages per flush median "
                    f"{sizes[len(sizes) // 2]:,}, flush seconds median "
                    f"{durations[len(durations) // 2]:.3f} max {durations[-1]:.3f}"
                    + (
                        f"; reader polls {len(poller.polls):,} ({poller.errors} before the "
                        "views existed)"
                        if poller is not None
                        else ""
                    ),
                    f"check of the store after the run: {verdict.label}: {verdict.detail}",
                ]
            )
        )
        complete = committed.visible == committed.measured and (
            seen is None or seen.visible == seen.measured
        )
        status = 0 if verdict.ok and complete else 1
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            delete_topics_containing(args.bootstrap, run_id)
            shutil.rmtree(work, ignore_errors=True)
        else:
            _say(f"kept {work} and the topics of run {run_id}")
    return status


def _wait_for_flushes(worker: Running, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flushed = sum(int(line.record.get("messages", 0)) for line in _flush_lines(worker))
        if flushed >= count:
            return
        time.sleep(0.1)


def _flush_lines(worker: Running) -> list[LogLine]:
    return [line for line in list(worker.record.lines) if line.msg == "flush committed"]


if __name__ == "__main__":
    raise SystemExit(main())
