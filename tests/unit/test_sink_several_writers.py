"""Two writers of one store (the engine in-process, no Kafka): two `ClickHouseSink`s with
their own worker names and dedupe filters, sharing the writers' lock file.

Step 0 of each flush must catch up with what the other writer committed (number the
flush after it, chain to it, learn its event ids), refuse a batch whose partitions the
other writer counted since they were read, and recover the store first when the last
holder of the lock died holding it. Every figure here is exact."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from metering.verify import verify_store
from store.ledger import REJECTION_COLUMNS, Ledger, recover
from store.ledger.chain import chain_sha256
from store.ledger.writers_lock import WritersLock
from streams.batch import ClassifiedBatch, SourceMessage, classify_batch
from streams.faults import FaultPlan
from streams.seen_ids import SeenIdFilter, id_halves, load_from_store
from streams.sink import ClickHouseSink, FlushResult, StaleFlushError, counted_events_table
from tests.unit import test_sink_protocol as protocol
from tests.unit.test_sink_protocol import TOPIC, CrashingFaults, Letters, SimulatedCrash

client = protocol.client  # the migrated in-process store fixture

P0 = (TOPIC, 0)
P3 = (TOPIC, 3)
NOT_JSON = b"{not json"
FILTER_MIB = 1
CLEAN = "clean\n"

TP = tuple[str, int]


def event_id(n: int) -> str:
    return str(protocol._event(n, "fed-0", "u0", 1)["event_id"])


def message(partition: int, offset: int, n: int | None) -> SourceMessage:
    """Event `n` (the same bytes whichever partition carries it), or a rejection."""
    if n is None:
        value = NOT_JSON
    else:
        value = json.dumps(protocol._event(n, f"fed-{n % 3}", f"u{n % 4}", 1 + n % 2)).encode()
    return SourceMessage(TOPIC, partition, offset, None, value)


def batch(messages: Sequence[SourceMessage], read_from: dict[TP, int | None]) -> ClassifiedBatch:
    """A batch as the pipeline builds it: each partition's extent from its first to its
    last message, and where the reader believed the ledger resumed it."""
    extents: dict[TP, tuple[int, int]] = {}
    for m in messages:
        first, last = extents.get((m.topic, m.partition), (m.offset, m.offset))
        extents[(m.topic, m.partition)] = (min(first, m.offset), max(last, m.offset))
    built = classify_batch(messages, extents)
    built.read_from = dict(read_from)
    return built


def events(partition: int, first_offset: int, numbers: Sequence[int | None]) -> list[SourceMessage]:
    return [message(partition, first_offset + i, n) for i, n in enumerate(numbers)]


@dataclass
class Writer:
    name: str
    sink: ClickHouseSink
    seen: SeenIdFilter
    lock: WritersLock
    letters: Letters
    recoveries: list[int] = field(default_factory=list)

    def flush(self, flushed: ClassifiedBatch) -> FlushResult:
        return asyncio.run(self.sink.flush(flushed))

    def knows(self, numbers: Sequence[int]) -> list[bool]:
        return [bool(b) for b in self.seen.maybe_seen(id_halves([event_id(n) for n in numbers]))]


def start_writer(
    client: Client, name: str, lock_path: Path, faults: FaultPlan | None = None
) -> Writer:
    """A writer as `metering worker` starts one: recovery and the dedupe filter's load
    under the lock, whose on_dirty recovers the store."""
    ledger = Ledger(client)
    recoveries: list[int] = []

    def on_dirty() -> None:
        recoveries.append(recover(ledger).orphan_rows_deleted)

    lock = WritersLock(lock_path, on_dirty)
    with lock.holding():
        state = recover(ledger)
        seen = load_from_store(ledger, FILTER_MIB)
    letters = Letters()
    sink = ClickHouseSink(
        ledger,
        letters,
        next_flush_seq=state.next_flush_seq,
        worker=name,
        retry_max_seconds=0.05,
        fatal_tries=1,
        retry_first_seconds=0.01,
        faults=faults,
        seen_ids=seen,
        lock=lock,
    )
    return Writer(name, sink, seen, lock, letters, recoveries)


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "locks" / "govmeter-writers-test.lock"


@pytest.fixture
def writers(client: Client, lock_path: Path) -> Iterator[tuple[Writer, Writer]]:
    a = start_writer(client, "writer-a", lock_path)
    b = start_writer(client, "writer-b", lock_path)
    yield a, b
    for w in (a, b):
        w.sink.close()
        w.lock.close()


def ledger_rows(client: Client) -> list[tuple[Any, ...]]:
    rows = client.query(
        "SELECT flush_seq, topic, partition, first_offset, last_offset, messages, counted, "
        "duplicates, rejected, worker FROM metering.flush_ledger "
        "ORDER BY flush_seq, topic, partition"
    ).result_rows
    return [tuple(r) for r in rows]


def hashes(client: Client) -> dict[int, tuple[str, str]]:
    """flush_seq -> (content_sha256, chain_sha256); one pair per flush."""
    rows = client.query(
        "SELECT DISTINCT flush_seq, content_sha256, chain_sha256 FROM metering.flush_ledger "
        "ORDER BY flush_seq"
    ).result_rows
    pairs = {int(seq): (str(content), str(chain)) for seq, content, chain in rows}
    assert len(pairs) == len(rows)
    return pairs


def counted_rows(client: Client) -> list[tuple[str, int, int, int]]:
    rows = client.query(
        "SELECT toString(event_id), partition, offset, flush_seq FROM metering.counted_events "
        "ORDER BY flush_seq, partition, offset"
    ).result_rows
    return [(str(e), int(p), int(o), int(s)) for e, p, o, s in rows]


def rejection_rows(client: Client) -> list[tuple[int, int, int]]:
    rows = client.query(
        "SELECT partition, offset, flush_seq FROM metering.rejections_log "
        "ORDER BY flush_seq, partition, offset"
    ).result_rows
    return [(int(p), int(o), int(s)) for p, o, s in rows]


def store_rows(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of what a flush writes, in a fixed order, and the contract view."""
    tables = {
        "flush_ledger": "flush_seq, topic, partition",
        "counted_events": "flush_seq, topic, partition, offset",
        "rejections_log": "flush_seq, topic, partition, offset",
        "flush_applied": "flush_seq",
    }
    rows = {
        table: [
            tuple(r)
            for r in client.query(f"SELECT * FROM metering.{table} ORDER BY {order}").result_rows
        ]
        for table, order in tables.items()
    }
    rows["agency_daily"] = protocol._views(client)
    return rows


def assert_verified(client: Client, flushes: int) -> None:
    verified = verify_store(client)
    assert verified.flush_failures == []
    assert verified.rollup_failures == []
    assert (verified.flushes, verified.chained, verified.not_chained) == (flushes, flushes, [])
    assert verified.ok


# -- (a) one order of flushes and one chain ---------------------------------------------


def test_the_second_writer_numbers_and_chains_after_the_first(
    client: Client, writers: tuple[Writer, Writer], lock_path: Path
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1, 2, 3]), {P0: None})) == FlushResult(1, 4, 4, 0, 0)
    assert b.flush(batch(events(3, 0, [4, 5, 6]), {P3: None})) == FlushResult(2, 3, 3, 0, 0)
    assert a.flush(batch(events(0, 4, [7, 8]), {P0: 4})) == FlushResult(3, 2, 2, 0, 0)

    assert ledger_rows(client) == [
        (1, TOPIC, 0, 0, 3, 4, 4, 0, 0, "writer-a"),
        (2, TOPIC, 3, 0, 2, 3, 3, 0, 0, "writer-b"),
        (3, TOPIC, 0, 4, 5, 2, 2, 0, 0, "writer-a"),
    ]
    chained = hashes(client)
    assert sorted(chained) == [1, 2, 3]
    assert chained[1][1] == chain_sha256("", chained[1][0])
    assert chained[2][1] == chain_sha256(chained[1][1], chained[2][0])
    assert chained[3][1] == chain_sha256(chained[2][1], chained[3][0])
    assert_verified(client, 3)
    assert lock_path.read_text() == CLEAN
    assert (a.recoveries, b.recoveries) == ([], [])


# -- (b) an event id counts once, whichever writer and partition --------------------------


def test_an_id_counted_by_one_writer_is_a_duplicate_for_the_other(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    firsts = [0, 1, 2, 3, 4, 5]
    assert a.flush(batch(events(0, 0, firsts), {P0: None})) == FlushResult(1, 6, 6, 0, 0)
    # B's filter was loaded before A's flush: it has never heard of A's ids.
    assert b.seen.ids_added == 0
    assert b.knows(firsts) == [False] * 6

    result = b.flush(batch(events(3, 0, [2, 10, 4, 11]), {P3: None}))
    assert result == FlushResult(flush_seq=2, messages=4, counted=2, duplicates=2, rejected=0)
    assert ledger_rows(client) == [
        (1, TOPIC, 0, 0, 5, 6, 6, 0, 0, "writer-a"),
        (2, TOPIC, 3, 0, 3, 4, 2, 2, 0, "writer-b"),
    ]
    assert counted_rows(client) == [
        *[(event_id(n), 0, n, 1) for n in firsts],
        (event_id(10), 3, 1, 2),
        (event_id(11), 3, 3, 2),
    ]
    # Step 0 put every id of A's flush into B's filter (B's own commit adds only its two).
    assert b.knows(firsts) == [True] * 6
    assert b.seen.ids_added == 6 + 2
    assert_verified(client, 2)

    # And back: A learns B's ids at its next flush, and counts neither again.
    again = a.flush(batch(events(0, 6, [10, 11, 12]), {P0: 6}))
    assert again == FlushResult(flush_seq=3, messages=3, counted=1, duplicates=2, rejected=0)
    assert a.seen.ids_added == 6 + 2 + 1
    assert ledger_rows(client)[-1] == (3, TOPIC, 0, 6, 8, 3, 1, 2, 0, "writer-a")
    assert counted_rows(client)[-1] == (event_id(12), 0, 8, 3)
    assert len(counted_rows(client)) == 9
    assert_verified(client, 3)


# -- (c) a flush of partitions another writer counted since they were read ----------------


@pytest.mark.parametrize("believed", [6, 0, 8, None], ids=["read-before", "zero", "ahead", "none"])
def test_a_batch_read_before_the_other_writer_counted_is_refused(
    client: Client, writers: tuple[Writer, Writer], lock_path: Path, believed: int | None
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1, 2, 3, 4, 5]), {P0: None})) == FlushResult(
        1, 6, 6, 0, 0
    )
    # B reads partitions 0 and 3; partition 0 from where it believes the ledger is.
    start = 0 if believed is None else believed
    stale = batch(
        [*events(0, start, [20, 21]), *events(3, 0, [22, 23, None])],
        {P0: believed, P3: None},
    )
    # Meanwhile A counts partition 0 on to offset 9.
    assert a.flush(batch(events(0, 6, [6, 7, 8, 9]), {P0: 6})) == FlushResult(2, 4, 4, 0, 0)
    before = store_rows(client)
    assert len(before["flush_ledger"]) == 2
    assert len(before["counted_events"]) == 10
    assert before["rejections_log"] == []

    with pytest.raises(StaleFlushError) as refused:
        b.flush(stale)
    assert refused.value.stale == [P0]
    assert refused.value.ledger == {P0: 10}
    assert str(refused.value) == "the ledger moved in usage.events[0] since this writer read it"
    assert store_rows(client) == before
    assert b.letters.published == []
    assert lock_path.read_text() == CLEAN  # nothing was written: no recovery needed
    assert not b.lock.held

    # Read again from the ledger (what the pipeline does), the flush is accepted, and
    # numbered after A's: the refused one used no number.
    fresh = batch(
        [*events(0, 10, [20, 21]), *events(3, 0, [22, 23, None])],
        {P0: refused.value.ledger[P0], P3: refused.value.ledger.get(P3)},
    )
    assert b.flush(fresh) == FlushResult(3, 5, 4, 0, 1)
    assert ledger_rows(client)[2:] == [
        (3, TOPIC, 0, 10, 11, 2, 2, 0, 0, "writer-b"),
        (3, TOPIC, 3, 0, 2, 3, 2, 0, 1, "writer-b"),
    ]
    assert rejection_rows(client) == [(3, 2, 3)]
    assert len(b.letters.published) == 1
    assert lock_path.read_text() == CLEAN
    assert (a.recoveries, b.recoveries) == ([], [])
    assert_verified(client, 3)


def test_a_partition_the_reader_thought_uncounted_is_refused(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1, 2]), {P0: None})) == FlushResult(1, 3, 3, 0, 0)
    before = store_rows(client)
    with pytest.raises(StaleFlushError) as refused:
        b.flush(batch([*events(0, 0, [0, 1]), *events(3, 0, [5])], {P0: None, P3: None}))
    assert refused.value.stale == [P0]
    assert refused.value.ledger == {P0: 3}
    assert store_rows(client) == before


def test_every_moved_partition_is_named(client: Client, writers: tuple[Writer, Writer]) -> None:
    a, b = writers
    assert a.flush(
        batch([*events(0, 0, [0, 1]), *events(3, 0, [2])], {P0: None, P3: None})
    ) == FlushResult(1, 3, 3, 0, 0)
    before = store_rows(client)
    with pytest.raises(StaleFlushError) as refused:
        b.flush(batch([*events(0, 0, [7]), *events(3, 0, [8])], {P0: 0, P3: None}))
    assert refused.value.stale == [P0, P3]
    assert refused.value.ledger == {P0: 2, P3: 1}
    assert str(refused.value) == (
        "the ledger moved in usage.events[0], usage.events[3] since this writer read it"
    )
    assert store_rows(client) == before


def test_a_batch_read_where_the_ledger_is_is_accepted(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1, 2]), {P0: None})) == FlushResult(1, 3, 3, 0, 0)
    accepted = batch([*events(0, 3, [3, 1]), *events(3, 0, [4])], {P0: 3, P3: None})
    assert b.flush(accepted) == FlushResult(2, 3, 2, 1, 0)
    assert ledger_rows(client) == [
        (1, TOPIC, 0, 0, 2, 3, 3, 0, 0, "writer-a"),
        (2, TOPIC, 0, 3, 4, 2, 1, 1, 0, "writer-b"),
        (2, TOPIC, 3, 0, 0, 1, 1, 0, 0, "writer-b"),
    ]
    assert_verified(client, 2)


# -- (d) the last holder died mid-flush, holding the lock --------------------------------


def test_the_next_writer_recovers_a_flush_that_died_after_staging(
    client: Client, writers: tuple[Writer, Writer], lock_path: Path
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1, 2, 3]), {P0: None})) == FlushResult(1, 4, 4, 0, 0)

    # A's next flush stages its rows for flush 2, holding the lock, and dies there.
    crashed = batch(events(0, 4, [30, 31, None]), {P0: 4})
    ledger = Ledger(client)
    a.lock.acquire()
    seq = ledger.head()[0] + 1
    assert seq == 2
    now = datetime.now(UTC)
    ledger.stage_counted_events(counted_events_table(crashed.valid, seq, now), "crash-events")
    rejected = crashed.rejected[0]
    row = {
        "received_at": now,
        "reason": str(rejected.rejection.reason),
        "detail": rejected.rejection.detail,
        "event_id": rejected.rejection.event_id,
        "agency_id": rejected.rejection.agency_id,
        "topic": TOPIC,
        "partition": 0,
        "offset": rejected.source.offset,
        "size_bytes": rejected.source.size,
        "flush_seq": seq,
    }
    ledger.stage_rejections([[row[c] for c in REJECTION_COLUMNS]], "crash-rejections")
    a.lock.release(clean=False)
    assert lock_path.read_text() == f"dirty {os.getpid()}\n"
    assert ledger.orphan_rows(1) == 3
    assert (event_id(30), 0, 4, 2) in counted_rows(client)

    # B flushes next: it recovers first (once), then counts exactly its own batch,
    # event 30 included: the orphan's copy of it was never counted.
    result = b.flush(batch(events(3, 0, [30, 32, 1]), {P3: None}))
    assert result == FlushResult(flush_seq=2, messages=3, counted=2, duplicates=1, rejected=0)
    assert b.recoveries == [3]
    assert (b.lock.recoveries, a.recoveries) == (1, [])
    assert lock_path.read_text() == CLEAN
    assert ledger.orphan_rows(2) == 0
    assert counted_rows(client) == [
        *[(event_id(n), 0, n, 1) for n in [0, 1, 2, 3]],
        (event_id(30), 3, 0, 2),
        (event_id(32), 3, 1, 2),
    ]
    assert rejection_rows(client) == []
    assert ledger_rows(client) == [
        (1, TOPIC, 0, 0, 3, 4, 4, 0, 0, "writer-a"),
        (2, TOPIC, 3, 0, 2, 3, 2, 1, 0, "writer-b"),
    ]
    assert_verified(client, 2)

    # A (restarted) reads partition 0 again from the ledger: 4. Event 30 is B's now.
    restarted = start_writer(client, "writer-a", lock_path)
    try:
        assert restarted.flush(batch(events(0, 4, [30, 31, None]), {P0: 4})) == FlushResult(
            3, 3, 1, 1, 1
        )
    finally:
        restarted.sink.close()
        restarted.lock.close()
    assert restarted.recoveries == []
    assert rejection_rows(client) == [(0, 6, 3)]
    assert_verified(client, 3)


def test_the_next_writer_recovers_a_sink_that_crashed_after_staging(
    client: Client, writers: tuple[Writer, Writer], lock_path: Path
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1]), {P0: None})) == FlushResult(1, 2, 2, 0, 0)
    crashing = start_writer(
        client, "writer-c", lock_path, faults=CrashingFaults(crash_step="after_stage")
    )
    try:
        with pytest.raises(SimulatedCrash):
            crashing.flush(batch(events(0, 2, [5, 6, None]), {P0: 2}))
    finally:
        crashing.sink.close()
        crashing.lock.close()
    # The sink let go of the lock without marking it clean, its staged rows in place.
    assert lock_path.read_text() == f"dirty {os.getpid()}\n"
    assert Ledger(client).orphan_rows(1) == 3

    assert b.flush(batch(events(0, 2, [5, 6, None]), {P0: 2})) == FlushResult(2, 3, 2, 0, 1)
    assert b.recoveries == [3]
    assert lock_path.read_text() == CLEAN
    assert counted_rows(client) == [
        (event_id(0), 0, 0, 1),
        (event_id(1), 0, 1, 1),
        (event_id(5), 0, 2, 2),
        (event_id(6), 0, 3, 2),
    ]
    assert rejection_rows(client) == [(0, 4, 2)]
    assert_verified(client, 2)
