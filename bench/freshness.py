"""`python -m bench.freshness`: how long until a produced event shows in the contract views.

Produces events at a steady rate (each one's `occurred_at` is the moment it is sent) to a
fresh one-partition topic while `metering worker` runs on its own embedded store. The
store cannot be queried while the worker owns it, so visibility is read from the worker's
side: each "flush committed" line (logged after the rollups were folded in, so the views
show the flush) carries the flush's message count; on one partition the flushes cover
the offsets in order, so event number i is visible when the first flush whose cumulative
count exceeds i commits. After the run the worker is stopped with SIGTERM and its store
is checked against the produced events.

    python -m bench.freshness --rate 1000 --seconds 60 [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import bisect
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from kafka import KafkaProducer

from bench.reference import Reference
from bench.rows import BenchRun
from bench.runner import LogLine, Running
from bench.topic import create_topic, delete_topics_containing
from bench.worklog import worker_timeline
from metering.replay import key_for
from metering.simulate import SimulationPlan, generate_events

__all__ = ["Freshness", "main", "percentile", "visibility"]

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


def _fresh_events(count: int, seed: int) -> Iterator[dict[str, object]]:
    """Realistic events (agencies, users, models) to be re-stamped at send time."""
    for line in generate_events(SimulationPlan(messages=count, seed=seed)):
        yield orjson.loads(line)


def _produce(
    bootstrap: str, topic: str, rate: float, count: int, seed: int, reference: Reference
) -> list[float]:
    """Send `count` events at `rate`/s, in order; return each one's send time."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks="all",
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
        retries=10,
    )
    sent_at: list[float] = []
    began = time.time()
    try:
        for i, event in enumerate(_fresh_events(count, seed)):
            ahead = began + i / rate - time.time()
            if ahead > 0.001:
                time.sleep(ahead)
            now = time.time()
            stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
            event["occurred_at"] = stamp.replace("+00:00", "Z")
            line = orjson.dumps(event)
            producer.send(topic, value=line, key=key_for(line))
            sent_at.append(now)
            reference.add(line)
        producer.flush()
    finally:
        producer.close()
    return sent_at


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
    p.add_argument("--batch-max-seconds", type=float, help="METERING_BATCH_MAX_SECONDS")
    p.add_argument("--batch-max-events", type=int, help="METERING_BATCH_MAX_EVENTS")
    p.add_argument("--keep", action="store_true", help="keep the work directory and topics")
    return p


def _say(text: str) -> None:
    print(f"[freshness {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


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
    worker_env = {
        "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
        "METERING_EVENTS_TOPIC": topic,
        "METERING_DLQ_TOPIC": f"{topic}.dlq",
        "METERING_RELAY_TOPIC": f"{topic}.flushes",
        "CLICKHOUSE_URL": f"chdb://{store}",
        "METERING_CONSUMER_GROUP": f"{topic}-worker",
        "METERING_TOPIC_PARTITIONS": "1",
    }
    if args.batch_max_seconds is not None:
        worker_env["METERING_BATCH_MAX_SECONDS"] = str(args.batch_max_seconds)
    if args.batch_max_events is not None:
        worker_env["METERING_BATCH_MAX_EVENTS"] = str(args.batch_max_events)
    env = bench.env(**worker_env)
    status = 1
    try:
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
        began = time.time()
        sent_at = _produce(args.bootstrap, topic, args.rate, count, args.seed, reference)
        produced_for = time.time() - began
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            flushed = sum(int(line.record.get("messages", 0)) for line in _flush_lines(worker))
            if flushed >= count:
                break
            time.sleep(0.2)
        worker.terminate()
        run = worker.wait(60)
        timeline = worker_timeline(run)
        fresh = visibility(
            sent_at, [(f.messages, f.committed) for f in timeline.flushes], skip=warm
        )
        verdict = bench.read_back(store, "pipeline")
        steady = [f for f in timeline.flushes if f.committed >= sent_at[warm]] or timeline.flushes
        sizes = sorted(f.messages for f in steady)
        durations = sorted(f.seconds for f in steady)
        busy = run.exited - run.spawned
        batch_seconds = worker_env.get(
            "METERING_BATCH_MAX_SECONDS", os.environ.get("METERING_BATCH_MAX_SECONDS", "1.0")
        )
        print(
            "\n".join(
                [
                    f"govmeter freshness bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
                    f"produced {count:,} events in {produced_for:.1f} s "
                    f"({count / produced_for:,.0f}/s; the first {warm:,} are warm-up) to "
                    f"{topic} (1 partition), broker {args.bootstrap}",
                    f"worker: METERING_BATCH_MAX_SECONDS={batch_seconds}, stopped by SIGTERM "
                    f"(exit {run.returncode}); CPU {run.cpu_seconds:.1f} s over {busy:.0f} s, "
                    f"peak RSS {run.max_rss_mb:.0f} MB",
                    "",
                    "| events measured | visible | p50 | p90 | p99 | max |",
                    "|---|---|---|---|---|---|",
                    f"| {fresh.measured:,} | {fresh.visible:,} | {_s(fresh.p50)} | "
                    f"{_s(fresh.p90)} | {_s(fresh.p99)} | {_s(fresh.max)} |",
                    "",
                    "latency = the 'flush committed' log time of the flush that made the event "
                    "visible in metering.agency_daily - the event's send time",
                    f"flushes while measuring: {len(steady)}, messages per flush median "
                    f"{sizes[len(sizes) // 2]:,}, flush seconds median "
                    f"{durations[len(durations) // 2]:.3f} max {durations[-1]:.3f}",
                    f"check of the store after the run: {verdict.label}: {verdict.detail}",
                ]
            )
        )
        status = 0 if verdict.ok and fresh.visible == fresh.measured else 1
    finally:
        if not args.keep:
            delete_topics_containing(args.bootstrap, run_id)
            shutil.rmtree(work, ignore_errors=True)
        else:
            _say(f"kept {work} and the topics of run {run_id}")
    return status


def _flush_lines(worker: Running) -> list[LogLine]:
    return [line for line in list(worker.record.lines) if line.msg == "flush committed"]


if __name__ == "__main__":
    raise SystemExit(main())
