"""The batch intake around a rebalance: neither a revocation nor an assignment reads the
ledger while this writer's own flush is under way (its rows would be missing, and the
next batch refused and read twice)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from streams.intake import BatchIntake, _ResumeFromStore
from streams.options import BatchPolicy, KafkaClientOptions, StreamOptions


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
