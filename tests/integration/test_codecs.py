"""Every Kafka compression codec, end to end: the corpus compressed by a producer, then
the worker until idle, then every contract view equal to the golden expectation.

The corpus is produced here, not with `metering replay`, so each test controls the
producing client and its codec: kafka-python for all four codecs, librdkafka
(confluent-kafka) for one. Each test also proves the batches on the topic really
are compressed with that codec, by counting the decoder calls of an in-process
kafka-python consumer reading the topic back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.record import default_records
from kafka.structs import TopicPartition

from tests.integration.harness import CORPUS, MeteringRun, expected

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")


def corpus_messages() -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) per non-empty corpus line, as `metering replay` publishes them."""
    for raw in CORPUS.read_bytes().split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        key = None
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("agency_id"), str):
            key = document["agency_id"].encode()
        yield key, line


def bootstrap(run: MeteringRun) -> list[str]:
    return run.env["KAFKA_BOOTSTRAP_SERVERS"].split(",")


def create_events_topic(run: MeteringRun) -> str:
    """The events topic with the run's partition count, before any producer touches it."""
    topic = run.env["METERING_EVENTS_TOPIC"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(run))
    try:
        partitions = int(run.env["METERING_TOPIC_PARTITIONS"])
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return topic


def assert_views_exact(run: MeteringRun, golden: dict[str, Any]) -> None:
    views = run.views()
    for view in ("agency_daily", "agency_monthly", "monthly_totals"):
        got = [{k: row[k] for k in golden[view][0]} for row in views[view]]
        assert got == golden[view], view


def assert_corpus_exact(run: MeteringRun) -> None:
    golden = expected()
    assert_views_exact(run, golden)
    assert run.rejected_by_reason() == golden["rejected"]
    counted = run.query(
        "SELECT count() AS n, uniqExact(event_id) AS u FROM metering.counted_events"
    )
    assert counted == [{"n": golden["valid_counted"], "u": golden["valid_counted"]}]
    ledger = run.query("SELECT sum(messages) AS m FROM metering.flush_ledger")[0]
    assert ledger == {"m": golden["lines"]}


def decoder_calls(run: MeteringRun, topic: str, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Read the whole topic back; how often each codec's decoder ran."""
    calls: Counter[str] = Counter()

    def counting(name: str, decode: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def wrapped(data: bytes) -> bytes:
            calls[name] += 1
            return decode(data)

        return wrapped

    for name in CODECS:
        attribute = f"{name}_decode"
        monkeypatch.setattr(
            default_records, attribute, counting(name, getattr(default_records, attribute))
        )
    consumer = KafkaConsumer(bootstrap_servers=bootstrap(run), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        read = 0
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            read += sum(len(batch) for batch in consumer.poll(timeout_ms=1000).values())
    finally:
        consumer.close()
    assert read == expected()["lines"]
    return calls


def produce_with_kafka_python(run: MeteringRun, topic: str, codec: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap(run),
        compression_type=codec,
        acks="all",
        linger_ms=50,
        batch_size=256 * 1024,
        max_request_size=8 * 1024 * 1024,
        max_in_flight_requests_per_connection=1,
    )
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in corpus_messages()]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def produce_with_librdkafka(run: MeteringRun, topic: str, codec: str) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    failures: list[object] = []
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": run.env["KAFKA_BOOTSTRAP_SERVERS"],
            "compression.codec": codec,
            "enable.idempotence": True,
            "linger.ms": 50,
            "message.max.bytes": 8 * 1024 * 1024,
        }
    )

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    for key, value in corpus_messages():
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert failures == []


@pytest.mark.parametrize("codec", CODECS)
def test_corpus_compressed_by_kafka_python_is_exact(
    run: MeteringRun, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = create_events_topic(run)
    produce_with_kafka_python(run, topic, codec)
    calls = decoder_calls(run, topic, monkeypatch)
    assert set(calls) == {codec}, calls

    result = run.worker(until_idle=1.0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_corpus_exact(run)


def test_corpus_compressed_by_librdkafka_is_exact_with_the_agent_intake(
    run: MeteringRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zstd from librdkafka, read by faust's own consumer (the agent intake)."""
    topic = create_events_topic(run)
    produce_with_librdkafka(run, topic, "zstd")
    calls = decoder_calls(run, topic, monkeypatch)
    assert set(calls) == {"zstd"}, calls

    run.env["METERING_INTAKE"] = "agent"
    result = run.worker(until_idle=1.0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_corpus_exact(run)
