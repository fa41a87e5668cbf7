"""What the agent does with each batch of Kafka messages: admit, classify, flush.

Admission compares every message with the ledger's resume position of its
partition: already counted messages are skipped, a jump past uncounted offsets
makes the consumer seek back. Then the batch is classified and flushed; the caller
acknowledges the messages only after `handle` returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from streams.batch import SourceMessage, classify_batch
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
        self.busy = False

    async def handle(self, messages: Sequence[SourceMessage]) -> FlushResult | None:
        self.busy = True
        try:
            self.last_activity = time.monotonic()
            self.metrics.events_in.inc(len(messages))
            admitted = await self._admit(messages)
            if not admitted:
                return None
            result = await self.sink.flush(classify_batch(admitted))
            self.last_activity = time.monotonic()
            return result
        finally:
            self.busy = False

    async def _admit(self, messages: Sequence[SourceMessage]) -> list[SourceMessage]:
        admitted: list[SourceMessage] = []
        sought: set[tuple[str, int]] = set()
        for message in messages:
            tp = (message.topic, message.partition)
            if tp in sought:
                continue
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
