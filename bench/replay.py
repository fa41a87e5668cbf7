"""`python -m bench.replay`: publish one JSONL file with kcat and with each Python client.

Generates the file once with `metering simulate` (or takes `--file`), then publishes the
same file with each contender, in its own process, one after the other, each to a fresh
topic with `--partitions` partitions on the same broker, and checks that the broker holds
exactly one message per non-empty line. Every Python contender reads the file with
`metering.replay.numbered_lines` and keys each line with `metering.replay.key_for`, waits
for acks=all and checks every delivery, so the rows differ by the Kafka client only. kcat
(librdkafka's command-line producer) sends the lines without keys.

    python -m bench.replay --messages 1000000 [--bootstrap 127.0.0.1:9092] [--partitions 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import orjson

from bench.runner import RunRecord, run_process
from bench.topic import create_topic, delete_topics_containing, topic_messages
from metering.replay import key_for, line_blocks, numbered_lines

__all__ = ["Contender", "Row", "format_rows", "main", "run_row"]

_REPO = Path(__file__).resolve().parent.parent
_MAX_REQUEST = 8 * 1024 * 1024


# ----------------------------------------------------------------- contenders (child side)


def _kafka_python(path: Path, topic: str, bootstrap: str, *, tuned: bool) -> int:
    from kafka import KafkaProducer

    if tuned:
        options: dict[str, object] = {
            "linger_ms": 50,
            "batch_size": 1024 * 1024,
            "max_in_flight_requests_per_connection": 5,
            "enable_idempotence": True,
        }
    else:  # metering replay before this bench: ordered, one request in flight
        options = {
            "linger_ms": 20,
            "batch_size": 512 * 1024,
            "max_in_flight_requests_per_connection": 1,
            "retries": 10,
        }
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks="all",
        max_request_size=_MAX_REQUEST,
        **options,
    )
    failures: list[BaseException] = []
    sent = 0
    for _, line in numbered_lines(path):
        producer.send(topic, value=line, key=key_for(line)).add_errback(failures.append)
        sent += 1
    producer.flush()
    producer.close()
    if failures:
        raise SystemExit(f"{len(failures)} messages failed: {failures[0]!r}")
    return sent


async def _aiokafka_batches(path: Path, topic: str, bootstrap: str) -> int:
    """One BatchBuilder per partition, `send_batch` when full: no per-message future."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import murmur2

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_batch_size=1024 * 1024,
        max_request_size=_MAX_REQUEST,
        linger_ms=20,
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        batches = {p: producer.create_batch() for p in partitions}
        of_key: dict[bytes, int] = {}  # murmur2 is pure Python: once per distinct key
        pending = []
        sent = 0
        for _, line in numbered_lines(path):
            key = key_for(line)
            if key is None:
                partition = random.choice(partitions)
            else:
                found = of_key.get(key)
                if found is None:
                    index = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
                    found = of_key[key] = partitions[index]
                partition = found
            batch = batches[partition]
            if batch.append(key=key, value=line, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=line, timestamp=None) is None:
                    raise SystemExit(f"a line of {len(line)} bytes does not fit in a batch")
            sent += 1
        for partition, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)  # raises the first failed batch's error
        return sent
    finally:
        await producer.stop()


def _confluent_floor(path: Path, topic: str, bootstrap: str) -> int:
    """librdkafka without delivery reports: `flush` waits for the acks, nothing checks them."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 200_000,
        }
    )
    produce = producer.produce
    sent = 0
    for block in line_blocks(path):
        for line in block:
            if not line:
                continue
            key = key_for(line)
            while True:
                try:
                    produce(topic, line, key)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
        producer.poll(0)
    while producer.flush(1.0):
        pass
    return sent


_CHILD: dict[str, Callable[[Path, str, str], int]] = {
    "kafka-python": lambda p, t, b: _kafka_python(p, t, b, tuned=False),
    "kafka-python-tuned": lambda p, t, b: _kafka_python(p, t, b, tuned=True),
    "aiokafka": lambda p, t, b: asyncio.run(_aiokafka_batches(p, t, b)),
    "confluent": _confluent_floor,
}


# ----------------------------------------------------------------- rows (parent side)


@dataclass(frozen=True)
class Contender:
    key: str  # a child contender's name, "kcat", or "replay"
    name: str
    compression: str = "none"  # the codec of kcat and metering replay rows


CONTENDERS = (  # kcat and metering replay first: the ratio compares neighbours in time
    Contender("kcat", "kcat (librdkafka CLI, no keys)"),
    Contender("replay", "metering replay"),
    Contender("confluent", "confluent-kafka, no delivery reports"),
    Contender("aiokafka", "aiokafka create_batch/send_batch"),
    Contender("kafka-python-tuned", "kafka-python tuned (5 in flight, idempotent)"),
    Contender("kafka-python", "kafka-python, previous replay settings"),
)


@dataclass(frozen=True)
class Row:
    contender: Contender
    status: str  # OK, INVALID, FAILED, NOT RUN
    detail: str
    record: RunRecord | None = None

    @property
    def seconds(self) -> float | None:
        return self.record.exited - self.record.spawned if self.record else None


def _argv(key: str, path: Path, topic: str, bootstrap: str, compression: str) -> list[str]:
    if key == "kcat":
        codec = [] if compression == "none" else ["-z", compression]
        return [
            "kcat",
            "-P",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-l",
            str(path),
            "-X",
            "acks=all",
            *codec,
        ]
    if key == "replay":  # the topic and codec come from the environment, as for a user
        return [sys.executable, "-m", "metering.cli", "replay", str(path)]
    return [
        sys.executable,
        "-m",
        "bench.replay",
        "--contender",
        key,
        "--file",
        str(path),
        "--topic",
        topic,
        "--bootstrap",
        bootstrap,
    ]


def run_row(
    contender: Contender,
    corpus: Path,
    plain: Path | None,
    expected: int,
    bootstrap: str,
    topic: str,
    partitions: int,
    timeout: float,
    log_path: Path,
    *,
    create: bool = True,
) -> Row:
    """Publish the file with one contender to `topic` (created first unless `create` is
    false) and check the topic then holds `expected` messages."""
    if contender.key == "kcat" and shutil.which("kcat") is None:
        return Row(contender, "NOT RUN", "kcat is not installed (apt-get install kcat)")
    path = plain if contender.key == "kcat" and plain is not None else corpus
    if create:
        create_topic(bootstrap, topic, partitions)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "METERING_EVENTS_TOPIC": topic,
        "METERING_DLQ_TOPIC": f"{topic}.dlq",
        "METERING_TOPIC_PARTITIONS": str(partitions),
        "METERING_REPLAY_COMPRESSION": contender.compression,
    }
    record = run_process(
        _argv(contender.key, path, topic, bootstrap, contender.compression),
        env=env,
        cwd=_REPO,
        timeout=timeout,
        log_path=log_path,
    )
    if record.returncode != 0:
        return Row(contender, "FAILED", record.failure(), record)
    held = topic_messages(bootstrap, topic)
    if held != expected:
        return Row(contender, "INVALID", f"the topic holds {held} messages, not {expected}", record)
    return Row(contender, "OK", f"{held:,} messages on the topic", record)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_rows(rows: Sequence[Row], messages: int) -> str:
    """A Markdown table: rate and CPU of each row, and its rate against kcat's.

    A row is compared with the kcat row of its codec (uncompressed rows with plain kcat).
    """
    kcat_rates = {
        r.contender.compression: messages / r.seconds
        for r in rows
        if r.contender.key == "kcat" and r.status == "OK" and r.seconds
    }
    header = (
        "contender",
        "codec",
        "result",
        "wall s",
        "messages/s",
        "CPU s",
        "vs kcat",
        "other load",
    )
    body = []
    for row in rows:
        ok = row.status == "OK" and row.record is not None and row.seconds
        rate = messages / row.seconds if ok and row.seconds else None
        record = row.record
        kcat_rate = kcat_rates.get(row.contender.compression)
        body.append(
            (
                row.contender.name,
                row.contender.compression,
                row.status,
                _num(row.seconds) if ok else "-",
                _num(rate, 0),
                _num(record.cpu_seconds, 2) if ok and record is not None else "-",
                f"{rate / kcat_rate:.2f}x" if rate and kcat_rate else "-",
                _num(record.other_cores, 2) if record is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in body]
    out.append("")
    out += [f"{r.contender.name}: {r.status}: {r.detail}" for r in rows]
    return "\n".join(out)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _kcat_version() -> str:
    if shutil.which("kcat") is None:
        return "not installed"
    done = subprocess.run(["kcat", "-V"], capture_output=True, text=True, check=False)
    for text in done.stdout.splitlines():
        if text.startswith("Version"):
            return text.split(" (", 1)[0].removeprefix("Version ")
    return "?"


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=_REPO,
        capture_output=True,
        text=True,
    )
    return (done.stdout.strip() or "unknown") + (" + changes" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _say(text: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--messages", type=int, default=1_000_000, help="events to simulate")
    source.add_argument("--file", type=Path, help="publish this JSONL(.gz) file instead")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--only",
        default=",".join(c.key for c in CONTENDERS),
        help="comma-separated subset of: " + ", ".join(c.key for c in CONTENDERS),
    )
    parser.add_argument(
        "--compression",
        default="none",
        choices=("none", "gzip", "snappy", "lz4", "zstd"),
        help="codec of the kcat and metering replay rows",
    )
    parser.add_argument(
        "--also-codecs",
        default="",
        help="extra kcat and metering replay rows, one pair per codec, e.g. lz4,zstd",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per contender, seconds")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and topics")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--contender", choices=sorted(_CHILD), help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    return parser


def _child(args: argparse.Namespace) -> int:
    sent = _CHILD[args.contender](args.file, args.topic, args.bootstrap)
    print(orjson.dumps({"msg": "published", "sent": sent}).decode(), file=sys.stderr)
    return 0


def _corpus(args: argparse.Namespace, work: Path) -> Path:
    if args.file is not None:
        return Path(args.file)
    path = work / f"corpus-{args.messages}.jsonl"
    _say(f"generating {args.messages:,} events with metering simulate -> {path}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "metering.cli",
            "simulate",
            "--messages",
            str(args.messages),
            "--out",
            str(path),
        ],
        cwd=_REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.contender is not None:
        return _child(args)
    wanted = [
        replace(c, compression=args.compression) if c.key in ("kcat", "replay") else c
        for c in CONTENDERS
        if c.key in set(args.only.split(","))
    ]
    for codec in filter(None, args.also_codecs.split(",")):  # kcat, then replay, per codec
        wanted.append(Contender("kcat", f"kcat -z {codec}", codec))
        wanted.append(Contender("replay", f"metering replay --compression {codec}", codec))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="govmeter-bench-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    run_id = f"bench-replay-{secrets.token_hex(4)}"
    rows: list[Row] = []
    try:
        corpus = _corpus(args, work)
        expected = sum(1 for _ in numbered_lines(corpus))
        plain = None
        if corpus.suffix == ".gz" and any(c.key == "kcat" for c in wanted):
            plain = work / corpus.stem  # kcat reads plain files only
            plain.write_bytes(b"".join(line + b"\n" for _, line in numbered_lines(corpus)))
        size_mb = corpus.stat().st_size / 1e6
        _say(f"{corpus}: {size_mb:,.1f} MB, {expected:,} messages; run id {run_id}")
        for number, contender in enumerate(wanted, 1):
            _say(f"running {contender.name}")
            row = run_row(
                contender,
                corpus,
                plain,
                expected,
                args.bootstrap,
                f"{run_id}-{number}-{contender.key}",
                args.partitions,
                args.timeout,
                work / f"{number}-{contender.key}.log",
            )
            rows.append(row)
            _say(f"{contender.name}: {row.status} in {_num(row.seconds)} s")
    finally:
        if not args.keep:
            deleted = delete_topics_containing(args.bootstrap, run_id)
            _say(f"deleted {len(deleted)} topics")
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
    print(
        f"replay, {expected:,} messages, {size_mb:,.1f} MB ({corpus.name}), {args.partitions} "
        f"partitions, broker {args.bootstrap}, {os.cpu_count()} CPUs ({_cpu_model()}), "
        f"commit {_commit()}\n"
        f"kcat {_kcat_version()}, kafka-python {_version('kafka-python')}, aiokafka "
        f"{_version('aiokafka')}, confluent-kafka {_version('confluent-kafka')}\n"
    )
    print(format_rows(rows, expected))
    if args.json_out is not None:
        args.json_out.write_bytes(
            orjson.dumps(
                [
                    {
                        "key": r.contender.key,
                        "name": r.contender.name,
                        "codec": r.contender.compression,
                        "status": r.status,
                        "detail": r.detail,
                        "messages": expected,
                        "seconds": r.seconds,
                        "cpu_seconds": r.record.cpu_seconds if r.record else None,
                        "other_cores": r.record.other_cores if r.record else None,
                    }
                    for r in rows
                ],
                option=orjson.OPT_INDENT_2,
            )
        )
    return 0 if all(r.status in ("OK", "NOT RUN") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
