"""Transactional producers: committed, aborted and still-open transactions interleaved
with plain messages on the same partitions.

The expectation is computed here from the messages the test committed, independently
of the pipeline: a message of an aborted transaction is not counted, not rejected
and not in the ledger; a committed one counts like a plain one. Transaction markers
and aborted records occupy offsets no reader receives: the worker must not seek
over them forever (it has to exit within a bounded time), and its ledger ranges must
still tile each partition's offsets without holes.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from tests.integration.harness import MeteringRun
from tests.integration.test_codecs import bootstrap, create_events_topic

pytestmark = pytest.mark.integration

SMALL_BATCHES = {
    "METERING_BATCH_MAX_EVENTS": "150",
    "METERING_BATCH_MAX_SECONDS": "0.2",
    "METERING_SESSION_TIMEOUT_SECONDS": "6",
}
AGENCIES = [
    ("chatgpt-gov", "fed-hhs", "federal"),
    ("chatgpt-gov", "fed-va", "federal"),
    ("chatgpt-gov", "state-ca", "state"),
    ("chatgpt-enterprise", "city-austin", "local"),
    ("chatgpt-enterprise", "state-ny", "state"),
    ("chatgpt-enterprise", "county-king", "local"),
]
DAYS = ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]
WORKER_DEADLINE = 180  # seconds: a worker seeking over markers never gets there


@dataclass
class Message:
    key: bytes | None
    value: bytes
    event: dict[str, Any] | None = None  # the valid event it carries, if any
    reason: str | None = None  # the rejection it must get, if any


@dataclass
class Step:
    """One producer action: plain sends, or a transaction (with plain sends while open)."""

    mode: str  # "plain", "commit" or "abort"
    messages: list[Message]
    plain_while_open: list[Message] = field(default_factory=list)


def make_event(rng: random.Random, event_id: str | None = None) -> Message:
    tenant, agency, level = rng.choice(AGENCIES)
    document = {
        "schema_version": 1,
        "event_id": event_id or str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "occurred_at": f"{rng.choice(DAYS)}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:07Z",
        "tenant": tenant,
        "agency_id": agency,
        "agency_level": level,
        "user_id": f"u-{rng.randrange(12)}",
        "conversation_id": f"c-{rng.randrange(1000)}",
        "model": rng.choice(["gpt-4.1", "gpt-5"]),
        "tokens_in": rng.randrange(1, 5000),
        "tokens_out": rng.randrange(0, 3000),
    }
    return Message(agency.encode(), json.dumps(document).encode(), event=document)


def make_invalid(rng: random.Random) -> Message:
    tenant, agency, _ = rng.choice(AGENCIES)
    kind = rng.randrange(3)
    if kind == 0:
        return Message(None, b'{"schema_version": 1, "event_id": ', reason="invalid_json")
    document: dict[str, Any] = {"schema_version": 1, "agency_id": agency, "tenant": tenant}
    if kind == 1:
        document["prompt"] = "words nobody may store"
        return Message(agency.encode(), json.dumps(document).encode(), reason="content_not_allowed")
    document["schema_version"] = 2
    return Message(
        agency.encode(), json.dumps(document).encode(), reason="unsupported_schema_version"
    )


def make_steps(seed: int, transactions: int = 24) -> list[Step]:
    """Plain sends and transactions in a seeded order; aborted ones carry event ids that a
    later committed transaction sends again (with other values), and the last two steps
    are a committed and an aborted transaction (markers at the ends of partitions)."""
    rng = random.Random(seed)

    def batch(size: int) -> list[Message]:
        return [make_invalid(rng) if rng.random() < 0.08 else make_event(rng) for _ in range(size)]

    steps: list[Step] = []
    retried: list[str] = []
    for number in range(transactions):
        if rng.random() < 0.5:
            steps.append(Step("plain", batch(rng.randrange(1, 15))))
        mode = "abort" if number % 3 == 1 else "commit"
        messages = batch(rng.randrange(5, 40))
        if mode == "abort":
            retried.extend(m.event["event_id"] for m in messages[:3] if m.event)
        elif retried:
            messages.extend(make_event(rng, event_id) for event_id in retried)
            retried = []
        if mode == "commit" and rng.random() < 0.3:
            messages.append(messages[0])  # a producer retry inside the transaction
        steps.append(Step(mode, messages, plain_while_open=batch(rng.randrange(0, 4))))
    steps.append(Step("commit", batch(12)))
    steps.append(Step("abort", batch(9)))
    return steps


def produce(run: MeteringRun, topic: str, steps: list[Step]) -> None:
    transactional = KafkaProducer(
        bootstrap_servers=bootstrap(run),
        transactional_id=f"govmeter-test-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=5,
    )
    plain = KafkaProducer(
        bootstrap_servers=bootstrap(run),
        acks="all",
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
    )

    def send(producer: KafkaProducer, messages: list[Message]) -> None:
        futures = [producer.send(topic, key=m.key, value=m.value) for m in messages]
        producer.flush()
        for future in futures:
            future.get(timeout=30)

    try:
        transactional.init_transactions()
        for step in steps:
            if step.mode == "plain":
                send(plain, step.messages)
                continue
            transactional.begin_transaction()
            send(transactional, step.messages)
            send(plain, step.plain_while_open)
            if step.mode == "commit":
                transactional.commit_transaction()
            else:
                transactional.abort_transaction()
    finally:
        transactional.close()
        plain.close()


def sent_for_real(steps: list[Step]) -> list[Message]:
    """Every message a committed reader receives, in the order it was produced."""
    real: list[Message] = []
    for step in steps:
        if step.mode != "abort":
            real.extend(step.messages)
        real.extend(step.plain_while_open)
    return real


def expected_views(messages: list[Message]) -> dict[str, list[dict[str, Any]]]:
    """The contract views of these messages, computed without the pipeline."""
    counted: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message.event is not None:
            counted.setdefault(message.event["event_id"], message.event)
    daily: dict[tuple[str, str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, set()])
    monthly: dict[tuple[str, str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, set()])
    totals: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [set(), set(), 0, 0, 0])
    for event in counted.values():
        day = event["occurred_at"][:10]
        month = day[:8] + "01"
        for table, key in (
            (daily, (day, event["tenant"], event["agency_id"], event["agency_level"])),
            (monthly, (month, event["tenant"], event["agency_id"], event["agency_level"])),
        ):
            row = table[key]
            row[0] += 1
            row[1] += event["tokens_in"]
            row[2] += event["tokens_out"]
            row[3].add(event["user_id"])
        total = totals[(month, event["tenant"])]
        total[0].add(event["agency_id"])
        total[1].add(event["user_id"])
        total[2] += 1
        total[3] += event["tokens_in"]
        total[4] += event["tokens_out"]

    def rows(table: dict[tuple[str, str, str, str], list[Any]], first: str) -> list[dict[str, Any]]:
        return [
            {
                first: key[0],
                "tenant": key[1],
                "agency_id": key[2],
                "agency_level": key[3],
                "messages": value[0],
                "tokens_in": value[1],
                "tokens_out": value[2],
                "active_users": len(value[3]),
            }
            for key, value in sorted(table.items())
        ]

    return {
        "agency_daily": rows(daily, "day"),
        "agency_monthly": rows(monthly, "month"),
        "monthly_totals": [
            {
                "month": month,
                "tenant": tenant,
                "agencies": len(value[0]),
                "active_users": len(value[1]),
                "messages": value[2],
                "tokens_in": value[3],
                "tokens_out": value[4],
            }
            for (month, tenant), value in sorted(totals.items())
        ],
    }


def end_offsets(run: MeteringRun, topic: str, isolation: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap(run), isolation_level=isolation)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: int(offset) for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def run_worker(run: MeteringRun, extra_env: dict[str, str] | None = None) -> str:
    """The worker until idle; it must exit 0 in time and never seek back."""
    started = time.monotonic()
    result = run.metering(
        "worker", "--until-idle", "1.0", extra_env=extra_env, timeout=WORKER_DEADLINE
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "seeking back" not in result.stderr
    assert time.monotonic() - started < WORKER_DEADLINE
    return result.stderr


def assert_exact(run: MeteringRun, steps: list[Step], topic: str, *, ledger_at_end: bool) -> None:
    real = sent_for_real(steps)
    want = expected_views(real)
    views = run.views()
    for view, rows in want.items():
        assert [{k: row[k] for k in rows[0]} for row in views[view]] == rows, view
    reasons: dict[str, int] = defaultdict(int)
    for message in real:
        if message.reason is not None:
            reasons[message.reason] += 1
    assert run.rejected_by_reason() == dict(reasons)
    counted = {m.event["event_id"] for m in real if m.event is not None}
    assert run.query("SELECT count() AS n FROM metering.counted_events") == [{"n": len(counted)}]

    # The ledger: one range after another per partition, from offset 0, without holes;
    # its messages are exactly the records a committed reader receives.
    ranges = run.query(
        "SELECT partition, first_offset, last_offset, messages FROM metering.flush_ledger "
        f"WHERE topic = '{topic}' ORDER BY partition, first_offset"
    )
    assert sum(int(r["messages"]) for r in ranges) == len(real)
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in ranges:
        by_partition[int(row["partition"])].append(row)
    stable_ends = end_offsets(run, topic, "read_committed")
    assert stable_ends == end_offsets(run, topic, "read_uncommitted")  # nothing left open
    for partition, rows in by_partition.items():
        resume = 0
        for row in rows:
            assert int(row["first_offset"]) == resume, (partition, row)
            assert int(row["last_offset"]) >= resume
            resume = int(row["last_offset"]) + 1
        if ledger_at_end:
            assert resume == stable_ends[partition], partition
        else:
            assert resume <= stable_ends[partition], partition
    if ledger_at_end:
        # Every offset is in a range: what the ranges hold beyond their messages is
        # exactly the markers and aborted records on the topic.
        covered = sum(int(r["last_offset"]) - int(r["first_offset"]) + 1 for r in ranges)
        assert covered == sum(stable_ends.values())
        aborted = sum(len(step.messages) for step in steps if step.mode == "abort")
        markers = sum(stable_ends.values()) - len(real) - aborted
        # Each ended transaction wrote one marker into every partition it touched: at
        # least one per transaction that sent anything.
        transactions = sum(1 for step in steps if step.mode != "plain" and step.messages)
        assert markers >= transactions
        assert covered - len(real) == aborted + markers


@pytest.mark.parametrize("intake", ["batch", "agent"])
def test_committed_and_aborted_transactions_among_plain_messages(
    run: MeteringRun, intake: str
) -> None:
    run.env["METERING_INTAKE"] = intake
    topic = create_events_topic(run)
    steps = make_steps(seed=20261201)
    produce(run, topic, steps)

    run_worker(run, SMALL_BATCHES)
    assert_exact(run, steps, topic, ledger_at_end=intake == "batch")

    # Run again: nothing new, nothing counted twice, nothing sought.
    run_worker(run, SMALL_BATCHES)
    assert_exact(run, steps, topic, ledger_at_end=intake == "batch")


def test_sigkills_while_reading_transactions_then_restart_is_exact(run: MeteringRun) -> None:
    topic = create_events_topic(run)
    steps = make_steps(seed=7, transactions=40)
    produce(run, topic, steps)

    crashed = run.metering(
        "worker",
        "--until-idle",
        "1.0",
        extra_env={**SMALL_BATCHES, "METERING_FAULT_CRASH": "after_commit@2"},
        timeout=WORKER_DEADLINE,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    rng = random.Random(20261201)
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-m", "metering.cli", "worker", "--until-idle", "1.0"],
            env={**run.env, **SMALL_BATCHES},
            cwd=run.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            if "flush committed" in line:
                break
        time.sleep(rng.uniform(0.0, 0.8))
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
        assert "seeking back" not in output
    run_worker(run, SMALL_BATCHES)
    assert_exact(run, steps, topic, ledger_at_end=True)


def test_an_open_transaction_is_counted_once_committed(run: MeteringRun) -> None:
    """While a transaction is open the worker goes idle over what is stable, and counts
    nothing of it (nor of the plain messages after it, which wait behind it)."""
    topic = create_events_topic(run)
    rng = random.Random(11)
    before = [make_event(rng) for _ in range(30)]
    inside = [make_event(rng) for _ in range(25)]
    behind = [make_event(rng) for _ in range(10)]

    producer = KafkaProducer(
        bootstrap_servers=bootstrap(run),
        transactional_id=f"govmeter-open-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        transaction_timeout_ms=300_000,
    )
    plain = KafkaProducer(bootstrap_servers=bootstrap(run), acks="all")

    def send(sender: KafkaProducer, messages: list[Message]) -> list[int]:
        futures = [sender.send(topic, key=m.key, value=m.value) for m in messages]
        sender.flush()
        return [future.get(timeout=30).partition for future in futures]

    try:
        send(plain, before)
        producer.init_transactions()
        producer.begin_transaction()
        held = set(send(producer, inside))
        behind_partitions = send(plain, behind)

        run_worker(run)
        # Behind the open transaction, in its partitions, plain messages wait too.
        stable_behind = sum(1 for p in behind_partitions if p not in held)
        assert stable_behind < len(behind)
        counted = run.query("SELECT count() AS n FROM metering.counted_events")
        assert counted == [{"n": len(before) + stable_behind}]
        stable = end_offsets(run, topic, "read_committed")
        ledger = run.query(
            "SELECT partition, max(last_offset) + 1 AS next FROM metering.flush_ledger "
            f"WHERE topic = '{topic}' GROUP BY partition"
        )
        assert {int(row["partition"]): int(row["next"]) for row in ledger} == {
            p: end for p, end in stable.items() if end > 0
        }

        producer.commit_transaction()
    finally:
        producer.close()
        plain.close()

    run_worker(run)
    steps = [Step("plain", before), Step("commit", inside), Step("plain", behind)]
    assert_exact(run, steps, topic, ledger_at_end=True)
