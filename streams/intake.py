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

The consumer reads committed records only (`read_committed`), so transaction markers
and aborted records occupy offsets it never receives. For every partition the intake
hands the pipeline a `Span` with the batch: the consumer's position before the read
and after it. The start is known only when the intake itself put the consumer there
(the seek of an assignment, a seek back) or a previous read of this intake left it
there; aiokafka returns a partition's records contiguously from its position, so
offsets in a span that came back without a record were skipped by the broker, and
the pipeline accepts them. A partition whose start is not known, and every partition
of a batch read while partitions were being (re)assigned (some of its records may
come from before the assignment's seeks), goes without a span and is judged record
by record.

The offsets committed to Kafka after a flush are the ends of its ledger ranges (the
consumer's positions, past any trailing marker), never more than the ledger holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, runtime_checkable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from schemas.errors import ServiceError
from streams.app import BatchHandler
from streams.batch import ClassifiedBatch, SourceMessage
from streams.options import CONSUMER_ISOLATION, KafkaClientOptions, StreamOptions
from streams.positions import Span

__all__ = ["BatchIntake", "CommittedReadProbe", "StagedHandler"]

Records = dict[TopicPartition, list[Any]]  # aiokafka ConsumerRecords
Offsets = dict[TopicPartition, int]


@runtime_checkable
class StagedHandler(Protocol):
    async def prepare(
        self,
        messages: Sequence[SourceMessage],
        spans: Mapping[tuple[str, int], Span] | None = None,
    ) -> ClassifiedBatch | None: ...

    async def flush(self, batch: ClassifiedBatch) -> object: ...

    async def discard(self, batch: ClassifiedBatch) -> None:
        """The batch will not be flushed: put its partitions back where the store
        resumes them."""


log = logging.getLogger("govmeter.intake")


class EarliestOffsetUnknownError(ServiceError):
    """The broker did not say where a partition begins: resuming there would be a guess."""


def known_earliest(offsets: Mapping[Any, int | None], tp: Any) -> int:
    """The partition's earliest offset as the broker said it; never an assumed 0 (a
    partition whose start was deleted by retention does not begin at 0, and seeking
    there would count from wherever the consumer's reset policy lands)."""
    value = offsets.get(tp)
    if value is None:
        raise EarliestOffsetUnknownError(
            f"{tp.topic}[{tp.partition}]: the broker did not say the partition's earliest "
            "offset, so the worker cannot tell where an uncounted partition begins; check "
            "the broker (KAFKA_BOOTSTRAP_SERVERS) and restart the worker, which resumes "
            "from the ledger"
        )
    return int(value)


@dataclass
class _Read:
    """One batch as read: its records, each partition's span, and every assigned
    partition's position after the read."""

    records: Records = field(default_factory=dict)
    spans: dict[tuple[str, int], Span] = field(default_factory=dict)
    ends: Offsets = field(default_factory=dict)

    @property
    def messages(self) -> list[SourceMessage]:
        return [
            SourceMessage(r.topic, r.partition, r.offset, r.key, r.value or b"")
            for partition_records in self.records.values()
            for r in partition_records
        ]

    @property
    def moved(self) -> bool:
        return any(span.end > span.start for span in self.spans.values())


def _fits(span: Span, records: Sequence[Any]) -> bool:
    """Do these records lie inside one read from `span.start` to `span.end`? Only the
    ends are looked at; the order within is `Positions.admit_span`'s to check."""
    if span.end < span.start:
        return False
    if not records:
        return True
    return bool(span.start <= records[0].offset and records[-1].offset < span.end)


class BatchIntake:
    def __init__(self, options: StreamOptions, topic: str, group: str) -> None:
        self._options = options
        self._topic = topic
        self._group = group
        self.handler: BatchHandler | None = None
        self._next: Offsets = {}  # committed to Kafka by this intake
        self._consumer: AIOKafkaConsumer | None = None
        # Where the consumer stands in each partition, as far as this intake put it
        # there or read it up to; a partition missing here has no known position.
        self._at: Offsets = {}
        self._assignments = 0  # bumped by every (re)assignment, revocation and seek
        self._positioning = False  # an assignment is seeking its partitions
        # The flush under way, if any: a revocation waits for it, so the partitions' next
        # owner reads a ledger that already holds it.
        self._flushing: asyncio.Future[object] | None = None
        self._revocations = 0
        # The partitions of the last assignment, until a revocation takes them away.
        self._held: set[TopicPartition] = set()
        # Where the store says each assigned partition resumes (None: nothing of it was
        # counted, so from the beginning); unset, the group's committed offsets apply.
        self.resume_offset: Callable[[str, int], int | None] | None = None
        # Called with the newly assigned partitions before they are positioned: with
        # several writers, another one may have counted there since this one last did.
        self.on_assigned: Callable[[list[tuple[str, int]]], Awaitable[None]] | None = None

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        consumer = self._require_consumer()
        tp = TopicPartition(topic, partition)
        if tp not in consumer.assignment():
            # Revoked meanwhile (a rebalance): whoever is assigned it next positions it
            # from the ledger (`seek_assigned`).
            self._at.pop(tp, None)
            self._assignments += 1
            return
        consumer.seek(tp, offset)
        self._at[tp] = offset
        # A seek while a read is under way (a refused flush puts its partitions back)
        # makes that read's spans unknown: it is judged record by record.
        self._assignments += 1

    def held(self) -> list[tuple[str, int]]:
        """The partitions of the current assignment (for the writer's heartbeat)."""
        return sorted((tp.topic, tp.partition) for tp in set(self._held))

    async def earliest_offset(self, topic: str, partition: int) -> int:
        consumer = self._require_consumer()
        tp = TopicPartition(topic, partition)
        offsets = await consumer.beginning_offsets([tp])
        return known_earliest(offsets, tp)

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the intake is not running")
        return self._consumer

    async def lag(self) -> dict[tuple[str, int], int]:
        """Committed messages on the broker not yet handled, per assigned partition."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)
            if end is None:
                end = consumer.highwater(tp)
            if end is None:
                continue
            handled = self._next.get(tp)
            if handled is None:
                handled = await consumer.position(tp)
            lags[(tp.topic, tp.partition)] = max(0, int(end) - int(handled))
        return lags

    async def run(self, stop: asyncio.Event) -> None:
        options = self._options
        session_ms = int(options.session_timeout_seconds * 1000)
        consumer = AIOKafkaConsumer(
            **options.kafka.aiokafka(),
            group_id=self._group,
            client_id=f"{self._group}-intake",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=CONSUMER_ISOLATION,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 4),
            max_poll_interval_ms=600_000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self._consumer = consumer
        await consumer.start()
        consumer.subscribe([self._topic], listener=_ResumeFromStore(self))
        in_flight: tuple[asyncio.Task[object] | None, Offsets] | None = None
        try:
            while not stop.is_set():
                revocations = self._revocations
                read = await self._read_batch(consumer)
                messages = read.messages
                if not isinstance(self.handler, StagedHandler):
                    if messages:
                        await self._handle(messages)
                    await self._commit(self._moved_ends(read))
                    continue
                if not messages and not read.moved and not self._beyond_store(read):
                    await self._finish(in_flight)
                    in_flight = None
                    continue
                batch = await self._prepare(self.handler, messages, read.spans)
                await self._finish(in_flight)
                in_flight = None
                if stop.is_set():
                    break  # not flushed, not committed: read again after a restart
                if batch is not None and self._revocations != revocations:
                    # Partitions were taken away since this batch was read (the group
                    # rebalances in the background, not only inside a read): it is not
                    # flushed; its partitions that are still ours are read again from the
                    # ledger, where the assignment just put their positions.
                    await self._discard(self.handler, batch)
                    batch = None
                flushing = None
                offsets: Offsets = {}
                if batch is not None:
                    flushing = asyncio.ensure_future(self._flush(self.handler, batch))
                    self._flushing = flushing
                    offsets = {
                        TopicPartition(r.topic, r.partition): r.last_offset + 1
                        for r in batch.ranges.values()
                    }
                in_flight = (flushing, offsets)
            await self._finish(in_flight)
        finally:
            await consumer.stop()
            self._consumer = None

    async def _read_batch(self, consumer: AIOKafkaConsumer) -> _Read:
        """Up to a batch of records: what arrives within METERING_BATCH_MAX_SECONDS, then
        more for METERING_BATCH_MIN_SECONDS unless the batch is full. At a low rate that
        makes a few larger flushes instead of one per arrival (each flush is about ten
        statements and a part per table).

        The span of a partition runs from where this intake knew the consumer stood
        when the batch began to its position after the last read.
        """
        policy = self._options.batch
        wanted = policy.max_events
        loop = asyncio.get_running_loop()
        assignments = self._assignments
        starts = dict(self._at)
        read = _Read()
        got = 0
        deadline: float | None = None
        while True:
            if deadline is None:
                timeout_ms = int(policy.max_seconds * 1000)
            else:
                timeout_ms = max(1, int((deadline - loop.time()) * 1000))
            more: Records = await consumer.getmany(timeout_ms=timeout_ms, max_records=wanted - got)
            for tp, batch in more.items():
                read.records.setdefault(tp, []).extend(batch)
                got += len(batch)
            read.ends = await self._settled_positions(consumer)
            for tp, end in read.ends.items():
                if tp in self._at:
                    self._at[tp] = end
            if deadline is None:
                if not got or policy.min_seconds <= 0:
                    break
                deadline = loop.time() + policy.min_seconds
            if got >= wanted or deadline - loop.time() <= 0:
                break
        assigned = consumer.assignment()
        for tp in [tp for tp in read.records if tp not in assigned]:
            # Revoked during the read: its next owner counts these records.
            del read.records[tp]
            read.ends.pop(tp, None)
        if self._assignments != assignments:
            # Partitions were (re)assigned and positioned during the read: some records
            # may come from before that, so no span is known; the pipeline judges this
            # batch record by record. The next batch starts where this one left off.
            return read
        for tp, start in starts.items():
            if tp not in read.ends or tp not in self._at:
                continue
            span = Span(start, read.ends[tp])
            if not _fits(span, read.records.get(tp, ())):
                # The consumer did not stand where this intake thought: judged record
                # by record (always safe), and the next read starts where it stands.
                log.warning(
                    "partition position moved outside the intake; judging its records one by one",
                    extra={
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "expected_start": span.start,
                        "end": span.end,
                    },
                )
                continue
            read.spans[(tp.topic, tp.partition)] = span
        return read

    async def _settled_positions(self, consumer: AIOKafkaConsumer) -> Offsets:
        """Every assigned partition's position, all taken while no (re)assignment,
        revocation or seek ran: a position read before a rebalance's seek and written
        to `_at` after it would start the next span where the consumer no longer is."""
        while True:
            before = self._assignments
            positions = await self._positions(consumer)
            if self._assignments == before and not self._positioning:
                return positions
            await asyncio.sleep(0.01)

    def _beyond_store(self, read: _Read) -> bool:
        """Does a partition stand beyond where the store resumes it, without having moved?

        It happens after a batch judged without spans that ended before trailing
        markers: the consumer is past them, the ledger not yet. The pipeline confirms
        the gap with the broker and moves the ledger up to the consumer (or seeks back).
        """
        if self.resume_offset is None:
            return False
        for (topic, partition), span in read.spans.items():
            resume = self.resume_offset(topic, partition)
            if resume is not None and span.start > resume:
                return True
        return False

    @staticmethod
    async def _positions(consumer: AIOKafkaConsumer) -> Offsets:
        """The position (next offset to fetch) of every assigned partition that has one."""
        positions: Offsets = {}
        for tp in consumer.assignment():
            try:
                positions[tp] = int(await asyncio.wait_for(consumer.position(tp), timeout=1.0))
            except (TimeoutError, IllegalStateError):
                continue  # not positioned yet, or no longer assigned
        return positions

    def _moved_ends(self, read: _Read) -> Offsets:
        """Positions that moved since the last commit (for handlers without ledger ranges)."""
        ends = dict(read.ends)
        for tp, batch in read.records.items():
            if batch and tp not in ends:
                ends[tp] = batch[-1].offset + 1
        return {tp: end for tp, end in ends.items() if end > self._next.get(tp, -1)}

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
            self._at[tp] = offset
            log.info(
                "partition assigned",
                extra={
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "resume_at": offset,
                    "group_committed": committed,
                },
            )

    async def flush_settled(self) -> None:
        """Wait for the flush under way, if any, to commit or fail: until then the
        ledger is behind what this writer already admitted."""
        flushing = self._flushing
        if flushing is not None and not flushing.done():
            await asyncio.wait([flushing])

    async def revoked(self, partitions: Sequence[TopicPartition] = ()) -> None:
        """Partitions are being taken away: let the flush under way finish first (its
        ledger rows are then there when the next owner reads where they resume), then
        forget every position."""
        await self.flush_settled()
        self._at.clear()
        self._assignments += 1
        # The first join revokes nothing. A revocation may also name nothing while
        # partitions were held (the client lost its assignment with its membership):
        # that takes them away all the same.
        if partitions or self._held:
            self._revocations += 1
        self._held = set()

    def assigning(self, assigned: Sequence[TopicPartition]) -> None:
        """An assignment arrives: one that replaces partitions still held, without a
        revocation first, takes them away too (what was read of them is stale)."""
        if self._held:
            self._revocations += 1
        self._held = set(assigned)
        self._positioning = True
        self._assignments += 1

    def assigned(self) -> None:
        """Partitions were (re)assigned and positioned: what was read before is stale."""
        self._positioning = False
        self._assignments += 1

    async def _prepare(
        self,
        handler: StagedHandler,
        messages: Sequence[SourceMessage],
        spans: Mapping[tuple[str, int], Span],
    ) -> ClassifiedBatch | None:
        try:
            return await handler.prepare(messages, spans)
        except Exception as error:
            self._fail(error)

    async def _discard(self, handler: StagedHandler, batch: ClassifiedBatch) -> None:
        try:
            await handler.discard(batch)
        except Exception as error:
            self._fail(error)

    async def _flush(self, handler: StagedHandler, batch: ClassifiedBatch) -> object:
        try:
            return await handler.flush(batch)
        except Exception as error:
            self._fail(error)

    async def _finish(self, in_flight: tuple[asyncio.Task[object] | None, Offsets] | None) -> None:
        """Wait for the batch in flight to be flushed, then commit its offsets."""
        if in_flight is None:
            return
        flushing, offsets = in_flight
        if flushing is not None and await flushing is None:
            return  # refused as stale: its partitions are read again, nothing to commit
        await self._commit(offsets)

    async def _handle(self, messages: Sequence[SourceMessage]) -> None:
        if self.handler is None:
            raise RuntimeError("set BatchIntake.handler before run()")
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

    async def _commit(self, offsets: Offsets) -> None:
        if not offsets:
            return
        consumer = self._require_consumer()
        self._next.update(offsets)
        try:
            await consumer.commit(offsets)
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

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._intake.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # A flush may have started between the revocation and this assignment (the
        # join and sync take round trips): the positions read from the ledger below
        # must include it, or the next batch is refused and read twice.
        await self._intake.flush_settled()
        self._intake.assigning(assigned)
        try:
            if self._intake.on_assigned is not None:
                await self._intake.on_assigned([(tp.topic, tp.partition) for tp in assigned])
            await self._intake.seek_assigned(list(assigned))
        finally:
            self._intake.assigned()


class CommittedReadProbe:
    """Which record a `read_committed` reader gets first from an offset, asked of the broker.

    Where no span is known (the agent intake; records that arrived while an assignment
    was being positioned), a jump at the first record of a partition, from the resume
    point E to a record R > E, is confirmed here: a reader of its own (no group) seeks
    to E and reads one record. If that record is R, the offsets in between hold nothing
    a committed reader receives (markers, aborted records, compacted holes). Started on
    first use: a topic without such jumps never opens it.
    """

    def __init__(self, kafka: KafkaClientOptions, timeout_seconds: float = 30.0) -> None:
        self._kafka = kafka
        self._timeout = timeout_seconds
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def first_readable(
        self, topic: str, partition: int, start: int, up_to: int
    ) -> int | None:
        """The offset of the first committed record at or after `start`; an offset past
        `up_to` if the reader passed it without one; None if the broker did not tell."""
        async with self._lock:
            try:
                return await self._first_readable(TopicPartition(topic, partition), start, up_to)
            except KafkaError as error:
                log.warning(
                    "could not ask the broker about a gap; reading it again",
                    extra={"topic": topic, "partition": partition, "error": type(error).__name__},
                )
                await self.close()
                return None

    async def _first_readable(self, tp: TopicPartition, start: int, up_to: int) -> int | None:
        consumer = await self._started()
        consumer.assign([tp])
        consumer.seek(tp, start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while loop.time() < deadline:
            records = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            batch = records.get(tp)
            if batch:
                return int(batch[0].offset)
            position = int(await consumer.position(tp))
            if position > up_to:
                return position
        return None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self._kafka.aiokafka(),
                group_id=None,
                client_id="govmeter-gap-probe",
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
