"""`metering replay PATH...`: publish every non-empty line of JSONL(.gz) files, byte for byte.

A line is the bytes between newlines, without the `\\n` (and a `\\r` before it). Invalid
lines are published too: classifying them is the pipeline's job. The key is the
agency_id where the line is a JSON object with a string agency_id; other lines have no
key. Keys go to partitions as with the Java client and kafka-python (murmur2); lines
without a key go to a random partition.

Reading and publishing are separate: `line_blocks` reads a file a megabyte at a time and
`Publisher` sends the lines through librdkafka (confluent-kafka) with acks=all and an
idempotent producer (retries neither reorder nor duplicate). `Publisher.finish` returns
once the broker acknowledged every message, or raises a `ReplayError` naming the file and
line of the messages it refused (found by reading the files again, so the fast path
keeps no per-message bookkeeping).
"""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Final, Literal

import msgspec
import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from metering.kafka_config import bootstrap_servers
from metering.progress import Progress
from metering.settings import Settings
from schemas.errors import ServiceError

__all__ = [
    "CODECS",
    "Publisher",
    "ReplayError",
    "key_for",
    "librdkafka_options",
    "line_blocks",
    "numbered_lines",
    "publish_lines",
    "read_lines",
    "replay",
]

log = logging.getLogger("govmeter.replay")

Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
CODECS: Final[tuple[Compression, ...]] = ("none", "gzip", "snappy", "lz4", "zstd")

_BLOCK: Final = 1 << 16  # bytes read at a time
_KEPT_FAILURES: Final = 1000  # refused messages remembered to name their lines
_NAMED_FAILURES: Final = 5  # refused messages named in the error
_MAX_BATCH_BYTES: Final = 1_000_000  # librdkafka's batch.size default
_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024  # larger lines are refused before sending


class ReplayError(ServiceError):
    pass


# --------------------------------------------------------------------------- reading


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _missing(path: Path) -> ReplayError:
    return ReplayError(f"{path}: no such file; give JSONL or JSONL.gz files to replay")


def line_blocks(path: Path) -> Iterator[list[bytes]]:
    """The file's lines, a block at a time, without `\n` or a `\r` before it.

    Empty lines are kept (each block holds every line it covers), so positions are line
    numbers; the publisher skips them. Blocks are small enough to stay in the CPU's cache
    while the publisher works through them.
    """
    if not path.is_file():
        raise _missing(path)
    with _open(path) as handle:
        pending: list[bytes] = []  # the start of a line that goes on in the next block
        while block := handle.read(_BLOCK):
            lines = block.split(b"\n")
            if len(lines) == 1:
                pending.append(block)
                continue
            if pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
            last = lines.pop()
            pending = [last] if last else []
            if b"\r" in block:
                lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
            elif lines[0].endswith(b"\r"):  # from the previous block
                lines[0] = lines[0][:-1]
            yield lines
        if pending:
            rest = b"".join(pending)
            yield [rest[:-1] if rest.endswith(b"\r") else rest]


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-empty line; every line counts, from 1."""
    number = 0
    for block in line_blocks(path):
        for line in block:
            number += 1
            if line:
                yield number, line


def read_lines(path: Path) -> Iterator[bytes]:
    for block in line_blocks(path):
        yield from filter(None, block)


class _Key(msgspec.Struct, gc=False):
    agency_id: str | None = None


_decode_key = msgspec.json.Decoder(_Key).decode


def key_for(line: bytes) -> bytes | None:
    """agency_id as UTF-8 where the line is a JSON object with a string agency_id."""
    key = _key_text(line)
    return None if key is None else key.encode()


def _key_text(line: bytes) -> str | None:
    """The key as text (the producer encodes it as UTF-8, as `key_for` does).

    msgspec reads only that field (a third of the cost of decoding the whole line with
    orjson). It reads ASCII lines only: it does not check the UTF-8 of the fields it
    skips. Any other line, and any line msgspec refuses, is decided by orjson, so both
    agree on every line except one holding a number beyond the float range (1e999):
    orjson refuses those, msgspec keys them (tests/unit/test_replay_keys.py).
    """
    if line.isascii():
        try:
            return _decode_key(line).agency_id
        except (msgspec.DecodeError, RecursionError):
            pass
    return _parsed_key(line)


def _parsed_key(line: bytes) -> str | None:
    """The key by orjson's full decode: for lines msgspec does not decide."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict):
        value = document.get("agency_id")
        if isinstance(value, str):
            return value
    return None


# --------------------------------------------------------------------------- publishing


def librdkafka_options(settings: Settings) -> dict[str, str]:
    """Connection settings (bootstrap, TLS, SASL) in librdkafka's names."""
    options = {
        "bootstrap.servers": ",".join(bootstrap_servers(settings)),
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options["sasl.mechanism"] = str(settings.kafka_sasl_mechanism)
        options["sasl.username"] = str(settings.kafka_sasl_username)
        options["sasl.password"] = password.get_secret_value() if password is not None else ""
    for name, value in (
        ("ssl.ca.location", settings.kafka_ssl_cafile),
        ("ssl.certificate.location", settings.kafka_ssl_certfile),
        ("ssl.key.location", settings.kafka_ssl_keyfile),
    ):
        if value:
            options[name] = value
    return options


def _describe_topic(settings: Settings, topic: str) -> tuple[bool, int | None]:
    """Whether the topic exists, and its max.message.bytes (largest record batch it takes).

    The limit is None when the broker does not say (e.g. no permission to describe).
    """
    admin = AdminClient(dict(librdkafka_options(settings)), logger=log)
    resource = ConfigResource("topic", topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
        return True, int(configs["max.message.bytes"].value)
    except KafkaException as error:
        code = error.args[0].code() if isinstance(error.args[0], KafkaError) else None
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False, None
        if code in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            raise ReplayError(
                f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}: no broker "
                f"answered ({_describe(error.args[0])}). Start one with infra/kafka/start, "
                "or point the variable at your cluster."
            ) from None
        log.info("topic limit unknown", extra={"topic": topic, "reason": str(error)})
        return True, None
    except (KeyError, ValueError, TypeError) as error:
        log.info("topic limit unknown", extra={"topic": topic, "reason": str(error)})
        return True, None


@dataclass(frozen=True)
class _Failure:
    value: bytes
    error: str


class Publisher:
    """Lines to the events topic, keyed by agency_id; `finish` waits for every ack."""

    def __init__(
        self,
        settings: Settings,
        compression: Compression | None = None,
        create_topics: Callable[[Settings], None] | None = None,
    ) -> None:
        """`create_topics` is called when the events topic does not exist."""
        self.topic = settings.events_topic
        self.queued = 0  # handed to the producer
        self._refused_by_broker = 0
        self._refused_before_sending = 0
        self._kept: list[_Failure] = []  # the first refused, to name their lines
        self._paths: list[Path] = []
        # A batch never exceeds what the topic takes, so the broker refuses only a message
        # that is too large itself (alone in its batch), never its neighbours.
        exists, limit = _describe_topic(settings, self.topic)
        if not exists and create_topics is not None:
            create_topics(settings)
            exists, limit = _describe_topic(settings, self.topic)
        self._topic_limit = limit
        batch_bytes = _MAX_BATCH_BYTES if limit is None else max(min(limit, _MAX_BATCH_BYTES), 1)
        try:
            self._producer = self._new_producer(settings, compression, batch_bytes)
        except KafkaException as error:
            raise ReplayError(f"Kafka producer: {_describe(error.args[0])}") from None

    @staticmethod
    def _new_producer(
        settings: Settings, compression: Compression | None, batch_bytes: int
    ) -> Producer:
        return Producer(
            {
                **librdkafka_options(settings),
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",  # the Java client's key -> partition
                "compression.type": compression or settings.replay_compression,
                "linger.ms": 20,
                "batch.size": batch_bytes,
                "batch.num.messages": 100_000,
                "message.max.bytes": _MAX_MESSAGE_BYTES,
                "queue.buffering.max.messages": 200_000,
                "message.timeout.ms": 120_000,
                "delivery.report.only.error": True,  # `_refused` runs for failures only
            },
            logger=log,
        )

    def publish_file(self, path: Path, progress: Progress | None = None) -> int:
        if not path.is_file():
            raise _missing(path)
        self._paths.append(path)
        return self._send(line_blocks(path), progress)

    def publish(self, lines: Iterable[bytes], progress: Progress | None = None) -> int:
        """Lines from anywhere (e.g. the simulator): errors cannot name their line."""
        iterator = iter(lines)
        return self._send(iter(lambda: list(islice(iterator, 4096)), []), progress)

    def _send(self, blocks: Iterable[list[bytes]], progress: Progress | None) -> int:
        # The per-line work of `_key_text` is inlined: a Python call per line costs about
        # as much as the rest of the loop (bench/README.md, replay profile).
        producer = self._producer
        produce = producer.produce
        decode = _decode_key
        refused = self._refused
        topic = self.topic
        queued = 0
        for block in blocks:
            skipped = 0
            for line in block:
                if line.isascii():
                    try:
                        key = decode(line).agency_id
                    except (msgspec.DecodeError, RecursionError):
                        if not line:  # an empty line is no message
                            skipped += 1
                            continue
                        key = _parsed_key(line)
                else:
                    key = _parsed_key(line)
                try:
                    produce(topic, line, key, -1, refused)
                except BufferError:  # the queue is full: serve acks until there is room
                    self._produce_when_room(line, key)
                except KafkaException as error:  # refused before sending (too large)
                    self._refused_before_sending += 1
                    self._remember(line, error.args[0])
                    skipped += 1
            producer.poll(0)
            queued += len(block) - skipped
            if progress is not None:
                progress.advance(len(block) - skipped)
        self.queued += queued
        return queued

    def _produce_when_room(self, line: bytes, key: str | None) -> None:
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(self.topic, line, key, -1, self._refused)
                return
            except BufferError:
                continue

    def _refused(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._refused_by_broker += 1
            self._remember(message.value() or b"", error)

    def _remember(self, value: bytes | str, error: object) -> None:
        if len(self._kept) < _KEPT_FAILURES:
            if isinstance(value, str):
                value = value.encode()
            self._kept.append(_Failure(value, _describe(error)))

    def finish(self) -> int:
        """Wait until the broker acknowledged or refused every message; raise if any refused.

        Returns the number of messages acknowledged.
        """
        while self._producer.flush(1.0):
            pass
        failed = self._refused_by_broker + self._refused_before_sending
        if not failed:
            return self.queued
        named = [f"  {where}: {error}" for where, error in self._locate()[:_NAMED_FAILURES]]
        if failed > len(named):
            named.append(f"  and {failed - len(named)} more")
        limit = ""
        if any("MSG_SIZE_TOO_LARGE" in f.error for f in self._kept):
            took = "?" if self._topic_limit is None else f"{self._topic_limit:,}"
            limit = (
                f"{self.topic} takes record batches of at most {took} bytes "
                f"(max.message.bytes); replay sends lines of at most {_MAX_MESSAGE_BYTES:,}.\n"
            )
        raise ReplayError(
            f"{failed} of {self.queued + self._refused_before_sending} messages were not "
            "acknowledged by the broker:\n"
            + "\n".join(named)
            + "\n"
            + limit
            + f"The others are on "
            f"{self.topic}; replaying the same files again after fixing the cause counts "
            "nothing twice (the pipeline drops duplicate event_ids)."
        )

    def _locate(self) -> list[tuple[str, str]]:
        """(file and line, error) of the remembered failures, in file order."""
        errors: dict[bytes, list[str]] = {}
        for failure in self._kept:
            errors.setdefault(failure.value, []).append(failure.error)
        refusals = {value: len(refused) for value, refused in errors.items()}
        left = dict(refusals)
        seen: Counter[bytes] = Counter()
        found: list[tuple[str, bytes]] = []
        for path in self._paths:
            for number, line in numbered_lines(path):
                if line in errors:
                    seen[line] += 1
                    if left[line]:
                        left[line] -= 1
                        found.append((f"{path}, line {number} ({len(line):,} bytes)", line))
        for value, count in left.items():  # not from a file (`publish`)
            found += [(f"a message of {len(value):,} bytes", value)] * count
        named = []
        for where, value in found:
            # Equal lines are equal messages: which of them was refused is not known.
            same = seen[value] > refusals[value]
            suffix = " (or another line with the same bytes)" if same else ""
            named.append((where + suffix, errors[value].pop()))
        return named


def _describe(error: object) -> str:
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)


def replay(
    settings: Settings,
    paths: list[Path],
    progress: Progress | None = None,
    create_topics: Callable[[Settings], None] | None = None,
) -> int:
    """Publish the files in order; return the number of messages acknowledged.

    `create_topics` runs first when the events topic does not exist yet.
    """
    for path in paths:
        if not path.is_file():
            raise _missing(path)
    publisher = Publisher(settings, create_topics=create_topics)
    for path in paths:
        publisher.publish_file(path, progress)
    return publisher.finish()


def publish_lines(
    settings: Settings, lines: Iterable[bytes], progress: Progress | None = None
) -> int:
    """Send each line to the events topic, keyed by agency_id; wait for every ack."""
    publisher = Publisher(settings)
    publisher.publish(lines, progress)
    return publisher.finish()
