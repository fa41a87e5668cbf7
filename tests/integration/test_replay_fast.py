"""`metering replay` against a real broker: bytes, keys, partitions, codecs and refusals.

Every test publishes to topics of its own (deleted at the end) and reads them back with
kafka-python, the client the rest of the project's tools use.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner.default import murmur2

from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration

PARTITIONS = 6

# (line bytes as written, the key replay must give it); blank lines are not messages.
PLAIN_LINES: list[tuple[bytes, bytes | None]] = [
    (b'{"agency_id":"fed-0001-defense","tokens_in":3}', b"fed-0001-defense"),
    (b'{"agency_id": "state-ca-0002", "x": [1, {"y": null}]}', b"state-ca-0002"),
    (b'{"agency_id":"D\xc3\xa9pt-9"}', "Dépt-9".encode()),
    (b'{"agency_id":"fed-0001-defense","tokens_in":4}', b"fed-0001-defense"),
    (b'{"agency_id":12}', None),
    (b'{"tenant":"chatgpt-gov"}', None),
    (b'[{"agency_id":"fed-0001-defense"}]', None),
    (b'"fed-0001-defense"', None),
    (b"42", None),
    (b'{"agency_id":"fed-0001-defense"', None),
    (b"not json \xff\xfe\x00 bytes", None),
    (b'{"agency_id":"dept-\xff"}', None),
    (b"  padded  ", None),
    (b"inner\rcarriage", None),
]
GZIP_LINES: list[tuple[bytes, bytes | None]] = [
    (b'{"agency_id":"local-tx-0003","n":1}', b"local-tx-0003"),
    (b"{broken", None),
    (b'{"agency_id":"local-tx-0003","n":2}', b"local-tx-0003"),
]


def _plain_file(path: Path) -> Path:
    body = b""
    for i, (line, _) in enumerate(PLAIN_LINES):
        body += line + (b"\r\n" if i % 3 == 0 else b"\n")
        if i % 4 == 1:
            body += b"\n\r\n"  # blank lines: not published
    path.write_bytes(body.rstrip(b"\n"))  # the last line has no newline
    return path


def _gzip_file(path: Path) -> Path:
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line, _ in GZIP_LINES)))
    return path


@pytest.fixture
def topics(kafka_env: dict[str, str]) -> Iterator[list[str]]:
    """Names handed out by `_new_topic`; deleted when the test ends."""
    names: list[str] = []
    yield names
    admin = KafkaAdminClient(bootstrap_servers=kafka_env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        existing = set(admin.list_topics())
        gone = [n for n in names if n in existing]
        if gone:
            admin.delete_topics(gone, timeout_ms=30_000)
    finally:
        admin.close()


def _new_topic(
    kafka_env: dict[str, str], topics: list[str], configs: dict[str, str] | None = None
) -> str:
    name = f"replay-fast-{uuid.uuid4().hex[:10]}"
    topics += [name, f"{name}.dlq"]
    admin = KafkaAdminClient(bootstrap_servers=kafka_env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        admin.create_topics(
            [NewTopic(name, PARTITIONS, 1, topic_configs=configs or {})], timeout_ms=30_000
        )
    finally:
        admin.close()
    return name


def _replay(
    kafka_env: dict[str, str], topic: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metering.cli", "replay", *args],
        env={
            **os.environ,
            **kafka_env,
            "METERING_EVENTS_TOPIC": topic,
            "METERING_DLQ_TOPIC": f"{topic}.dlq",
            "METERING_TOPIC_PARTITIONS": str(PARTITIONS),
            **(env or {}),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _read_back(
    kafka_env: dict[str, str], topic: str
) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """(value, key) of every message, per partition, in offset order."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_env["KAFKA_BOOTSTRAP_SERVERS"].split(","),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for tp, records in consumer.poll(timeout_ms=2000).items():
                out[tp.partition] += [(r.value, r.key) for r in records]
        return out
    finally:
        consumer.close()


def _topic_bytes(kafka_env: dict[str, str], topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=kafka_env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        described = admin.describe_log_dirs([topic])
    finally:
        admin.close()
    return sum(
        int(partition["partition_size"])
        for broker in described
        for log_dir in broker["log_dirs"]
        for entry in log_dir["topics"]
        if entry["name"] == topic
        for partition in entry["partitions"]
    )


def _named(stderr: str, where: str) -> list[str]:
    return [line for line in stderr.splitlines() if where in line]


def test_bytes_keys_and_partitions_round_trip(
    kafka_env: dict[str, str], topics: list[str], tmp_path: Path
) -> None:
    topic = _new_topic(kafka_env, topics)
    plain, packed = _plain_file(tmp_path / "a.jsonl"), _gzip_file(tmp_path / "b.jsonl.gz")

    result = _replay(kafka_env, topic, str(plain), str(packed))

    assert result.returncode == 0, result.stderr
    expected = PLAIN_LINES + GZIP_LINES
    assert f"published {len(expected)} messages to {topic}" in result.stdout
    back = _read_back(kafka_env, topic)
    everything = [message for messages in back.values() for message in messages]
    assert sorted(everything, key=repr) == sorted(expected, key=repr)
    for partition, messages in back.items():
        for _, key in messages:
            if key is not None:  # the Java client's and kafka-python's partition of the key
                assert partition == (murmur2(key) & 0x7FFFFFFF) % PARTITIONS, (key, partition)
        # Messages of one partition keep the order of the files.
        order = [expected.index((value, key)) for value, key in messages]
        assert order == sorted(order)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_codec_is_readable_by_kafka_python(
    kafka_env: dict[str, str], topics: list[str], tmp_path: Path, codec: str
) -> None:
    lines = [
        orjson.dumps(
            {"agency_id": f"fed-{i % 7:04d}-office", "tokens_in": i, "model": "gpt-4o" * 4}
        )
        for i in range(3000)
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    flag_topic = _new_topic(kafka_env, topics)
    env_topic = _new_topic(kafka_env, topics)

    by_flag = _replay(kafka_env, flag_topic, "--compression", codec, str(path))
    by_env = _replay(kafka_env, env_topic, str(path), env={"METERING_REPLAY_COMPRESSION": codec})

    for result, topic in ((by_flag, flag_topic), (by_env, env_topic)):
        assert result.returncode == 0, result.stderr
        back = _read_back(kafka_env, topic)
        assert sorted(v for messages in back.values() for v, _ in messages) == sorted(lines)
        size = _topic_bytes(kafka_env, topic)
        raw = sum(map(len, lines))
        if codec == "none":
            assert size > raw
        else:  # the batches on the broker are compressed (these lines compress well)
            assert size < raw / 2, (codec, size, raw)


def test_a_refused_message_is_named_by_file_and_line(
    kafka_env: dict[str, str], topics: list[str], tmp_path: Path
) -> None:
    topic = _new_topic(kafka_env, topics, {"max.message.bytes": "4000"})
    small = [b'{"agency_id":"fed-0001-defense","n":%d}' % i for i in range(200)]
    large = b'{"agency_id":"fed-0002-state","pad":"' + b"x" * 6000 + b'"}'
    lines = [*small[:50], large, *small[50:120], b"", *small[120:]]  # line 51; 122 is blank
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = _replay(kafka_env, topic, str(path))

    assert result.returncode == 1
    assert _named(result.stderr, f"{path}, line 51 ") == [
        f"  {path}, line 51 ({len(large):,} bytes): "
        "MSG_SIZE_TOO_LARGE: Broker: Message size too large"
    ], result.stderr
    assert "1 of 201 messages were not acknowledged" in result.stderr
    assert f"{topic} takes record batches of at most 4,000 bytes" in result.stderr
    assert "published" not in result.stdout
    # The broker took every other message (a batch never mixes them with the large one).
    back = _read_back(kafka_env, topic)
    assert sorted(v for messages in back.values() for v, _ in messages) == sorted(small)


def test_a_line_too_large_to_send_is_named_too(
    kafka_env: dict[str, str], topics: list[str], tmp_path: Path
) -> None:
    topic = _new_topic(kafka_env, topics)
    huge = b'{"agency_id":"fed-0003-huge","pad":"' + b"y" * (9 * 1024 * 1024) + b'"}'
    path = tmp_path / "huge.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"agency_id":"a"}\n' + huge + b'\n{"agency_id":"b"}\n'))

    result = _replay(kafka_env, topic, str(path))

    assert result.returncode == 1
    named = _named(result.stderr, f"{path}, line 2 ")
    assert len(named) == 1 and "MSG_SIZE_TOO_LARGE" in named[0], result.stderr
    assert "1 of 3 messages were not acknowledged" in result.stderr
    back = _read_back(kafka_env, topic)
    assert sorted(v for messages in back.values() for v, _ in messages) == [
        b'{"agency_id":"a"}',
        b'{"agency_id":"b"}',
    ]


def test_simulate_to_kafka_publishes_through_the_same_producer(
    kafka_env: dict[str, str], topics: list[str]
) -> None:
    topic = _new_topic(kafka_env, topics)
    result = subprocess.run(
        [sys.executable, "-m", "metering.cli", "simulate", "--messages", "2000", "--to-kafka"],
        env={
            **os.environ,
            **kafka_env,
            "METERING_EVENTS_TOPIC": topic,
            "METERING_DLQ_TOPIC": f"{topic}.dlq",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    back = _read_back(kafka_env, topic)
    messages = [m for ms in back.values() for m in ms]
    assert len(messages) == 2000
    assert all(key == orjson.loads(value)["agency_id"].encode() for value, key in messages)


def test_a_missing_events_topic_is_created_with_the_configured_partitions(
    kafka_env: dict[str, str], topics: list[str], tmp_path: Path
) -> None:
    topic = f"replay-fast-new-{uuid.uuid4().hex[:10]}"
    topics += [topic, f"{topic}.dlq"]
    path = _gzip_file(tmp_path / "b.jsonl.gz")

    result = _replay(kafka_env, topic, str(path))

    assert result.returncode == 0, result.stderr
    back = _read_back(kafka_env, topic)  # reads partitions 0-5: all of them exist
    assert sorted((m for ms in back.values() for m in ms), key=repr) == sorted(GZIP_LINES, key=repr)
    admin = KafkaAdminClient(bootstrap_servers=kafka_env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        assert f"{topic}.dlq" in set(admin.list_topics())
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == PARTITIONS
    finally:
        admin.close()


def test_no_broker_is_a_clear_error(tmp_path: Path) -> None:
    path = _gzip_file(tmp_path / "b.jsonl.gz")
    result = _replay({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "replay-fast-nowhere", str(path))
    assert result.returncode == 1
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1: no broker answered" in result.stderr
