"""Scale-out on the embedded store: processors relay packages, one store owner writes.

    processor (any number, one consumer group on the events topic):
      1. classify the batch            2. publish its dead letters, wait for acks
      3. publish the flush packages of each source partition (several when they
         would exceed PACKAGE_MAX_BYTES), wait for acks
      then the source messages are acknowledged (offsets trail the packages).
    store owner (exactly one; it owns the store):
      reads packages in order from a one-partition topic, admits each message by
      the ledger position of its SOURCE partition (skipping what is already
      counted), and flushes through the same sink as the single-process worker,
      every METERING_BATCH_MAX_EVENTS admitted events.

A processor that dies after step 3 but before its offsets are committed makes a
peer publish the same offsets again: the owner skips them by the ledger. A
processor commits only what it published, so the only jumps the owner meets are
offsets no read_committed reader gets (transaction markers, aborted records): the
owner asks the broker (`first_readable`) and accepts a jump only when no committed
record lies in it, and the flush's range then starts at the ledger's position, so
the ranges still tile each partition. Any other jump stops the owner rather than
count around it.

The relay topic is input too: the owner validates every package before admitting any
of its messages (`streams.packages.decode_package`, and the source topic must be the
events topic). A refused package is logged with its reason and its place on the relay
topic, counted in /metrics (govmeter_packages_rejected_total), and counts nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from schemas.errors import ServiceError
from schemas.events import UsageEvent
from schemas.rejections import Rejection, classify
from streams.batch import Extents, RejectedMessage, SourceMessage, assemble_batch
from streams.dead_letter import DeadLetter, DeadLetterPublisher, dead_letter_for
from streams.metrics import Metrics
from streams.packages import PackageError, PackageReason, decode_package, encode_package
from streams.pipeline import FirstReadable
from streams.positions import Admission, Positions
from streams.sink import ClickHouseSink, FlushResult

__all__ = [
    "PACKAGE_MAX_BYTES",
    "LedgerGapError",
    "NoDeadLetters",
    "ProcessorPipeline",
    "StoreOwnerPipeline",
    "packages_within",
]

log = logging.getLogger("govmeter.relay")

PublishPackages = Callable[[Sequence[tuple[bytes, bytes]]], Awaitable[None]]


# A package is one Kafka message on the relay topic: it must stay under the broker's
# and the producer's message size limits (1 MiB by default). A batch of 20,000 events
# on one partition is about 5 MB of package, so a partition's messages of one batch
# go out as several packages, in offset order, each under this budget.
PACKAGE_MAX_BYTES: Final = 512 * 1024


def packages_within(
    items: Sequence[tuple[SourceMessage, UsageEvent | Rejection]], max_bytes: int
) -> list[bytes]:
    """The messages of one partition as packages of at most `max_bytes` each (halved
    until they fit; one message always fits: its fields are bounded), in offset order."""
    package = encode_package(items)
    if len(package) <= max_bytes or len(items) == 1:
        return [package]
    half = len(items) // 2
    return packages_within(items[:half], max_bytes) + packages_within(items[half:], max_bytes)


class LedgerGapError(ServiceError):
    """A package starts beyond the ledger position of its source partition."""


class ProcessorPipeline:
    def __init__(
        self,
        dead_letters: DeadLetterPublisher,
        publish_packages: PublishPackages,
        metrics: Metrics,
    ) -> None:
        self._dead_letters = dead_letters
        self._publish_packages = publish_packages
        self.metrics = metrics
        self.last_activity = time.monotonic()
        self.busy = False

    async def handle(self, messages: Sequence[SourceMessage]) -> None:
        self.busy = True
        try:
            self.last_activity = time.monotonic()
            self.metrics.events_in.inc(len(messages))
            ordered = sorted(messages, key=lambda m: (m.topic, m.partition, m.offset))
            outcomes = [(m, classify(m.value)) for m in ordered]
            # 1-2. dead letters first, acknowledged.
            now = datetime.now(UTC)
            letters: list[DeadLetter] = []
            for message, outcome in outcomes:
                if isinstance(outcome, Rejection):
                    letters.append(dead_letter_for(RejectedMessage(message, outcome), now))
                    self.metrics.rejected_by_reason[str(outcome.reason)] += 1
            if letters:
                await self._dead_letters.publish(letters)
            # 3. one package per source partition, acknowledged.
            by_partition: dict[int, list[tuple[SourceMessage, UsageEvent | Rejection]]] = {}
            for message, outcome in outcomes:
                by_partition.setdefault(message.partition, []).append((message, outcome))
            packages = [
                (str(partition).encode(), package)
                for partition, items in sorted(by_partition.items())
                for package in packages_within(items, PACKAGE_MAX_BYTES)
            ]
            await self._publish_packages(packages)
            self.metrics.flushes.inc()
            log.info(
                "batch relayed",
                extra={
                    "messages": len(outcomes),
                    "packages": len(packages),
                    "partitions": sorted(by_partition),
                },
            )
            self.last_activity = time.monotonic()
        finally:
            self.busy = False


class StoreOwnerPipeline:
    def __init__(
        self,
        sink: ClickHouseSink,
        positions: Positions,
        metrics: Metrics,
        *,
        events_topic: str | None = None,
        max_events_per_flush: int = 20_000,
        first_readable: FirstReadable | None = None,
    ) -> None:
        self.sink = sink
        self.positions = positions
        self.metrics = metrics
        # The intake's batch limit counts relay messages, each a package of up to a
        # few thousand events: the owner flushes whenever this many are admitted.
        self.max_events_per_flush = max_events_per_flush
        # Asks the broker whether a committed record lies in a jump between the ledger
        # and a package (None: every jump is refused).
        self._first_readable = first_readable
        # The one source topic packages may describe (None: any, for tests of the relay).
        self.events_topic = events_topic
        self.last_activity = time.monotonic()
        self.busy = False

    def _unpack(
        self, package: SourceMessage
    ) -> list[tuple[SourceMessage, UsageEvent | Rejection]] | None:
        """The package's messages, or None (logged and counted) when it is refused."""
        try:
            outcomes = decode_package(package.value)
            topic = outcomes[0][0].topic
            if self.events_topic is not None and topic != self.events_topic:
                raise PackageError(
                    PackageReason.UNKNOWN_TOPIC,
                    f"describes messages of another topic than METERING_EVENTS_TOPIC="
                    f"{self.events_topic}",
                )
        except PackageError as error:
            self.metrics.packages_rejected[str(error.reason)] += 1
            log.warning(
                "relay package rejected; none of its messages is counted",
                extra={
                    "reason": str(error.reason),
                    "detail": error.detail,
                    "relay_topic": package.topic,
                    "relay_partition": package.partition,
                    "relay_offset": package.offset,
                    "package_bytes": package.size,
                },
            )
            return None
        return outcomes

    async def handle(self, package_messages: Sequence[SourceMessage]) -> FlushResult | None:
        self.busy = True
        try:
            self.last_activity = time.monotonic()
            admitted: list[tuple[SourceMessage, UsageEvent | Rejection]] = []
            # Partitions whose flush range starts before its first message: the offsets
            # in between hold no committed record (transaction markers, aborted records).
            starts: dict[tuple[str, int], int] = {}
            counting: set[tuple[str, int]] = set()  # partitions with messages admitted
            result: FlushResult | None = None
            for package in package_messages:
                outcomes = self._unpack(package)
                if outcomes is None:
                    continue
                for source, outcome in outcomes:
                    self.metrics.events_in.inc()
                    verdict = self.positions.admit(source.topic, source.partition, source.offset)
                    key = (source.topic, source.partition)
                    if verdict is Admission.GAP:
                        expected = await self._accept_jump(source)
                        if key not in counting:  # the range begins before this message
                            starts[key] = expected
                        verdict = self.positions.admit(*key, source.offset)
                    if verdict is Admission.NEW:
                        counting.add(key)
                        admitted.append((source, outcome))
                    else:
                        self.metrics.already_counted_skipped.inc()
                if len(admitted) >= self.max_events_per_flush:
                    result = await self._flush(admitted, starts)
                    admitted, starts, counting = [], {}, set()
            if admitted:
                result = await self._flush(admitted, starts)
            return result
        finally:
            self.busy = False

    async def _accept_jump(self, source: SourceMessage) -> int:
        """A package message beyond the ledger's next offset: accepted only when the
        broker says a read_committed reader gets no record before it (a processor's read
        skips transaction markers and aborted records, and relays only records).
        Returns the offset the jump starts at."""
        key = (source.topic, source.partition)
        expected = self.positions.next_offset(*key)
        first = None
        if self._first_readable is not None and expected is not None:
            first = await self._first_readable(*key, expected, source.offset)
        if expected is None or first is None or first < source.offset:
            found = (
                "the broker did not answer"
                if first is None
                else f"the broker has a committed record at {first}"
            )
            raise LedgerGapError(
                f"{source.topic}[{source.partition}]: a package starts at offset "
                f"{source.offset}, but the ledger expects {expected} and {found}; "
                "refusing to count around missing messages (a restart reads the relay "
                "topic again from the ledger)"
            )
        self.positions.accept_from(*key, source.offset)
        return expected

    async def _flush(
        self,
        admitted: list[tuple[SourceMessage, UsageEvent | Rejection]],
        starts: dict[tuple[str, int], int],
    ) -> FlushResult:
        admitted.sort(key=lambda item: (item[0].topic, item[0].partition, item[0].offset))
        lasts: dict[tuple[str, int], int] = {}
        for source, _ in admitted:
            lasts[(source.topic, source.partition)] = source.offset
        extents: Extents = {key: (start, lasts[key]) for key, start in starts.items()}
        result = await self.sink.flush(assemble_batch(admitted, extents or None))
        self.last_activity = time.monotonic()
        return result


class NoDeadLetters:
    """The store owner's sink publishes nothing: processors already did."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        return None
