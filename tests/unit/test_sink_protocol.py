"""The sink's numbered flush against a real store (the engine in-process), with a fake
dead-letter publisher, interrupted at every step and then recovered: each time the
views hold every event exactly once, computed here from the events themselves."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from schemas.rejections import classify
from store import connect
from store.ledger import APPLY_ROLLUPS, Janitor, Ledger
from store.migrations import apply_migrations
from streams.batch import ClassifiedBatch, SourceMessage, assemble_batch
from streams.dead_letter import DeadLetter
from streams.faults import FaultPlan
from streams.sink import ClickHouseSink
from tests.unit.registered import register_writer

TOPIC = "usage.events"
STEPS = [
    "after_lookup",
    "after_stage",
    "after_dead_letters",
    "after_commit",
    *(f"after_apply_{name}" for name in APPLY_ROLLUPS),
    "after_apply",
]


class SimulatedCrash(BaseException):
    """Stands for the SIGKILL a real worker's fault plan sends itself."""


class CrashingFaults(FaultPlan):
    def maybe_crash(self, step: str, flush_seq: int) -> None:
        if step == self.crash_step:
            raise SimulatedCrash(step)


class Letters:
    def __init__(self) -> None:
        self.published: list[DeadLetter] = []

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.published.extend(letters)


def _event(n: int, agency: str, user: str, day: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=n + 1)),
        "occurred_at": f"2026-11-{day:02d}T12:00:00Z",
        "tenant": "chatgpt-gov",
        "agency_id": agency,
        "agency_level": "federal",
        "user_id": user,
        "conversation_id": f"c{n}",
        "model": "gpt-4o",
        "tokens_in": 10 + n,
        "tokens_out": 2 * n,
    }


EVENTS = [_event(n, f"fed-{n % 3}", f"u{n % 4}", 1 + n % 2) for n in range(12)]


def _messages() -> list[SourceMessage]:
    lines = [json.dumps(e).encode() for e in EVENTS]
    lines.insert(5, lines[2])  # a retried send: a duplicate within the batch
    lines.append(b"{not json")  # a rejection
    return [SourceMessage(TOPIC, 0, offset, None, line) for offset, line in enumerate(lines)]


def _batch(messages: list[SourceMessage]) -> ClassifiedBatch:
    return assemble_batch([(m, classify(m.value)) for m in messages])


def _expected() -> list[tuple[str, str, int, int, int, int]]:
    days: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in EVENTS:
        days[(e["occurred_at"][:10], e["agency_id"])].append(e)
    return sorted(
        (
            day,
            agency,
            len(rows),
            sum(r["tokens_in"] for r in rows),
            sum(r["tokens_out"] for r in rows),
            len({r["user_id"] for r in rows}),
        )
        for (day, agency), rows in days.items()
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path / 'ch'}")
    apply_migrations(store)
    yield store
    store.close()


def _sink(client: Client, letters: Letters, faults: FaultPlan) -> ClickHouseSink:
    """A sink of a newly registered writer (each process registers anew)."""
    return ClickHouseSink(
        Ledger(client), letters, writer_no=register_writer(client), worker="test", faults=faults
    )


def _views(client: Client) -> list[tuple[Any, ...]]:
    rows = client.query(
        "SELECT toString(day), agency_id, messages, tokens_in, tokens_out, active_users "
        "FROM metering.agency_daily ORDER BY day, agency_id"
    ).result_rows
    return [tuple(row) for row in rows]


def test_one_flush_counts_every_event_once(client: Client) -> None:
    letters = Letters()
    sink = _sink(client, letters, FaultPlan())
    result = asyncio.run(sink.flush(_batch(_messages())))
    sink.close()
    assert (result.messages, result.counted, result.duplicates, result.rejected) == (14, 12, 1, 1)
    assert _views(client) == _expected()
    assert len(letters.published) == 1
    ledger = client.query(
        "SELECT first_offset, last_offset, messages, counted, duplicates, rejected "
        "FROM metering.flush_ledger"
    ).result_rows
    assert [tuple(r) for r in ledger] == [(0, 13, 14, 12, 1, 1)]


def test_the_batch_stays_a_value(client: Client) -> None:
    batch = _batch(_messages())
    before = [(r.counted, r.duplicates, r.rejected) for r in batch.ranges.values()]
    sink = _sink(client, Letters(), FaultPlan())
    asyncio.run(sink.flush(batch))
    sink.close()
    assert [(r.counted, r.duplicates, r.rejected) for r in batch.ranges.values()] == before


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_each_step_then_recovery_counts_exactly_once(client: Client, step: str) -> None:
    messages = _messages()
    letters = Letters()
    crashing = _sink(client, letters, CrashingFaults(crash_step=step))
    with pytest.raises(SimulatedCrash):
        asyncio.run(crashing.flush(_batch(messages)))
    crashing.close()

    # A new process: it folds what the crashed one committed and did not fold, then
    # the messages past the ledger are read again; its upkeep then deletes the staged
    # rows of the crashed flush (the ledger resumes past them: they can never commit).
    ledger = Ledger(client)
    janitor = Janitor(ledger)
    janitor.run(fold_after=0)
    resume = ledger.resume_positions().get((TOPIC, 0), 0)
    again = [m for m in messages if m.offset >= resume]
    if again:
        sink = _sink(client, letters, FaultPlan())
        batch = _batch(again)
        batch.read_from = {(TOPIC, 0): None}
        asyncio.run(sink.flush(batch))
        sink.close()
    deleted = janitor.delete_orphans()
    staged = step in ("after_stage", "after_dead_letters")
    assert len(deleted) == (1 if staged else 0), (step, deleted)

    assert _views(client) == _expected(), step
    counted = client.query("SELECT count() FROM metering.counted_events").result_rows[0][0]
    assert counted == len(EVENTS)
    sums = client.query(
        "SELECT sum(messages), sum(counted), sum(duplicates), sum(rejected) "
        "FROM metering.flush_ledger"
    ).result_rows[0]
    assert tuple(sums) == (14, 12, 1, 1)
    assert ledger.unapplied_flushes() == []
    rejected = client.query("SELECT count() FROM metering.rejected_events").result_rows[0][0]
    assert rejected == 1
    # Dead letters are at least once: a crash after publishing and before the commit
    # publishes the same rejected offset again.
    expected_letters = 2 if step == "after_dead_letters" else 1
    assert len(letters.published) == expected_letters


def test_a_second_flush_of_the_same_events_counts_them_as_duplicates(client: Client) -> None:
    messages = _messages()
    first = _sink(client, Letters(), FaultPlan())
    asyncio.run(first.flush(_batch(messages)))
    first.close()
    replayed = [SourceMessage(TOPIC, 0, 100 + i, None, m.value) for i, m in enumerate(messages)]
    second = _sink(client, Letters(), FaultPlan())
    result = asyncio.run(second.flush(_batch(replayed)))
    second.close()
    assert (result.counted, result.duplicates, result.rejected) == (0, 13, 1)
    assert _views(client) == _expected()
