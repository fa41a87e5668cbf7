"""The batch intake around a rebalance: neither a revocation nor an assignment reads the
ledger while this writer's own flush is under way (its rows would be missing, and the
next batch refused and read twice)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from streams.intake import BatchIntake, _ResumeFromStore
from streams.options import BatchPolicy, KafkaClientOptions, StreamOptions
from streams.positions import Span


def _intake() -> BatchIntake:
    options = StreamOptions(
        kafka=KafkaClientOptions(bootstrap_servers=("127.0.0.1:1",)),
        batch=BatchPolicy(),
        consumer_group="group",
        events_topic="usage.events",
    )
    return BatchIntake(options, "usage.events", "group")


def _with_flush_under_way(intake: BatchIntake) -> tuple[asyncio.Future[object], list[str]]:
    """A flush that is under way until the test ends it; `seen` records, for each call
    of the assignment hook, whether that flush had ended by then."""
    flushing: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    intake._flushing = flushing
    seen: list[str] = []

    async def on_assigned(partitions: list[tuple[str, int]]) -> None:
        seen.append(f"{'after' if flushing.done() else 'during'} the flush: {partitions}")

    intake.on_assigned = on_assigned
    return flushing, seen


def test_an_assignment_waits_for_the_flush_under_way_before_the_hook_reads_the_ledger() -> None:
    async def scenario() -> list[str]:
        intake = _intake()
        flushing, seen = _with_flush_under_way(intake)
        listener = _ResumeFromStore(intake)
        assigning = asyncio.ensure_future(
            listener.on_partitions_assigned([TopicPartition("usage.events", 3)])
        )
        await asyncio.sleep(0.05)
        assert not assigning.done() and seen == []
        flushing.set_result(object())
        await asyncio.wait_for(assigning, timeout=1)
        return seen

    assert asyncio.run(scenario()) == ["after the flush: [('usage.events', 3)]"]


def test_a_revocation_waits_for_the_flush_under_way_and_only_a_real_one_counts() -> None:
    async def scenario() -> tuple[bool, int, int]:
        intake = _intake()
        flushing, _ = _with_flush_under_way(intake)
        revoking = asyncio.ensure_future(intake.revoked([TopicPartition("usage.events", 0)]))
        await asyncio.sleep(0.05)
        waited = not revoking.done()
        flushing.set_result(None)  # refused as stale: still settled
        await asyncio.wait_for(revoking, timeout=1)
        after_real = intake._revocations
        await intake.revoked([])  # the first join revokes nothing
        return waited, after_real, intake._revocations

    assert asyncio.run(scenario()) == (True, 1, 1)


def test_no_flush_under_way_means_no_wait() -> None:
    async def scenario() -> None:
        intake = _intake()
        await asyncio.wait_for(intake.flush_settled(), timeout=0.5)
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        intake._flushing = done
        await asyncio.wait_for(intake.flush_settled(), timeout=0.5)

    asyncio.run(scenario())


def test_losing_held_partitions_counts_as_a_revocation_however_the_client_says_it() -> None:
    async def scenario() -> list[int]:
        intake = _intake()
        listener = _ResumeFromStore(intake)
        counts = []
        await listener.on_partitions_revoked([])  # the first join
        await listener.on_partitions_assigned([TopicPartition("usage.events", 0)])
        counts.append(intake._revocations)
        await listener.on_partitions_revoked([])  # membership lost: names nothing
        await listener.on_partitions_assigned([TopicPartition("usage.events", 0)])
        counts.append(intake._revocations)
        # An assignment replacing held partitions with no revocation before it.
        await listener.on_partitions_assigned([TopicPartition("usage.events", 1)])
        counts.append(intake._revocations)
        await listener.on_partitions_revoked([TopicPartition("usage.events", 1)])
        await listener.on_partitions_assigned([TopicPartition("usage.events", 1)])
        counts.append(intake._revocations)
        return counts

    assert asyncio.run(scenario()) == [0, 1, 2, 3]


class _Record:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic = "usage.events"
        self.partition = partition
        self.offset = offset
        self.key = None
        self.value = b"{}"


class _Consumer:
    """Just enough of aiokafka's consumer for `_read_batch` and `seek_assigned`: a
    partition's position, the records a read returns, and a position query that can be
    held (it answers with the position as it was when asked, as a query answered
    before a rebalance's seek does)."""

    def __init__(self, positions: dict[TopicPartition, int]) -> None:
        self.positions = dict(positions)
        self.pending: list[list[_Record]] = []
        self.hold: asyncio.Event | None = None
        self.asked = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if not self.pending:
            return {}
        records = self.pending.pop(0)
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            self.positions[tp] = record.offset + 1
        return {TopicPartition(records[0].topic, records[0].partition): list(records)}

    async def position(self, tp: TopicPartition) -> int:
        answer = int(self.positions[tp])
        if self.hold is not None:
            self.asked.set()
            await self.hold.wait()
        return answer

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)


def test_a_position_read_before_a_rebalance_seek_does_not_start_the_next_span() -> None:
    """A writer paused past its session holds partition 1 read up to 150; the ledger
    says 100 (its last batch was never flushed). The rebalance that gives partition 1
    back seeks it to 100 while the read loop waits for a position it asked for before;
    the next read must start its span at 100, where the consumer stands."""
    tp = TopicPartition("usage.events", 1)

    async def scenario() -> tuple[int, dict[tuple[str, int], Span]]:
        intake = _intake()
        consumer = _Consumer({tp: 150})
        intake._consumer = consumer
        intake._at = {tp: 150}
        intake.resume_offset = lambda topic, partition: 100
        listener = _ResumeFromStore(intake)
        consumer.hold = asyncio.Event()
        reading = asyncio.ensure_future(intake._read_batch(consumer))
        await asyncio.wait_for(consumer.asked.wait(), timeout=1)
        await listener.on_partitions_revoked([tp])
        await listener.on_partitions_assigned([tp])
        consumer.hold.set()
        await asyncio.wait_for(reading, timeout=1)
        consumer.hold = None
        stands_at = intake._at[tp]
        consumer.pending.append([_Record(1, offset) for offset in range(100, 130)])
        read = await intake._read_batch(consumer)
        return stands_at, read.spans

    assert asyncio.run(scenario()) == (100, {("usage.events", 1): Span(100, 130)})


def test_a_span_the_records_do_not_fit_is_dropped_and_judged_record_by_record() -> None:
    tp = TopicPartition("usage.events", 2)

    async def scenario() -> tuple[dict[tuple[str, int], Span], int, int]:
        intake = _intake()
        consumer = _Consumer({tp: 40})
        intake._at = {tp: 60}  # wrong: the consumer stands at 40
        consumer.pending.append([_Record(2, offset) for offset in range(40, 50)])
        read = await intake._read_batch(consumer)
        return read.spans, len(read.messages), intake._at[tp]

    assert asyncio.run(scenario()) == ({}, 10, 50)
