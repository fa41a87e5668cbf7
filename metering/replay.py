"""`metering replay PATH...`: publish every non-empty line of JSONL(.gz) files, byte for byte.

A line is the bytes between newlines, without the `\n` (and a `\r` before it). Invalid
lines are published too: classifying them is the pipeline's job. The key is the
agency_id where the line parses as an object with a string agency_id.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson
from kafka import KafkaProducer

from metering.kafka_config import kafka_python_options
from metering.progress import Progress
from metering.settings import Settings

__all__ = ["ReplayError", "key_for", "publish_lines", "read_lines", "replay"]


class ReplayError(RuntimeError):
    pass


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_lines(path: Path) -> Iterator[bytes]:
    if not path.is_file():
        raise ReplayError(f"{path}: no such file; give JSONL or JSONL.gz files to replay")
    with _open(path) as handle:
        for raw in handle:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                yield line


def key_for(line: bytes) -> bytes | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict):
        agency = document.get("agency_id")
        if isinstance(agency, str):
            return agency.encode("utf-8")
    return None


def replay(settings: Settings, paths: list[Path], progress: Progress | None = None) -> int:
    for path in paths:
        if not path.is_file():
            raise ReplayError(f"{path}: no such file; give JSONL or JSONL.gz files to replay")
    return publish_lines(settings, (line for path in paths for line in read_lines(path)), progress)


def publish_lines(
    settings: Settings, lines: Iterable[bytes], progress: Progress | None = None
) -> int:
    """Send each line to the events topic, keyed by agency_id; wait for every ack."""
    producer = KafkaProducer(
        **kafka_python_options(settings),
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        max_in_flight_requests_per_connection=1,
        retries=10,
    )
    sent = 0
    failures: list[BaseException] = []

    def failed(error: BaseException) -> None:
        failures.append(error)

    try:
        for line in lines:
            producer.send(settings.events_topic, value=line, key=key_for(line)).add_errback(failed)
            sent += 1
            if progress is not None:
                progress.advance()
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise ReplayError(
            f"{len(failures)} of {sent} messages were not acknowledged by the broker "
            f"(first error: {type(failures[0]).__name__}: {failures[0]}); publish again: "
            "the pipeline drops the duplicates by event_id"
        )
    return sent
