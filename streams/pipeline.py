"""What the worker does with each batch of Kafka messages: admit, classify, flush.

Admission compares every message with the ledger's resume position of its
partition: already counted messages are skipped, a jump past uncounted offsets
makes the consumer seek back. A partition the ledger has never seen resumes at the
broker's earliest offset: the store, not the consumer group, says what was counted.
Then the batch is classified and flushed; the caller acknowledges the messages only
after the flush returns.

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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from streams.batch import ClassifiedBatch, SourceMessage, classify_batch
from streams.metrics import Metrics
from streams.positions import Admission, Positions
from streams.sink import ClickHouseSink, FlushResult

__all__ = ["MeteringPipeline"]

log = logging.getLogger("govmeter.pipeline")

Seek = Callable[[str, int, int], Awaitable[None]]
EarliestOffset = Callable[[str, int], Awaitable[int]]


class MeteringPipeline:
    def __init__(
        self,
        sink: ClickHouseSink,
        positions: Positions,
        metrics: Metrics,
        *,
        seek: Seek,
        earliest_offset: EarliestOffset,
    ) -> None:
        self.sink = sink
        self.positions = positions
        self.metrics = metrics
        self._seek = seek
        self._earliest_offset = earliest_offset
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

    async def prepare(self, messages: Sequence[SourceMessage]) -> ClassifiedBatch | None:
        """Admit and classify a batch (off the event loop); None when nothing is new."""
        self._working += 1
        try:
            self.last_activity = time.monotonic()
            self.metrics.events_in.inc(len(messages))
            admitted = await self._admit(messages)
            if not admitted:
                return None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._classifier, classify_batch, admitted)
        finally:
            self._working -= 1

    async def flush(self, batch: ClassifiedBatch) -> FlushResult:
        self._working += 1
        try:
            result = await self.sink.flush(batch)
            self.last_activity = time.monotonic()
            return result
        finally:
            self._working -= 1

    async def _admit(self, messages: Sequence[SourceMessage]) -> list[SourceMessage]:
        admitted: list[SourceMessage] = []
        sought: set[tuple[str, int]] = set()
        for message in messages:
            tp = (message.topic, message.partition)
            if tp in sought:
                continue
            if self.positions.next_offset(*tp) is None:
                # Nothing of this partition was ever counted in this store: it starts at
                # the earliest offset the broker still has, wherever the consumer group's
                # committed offset points (a new or replaced store counts everything).
                self.positions.accept_from(*tp, await self._earliest_offset(*tp))
            verdict = self.positions.admit(message.topic, message.partition, message.offset)
            if verdict is Admission.NEW:
                admitted.append(message)
            elif verdict is Admission.ALREADY_COUNTED:
                self.metrics.already_counted_skipped.inc()
            else:
                expected = self.positions.next_offset(*tp)
                assert expected is not None
                earliest = await self._earliest_offset(*tp)
                if earliest > expected:
                    log.error(
                        "offsets expired on the broker before they were counted",
                        extra={
                            "topic": message.topic,
                            "partition": message.partition,
                            "first_missing": expected,
                            "resume_at": earliest,
                        },
                    )
                    self.positions.accept_from(message.topic, message.partition, earliest)
                    if self.positions.admit(*tp, message.offset) is Admission.NEW:
                        admitted.append(message)
                        continue
                log.warning(
                    "consumer jumped past uncounted offsets; seeking back",
                    extra={
                        "topic": message.topic,
                        "partition": message.partition,
                        "expected": expected,
                        "got": message.offset,
                    },
                )
                sought.add(tp)
                await self._seek(message.topic, message.partition, expected)
        return admitted
