"""Repair a ledger that is ahead of its data: read the damaged flushes' ranges from Kafka
again and stage exactly what they counted.

A damaged flush (`store.ledger.integrity`) is committed, so its ranges must never be
counted again; but its staged rows are gone. Its content is determined by what it read:
the same offsets hold the same records (read_committed, as the worker reads), the same
classification makes the same rejections and the same in-batch duplicates, and an
event was counted by it if and only if no commit before it had counted that id. So the
repair reads each range, classifies it, drops the ids counted by earlier commits, and
compares the content hash of the result with the ledger's (`store.ledger.chain`): equal,
the rows are staged again under the flush's own number, byte for byte what it counted;
different, or the broker no longer holds the offsets, the range is recorded as lost
(`metering.lost_ranges`) and `metering certify` fails naming it. Flushes are repaired
in commit order, so an earlier repair is in place before a later one's dedupe asks.
The rollups are then checked and rebuilt under the corrections lease
(`streams.corrections_lease.rebuild_rollups_if_short`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from store.ledger import Ledger
from store.ledger.integrity import (
    DamagedFlush,
    counted_before_sql,
    damaged_flushes,
    record_lost,
    restage_delete_sql,
)
from streams.batch import PartitionRange, SourceMessage, classify_batch
from streams.options import CONSUMER_ISOLATION, KafkaClientOptions
from streams.sink import counted_events_table, flush_content_sha256, rejection_row

__all__ = ["RangeReader", "RepairReport", "repair_the_ledger"]

log = logging.getLogger("govmeter.repair")

T = TypeVar("T")
RunOnStore = Callable[[Callable[[], T]], Awaitable[T]]

_READ_TIMEOUT = 60.0


class RangeGone(Exception):
    """The broker does not hold (all of) a range any more."""


class RangeReader:
    """Reads offset ranges of partitions, read_committed, with a consumer of its own."""

    def __init__(self, kafka: KafkaClientOptions, timeout: float = _READ_TIMEOUT) -> None:
        self._kafka = kafka
        self._timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, topic: str, partition: int, first: int, last: int) -> list[SourceMessage]:
        consumer = await self._started()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        earliest = int((await consumer.beginning_offsets([tp]))[tp])
        if earliest > first:
            raise RangeGone(
                f"the broker no longer holds offsets {first}..{min(last, earliest - 1)} "
                f"(its earliest is {earliest}: retention)"
            )
        end = int((await consumer.end_offsets([tp]))[tp])
        if end <= last:
            raise RangeGone(f"the broker holds offsets up to {end - 1} only, not {last}")
        consumer.seek(tp, first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        messages: list[SourceMessage] = []
        while loop.time() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            for record in batches.get(tp, []):
                if first <= record.offset <= last:
                    messages.append(
                        SourceMessage(
                            topic,
                            partition,
                            int(record.offset),
                            record.key,
                            bytes(record.value or b""),
                        )
                    )
            if int(await consumer.position(tp)) > last:
                return messages
        raise RangeGone(f"offsets {first}..{last} could not be read in {self._timeout:.0f} s")

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self._kafka.aiokafka(),
                group_id=None,
                client_id="govmeter-ledger-repair",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=CONSUMER_ISOLATION,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


@dataclass
class RepairReport:
    repaired: list[int] = field(default_factory=list)  # flush numbers staged again
    lost: list[int] = field(default_factory=list)  # flush numbers recorded as lost

    @property
    def changed(self) -> bool:
        return bool(self.repaired or self.lost)


async def repair_the_ledger(
    ledger: Ledger, reader: RangeReader, run_on_store: RunOnStore[Any], *, worker: str
) -> RepairReport:
    """Find every damaged flush and repair it or record it as lost, in commit order."""
    report = RepairReport()
    damaged: list[DamagedFlush] = await run_on_store(lambda: damaged_flushes(ledger.client))
    for flush in damaged:
        log.error("the ledger is ahead of its data", extra={"damage": flush.describe()})
        try:
            messages: list[SourceMessage] = []
            for r in flush.ranges:
                messages += await reader.read(r.topic, r.partition, r.first_offset, r.last_offset)
        except RangeGone as gone:
            reason = f"not read again: {gone}"
            await run_on_store(functools.partial(record_lost, ledger.client, flush, reason, worker))
            report.lost.append(flush.flush_seq)
            log.error("a damaged range is lost", extra={"damage": flush.describe(), "why": reason})
            continue
        outcome: str = await run_on_store(functools.partial(_restage, ledger, flush, messages))
        if outcome:
            await run_on_store(
                functools.partial(record_lost, ledger.client, flush, outcome, worker)
            )
            report.lost.append(flush.flush_seq)
            log.error("a damaged range is lost", extra={"damage": flush.describe(), "why": outcome})
        else:
            report.repaired.append(flush.flush_seq)
            log.warning(
                "repaired a flush from Kafka: its rows are staged again",
                extra={"flush_seq": flush.flush_seq, "commit_seq": flush.commit_seq},
            )
    return report


def _restage(ledger: Ledger, flush: DamagedFlush, messages: list[SourceMessage]) -> str:
    """On the store thread: stage the flush again if what it read proves to be what it
    counted; '' when staged, else why not."""
    extents = {(r.topic, r.partition): (r.first_offset, r.last_offset) for r in flush.ranges}
    batch = classify_batch(messages, extents)
    ids = list(batch.valid.events.event_id)
    before: set[str] = set()
    if ids:
        rows = ledger.client.query(counted_before_sql(ids, flush.commit_seq)).result_rows
        before = {str(row[0]) for row in rows}
    new = batch.valid.take([i for i, event_id in enumerate(ids) if event_id not in before])
    ranges = [
        PartitionRange(
            r.topic, r.partition, r.first_offset, r.last_offset, r.messages, r.counted,
            r.duplicates, r.rejected,
        )
        for r in flush.ranges
    ]  # fmt: skip
    if len(new) != flush.counted or len(batch.rejected) != flush.rejected:
        return (
            f"read again, the range holds {len(new)} event(s) to count and "
            f"{len(batch.rejected)} rejection(s), the ledger says {flush.counted} and "
            f"{flush.rejected}"
        )
    if flush.content_sha256:
        content = flush_content_sha256(new, batch.rejected, ranges)
        if content != flush.content_sha256:
            return (
                "read again, the range does not hold what the flush counted (its content "
                f"hash {content[:16]}... differs from the ledger's {flush.content_sha256[:16]}...)"
            )
    for table in ("counted_events", "rejections_log"):
        ledger.client.command(restage_delete_sql(table, flush.flush_seq))
    now = datetime.now(UTC)
    token = f"repair-{flush.flush_seq}-{uuid.uuid4().hex[:12]}"
    if new:
        ledger.stage_counted_events(
            counted_events_table(new, flush.flush_seq, now), f"{token}-events"
        )
    if batch.rejected:
        ledger.stage_rejections(
            [rejection_row(r, flush.flush_seq, now) for r in batch.rejected], f"{token}-rejections"
        )
    return ""
