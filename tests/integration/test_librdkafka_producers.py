"""librdkafka (confluent-kafka) as the producer: transactions, and records other clients
make that `metering replay` never does (headers, null keys, keys that are not the
agency, tombstones, empty values).

Expectations come from the messages themselves (`test_transactions.expected_views`):
a tombstone or an empty value is not parseable JSON, so it is rejected as
`invalid_json`; a key or a header never changes what an event counts.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from tests.integration.harness import MeteringRun
from tests.integration.test_codecs import create_events_topic
from tests.integration.test_transactions import (
    SMALL_BATCHES,
    Message,
    Step,
    assert_exact,
    make_event,
    make_steps,
    run_worker,
)

pytestmark = pytest.mark.integration

confluent_kafka = pytest.importorskip("confluent_kafka")


class Delivery:
    """Collects librdkafka's delivery reports; any error fails the test."""

    def __init__(self) -> None:
        self.errors: list[object] = []
        self.delivered = 0

    def __call__(self, error: object, _message: object) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.errors.append(error)


def produce_steps(run: MeteringRun, topic: str, steps: list[Step], codec: str) -> int:
    """Plain sends by an idempotent producer, transactions by a transactional one."""
    common = {
        "bootstrap.servers": run.env["KAFKA_BOOTSTRAP_SERVERS"],
        "compression.codec": codec,
        "linger.ms": 5,
        "enable.idempotence": True,
    }
    plain = confluent_kafka.Producer(common)
    transactional = confluent_kafka.Producer(
        {**common, "transactional.id": f"govmeter-rdkafka-{uuid.uuid4().hex[:8]}"}
    )
    delivery = Delivery()

    def send(producer: Any, messages: list[Message]) -> None:
        for message in messages:
            producer.produce(
                topic,
                value=message.value,
                key=message.key,
                headers=[("trace-id", uuid.uuid4().bytes), ("origin", b"rdkafka")],
                on_delivery=delivery,
            )
            producer.poll(0)
        assert producer.flush(60) == 0

    transactional.init_transactions(30)
    for step in steps:
        if step.mode == "plain":
            send(plain, step.messages)
            continue
        transactional.begin_transaction()
        send(transactional, step.messages)
        send(plain, step.plain_while_open)
        if step.mode == "commit":
            transactional.commit_transaction(30)
        else:
            transactional.abort_transaction(30)
    assert delivery.errors == []
    return delivery.delivered


@pytest.mark.parametrize("codec", ["lz4", "gzip"])
def test_transactions_from_librdkafka_are_exact(run: MeteringRun, codec: str) -> None:
    topic = create_events_topic(run)
    steps = make_steps(seed=4242 if codec == "lz4" else 777, transactions=30)
    delivered = produce_steps(run, topic, steps, codec)
    sent = sum(len(step.messages) + len(step.plain_while_open) for step in steps)
    assert delivered == sent

    run_worker(run, SMALL_BATCHES)
    assert_exact(run, steps, topic, ledger_at_end=True)


def odd_records(seed: int) -> list[Message]:
    """Valid events with a null key, a foreign key or no key trouble at all, beside
    tombstones and empty values (both `invalid_json`), in a seeded order."""
    rng = random.Random(seed)
    messages: list[Message] = []
    for number in range(400):
        kind = number % 8
        if kind == 0:
            messages.append(Message(b"tombstone-key", b"", reason="invalid_json"))
        elif kind == 1:
            message = make_event(rng)
            messages.append(Message(None, message.value, event=message.event))
        elif kind == 2:
            message = make_event(rng)
            messages.append(Message(b"not-the-agency", message.value, event=message.event))
        elif kind == 3:
            messages.append(Message(None, b"", reason="invalid_json"))
        else:
            messages.append(make_event(rng))
    rng.shuffle(messages)
    return messages


def test_headers_null_keys_foreign_keys_and_tombstones_are_exact(run: MeteringRun) -> None:
    topic = create_events_topic(run)
    messages = odd_records(seed=99)
    delivery = Delivery()
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": run.env["KAFKA_BOOTSTRAP_SERVERS"], "linger.ms": 5}
    )
    for message in messages:
        value = None if message.key == b"tombstone-key" else message.value
        producer.produce(
            topic,
            value=value,
            key=message.key,
            headers={"content-type": b"application/json"},
            on_delivery=delivery,
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert (delivery.delivered, delivery.errors) == (len(messages), [])

    run_worker(run, SMALL_BATCHES)
    assert_exact(run, [Step("plain", messages)], topic, ledger_at_end=True)
