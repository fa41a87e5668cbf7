"""Turn a batch of raw Kafka messages into what one flush writes. Pure: no I/O.

Each message is classified once; valid events are deduplicated within the batch
(first occurrence in offset order wins); each topic-partition's offset range is kept
as lineage for the flush ledger.

A range is the part of the partition the flush accounts for, not just the offsets of
its messages: from the partition's previous resume point to its new one minus one
(`Extents`, given by admission, see `streams.positions`). Offsets in it that held no
message for this reader (transaction markers, aborted records, compacted holes) are
`last_offset - first_offset + 1 - messages`; a range may hold no message at all (a
read that moved only past markers). Without extents (the store owner's relayed
packages) a range spans the first and last message offsets, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.errors import InputError
from schemas.events import UsageEvent
from schemas.rejections import Rejection, classify

__all__ = [
    "BatchError",
    "ClassifiedBatch",
    "Extents",
    "PartitionRange",
    "RejectedMessage",
    "SourceMessage",
    "ValidMessage",
    "assemble_batch",
    "classify_batch",
]


# (topic, partition) -> (first_offset, last_offset) a flush accounts for.
Extents = dict[tuple[str, int], tuple[int, int]]


class BatchError(InputError):
    """A message outside the range its flush accounts for."""


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """One Kafka message as read: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    # Set when the bytes themselves are not carried (a message relayed in a flush package).
    value_size: int | None = None

    @property
    def size(self) -> int:
        return len(self.value) if self.value_size is None else self.value_size


@dataclass(frozen=True, slots=True)
class ValidMessage:
    source: SourceMessage
    event: UsageEvent


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    source: SourceMessage
    rejection: Rejection


@dataclass(slots=True)
class PartitionRange:
    """The offsets of one topic-partition read in a batch, with what became of them."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    messages: int = 0
    counted: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(slots=True)
class ClassifiedBatch:
    valid: list[ValidMessage] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)
    in_batch_duplicates: list[ValidMessage] = field(default_factory=list)
    ranges: dict[tuple[str, int], PartitionRange] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(r.messages for r in self.ranges.values())

    @property
    def skipped_offsets(self) -> int:
        """Offsets inside the ranges that held no message for this reader."""
        return sum(r.last_offset - r.first_offset + 1 - r.messages for r in self.ranges.values())

    def range_of(self, source: SourceMessage) -> PartitionRange:
        return self.ranges[(source.topic, source.partition)]


def classify_batch(
    messages: Iterable[SourceMessage], extents: Extents | None = None
) -> ClassifiedBatch:
    """Classify every message, drop repeats of an event_id within the batch."""
    ordered = sorted(messages, key=lambda m: (m.topic, m.partition, m.offset))
    return assemble_batch(((message, classify(message.value)) for message in ordered), extents)


def assemble_batch(
    outcomes: Iterable[tuple[SourceMessage, UsageEvent | Rejection]],
    extents: Extents | None = None,
) -> ClassifiedBatch:
    """Build a flush from classified messages given in (topic, partition, offset) order.

    With `extents`, every partition of it gets its range, with or without messages,
    and every message must lie inside its partition's extent.
    """
    batch = ClassifiedBatch()
    bounded = dict(extents or {})
    for (topic, partition), (first, last) in bounded.items():
        if last < first:
            raise BatchError(f"{topic}[{partition}]: empty extent {first}..{last}")
        batch.ranges[(topic, partition)] = PartitionRange(topic, partition, first, last)
    seen_ids: set[str] = set()
    for message, outcome in outcomes:
        key = (message.topic, message.partition)
        extent = bounded.get(key)
        if extent is not None:
            if not extent[0] <= message.offset <= extent[1]:
                raise BatchError(
                    f"{message.topic}[{message.partition}]: offset {message.offset} outside "
                    f"the flush's range {extent[0]}..{extent[1]}"
                )
            partition_range = batch.ranges[key]
        elif key in batch.ranges:
            partition_range = batch.ranges[key]
            partition_range.last_offset = message.offset
        else:
            partition_range = PartitionRange(
                message.topic, message.partition, message.offset, message.offset
            )
            batch.ranges[key] = partition_range
        partition_range.messages += 1
        if isinstance(outcome, Rejection):
            batch.rejected.append(RejectedMessage(message, outcome))
            partition_range.rejected += 1
        elif outcome.event_id in seen_ids:
            batch.in_batch_duplicates.append(ValidMessage(message, outcome))
            partition_range.duplicates += 1
        else:
            seen_ids.add(outcome.event_id)
            batch.valid.append(ValidMessage(message, outcome))
    return batch
