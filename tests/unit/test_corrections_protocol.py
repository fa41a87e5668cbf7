"""The corrections applier against a real store (the engine in-process): events flushed
through the sink, then voided and amended, interrupted at every step and recovered.
Each time every rollup view equals a reference computed here from the events with the
corrections applied in Python."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from clickhouse_connect.driver.client import Client

from metering.verify import verify_store
from schemas.corrections import CorrectionRecord, encode_correction, validate_correction
from schemas.rejections import classify
from store import connect
from store.corrections import REBUILD_GRAIN, CorrectionStore
from store.ledger import Janitor, Ledger
from store.migrations import apply_migrations, load_migrations
from store.writers import Leases, Registry
from streams.batch import SourceMessage, assemble_batch
from streams.corrections import CorrectionApplier
from streams.corrections_lease import CorrectionsLease
from streams.dead_letter import DeadLetter
from streams.faults import FaultPlan
from streams.sink import ClickHouseSink
from tests.unit.registered import register_writer

T = TypeVar("T")
TOPIC = "usage.events"
CORRECTIONS = "usage.corrections"
STEPS = [
    "after_marks",
    "after_commit",
    *(f"after_{step}_{rollup}" for rollup in REBUILD_GRAIN for step in ("delete", "rebuild")),
    "after_applied",
]


class SimulatedCrash(BaseException):
    """Stands for the SIGKILL a real worker's fault plan sends itself."""


class CrashingFaults(FaultPlan):
    def maybe_crash_correction(self, step: str, nth: int) -> None:
        if step == self.correction_crash_step:
            raise SimulatedCrash(step)


class NoLetters:
    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        return None


def _event(n: int, agency: str, user: str, day: int, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=n + 1)),
        "occurred_at": f"2026-11-{day:02d}T{8 + n % 9:02d}:00:00Z",
        "tenant": "chatgpt-gov",
        "agency_id": agency,
        "agency_level": "federal",
        "user_id": user,
        "conversation_id": f"c{n}",
        "model": model,
        "tokens_in": 10 + n,
        "tokens_out": 2 * n,
    }


EVENTS = [
    _event(n, f"fed-{n % 3}", f"u{n % 4}", 1 + n % 2, "gpt-4o" if n % 5 else "o3")
    for n in range(18)
]
# A user whose only message is voided: no longer active on that day, in that month.
ONLY = _event(100, "fed-0", "only-once", 1)
EVENTS.append(ONLY)


def _correction(**fields: Any) -> CorrectionRecord:
    wire = {
        "correction_id": str(uuid.uuid4()),
        "reason": "test",
        "requested_by": "ana",
        "approved_by": "ben",
        "requested_at": "2026-12-01T00:00:00Z",
        **fields,
    }
    return validate_correction(wire)


VOID_ONE = _correction(action="void", event_id=ONLY["event_id"])
AMEND_ONE = _correction(
    action="amend",
    event_id=EVENTS[4]["event_id"],
    set={"agency_id": "fed-9", "agency_level": "state", "tokens_in": 5},
)
VOID_RANGE = _correction(
    action="void",
    agency_id="fed-1",
    **{"from": "2026-11-02T00:00:00Z", "to": "2026-11-03T00:00:00Z"},
)


def _corrected(corrections: list[CorrectionRecord]) -> list[dict[str, Any]]:
    """The reference: the events with each correction applied in order."""
    events = [dict(e) for e in EVENTS]
    voided: set[str] = set()
    for c in corrections:
        for e in events:
            if e["event_id"] in voided:
                continue
            if c.event_id is not None:
                hit = e["event_id"] == c.event_id
            else:
                assert c.range_from is not None and c.range_to is not None
                moment = e["occurred_at"].replace("Z", "+00:00")
                hit = (
                    e["agency_id"] == c.agency_id
                    and c.range_from.isoformat() <= moment < c.range_to.isoformat()
                )
            if not hit:
                continue
            if c.action == "void":
                voided.add(e["event_id"])
            else:
                assert c.set is not None
                e.update(c.set.given())
    return [e for e in events if e["event_id"] not in voided]


def _expected(events: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    def group(key: Callable[[dict[str, Any]], tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for e in events:
            groups[key(e)].append(e)
        return sorted(
            (
                *k,
                len(rows),
                sum(r["tokens_in"] for r in rows),
                sum(r["tokens_out"] for r in rows),
                len({r["user_id"] for r in rows}),
            )
            for k, rows in groups.items()
        )

    return {
        "agency_daily": group(lambda e: (e["occurred_at"][:10], e["agency_id"], e["agency_level"])),
        "agency_monthly": group(
            lambda e: (e["occurred_at"][:7], e["agency_id"], e["agency_level"])
        ),
        "monthly_totals": group(lambda e: (e["occurred_at"][:7],)),
        "tenant_daily": group(lambda e: (e["occurred_at"][:10],)),
        "model_daily": group(lambda e: (e["occurred_at"][:10], e["model"], e["agency_id"])),
        "model_monthly": group(lambda e: (e["occurred_at"][:7], e["model"], e["agency_id"])),
    }


_VIEWS = {
    "agency_daily": "SELECT toString(day), agency_id, agency_level, messages, tokens_in, "
    "tokens_out, active_users FROM metering.agency_daily",
    "agency_monthly": "SELECT substring(toString(month), 1, 7), agency_id, agency_level, "
    "messages, tokens_in, tokens_out, active_users FROM metering.agency_monthly",
    "monthly_totals": "SELECT substring(toString(month), 1, 7), messages, tokens_in, "
    "tokens_out, active_users FROM metering.monthly_totals",
    "tenant_daily": "SELECT toString(day), sum(messages), sum(tokens_in), sum(tokens_out), "
    "uniqExactMerge(users) FROM metering.tenant_daily_rollup GROUP BY day",
    "model_daily": "SELECT toString(day), model, agency_id, sum(messages), sum(tokens_in), "
    "sum(tokens_out), uniqExactMerge(users) FROM metering.model_daily_rollup "
    "GROUP BY day, model, agency_id",
    "model_monthly": "SELECT substring(toString(month), 1, 7), model, agency_id, "
    "sum(messages), sum(tokens_in), sum(tokens_out), uniqExactMerge(users) "
    "FROM metering.model_monthly_rollup GROUP BY month, model, agency_id",
}


def _views(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: sorted(tuple(row) for row in client.query(sql).result_rows)
        for name, sql in _VIEWS.items()
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path / 'ch'}")
    apply_migrations(store)
    sink = ClickHouseSink(
        Ledger(store), NoLetters(), writer_no=register_writer(store), worker="test"
    )
    messages = [
        SourceMessage(TOPIC, 0, offset, None, json.dumps(e).encode())
        for offset, e in enumerate(EVENTS)
    ]
    asyncio.run(sink.flush(assemble_batch([(m, classify(m.value)) for m in messages])))
    sink.close()
    yield store
    store.close()


async def _direct(call: Callable[[], T]) -> T:
    return call()


def _applier(client: Client, faults: FaultPlan | None = None) -> CorrectionApplier:
    """The applier of a newly registered writer (a process of its own). Its timeout is 0:
    a lease another writer left held (it died) is taken over at once."""
    store = CorrectionStore(client)
    lease = CorrectionsLease(Leases(client), Registry(client), register_writer(client), 0.0)
    return CorrectionApplier(store, Ledger(client), lease, _direct, worker="test", faults=faults)


def _message(record: CorrectionRecord, offset: int) -> SourceMessage:
    return SourceMessage(CORRECTIONS, 0, offset, None, encode_correction(record))


def _apply(client: Client, records: list[CorrectionRecord], first_offset: int = 0) -> list[str]:
    applier = _applier(client)
    return [
        asyncio.run(applier.handle(_message(r, first_offset + i))).status
        for i, r in enumerate(records)
    ]


def test_the_corpus_is_counted_before_any_correction(client: Client) -> None:
    assert _views(client) == _expected(EVENTS)


def test_void_amend_and_a_range_void_are_exact_in_every_rollup(client: Client) -> None:
    statuses = _apply(client, [VOID_ONE, AMEND_ONE, VOID_RANGE])
    assert statuses == ["applied", "applied", "applied"]
    corrected = _corrected([VOID_ONE, AMEND_ONE, VOID_RANGE])
    assert _views(client) == _expected(corrected)
    # The user whose only message was voided is gone from the day and the month.
    users = client.query(
        "SELECT uniqExactMerge(users) FROM metering.agency_monthly_rollup"
    ).result_rows[0][0]
    assert users == len({e["user_id"] for e in corrected})
    assert "only-once" not in {e["user_id"] for e in corrected}
    # counted_events is untouched; the marks name the corrections.
    assert client.query("SELECT count() FROM metering.counted_events").result_rows[0][0] == len(
        EVENTS
    )
    marks = client.query(
        "SELECT correction_id, action, count() FROM metering.correction_marks "
        "GROUP BY correction_id, action ORDER BY min(correction_seq)"
    ).result_rows
    fed1_day2 = sum(
        1 for e in EVENTS if e["agency_id"] == "fed-1" and e["occurred_at"].startswith("2026-11-02")
    )
    assert [tuple(m) for m in marks] == [
        (VOID_ONE.correction_id, "void", 1),
        (AMEND_ONE.correction_id, "amend", 1),
        (VOID_RANGE.correction_id, "void", fed1_day2),
    ]


def test_the_same_correction_twice_is_applied_once(client: Client) -> None:
    assert _apply(client, [AMEND_ONE, AMEND_ONE]) == ["applied", "already_decided"]
    assert _views(client) == _expected(_corrected([AMEND_ONE]))
    rows = client.query("SELECT count() FROM metering.corrections").result_rows[0][0]
    assert rows == 1


def test_a_correction_that_cannot_apply_is_recorded_as_refused(client: Client) -> None:
    never = _correction(action="void", event_id=str(uuid.UUID(int=999)))
    again = VOID_ONE.model_copy(update={"correction_id": str(uuid.uuid4())})
    invalid = b'{"correction_id": "' + str(uuid.uuid4()).encode() + b'", "action": "void"}'
    applier = _applier(client)
    outcomes = [
        asyncio.run(applier.handle(_message(VOID_ONE, 0))),
        asyncio.run(applier.handle(_message(never, 1))),
        asyncio.run(applier.handle(_message(again, 2))),
        asyncio.run(applier.handle(SourceMessage(CORRECTIONS, 0, 3, None, invalid))),
        asyncio.run(applier.handle(SourceMessage(CORRECTIONS, 0, 4, None, b"not json"))),
    ]
    assert [o.status for o in outcomes] == [
        "applied",
        "refused",
        "refused",
        "refused",
        "unreadable",
    ]
    assert "never counted" in outcomes[1].refused_reason
    assert "already voided" in outcomes[2].refused_reason
    assert outcomes[3].refused_reason.startswith("invalid record: ")
    assert "requested_by" in outcomes[3].refused_reason
    assert _views(client) == _expected(_corrected([VOID_ONE]))
    resume = CorrectionStore(client).resume_positions()
    assert resume == {(CORRECTIONS, 0): 4}


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_each_step_then_recovery_applies_exactly_once(client: Client, step: str) -> None:
    assert _apply(client, [VOID_ONE]) == ["applied"]
    crashing = _applier(client, CrashingFaults(correction_crash_step=step))
    with pytest.raises(SimulatedCrash):
        asyncio.run(crashing.handle(_message(AMEND_ONE, 1)))

    # A new process: it folds what is committed and unfolded, then reads the topic
    # again from where the store says it resumes; taking the lease the crashed one
    # left held, it finishes what that one committed.
    Janitor(Ledger(client)).run(fold_after=0)
    store = CorrectionStore(client)
    resume = store.resume_positions().get((CORRECTIONS, 0), 0)
    records = [VOID_ONE, AMEND_ONE, VOID_RANGE]
    statuses = _apply(client, records[resume:], first_offset=resume)
    assert statuses == ["applied"] * len(records[resume:]), step
    assert _views(client) == _expected(_corrected(records)), step
    in_range = [
        e
        for e in _corrected([VOID_ONE, AMEND_ONE])
        if e["agency_id"] == "fed-1" and e["occurred_at"].startswith("2026-11-02")
    ]
    marks = client.query("SELECT count() FROM metering.correction_marks").result_rows[0][0]
    assert marks == 1 + 1 + len(in_range), step
    applied = client.query(
        "SELECT count(), uniqExact(correction_seq) FROM metering.corrections_applied"
    ).result_rows[0]
    assert tuple(applied) == (3, 3), step


def test_a_rebuild_repeated_after_it_finished_changes_nothing(client: Client) -> None:
    """The redo path: the same correction rebuilt twice more (new attempt tokens), with
    the rollups' deduplication window on, still holds every key exactly once."""
    _apply(client, [VOID_ONE, AMEND_ONE])
    store = CorrectionStore(client)
    lease = CorrectionsLease(Leases(client), Registry(client), register_writer(client), 0.0)
    held = lease.take()
    for seq in (1, 2):
        keys = store.affected_keys(seq)
        for _ in range(2):
            store.rebuild(keys, f"redo-{seq}-{uuid.uuid4().hex}", head=1, term=held.term)
    lease.release(held)
    assert _views(client) == _expected(_corrected([VOID_ONE, AMEND_ONE]))


def _tamper_and_verify(client: Client, statement: str) -> list[str]:
    assert _apply(client, [VOID_ONE, AMEND_ONE, VOID_RANGE]) == ["applied"] * 3
    clean = verify_store(client)
    assert (clean.ok, clean.corrections, clean.corrections_not_chained) == (True, 3, [])
    client.command(f"{statement} SETTINGS mutations_sync = 2")
    return verify_store(client).correction_failures


def test_verify_names_the_correction_whose_mark_was_edited(client: Client) -> None:
    failures = _tamper_and_verify(
        client,
        "ALTER TABLE metering.correction_marks UPDATE tokens_in = 999 WHERE correction_seq = 2",
    )
    assert len(failures) == 1
    assert failures[0].startswith(f"correction 2 ({AMEND_ONE.correction_id}): content hash")


def test_verify_names_the_correction_whose_approver_was_edited(client: Client) -> None:
    failures = _tamper_and_verify(
        client,
        "ALTER TABLE metering.corrections UPDATE approved_by = 'ana' WHERE correction_seq = 1",
    )
    assert len(failures) == 1
    assert failures[0].startswith(f"correction 1 ({VOID_ONE.correction_id}): content hash")


def test_verify_names_the_correction_after_one_that_was_removed(client: Client) -> None:
    failures = _tamper_and_verify(
        client, "ALTER TABLE metering.corrections DELETE WHERE correction_seq = 1"
    )
    assert failures == [
        f"correction 2 ({AMEND_ONE.correction_id}): chain hash differs: it does not follow "
        "the previous correction's chain (a correction before it was removed or replaced)"
    ]


def _agencies(client: Client) -> set[tuple[int, str, str]]:
    rows = client.query(
        "SELECT correction_seq, toString(event_id), agency_id FROM metering.correction_agencies"
    ).result_rows
    return {(int(seq), str(event), str(agency)) for seq, event, agency in rows}


def test_each_correction_is_read_by_the_agencies_its_events_were_in(client: Client) -> None:
    """metering.correction_agencies, which agency users' row filters read: an event's
    agency before and after each correction, and the agency it was first counted for."""
    moved = EVENTS[4]  # fed-1, on 2026-11-01
    to_b = _correction(action="amend", event_id=moved["event_id"], set={"agency_id": "fed-9"})
    to_c = _correction(action="amend", event_id=moved["event_id"], set={"agency_id": "fed-8"})
    never = _correction(action="void", event_id=str(uuid.UUID(int=999)))
    statuses = _apply(client, [to_b, to_c, VOID_RANGE, VOID_ONE, never])
    assert statuses == ["applied", "applied", "applied", "applied", "refused"]
    in_range = [
        e["event_id"]
        for e in EVENTS
        if e["agency_id"] == "fed-1" and e["occurred_at"].startswith("2026-11-02")
    ]
    expected = {
        (1, moved["event_id"], "fed-1"),  # before, and first counted for
        (1, moved["event_id"], "fed-9"),  # after
        (2, moved["event_id"], "fed-9"),  # before (the mark of correction 1)
        (2, moved["event_id"], "fed-8"),  # after
        (2, moved["event_id"], "fed-1"),  # first counted for
        *((3, event, "fed-1") for event in in_range),  # the range's agency, each event
        (4, ONLY["event_id"], "fed-0"),
        # 5: an event never counted was in no agency
    }
    assert in_range and _agencies(client) == expected

    # Migration 0014 fills the same rows for the corrections committed before it.
    client.command("TRUNCATE TABLE metering.correction_agencies")
    [migration] = [m for m in load_migrations() if m.name == "correction_agencies"]
    [backfill] = [s for s in migration.statements() if s.startswith("INSERT INTO")]
    client.command(backfill)
    assert _agencies(client) == expected

    # A correction committed by a writer that died before it added the rows: the next
    # holder of the lease adds them (step 0), once.
    client.command(
        "ALTER TABLE metering.correction_agencies DELETE WHERE correction_seq = 2 "
        "SETTINGS mutations_sync = 2"
    )
    assert _apply(client, [to_c], first_offset=5) == ["already_decided"]
    assert _agencies(client) == expected
    assert client.query("SELECT count() FROM metering.correction_agencies").result_rows[0][
        0
    ] == len(expected)
