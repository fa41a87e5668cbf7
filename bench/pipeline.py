"""`python -m bench.pipeline`: our pipeline against a client floor and two baselines.

Generates the events once (seeded), publishes them once to a fresh topic, then runs each
contender in its own process, one after the other, reading that topic from the beginning
with its own consumer group and writing to its own embedded store (row 2s: to a local
ClickHouse server of its own, over HTTP). Prints one table.

    python -m bench.pipeline --messages 1000000 [--bootstrap 127.0.0.1:9092] [--partitions 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import orjson

from bench.reference import USERS_EXACT_LIMIT, Reference
from bench.rows import (
    ROWS,
    BenchRun,
    probe_quix,
    run_faust,
    run_floor,
    run_floor_aiokafka,
    run_pipeline,
    run_pipeline_server,
    run_quix,
)
from bench.table import Measurement, ServerFigures, format_ratios, format_server, format_table
from bench.topic import (
    count_lines,
    create_topic,
    delete_topics_containing,
    publish,
    topic_messages,
)
from bench.worklog import WorkerTimeline, describe
from metering.simulate import SimulationPlan, generate_events

__all__ = ["main"]

_REPO = Path(__file__).resolve().parent.parent
_MESSAGES_PER_DAY = 600_000  # 18M messages make a 30-day month


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka brokers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument(
        "--days",
        type=int,
        help=f"UTC days the events span (default: one per {_MESSAGES_PER_DAY:,} messages)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--only",
        default=",".join(short for short, _ in ROWS.values()),
        help="comma-separated rows to run: " + ", ".join(s for s, _ in ROWS.values()),
    )
    p.add_argument(
        "--quix-python",
        default=os.environ.get("BENCH_QUIX_PYTHON", sys.executable),
        help="interpreter with bench/requirements.txt installed (default: $BENCH_QUIX_PYTHON)",
    )
    p.add_argument("--idle", type=float, default=3.0, help="the worker's --until-idle seconds")
    p.add_argument("--batch-max-events", type=int, help="METERING_BATCH_MAX_EVENTS, rows 2 and 2s")
    p.add_argument("--timeout", type=float, help="seconds per contender before it is killed")
    p.add_argument("--work-dir", type=Path, help="stores and logs (default: a temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and topics")
    p.add_argument(
        "--topic",
        help="use this topic, kept afterwards: published once when it does not hold the "
        "run's events yet, read as it is when it does (the reference is recomputed)",
    )
    p.add_argument("--json-out", type=Path, help="also write the figures as JSON")
    return p


def _say(text: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=_REPO, capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" + uncommitted changes" if dirty else "")


def _header(args: argparse.Namespace, plan: SimulationPlan, topic: str, quix: str) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    worker_batch = args.batch_max_events or os.environ.get("METERING_BATCH_MAX_EVENTS", "default")
    return "\n".join(
        [
            f"govmeter pipeline bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"events: {plan.messages:,} over {plan.days} day(s) from {plan.start} "
            f"(seed {plan.seed}, no duplicates); topic {topic}, {args.partitions} partitions, "
            f"broker {args.bootstrap}",
            f"machine: {os.cpu_count()} CPUs ({_cpu_model()}), {memory:.0f} GiB; "
            f"Python {platform.python_version()}",
            f"libraries: faust-streaming {_version('faust-streaming')}, aiokafka "
            f"{_version('aiokafka')}, kafka-python {_version('kafka-python')}, chdb "
            f"{_version('chdb')}, clickhouse-connect {_version('clickhouse-connect')}, "
            f"pydantic {_version('pydantic')}, quixstreams {quix}",
            f"worker: commit {_commit()}, METERING_BATCH_MAX_EVENTS={worker_batch}, "
            f"METERING_INTAKE={os.environ.get('METERING_INTAKE', 'default')}, "
            f"--until-idle {args.idle:g}",
        ]
    )


def _selected(only: str) -> set[str]:
    wanted = {part.strip() for part in only.split(",") if part.strip()}
    known = {short for short, _ in ROWS.values()}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"--only: unknown rows {sorted(unknown)}; known: {sorted(known)}")
    return wanted


@dataclass
class _Results:
    rows: list[Measurement]
    timelines: dict[str, WorkerTimeline]  # row key -> the worker's log, rows 2 and 2s
    server: ServerFigures | None  # row 2s's server process


def _run_rows(bench: BenchRun, wanted: set[str]) -> _Results:
    steps: list[tuple[str, Callable[[BenchRun], Measurement]]] = [
        ("1", run_floor),
        ("1b", run_floor_aiokafka),
        ("3", run_faust),
        ("4", run_quix),
    ]
    results: dict[str, Measurement] = {}
    timelines: dict[str, WorkerTimeline] = {}
    server = None
    order = ["1", "1b", "2", "2s", "3", "4"]
    for key in order:
        short, name = ROWS[key]
        if short not in wanted:
            continue
        _say(f"row {key}: {name} ...")
        began = time.monotonic()
        timeline = None
        if key == "2":
            results[key], timeline = run_pipeline(bench)
        elif key == "2s":
            results[key], timeline, server = run_pipeline_server(bench)
        else:
            results[key] = dict(steps)[key](bench)
        if timeline is not None:
            timelines[key] = timeline
        m = results[key]
        _say(f"row {key}: {m.status} in {time.monotonic() - began:.0f} s ({m.detail})")
    return _Results([results[k] for k in order if k in results], timelines, server)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = _selected(args.only)
    days = args.days or max(1, args.messages // _MESSAGES_PER_DAY)
    plan = SimulationPlan(messages=args.messages, days=days, seed=args.seed)
    run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    topic = args.topic or f"govmeter-bench-{run_id}"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="govmeter-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    quix_version = "-"
    if "quix" in wanted:
        quix_version = probe_quix(args.quix_python)[0] or "not importable"

    reference = Reference.for_messages(plan.messages)
    bench = BenchRun(
        bootstrap=args.bootstrap,
        topic=topic,
        partitions=args.partitions,
        work=work,
        repo=_REPO,
        reference=reference,
        quix_python=args.quix_python,
        idle_seconds=args.idle,
        timeout=args.timeout or 300 + plan.messages / 500,
        worker_env=(
            {"METERING_BATCH_MAX_EVENTS": str(args.batch_max_events)}
            if args.batch_max_events
            else {}
        ),
    )
    try:
        held = topic_messages(args.bootstrap, topic) if args.topic else None
        if held == plan.messages:
            _say(f"work directory {work}; {topic} holds {held:,} messages: reading it as it is")
            published = count_lines(reference.observe(generate_events(plan)))
        else:
            if held is not None:
                raise SystemExit(
                    f"--topic {topic}: holds {held:,} messages, not the {plan.messages:,} of "
                    "this run; delete it or name a new topic"
                )
            _say(f"work directory {work}; creating {topic} ({args.partitions} partitions)")
            create_topic(args.bootstrap, topic, args.partitions)
            _say(f"generating and publishing {plan.messages:,} events over {days} day(s) ...")
            published = publish(args.bootstrap, topic, reference.observe(generate_events(plan)))
            _say(
                f"published {published.messages:,} in {published.seconds:.1f} s "
                f"({published.rate:,.0f}/s); {len(reference.totals):,} agency-days"
            )
        results = _run_rows(bench, wanted)
    finally:
        if not args.keep:
            deleted = delete_topics_containing(args.bootstrap, run_id)
            _say(f"deleted {len(deleted)} topic(s); removing {work}")
            shutil.rmtree(work, ignore_errors=True)

    users_scope = (
        "every agency"
        if reference.user_sample == 1
        else f"1 in {reference.user_sample} agencies (runs over {USERS_EXACT_LIMIT:,} messages)"
    )
    rows = results.rows
    ours = next((m for m in rows if m.key == "2"), None)
    served = next((m for m in rows if m.key == "2s"), None)
    report = [
        _header(args, plan, topic, quix_version),
        (
            f"topic {topic} published before this run (--topic)"
            if held == plan.messages
            else f"published at {published.rate:,.0f} events/s (replay producer)"
        )
        + "; checks: totals of "
        f"every agency-day, distinct users on {users_scope}",
        "",
        format_table(rows),
        f"(other load: mean CPUs busy with other processes while the row ran, of "
        f"{os.cpu_count()}; rows are comparable only when it stays near 0)",
    ]
    ratios = format_ratios(ours, [m for m in rows if m.key not in ("2", "2s")])
    if ratios:
        report += ["", ratios]
    if served is not None and results.server is not None:
        report += ["", *format_server(served, results.server, ours)]
    for key, timeline in results.timelines.items():
        if len(results.timelines) > 1:
            report += ["", f"row {key}, {ROWS[key][1]}:"]
        else:
            report.append("")
        report += describe(timeline)
    print("\n".join(report))
    if args.json_out is not None:
        args.json_out.write_bytes(
            orjson.dumps(
                {"run_id": run_id, "messages": plan.messages, "days": days,
                 "partitions": args.partitions, "rows": [m.__dict__ for m in rows],
                 "server": asdict(results.server) if results.server is not None else None},
                option=orjson.OPT_INDENT_2,
            )
        )  # fmt: skip
    return 0 if all(m.ok or m.status == "NOT RUN" for m in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
