"""Writers of one store that share nothing but the store (the engine in-process, no
Kafka): two `ClickHouseSink`s of two registered writers, with their own dedupe filters,
as two hosts would run them.

The store orders their commits: each appends at the head + 1, and only one append of a
number is stored. A writer whose append finds the number taken catches up and either
appends again at the new head, starts its flush over (the commit before it counted one
of its events), or refuses it (that commit counted one of its partitions). Staged rows
of a flush that never committed are deleted only once it can never commit. Every
figure here is exact, and every store must verify."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from metering.verify import verify_store
from store.ledger import Janitor, Ledger
from store.ledger.chain import chain_sha256
from store.writers import CORRECTIONS_LEASE, FlushNumbers, Leases, Registry, flush_number
from streams.batch import ClassifiedBatch, SourceMessage, classify_batch
from streams.corrections_lease import CorrectionsLease, fold_up_to
from streams.dead_letter import DeadLetter
from streams.faults import FaultPlan
from streams.seen_ids import SeenIdFilter, id_halves, load_from_store
from streams.sink import ClickHouseSink, FlushResult, StaleFlushError
from tests.unit import test_sink_protocol as protocol
from tests.unit.registered import register_writer
from tests.unit.test_sink_protocol import TOPIC, CrashingFaults, SimulatedCrash

client = protocol.client  # the migrated in-process store fixture

P0 = (TOPIC, 0)
P3 = (TOPIC, 3)
NOT_JSON = b"{not json"
FILTER_MIB = 1

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


class Letters:
    """Dead letters; `during` runs (awaited) inside the next publish: what another
    writer does while this one is between staging and commit."""

    def __init__(self) -> None:
        self.published: list[DeadLetter] = []
        self.during: Callable[[], Awaitable[None]] | None = None

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.published.extend(letters)
        during, self.during = self.during, None
        if during is not None:
            await during()


class HandedOut(FlushNumbers):
    """A writer's flush numbers, each one kept as it is handed out."""

    def __init__(self, writer_no: int, clock_ms: Callable[[], int] | None = None) -> None:
        if clock_ms is None:
            super().__init__(writer_no)
        else:
            super().__init__(writer_no, clock_ms)
        self.handed: list[int] = []

    def next(self) -> int:
        number = super().next()
        self.handed.append(number)
        return number


@dataclass
class Writer:
    name: str
    number: int
    sink: ClickHouseSink
    seen: SeenIdFilter
    letters: Letters
    numbers: HandedOut

    def flush(self, flushed: ClassifiedBatch) -> FlushResult:
        return asyncio.run(self.sink.flush(flushed))

    def knows(self, numbers: Sequence[int]) -> list[bool]:
        return [bool(b) for b in self.seen.maybe_seen(id_halves([event_id(n) for n in numbers]))]

    def flush_seq(self, nth: int) -> int:
        """The number of the `nth` flush this writer started (a flush that starts over
        takes a new one)."""
        return self.numbers.handed[nth - 1]


def start_writer(
    client: Client,
    name: str,
    faults: FaultPlan | None = None,
    clock_ms: Callable[[], int] | None = None,
) -> Writer:
    """A writer as `metering worker` starts one: registered, the head read before the
    dedupe filter is loaded."""
    ledger = Ledger(client)
    number = register_writer(client, name)
    known = ledger.max_committed_seq()
    seen = load_from_store(ledger, FILTER_MIB)
    letters = Letters()
    numbers = HandedOut(number, clock_ms)
    sink = ClickHouseSink(
        ledger,
        letters,
        writer_no=number,
        worker=name,
        filter_caught_up_to=known,
        retry_max_seconds=0.05,
        fatal_tries=1,
        retry_first_seconds=0.01,
        faults=faults,
        seen_ids=seen,
        registry=Registry(client),
        flush_numbers=numbers,
    )
    return Writer(name, number, sink, seen, letters, numbers)


@pytest.fixture
def writers(client: Client) -> Iterator[tuple[Writer, Writer]]:
    a = start_writer(client, "writer-a")
    b = start_writer(client, "writer-b")
    yield a, b
    for w in (a, b):
        w.sink.close()


def result(w: Writer, nth: int, commit: int, *counts: int) -> FlushResult:
    messages, counted, duplicates, rejected = counts
    return FlushResult(w.flush_seq(nth), messages, counted, duplicates, rejected, commit)


def ledger_rows(client: Client) -> list[tuple[Any, ...]]:
    rows = client.query(
        "SELECT commit_seq, flush_seq, topic, partition, first_offset, last_offset, messages, "
        "counted, duplicates, rejected, worker, writer_no FROM metering.flush_ledger "
        "ORDER BY commit_seq, topic, partition"
    ).result_rows
    return [tuple(r) for r in rows]


def hashes(client: Client) -> dict[int, tuple[str, str]]:
    """commit_seq -> (content_sha256, chain_sha256); one pair per commit."""
    rows = client.query(
        "SELECT DISTINCT commit_seq, content_sha256, chain_sha256 FROM metering.flush_ledger "
        "ORDER BY commit_seq"
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
        "flush_ledger": "commit_seq, topic, partition",
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


def assert_verified(client: Client, commits: int) -> None:
    verified = verify_store(client)
    assert verified.flush_failures == []
    assert verified.rollup_failures == []
    assert (verified.flushes, verified.chained, verified.not_chained) == (commits, commits, [])
    assert verified.ok


def views_of(numbers: Sequence[int]) -> list[tuple[Any, ...]]:
    """agency_daily computed from the events themselves."""
    days: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n in numbers:
        e = protocol._event(n, f"fed-{n % 3}", f"u{n % 4}", 1 + n % 2)
        days.setdefault((e["occurred_at"][:10], e["agency_id"]), []).append(e)
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


# -- (a) one order of commits and one chain ----------------------------------------------


def test_commits_of_two_writers_form_one_order_and_one_chain(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    assert (a.number, b.number) == (1, 2)
    assert a.flush(batch(events(0, 0, [0, 1, 2, 3]), {P0: None})) == result(a, 1, 1, 4, 4, 0, 0)
    assert b.flush(batch(events(3, 0, [4, 5, 6]), {P3: None})) == result(b, 1, 2, 3, 3, 0, 0)
    assert a.flush(batch(events(0, 4, [7, 8]), {P0: 4})) == result(a, 2, 3, 2, 2, 0, 0)

    assert ledger_rows(client) == [
        (1, a.flush_seq(1), TOPIC, 0, 0, 3, 4, 4, 0, 0, "writer-a", 1),
        (2, b.flush_seq(1), TOPIC, 3, 0, 2, 3, 3, 0, 0, "writer-b", 2),
        (3, a.flush_seq(2), TOPIC, 0, 4, 5, 2, 2, 0, 0, "writer-a", 1),
    ]
    chained = hashes(client)
    assert sorted(chained) == [1, 2, 3]
    assert chained[1][1] == chain_sha256("", chained[1][0])
    assert chained[2][1] == chain_sha256(chained[1][1], chained[2][0])
    assert chained[3][1] == chain_sha256(chained[2][1], chained[3][0])
    assert protocol._views(client) == views_of(range(9))
    assert_verified(client, 3)


# -- (b) an event id counts once, whichever writer and partition --------------------------


def test_an_id_counted_by_one_writer_is_a_duplicate_for_the_other(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    firsts = [0, 1, 2, 3, 4, 5]
    assert a.flush(batch(events(0, 0, firsts), {P0: None})) == result(a, 1, 1, 6, 6, 0, 0)
    # B's filter was loaded before A's flush: it has never heard of A's ids.
    assert b.seen.ids_added == 0
    assert b.knows(firsts) == [False] * 6

    got = b.flush(batch(events(3, 0, [2, 10, 4, 11]), {P3: None}))
    assert got == result(b, 1, 2, 4, 2, 2, 0)
    assert counted_rows(client) == [
        *[(event_id(n), 0, n, a.flush_seq(1)) for n in firsts],
        (event_id(10), 3, 1, b.flush_seq(1)),
        (event_id(11), 3, 3, b.flush_seq(1)),
    ]
    # Step 0 put every id of A's flush into B's filter (B's own commit adds only its two).
    assert b.knows(firsts) == [True] * 6
    assert b.seen.ids_added == 6 + 2

    # And back: A learns B's ids at its next flush, and counts neither again.
    again = a.flush(batch(events(0, 6, [10, 11, 12]), {P0: 6}))
    assert again == result(a, 2, 3, 3, 1, 2, 0)
    assert a.seen.ids_added == 6 + 2 + 1
    assert len(counted_rows(client)) == 9
    assert_verified(client, 3)


# -- (c) a commit that came first ---------------------------------------------------------


def test_a_commit_that_took_the_number_is_followed_at_the_new_head(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    """B has staged and is publishing its dead letters when A commits: B's append at
    commit 1 finds A's flush there, and B appends again at 2."""
    a, b = writers

    async def a_commits() -> None:
        assert await a.sink.flush(batch(events(0, 0, [0, 1, 2]), {P0: None})) == result(
            a, 1, 1, 3, 3, 0, 0
        )

    b.letters.during = a_commits
    got = b.flush(batch(events(3, 0, [5, None, 6]), {P3: None}))
    assert got == result(b, 1, 2, 3, 2, 0, 1)
    assert b.sink._metrics.commits_retried.value == 1
    assert ledger_rows(client) == [
        (1, a.flush_seq(1), TOPIC, 0, 0, 2, 3, 3, 0, 0, "writer-a", 1),
        (2, b.flush_seq(1), TOPIC, 3, 0, 2, 3, 2, 0, 1, "writer-b", 2),
    ]
    assert rejection_rows(client) == [(3, 1, b.flush_seq(1))]
    assert len(b.letters.published) == 1
    assert protocol._views(client) == views_of([0, 1, 2, 5, 6])
    assert_verified(client, 2)


def test_a_commit_that_counted_an_event_of_the_flush_makes_it_start_over(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    """The same event on partitions of two writers at the same moment: A commits first,
    so A's copy counts; B's flush starts over under a new number without it."""
    a, b = writers

    async def a_commits() -> None:
        got = await a.sink.flush(batch(events(0, 0, [0, 7, 1]), {P0: None}))
        assert got == result(a, 1, 1, 3, 3, 0, 0)

    b.letters.during = a_commits
    got = b.flush(batch(events(3, 0, [7, 8, None]), {P3: None}))
    # B's first number (its flush 1) was staged and deleted; flush 2 commits.
    assert got == result(b, 2, 2, 3, 1, 1, 1)
    assert b.sink._metrics.flushes_redone.value == 1
    assert len(b.letters.published) == 1  # the batch's dead letters, once
    assert counted_rows(client) == [
        (event_id(0), 0, 0, a.flush_seq(1)),
        (event_id(7), 0, 1, a.flush_seq(1)),
        (event_id(1), 0, 2, a.flush_seq(1)),
        (event_id(8), 3, 1, b.flush_seq(2)),
    ]
    assert rejection_rows(client) == [(3, 2, b.flush_seq(2))]
    assert ledger_rows(client)[1] == (
        2,
        b.flush_seq(2),
        TOPIC,
        3,
        0,
        2,
        3,
        1,
        1,
        1,
        "writer-b",
        2,
    )
    assert protocol._views(client) == views_of([0, 7, 1, 8])
    assert_verified(client, 2)


def test_a_commit_that_counted_a_partition_of_the_flush_refuses_it(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    """A zombie: B read partition 0 from 0 and staged it; meanwhile A (its partition's
    new owner) commits partition 0 from 0. B's flush is refused after its lost append,
    its staged rows deleted, and nothing of it counts."""
    a, b = writers

    async def a_commits() -> None:
        await a.sink.flush(batch(events(0, 0, [0, 1, 2, 3]), {P0: None}))

    b.letters.during = a_commits
    with pytest.raises(StaleFlushError) as refused:
        b.flush(batch(events(0, 0, [0, 1, None]), {P0: None}))
    assert refused.value.stale == [P0]
    assert refused.value.ledger == {P0: 4}
    assert "writer 1 'writer-a' (host test-host, pid 1, since" in str(refused.value)
    assert b.sink._metrics.flushes_refused.value == 1
    assert ledger_rows(client) == [(1, a.flush_seq(1), TOPIC, 0, 0, 3, 4, 4, 0, 0, "writer-a", 1)]
    assert counted_rows(client) == [(event_id(n), 0, n, a.flush_seq(1)) for n in range(4)]
    assert rejection_rows(client) == []
    assert_verified(client, 1)


@pytest.mark.parametrize("believed", [6, 0, 8, None], ids=["read-before", "zero", "ahead", "none"])
def test_a_batch_read_before_the_other_writer_counted_is_refused_before_staging(
    client: Client, writers: tuple[Writer, Writer], believed: int | None
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1, 2, 3, 4, 5]), {P0: None})) == result(
        a, 1, 1, 6, 6, 0, 0
    )
    start = 0 if believed is None else believed
    stale = batch(
        [*events(0, start, [20, 21]), *events(3, 0, [22, 23, None])],
        {P0: believed, P3: None},
    )
    assert a.flush(batch(events(0, 6, [6, 7, 8, 9]), {P0: 6})) == result(a, 2, 2, 4, 4, 0, 0)
    before = store_rows(client)
    with pytest.raises(StaleFlushError) as refused:
        b.flush(stale)
    assert refused.value.stale == [P0]
    assert refused.value.ledger == {P0: 10}
    assert store_rows(client) == before
    assert b.letters.published == []

    # Read again from the ledger (what the pipeline does), the flush is accepted; the
    # refused one used no flush number.
    fresh = batch(
        [*events(0, 10, [20, 21]), *events(3, 0, [22, 23, None])],
        {P0: refused.value.ledger[P0], P3: refused.value.ledger.get(P3)},
    )
    assert b.flush(fresh) == result(b, 1, 3, 5, 4, 0, 1)
    assert rejection_rows(client) == [(3, 2, b.flush_seq(1))]
    assert_verified(client, 3)


def test_every_moved_partition_is_named(client: Client, writers: tuple[Writer, Writer]) -> None:
    a, b = writers
    a.flush(batch([*events(0, 0, [0, 1]), *events(3, 0, [2])], {P0: None, P3: None}))
    before = store_rows(client)
    with pytest.raises(StaleFlushError) as refused:
        b.flush(batch([*events(0, 0, [7]), *events(3, 0, [8])], {P0: 0, P3: None}))
    assert refused.value.stale == [P0, P3]
    assert refused.value.ledger == {P0: 2, P3: 1}
    assert str(refused.value).startswith(
        "the ledger moved in usage.events[0], usage.events[3] since this writer read it "
        "(writer 1 'writer-a' (host test-host, pid 1, since "
    )
    assert store_rows(client) == before


# -- (d) what a writer that stopped midway leaves ------------------------------------------


def test_staged_rows_of_a_flush_that_can_still_commit_are_kept(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    """B is paused between staging and commit (for as long as it takes): the janitor of
    another writer leaves its rows alone, and B's commit then counts them."""
    a, b = writers
    janitor = Janitor(Ledger(client))

    async def others_tidy_up() -> None:
        assert janitor.run(fold_after=0).orphan_flushes_deleted == ()
        await a.sink.flush(batch(events(0, 0, [0, 1]), {P0: None}))
        assert janitor.delete_orphans() == ()

    b.letters.during = others_tidy_up
    assert b.flush(batch(events(3, 0, [5, 6, None]), {P3: None})) == result(b, 1, 2, 3, 2, 0, 1)
    assert protocol._views(client) == views_of([0, 1, 5, 6])
    assert_verified(client, 2)


def test_a_writer_killed_after_staging_leaves_rows_deleted_once_its_range_is_counted(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    assert a.flush(batch(events(0, 0, [0, 1]), {P0: None})) == result(a, 1, 1, 2, 2, 0, 0)
    crashing = start_writer(client, "writer-c", faults=CrashingFaults(crash_step="after_stage"))
    try:
        with pytest.raises(SimulatedCrash):
            crashing.flush(batch(events(0, 2, [5, 6, None]), {P0: 2}))
    finally:
        crashing.sink.close()
    janitor = Janitor(Ledger(client))
    assert janitor.delete_orphans() == ()  # it could still commit: nobody counted offset 2
    assert len(counted_rows(client)) == 4

    # B takes the partition over and counts from 2; now the orphans can never commit.
    assert b.flush(batch(events(0, 2, [5, 6, None]), {P0: 2})) == result(b, 1, 2, 3, 2, 0, 1)
    assert janitor.delete_orphans() == (crashing.flush_seq(1),)
    assert counted_rows(client) == [
        (event_id(0), 0, 0, a.flush_seq(1)),
        (event_id(1), 0, 1, a.flush_seq(1)),
        (event_id(5), 0, 2, b.flush_seq(1)),
        (event_id(6), 0, 3, b.flush_seq(1)),
    ]
    assert rejection_rows(client) == [(0, 4, b.flush_seq(1))]
    assert_verified(client, 2)


@pytest.mark.parametrize("step", ["after_commit", "after_apply_model_daily_rollup"])
def test_a_flush_its_writer_did_not_fold_is_folded_once_by_another(
    client: Client, writers: tuple[Writer, Writer], step: str
) -> None:
    a, _ = writers
    crashing = start_writer(client, "writer-c", faults=CrashingFaults(crash_step=step))
    try:
        with pytest.raises(SimulatedCrash):
            crashing.flush(batch(events(0, 0, [0, 1, 2]), {P0: None}))
    finally:
        crashing.sink.close()
    ledger = Ledger(client)
    janitor = Janitor(ledger, fold_after=3600)
    assert janitor.fold_stuck() == ()  # committed a moment ago: its writer may still fold
    assert janitor.fold_stuck(fold_after=0) == (crashing.flush_seq(1),)
    assert protocol._views(client) == views_of([0, 1, 2])
    # The writer comes back and folds again: nothing changes (it is marked applied).
    assert ledger.apply(crashing.flush_seq(1)) is True
    assert protocol._views(client) == views_of([0, 1, 2])
    assert a.flush(batch(events(0, 3, [3]), {P0: 3})) == result(a, 1, 2, 1, 1, 0, 0)
    assert protocol._views(client) == views_of([0, 1, 2, 3])
    assert_verified(client, 2)


def test_folds_wait_while_the_corrections_lease_is_held(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    leases = Leases(client)
    assert leases.take(CORRECTIONS_LEASE, 1, b.number)
    waits = 0

    async def lease_released_after_two_waits() -> None:
        nonlocal waits
        waits += 1
        # Not folded while the lease is held: the flush is committed, the views not yet.
        assert protocol._views(client) == []
        if waits == 2:
            leases.release(CORRECTIONS_LEASE, 1, b.number)

    a.sink._when_folds_wait = lease_released_after_two_waits
    assert a.flush(batch(events(0, 0, [0, 1]), {P0: None})) == result(a, 1, 1, 2, 2, 0, 0)
    assert waits == 2
    assert protocol._views(client) == views_of([0, 1])
    assert_verified(client, 1)


def test_a_fold_that_starts_while_the_lease_is_held_marks_nothing(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    """The statements of a fold are judged one by one; a lease released between the
    folds and the mark must not let a mark through without the folds (the bug: flushes
    committed during a correction marked applied and missing from every rollup)."""
    a, b = writers
    leases, ledger = Leases(client), Ledger(client)
    assert leases.take(CORRECTIONS_LEASE, 1, b.number)
    released: list[str] = []

    def release_after_the_folds(rollup: str) -> None:
        if rollup == "tenant_daily_rollup" and not released:  # the last fold
            leases.release(CORRECTIONS_LEASE, 1, b.number)
            released.append(rollup)

    flushed = batch(events(0, 0, [0, 1, 2]), {P0: None})
    a.sink._when_folds_wait = None
    # Commit, then fold by hand with the lease held and released before the mark.
    a.sink._fold = _no_fold  # type: ignore[method-assign]
    assert a.flush(flushed).commit_seq == 1
    seq = a.flush_seq(1)
    assert ledger.apply(seq, after_each=release_after_the_folds) is False
    assert released == []  # it did not even try: the lease was held
    assert protocol._views(client) == []
    assert not ledger.is_applied(seq)
    leases.release(CORRECTIONS_LEASE, 1, b.number)
    assert ledger.apply(seq) is True
    assert protocol._views(client) == views_of([0, 1, 2])
    assert_verified(client, 1)


def test_a_lease_taken_midway_through_a_fold_is_finished_by_its_holder(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    a, b = writers
    ledger = Ledger(client)
    lease = CorrectionsLease(Leases(client), Registry(client), b.number, 30.0)
    a.sink._fold = _no_fold  # type: ignore[method-assign]
    assert a.flush(batch(events(0, 0, [0, 1, 2, 3]), {P0: None})).commit_seq == 1
    seq = a.flush_seq(1)

    def a_correction_runs_now(rollup: str) -> None:
        if rollup == "agency_daily_rollup":  # after the first fold of four more
            held = lease.take()
            fold_up_to(ledger, ledger.max_committed_seq(), held.term)
            lease.release(held)

    assert ledger.apply(seq, after_each=a_correction_runs_now) is True
    assert protocol._views(client) == views_of([0, 1, 2, 3])
    assert_verified(client, 1)


async def _no_fold(seq: int) -> None:
    """A sink that commits and leaves the fold to the test."""


def granules_read_for(client: Client, flush_seq: int) -> int:
    """The granules a fold's read of one flush reads (`EXPLAIN indexes = 1`: what is
    left after every index, the flush_seq minmax index among them)."""
    plan = client.query(
        "EXPLAIN indexes = 1 SELECT count() FROM metering.counted_events "
        f"WHERE flush_seq = {int(flush_seq)}"
    ).result_rows
    lines = [str(row[0]).strip() for row in plan]
    read = [line for line in lines if line.startswith("Parts:") and "| Granules:" in line]
    assert len(read) == 1, lines
    return int(read[0].rpartition("Granules: ")[2])


def test_a_fold_reads_only_its_own_flush_after_merges_of_both_writers(
    client: Client, writers: tuple[Writer, Writer]
) -> None:
    """A fold reads its flush back by `flush_seq` through the minmax index. Merged parts
    hold both writers' flushes, their event ids interleaved, so every granule holds every
    flush: only numbers that grow across writers keep the new flush outside them (the
    earlier writer_no * 10^9 + n put writer a's next flush inside b's range: every
    granule read)."""
    a, b = writers
    per_flush, rounds = 3_000, 4
    offsets = {0: 0, 3: 0}
    for j in range(2 * rounds):
        w, partition = (a, 0) if j % 2 == 0 else (b, 3)
        numbers = [i * 2 * rounds + j for i in range(per_flush)]
        read_from = offsets[partition] or None
        w.flush(
            batch(events(partition, offsets[partition], numbers), {(TOPIC, partition): read_from})
        )
        offsets[partition] += per_flush
    client.command("OPTIMIZE TABLE metering.counted_events FINAL")
    merged = 2 * rounds * per_flush
    assert client.query("SELECT count() FROM metering.counted_events").result_rows == [(merged,)]
    parts = client.query(
        "SELECT count() FROM system.parts WHERE database = 'metering' "
        "AND table = 'counted_events' AND active"
    ).result_rows
    assert parts == [(1,)]
    # Every granule of the merged part holds flushes of both writers.
    granules = -(-merged // 8192)
    assert [granules_read_for(client, w.flush_seq(1)) for w in writers] == [granules] * 2

    # The next flush is one new part of one granule: its fold reads only that.
    a.flush(batch(events(0, offsets[0], [merged + i for i in range(100)]), {P0: offsets[0]}))
    assert granules_read_for(client, a.flush_seq(rounds + 1)) == 1
    assert protocol._views(client) == views_of(range(merged + 100))
    assert_verified(client, 2 * rounds + 1)


def test_a_writer_whose_clock_is_behind_numbers_its_flushes_above_the_ledger_s(
    client: Client,
) -> None:
    """Its first flush looks at the ledger before it takes a number: above every
    committed one, however far behind its clock is."""
    ahead = start_writer(client, "writer-ahead")
    ahead.flush(batch(events(0, 0, [0, 1]), {P0: None}))
    behind = start_writer(client, "writer-behind", clock_ms=lambda: 1_000)  # 2025-01-01
    behind.flush(batch(events(3, 0, [2, 3]), {P3: None}))
    for w in (ahead, behind):
        w.sink.close()
    assert behind.numbers.handed == [
        flush_number(behind.number, (ahead.flush_seq(1) >> 22) % (1 << 40) + 1)
    ]
    assert protocol._views(client) == views_of([0, 1, 2, 3])
    assert_verified(client, 2)
