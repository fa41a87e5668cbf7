"""Batch intake: read a topic in batches inside the faust app, without per-event machinery.

Faust's stream delivers one event at a time through several asyncio tasks each
(about 100 µs per event on a 2-core machine); `take_events` batches the agent's work
but not that cost. This intake uses aiokafka, faust's own Kafka driver, in the same
consumer group protocol: `getmany` returns up to a batch of records, the pipeline
flushes them, and only then are the offsets committed. The ledger stays the source
of truth, exactly as with the agent intake (`streams.app.attach_pipeline`).

A handler that can `prepare` a batch apart from flushing it (`StagedHandler`, the
metering pipeline) is driven two batches deep: batch N+1 is read and classified
while batch N is being flushed. Flushes still run one at a time, in order, and a
batch's offsets are committed only after its own flush.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol, runtime_checkable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import TopicPartition

from metering.kafka_config import aiokafka_options
from metering.settings import Settings
from streams.app import BatchHandler
from streams.batch import ClassifiedBatch, SourceMessage

__all__ = ["BatchIntake", "StagedHandler"]

Records = dict[TopicPartition, list[Any]]  # aiokafka ConsumerRecords


@runtime_checkable
class StagedHandler(Protocol):
    async def prepare(self, messages: Sequence[SourceMessage]) -> ClassifiedBatch | None: ...

    async def flush(self, batch: ClassifiedBatch) -> object: ...


log = logging.getLogger("govmeter.intake")


class BatchIntake:
    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self._settings = settings
        self._topic = topic
        self._group = group
        self.handler: BatchHandler | None = None
        self._next: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        # Where the store says each assigned partition resumes (None: nothing of it was
        # counted, so from the beginning); unset, the group's committed offsets apply.
        self.resume_offset: Callable[[str, int], int | None] | None = None

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.seek(TopicPartition(topic, partition), offset)

    async def earliest_offset(self, topic: str, partition: int) -> int:
        assert self._consumer is not None
        tp = TopicPartition(topic, partition)
        offsets = await self._consumer.beginning_offsets([tp])
        return int(offsets.get(tp, 0))

    async def lag(self) -> dict[tuple[str, int], int]:
        """Messages on the broker not yet handled, per assigned partition."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            handled = self._next.get(tp)
            if handled is None:
                handled = await consumer.position(tp)
            lags[(tp.topic, tp.partition)] = max(0, int(highwater) - int(handled))
        return lags

    async def run(self, stop: asyncio.Event) -> None:
        settings = self._settings
        session_ms = int(settings.session_timeout_seconds * 1000)
        consumer = AIOKafkaConsumer(
            **aiokafka_options(settings),
            group_id=self._group,
            client_id=f"{self._group}-intake",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 4),
            max_poll_interval_ms=600_000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self._consumer = consumer
        await consumer.start()
        consumer.subscribe([self._topic], listener=_ResumeFromStore(self))
        in_flight: tuple[asyncio.Task[object] | None, Records] | None = None
        try:
            while not stop.is_set():
                records = await self._read_batch(consumer)
                messages = [
                    SourceMessage(r.topic, r.partition, r.offset, r.key, r.value or b"")
                    for partition_records in records.values()
                    for r in partition_records
                ]
                if not isinstance(self.handler, StagedHandler):
                    if messages:
                        await self._handle(messages)
                        await self._commit(records)
                    continue
                if not messages:
                    await self._finish(in_flight)
                    in_flight = None
                    continue
                batch = await self._prepare(self.handler, messages)
                await self._finish(in_flight)
                in_flight = None
                if stop.is_set():
                    break  # not flushed, not committed: read again after a restart
                flushing = None
                if batch is not None:
                    flushing = asyncio.ensure_future(self._flush(self.handler, batch))
                in_flight = (flushing, records)
            await self._finish(in_flight)
        finally:
            await consumer.stop()
            self._consumer = None

    async def _read_batch(self, consumer: AIOKafkaConsumer) -> Records:
        """Up to a batch of records: what arrives within METERING_BATCH_MAX_SECONDS, then
        more for METERING_BATCH_MIN_SECONDS unless the batch is full. At a low rate that
        makes a few larger flushes instead of one per arrival (each flush is about ten
        statements and a part per table)."""
        settings = self._settings
        wanted = settings.batch_max_events
        records: Records = await consumer.getmany(
            timeout_ms=int(settings.batch_max_seconds * 1000), max_records=wanted
        )
        got = sum(len(batch) for batch in records.values())
        if not got or settings.batch_min_seconds <= 0:
            return records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.batch_min_seconds
        while got < wanted:
            left = deadline - loop.time()
            if left <= 0:
                break
            more = await consumer.getmany(
                timeout_ms=max(1, int(left * 1000)), max_records=wanted - got
            )
            for tp, batch in more.items():
                records.setdefault(tp, []).extend(batch)
                got += len(batch)
        return records

    async def seek_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Move each newly assigned partition to where the store resumes it."""
        consumer = self._consumer
        if consumer is None or self.resume_offset is None:
            return
        for tp in assigned:
            resume = self.resume_offset(tp.topic, tp.partition)
            committed = await consumer.committed(tp)
            if resume is None:
                # Nothing counted yet: from the earliest offset, which is where the
                # group starts anyway when it committed nothing (auto_offset_reset).
                offset = int((await consumer.beginning_offsets([tp])).get(tp, 0))
                move = committed is not None and committed != offset
            else:
                offset = resume
                move = committed != offset
            if move:
                # Only when the group would start elsewhere: a seek during the
                # assignment can make the consumer fetch its first records twice.
                consumer.seek(tp, offset)
            log.info(
                "partition assigned",
                extra={
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "resume_at": offset,
                    "group_committed": committed,
                },
            )

    async def _prepare(
        self, handler: StagedHandler, messages: Sequence[SourceMessage]
    ) -> ClassifiedBatch | None:
        try:
            return await handler.prepare(messages)
        except Exception as error:
            self._fail(error)

    async def _flush(self, handler: StagedHandler, batch: ClassifiedBatch) -> object:
        try:
            return await handler.flush(batch)
        except Exception as error:
            self._fail(error)

    async def _finish(self, in_flight: tuple[asyncio.Task[object] | None, Records] | None) -> None:
        """Wait for the batch in flight to be flushed, then commit its offsets."""
        if in_flight is None:
            return
        flushing, records = in_flight
        if flushing is not None:
            await flushing
        await self._commit(records)

    async def _handle(self, messages: Sequence[SourceMessage]) -> None:
        assert self.handler is not None, "set BatchIntake.handler before run()"
        try:
            await self.handler.handle(messages)
        except Exception as error:
            self._fail(error)

    @staticmethod
    def _fail(error: Exception) -> NoReturn:
        # Nothing of this batch is committed; a restart begins again at the ledger.
        log.critical(
            "pipeline failed; exiting without committing the batch",
            extra={"error": type(error).__name__, "error_message": str(error)[:500]},
        )
        logging.shutdown()
        os._exit(70)

    async def _commit(self, records: Records) -> None:
        assert self._consumer is not None
        offsets = {tp: batch[-1].offset + 1 for tp, batch in records.items() if batch}
        self._next.update(offsets)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            # Kafka's offsets are a hint: the ledger already holds this batch.
            log.warning(
                "offset commit failed (the ledger holds the batch)",
                extra={"error": type(error).__name__},
            )


class _ResumeFromStore(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment, the store's positions override the group's committed offsets."""

    def __init__(self, intake: BatchIntake) -> None:
        self._intake = intake

    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._intake.seek_assigned(list(assigned))
