"""`python -m bench.month`: the recorded month end to end: publish, count, both at once.

Generates the month once under `var/bench-month/` (18M distinct events over 30 days with
2% duplicates, 1% late events, timestamps in several UTC offsets, unknown extra fields and
about 3% bad lines of every rejection class, 70 KiB ones included: bench/month_corpus.py),
then, on one broker, in one run:

1. kcat publishes the file to a fresh topic (librdkafka's own producer, no keys);
2. `metering replay` publishes it to another fresh topic;
3. the aiokafka read + orjson decode floor reads that topic;
4. `metering worker --until-idle` counts that topic into a local ClickHouse server of its
   own (infra/clickhouse/start), checked exactly against the corpus's expected totals;
5. `metering replay` and the worker run at once on a third topic (publish while counting),
   checked the same way.

    python -m bench.month [--messages 18000000] [--bootstrap 127.0.0.1:9092] [--partitions 6]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bench.month_corpus import Expected, month_corpus
from bench.reference import Reference, Verdict
from bench.replay import Contender, Row, _commit, _cpu_model, format_rows, run_row
from bench.rows import BenchRun, _ServerSampler, run_floor_aiokafka, run_pipeline_server
from bench.table import Measurement, ServerFigures, format_server, format_table
from bench.topic import create_topic, delete_topics_containing
from bench.worklog import WorkerTimeline, describe

__all__ = ["main"]

_REPO = Path(__file__).resolve().parent.parent


def _say(text: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` on this machine (the broker), if visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(proc.name)
        except OSError:
            continue
    return None


def _check_counters(timeline: WorkerTimeline | None, expected: Expected) -> Verdict:
    """The worker's own totals against the corpus: counted, duplicates, each rejection."""
    summary = timeline.summary if timeline is not None else None
    if not summary:
        return Verdict(False, "the worker logged no summary")
    got = (summary.get("counted"), summary.get("duplicates"), summary.get("rejected"))
    want = (expected.reference.messages, expected.duplicates, expected.rejected)
    if got != want:
        return Verdict(False, f"counted, duplicates, rejected {got} != expected {want}")
    return Verdict(True, f"counted {want[0]:,}, duplicates {want[1]:,}, rejected {want[2]}")


@dataclass
class _Worker:
    measured: Measurement
    timeline: WorkerTimeline | None
    server: ServerFigures | None
    counters: Verdict


def _worker(bench: BenchRun, expected: Expected) -> _Worker:
    measured, timeline, server = run_pipeline_server(bench)
    return _Worker(measured, timeline, server, _check_counters(timeline, expected))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.month", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=18_000_000, help="distinct events")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--corpus-dir", type=Path, default=_REPO / "var" / "bench-month")
    p.add_argument("--idle", type=float, default=3.0, help="the worker's --until-idle seconds")
    p.add_argument(
        "--processes",
        default=os.environ.get("METERING_WORKER_PROCESSES", "1"),
        help="the worker's writer processes (METERING_WORKER_PROCESSES; 'auto': one per core)",
    )
    p.add_argument(
        "--hosts",
        type=int,
        default=0,
        help="also count the topic with this many writers as hosts of their own "
        "(bench.hosts: own TMPDIR, lock dir and host name; one process each)",
    )
    p.add_argument("--timeout", type=float, help="seconds per step (default: from --messages)")
    p.add_argument("--work-dir", type=Path, help="stores and logs (default: a temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and topics")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _say(f"corpus of {args.messages:,} events under {args.corpus_dir} (generated once) ...")
    corpus = month_corpus(args.corpus_dir, args.messages, args.seed)
    expected = corpus.expected
    size_mb = corpus.path.stat().st_size / 1e6
    run_id = f"bench-month-{secrets.token_hex(4)}"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="govmeter-bench-month-"))
    work.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or 300 + args.messages / 1000
    port = int(args.bootstrap.split(",")[0].rsplit(":", 1)[1])
    broker_pid = _listener_pid(port)
    _say(f"{corpus.path}: {size_mb:,.1f} MB, {expected.lines:,} lines; run {run_id}")

    def publish(contender: Contender, topic: str, *, create: bool = True) -> Row:
        _say(f"{contender.name} -> {topic} ...")
        row = run_row(
            contender, corpus.path, None, expected.lines, args.bootstrap, topic,
            args.partitions, timeout, work / f"{topic}.log", create=create,
        )  # fmt: skip
        _say(f"{contender.name}: {row.status} in {row.seconds or 0:.1f} s ({row.detail})")
        return row

    def worker_bench(
        topic: str, reference: Reference, *, hosts: int = 1, **options: object
    ) -> BenchRun:
        # A directory per run: each worker row starts its own server on a store of its own.
        own = work / (topic if hosts <= 1 else f"{topic}-hosts-{hosts}")
        own.mkdir(parents=True, exist_ok=True)
        return BenchRun(
            bootstrap=args.bootstrap, topic=topic, partitions=args.partitions, work=own,
            repo=_REPO, reference=reference, idle_seconds=args.idle, timeout=timeout,
            flushed_messages=expected.lines,
            worker_env={"METERING_WORKER_PROCESSES": str(args.processes if hosts <= 1 else 1)},
            hosts=hosts,
            **options,  # type: ignore[arg-type]
        )  # fmt: skip

    replay_topic, both_topic = f"{run_id}-replay", f"{run_id}-both"
    began = time.time()
    sampler = _ServerSampler(broker_pid, period=0.5) if broker_pid is not None else None
    try:
        if sampler is not None:
            sampler.__enter__()
        kcat = publish(Contender("kcat", "kcat (librdkafka CLI, no keys)"), f"{run_id}-kcat")
        replay = publish(Contender("replay", "metering replay"), replay_topic)
        _say("aiokafka read + orjson floor ...")
        floor = run_floor_aiokafka(
            worker_bench(
                replay_topic, Reference(messages=expected.lines), floor_args=("--skip-invalid",)
            )
        )
        _say(f"floor: {floor.status} ({floor.detail}); worker alone ...")
        alone = _worker(worker_bench(replay_topic, expected.reference), expected)
        _say(f"worker alone: {alone.measured.status} ({alone.measured.detail})")
        as_hosts: _Worker | None = None
        if args.hosts > 1:
            _say(f"worker as {args.hosts} hosts ...")
            as_hosts = _worker(
                worker_bench(replay_topic, expected.reference, hosts=args.hosts), expected
            )
            _say(f"as hosts: {as_hosts.measured.status} ({as_hosts.measured.detail})")

        create_topic(args.bootstrap, both_topic, args.partitions)
        overlapped: list[Row] = []
        publisher = threading.Thread(
            target=lambda: overlapped.append(
                publish(Contender("replay", "metering replay, while counting"), both_topic,
                        create=False)
            ),
            name="replay-while-counting",
        )  # fmt: skip
        _say("replay and worker at once ...")
        both = _worker(
            worker_bench(both_topic, expected.reference, before_worker=publisher.start), expected
        )
        if publisher.ident is not None:  # not started when the server did not start
            publisher.join()
        _say(f"both: worker {both.measured.status} ({both.measured.detail})")
    finally:
        if sampler is not None:
            sampler.__exit__()
        if not args.keep:
            deleted = delete_topics_containing(args.bootstrap, run_id)
            _say(f"deleted {len(deleted)} topics; removing {work}")
            shutil.rmtree(work, ignore_errors=True)

    report = _report(args, corpus.path, size_mb, expected, began)
    report += ["", format_rows([kcat, replay, *overlapped], expected.lines), ""]
    processes = f", --processes {args.processes}" if args.processes != "1" else ""
    alone.measured = _named(alone.measured, f"worker alone (local server{processes})")
    both.measured = _named(both.measured, "worker while replay publishes")
    rows = [floor, alone.measured]
    runs = [("alone", alone)]
    if as_hosts is not None:
        as_hosts.measured = _named(as_hosts.measured, f"worker as {args.hosts} hosts")
        rows.append(as_hosts.measured)
        runs.append((f"as {args.hosts} hosts", as_hosts))
    rows.append(both.measured)
    runs.append(("while publishing", both))
    report += [format_table(rows), ""]
    for label, run in runs:
        if run.server is not None:
            report += format_server(run.measured, run.server)
        report.append(
            f"worker {label}: its own counters: {run.counters.label}: {run.counters.detail}"
        )
    report += ["", *_summary(kcat, replay, overlapped, floor, alone, both, expected, sampler)]
    for label, run in (("worker alone", alone), ("worker while publishing", both)):
        if run.timeline is not None:
            report += ["", f"{label}:", *describe(run.timeline)]
    print("\n".join(report))
    results = [kcat.status, replay.status, *(r.status for r in overlapped), floor.status]
    results += [alone.measured.status, both.measured.status]
    checks = alone.counters.ok and both.counters.ok
    if as_hosts is not None:
        results.append(as_hosts.measured.status)
        checks = checks and as_hosts.counters.ok
    return 0 if checks and all(s in ("OK", "NOT RUN") for s in results) else 1


def _named(m: Measurement, name: str) -> Measurement:
    return replace(m, name=name)


def _report(
    args: argparse.Namespace, path: Path, size_mb: float, expected: Expected, began: float
) -> list[str]:
    rejected = ", ".join(f"{k} {v:,}" for k, v in sorted(expected.rejected.items()))
    return [
        f"govmeter month bench, {datetime.fromtimestamp(began, UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit {_commit()}",
        f"corpus {path.name}: {expected.lines:,} lines, {size_mb:,.1f} MB: "
        f"{expected.reference.messages:,} distinct valid events, {expected.duplicates:,} "
        f"duplicates, rejected {expected.rejected_total:,} ({rejected})",
        f"broker {args.bootstrap}, {args.partitions} partitions; {os.cpu_count()} CPUs "
        f"({_cpu_model()}); other load: the CPUs busy with other processes (broker included)",
    ]


def _rate(lines: int, row: Row) -> float | None:
    return lines / row.seconds if row.status == "OK" and row.seconds else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _summary(
    kcat: Row,
    replay: Row,
    overlapped: list[Row],
    floor: Measurement,
    alone: _Worker,
    both: _Worker,
    expected: Expected,
    broker: _ServerSampler | None,
) -> list[str]:
    lines = expected.lines
    out = [
        f"replay alone vs kcat: {_ratio(_rate(lines, replay), _rate(lines, kcat))} "
        f"(messages/s, same file, same broker)",
        f"worker alone vs aiokafka read + orjson floor: "
        f"{_ratio(alone.measured.rate, floor.rate)} (events/s inside the processing window)",
    ]
    if overlapped and both.timeline is not None and both.timeline.flushes:
        record = overlapped[0].record
        if record is not None:
            end_to_end = both.timeline.flushes[-1].committed - record.spawned
            out.append(
                f"publish + count overlapped: {end_to_end:.1f} s from replay's start to the "
                f"last flush committed ({lines / end_to_end:,.0f} messages/s end to end)"
            )
    peaks = [
        f"replay {_mb(replay.record.max_rss_mb if replay.record else None)}",
        f"kcat {_mb(kcat.record.max_rss_mb if kcat.record else None)}",
        f"worker alone {_mb(alone.measured.max_rss_mb)}",
        f"worker while publishing {_mb(both.measured.max_rss_mb)}",
        f"ClickHouse server {_mb(alone.server.peak_rss_mb if alone.server else None)} / "
        f"{_mb(both.server.peak_rss_mb if both.server else None)}",
        f"Kafka broker {_mb(broker.peak_rss_mb if broker is not None else None)} (sampled)",
    ]
    out.append("peak RSS: " + ", ".join(peaks))
    return out


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


if __name__ == "__main__":
    raise SystemExit(main())
