"""What the worker does with each batch of Kafka messages: admit, classify, flush.

Admission compares every message with the ledger's resume position of its
partition: already counted messages are skipped, a read that started beyond the
resume point makes the consumer seek back. A partition the ledger has never seen
resumes at the broker's earliest offset: the store, not the consumer group, says what
was counted. Then the batch is classified and flushed; the caller acknowledges the
messages only after the flush returns.

Gaps the broker leaves on purpose (transaction markers, aborted transactions, with
the `read_committed` isolation every consumer uses; holes of a compacted topic) are
accepted, and the flush's ledger range covers them, so the ranges of a partition
tile its offsets (see `streams.positions` for the rule). How a gap is judged depends
on what the intake knows:

  - the batch intake gives a `Span` per partition: where the consumer stood before
    the read (a position the intake set, or where its previous read ended) and after
    it. A read that started at or before the resume point accounts for everything
    up to its end; one that started beyond it skipped messages: seek back, unless
    the broker confirms it has no committed record in between (`first_readable`).
    A read may move a partition without a single record (only markers): the batch
    is then flushed with no message, so the ledger reaches the end of the partition.
  - the agent intake gives records only. A jump between two records delivered one
    after the other in the batch is inside one read; a jump at a partition's first
    record is confirmed with the broker (`first_readable`: which record a
    read_committed reader gets first from the resume point). Confirmed: accepted;
    an earlier record exists: seek back; unanswered: seek back and judge again.

Before a leading jump is accepted, the broker's earliest offset is checked: offsets
deleted by retention before they were counted are logged as an error and the range
starts after them, so the loss stays visible in the ledger as a hole.

With several writers, a partition can move to another writer between the read and
the flush (a rebalance, a pause past the session timeout). Each batch says where its
reader believed the ledger resumed every partition (`ClassifiedBatch.read_from`); the
sink refuses the flush under the writers' lock when the ledger moved meanwhile, and
the pipeline then puts its partitions back where the ledger resumes them and seeks
there (`reload_from_ledger`, also run for every partition assigned to this writer).
The refused batch's offsets are not acknowledged.

`prepare` (admit and classify) and `flush` are separate so that the batch intake can
classify batch N+1 on one thread while batch N is flushed on the store thread: the
store releases the interpreter lock while it works, so both cores are busy. Flushes
still happen one at a time and in order, so each one's dedupe lookup sees every
earlier flush committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from streams.batch import ClassifiedBatch, Extents, SourceMessage, classify_batch
from streams.metrics import Metrics
from streams.positions import Admission, PositionError, Positions, Span, gap_inside_delivery
from streams.sink import ClickHouseSink, FlushResult, StaleFlushError

__all__ = ["MeteringPipeline", "Spans"]

log = logging.getLogger("govmeter.pipeline")

Seek = Callable[[str, int, int], Awaitable[None]]
EarliestOffset = Callable[[str, int], Awaitable[int]]
# (topic, partition, from_offset, up_to) -> offset of the first record a read_committed
# reader gets from `from_offset` (past `up_to`: none up to there); None: no answer.
FirstReadable = Callable[[str, int, int, int], Awaitable[int | None]]
Spans = Mapping[tuple[str, int], Span]
TP = tuple[str, int]


class MeteringPipeline:
    def __init__(
        self,
        sink: ClickHouseSink,
        positions: Positions,
        metrics: Metrics,
        *,
        seek: Seek,
        earliest_offset: EarliestOffset,
        first_readable: FirstReadable | None = None,
    ) -> None:
        self.sink = sink
        self.positions = positions
        self.metrics = metrics
        self._seek = seek
        self._earliest_offset = earliest_offset
        self._first_readable = first_readable
        self.last_activity = time.monotonic()
        self._working = 0
        self._classifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify")

    @property
    def busy(self) -> bool:
        return self._working > 0

    def close(self) -> None:
        self._classifier.shutdown(wait=True)

    async def handle(self, messages: Sequence[SourceMessage]) -> FlushResult | None:
        batch = await self.prepare(messages)
        return None if batch is None else await self.flush(batch)

    async def prepare(
        self, messages: Sequence[SourceMessage], spans: Spans | None = None
    ) -> ClassifiedBatch | None:
        """Admit and classify a batch (off the event loop); None when nothing moved.

        `spans`, when the intake knows them, say what each partition's read covered;
        a batch without messages whose spans moved a partition is still a flush.
        """
        self._working += 1
        try:
            self.last_activity = time.monotonic()
            self.metrics.events_in.inc(len(messages))
            admitted, extents, read_from = await self._admit(messages, spans or {})
            if not extents:
                return None
            loop = asyncio.get_running_loop()
            batch = await loop.run_in_executor(self._classifier, classify_batch, admitted, extents)
            batch.read_from = read_from
            return batch
        finally:
            self._working -= 1

    async def flush(self, batch: ClassifiedBatch) -> FlushResult | None:
        """The batch's flush; None when the sink refused it as stale (read it again)."""
        self._working += 1
        try:
            try:
                result = await self.sink.flush(batch)
            except StaleFlushError as refused:
                await self.reload_from_ledger(batch.ranges.keys(), refused.ledger)
                return None
            # The ledger now resumes each partition after this flush. An assignment can
            # reload positions from a ledger read before this commit (its hook runs on
            # the consumer's rebalance, beside this flush): they must not stay behind
            # it, or the next batch is refused and read again.
            for (topic, partition), counted in batch.ranges.items():
                self.positions.committed_up_to(topic, partition, counted.last_offset + 1)
            self.last_activity = time.monotonic()
            return result
        finally:
            self._working -= 1

    async def discard(self, batch: ClassifiedBatch) -> None:
        """A batch read before its partitions were revoked is not flushed: its
        partitions resume where the ledger does (the intake's discard hook)."""
        await self.reload_from_ledger(batch.ranges.keys())

    async def reload_from_ledger(
        self,
        partitions: Iterable[TP],
        ledger: Mapping[TP, int] | None = None,
        *,
        seek: bool = True,
    ) -> None:
        """Resume `partitions` where the ledger does (another writer may have counted
        there) and, with `seek`, move the consumer there; a partition the ledger never
        saw starts at the broker's earliest offset again."""
        if ledger is None:
            ledger = await self.sink.run_on_store(self.sink.ledger.resume_positions)
        for tp in sorted(set(partitions)):
            at = ledger.get(tp)
            if at is None:
                self.positions.forget(*tp)
                if seek:
                    await self._seek(*tp, await self._earliest_offset(*tp))
            else:
                self.positions.accept_from(*tp, at)
                if seek:
                    await self._seek(*tp, at)

    async def partitions_assigned(self, partitions: list[TP]) -> None:
        """The intake's assignment hook: positions from the ledger, not from memory."""
        await self.reload_from_ledger(partitions, seek=False)

    async def _admit(
        self, messages: Sequence[SourceMessage], spans: Spans
    ) -> tuple[list[SourceMessage], Extents, dict[TP, int | None]]:
        by_partition: dict[TP, list[SourceMessage]] = {}
        for message in messages:
            by_partition.setdefault((message.topic, message.partition), []).append(message)
        admitted: list[SourceMessage] = []
        extents: Extents = {}
        read_from: dict[TP, int | None] = {}
        for tp in sorted(by_partition.keys() | spans.keys()):
            believed = self.positions.next_offset(*tp)
            records = by_partition.get(tp, [])
            span = spans.get(tp)
            if not records:
                # Nothing read and nothing moved: only a read that stands beyond the
                # resume point still needs judging (the ledger has to reach it).
                known = self.positions.next_offset(*tp)
                if span is None or (
                    span.end <= span.start and (known is None or span.start <= known)
                ):
                    continue
            if self.positions.next_offset(*tp) is None:
                # Nothing of this partition was ever counted in this store: it starts at
                # the earliest offset the broker still has, wherever the consumer group's
                # committed offset points (a new or replaced store counts everything).
                self.positions.accept_from(*tp, await self._earliest_offset(*tp))
            if span is None:
                new, resume_from = await self._admit_records(tp, records)
            else:
                new, resume_from = await self._admit_span(tp, span, records)
            resume_at = self._next(tp)
            if resume_at > resume_from:
                extents[tp] = (resume_from, resume_at - 1)
                read_from[tp] = believed
                admitted.extend(new)
        return admitted, extents, read_from

    def _next(self, tp: TP) -> int:
        offset = self.positions.next_offset(*tp)
        if offset is None:
            raise PositionError(f"{tp[0]}[{tp[1]}]: no resume point")
        return offset

    async def _admit_span(
        self, tp: TP, span: Span, records: Sequence[SourceMessage]
    ) -> tuple[list[SourceMessage], int]:
        """One partition's read as the batch intake saw it (see the module docstring)."""
        expected = self._next(tp)
        first_new = next((m.offset for m in records if m.offset >= expected), span.end)
        if span.start > expected or first_new > expected:
            earliest = await self._unless_expired(tp, expected)
            if earliest > expected:
                self.positions.accept_from(*tp, earliest)
                expected = earliest
        resume_from = expected
        if span.start > expected:
            if not await self._nothing_readable(tp, expected, span.start):
                await self._seek_back(tp, expected, span.start)
                return [], expected
            # The broker has no committed record before the read's start (e.g. the
            # previous batch had no span and ended before a trailing marker).
            self.positions.accept_from(*tp, span.start)
        verdict = self.positions.admit_span(*tp, span, [m.offset for m in records])
        if verdict.verdict is Admission.GAP:  # excluded above; a proper error if not
            raise PositionError(f"{tp[0]}[{tp[1]}]: read from {span.start} after {expected}")
        if verdict.already_counted:
            self.metrics.already_counted_skipped.inc(verdict.already_counted)
        return list(records[verdict.already_counted :]), min(resume_from, verdict.resume_from)

    async def _admit_records(
        self, tp: TP, records: Sequence[SourceMessage]
    ) -> tuple[list[SourceMessage], int]:
        """One partition's records without positions (the agent intake), in order."""
        resume_from = self._next(tp)
        admitted: list[SourceMessage] = []
        previous: int | None = None
        for message in records:
            expected = self._next(tp)
            if message.offset > expected and not gap_inside_delivery(
                expected, previous, message.offset
            ):
                earliest = await self._unless_expired(tp, expected)
                if earliest > expected:
                    if admitted:
                        # The hole would land inside this batch's range: end the range
                        # here; the next read starts the partition's range after it.
                        await self._seek(*tp, expected)
                        break
                    self.positions.accept_from(*tp, earliest)
                    resume_from = expected = earliest
                if message.offset > expected and not await self._broker_skips(
                    tp, expected, message.offset
                ):
                    await self._seek_back(tp, expected, message.offset)
                    break
            if message.offset > expected:
                self.positions.accept_from(*tp, message.offset)  # a gap nobody could read
            if self.positions.admit(*tp, message.offset) is Admission.NEW:
                admitted.append(message)
            else:
                self.metrics.already_counted_skipped.inc()
            previous = message.offset
        return admitted, resume_from

    async def _nothing_readable(self, tp: TP, start: int, end: int) -> bool:
        """Does a read_committed read from `start` find no record before `end`?"""
        if self._first_readable is None:
            return False
        first = await self._first_readable(*tp, start, end - 1)
        return first is not None and first >= end

    async def _broker_skips(self, tp: TP, expected: int, offset: int) -> bool:
        """Does a read_committed read from `expected` return `offset` as its first record?"""
        if self._first_readable is None:
            return False
        first = await self._first_readable(*tp, expected, offset)
        if first is None or first < offset:
            return False
        if first > offset:
            raise PositionError(
                f"{tp[0]}[{tp[1]}]: offset {offset} was delivered, but a read_committed "
                f"read from {expected} finds no record there (first: {first}); the consumer "
                "is not reading committed records only"
            )
        return True

    async def _unless_expired(self, tp: TP, expected: int) -> int:
        """The broker's earliest offset if retention passed `expected` (logged), else
        `expected`. The caller decides where the partition resumes."""
        earliest = await self._earliest_offset(*tp)
        if earliest <= expected:
            return expected
        log.error(
            "offsets expired on the broker before they were counted",
            extra={
                "topic": tp[0],
                "partition": tp[1],
                "first_missing": expected,
                "resume_at": earliest,
            },
        )
        return earliest

    async def _seek_back(self, tp: TP, expected: int, got: int) -> None:
        log.warning(
            "consumer jumped past uncounted offsets; seeking back",
            extra={"topic": tp[0], "partition": tp[1], "expected": expected, "got": got},
        )
        await self._seek(*tp, expected)
