"""Turn a batch of raw Kafka messages into what one flush writes. Pure: no I/O.

Each message is classified once; valid events are deduplicated within the batch
(first occurrence in offset order wins); each topic-partition's offset range is kept
as lineage for the flush ledger.

A range is the part of the partition the flush accounts for, not just the offsets of
its messages: from the partition's previous resume point to its new one minus one
(`Extents`, given by admission, see `streams.positions`). Offsets in it that held no
message for this reader (transaction markers, aborted records, compacted holes) are
`last_offset - first_offset + 1 - messages`; a range may hold no message at all (a
read that moved only past markers). Without extents a range spans the first and last
message offsets.

Valid events stay in columns (`streams.valid_events.ValidEvents`): `classify_batch`
takes them from the fast path's decode (`schemas.fast_path.decide_columns`) and the
per-partition counts from the sorted positions, so a valid event costs no Python
object of its own; only the messages the fast path cannot decide are classified one
by one (`classify_fully`, pydantic the judge). It also builds what the flush writes
of the valid events (their Arrow columns and content lines), so that work overlaps the
previous batch's flush instead of lengthening this one's.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter
from typing import Final

from schemas.errors import InputError
from schemas.event_columns import EventColumns
from schemas.events import UsageEvent
from schemas.fast_path import decide_columns
from schemas.rejections import Rejection, classify_fully
from streams.content_digest import counted_event_lines
from streams.messages import RejectedMessage, SourceMessage, ValidMessage
from streams.staged_columns import counted_event_arrays
from streams.valid_events import ValidEvents

__all__ = [
    "BatchError",
    "ClassifiedBatch",
    "Extents",
    "PartitionRange",
    "RejectedMessage",
    "SourceMessage",
    "ValidEvents",
    "ValidMessage",
    "assemble_batch",
    "classify_batch",
]


# (topic, partition) -> (first_offset, last_offset) a flush accounts for.
Extents = dict[tuple[str, int], tuple[int, int]]

_POSITION: Final = attrgetter("topic", "partition", "offset")
_PARTITION_KEY: Final = attrgetter("topic", "partition")


class BatchError(InputError):
    """A message outside the range its flush accounts for."""


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
    valid: ValidEvents = field(default_factory=ValidEvents)
    rejected: list[RejectedMessage] = field(default_factory=list)
    in_batch_duplicates: ValidEvents = field(default_factory=ValidEvents)
    ranges: dict[tuple[str, int], PartitionRange] = field(default_factory=dict)
    # Where the reader believed the ledger resumed each partition when it read it
    # (None: nothing of it counted). The sink refuses the flush, under the writers'
    # lock, when the ledger says otherwise: another writer counted there meanwhile.
    # A partition missing here is not checked (a batch built outside the pipeline).
    read_from: dict[tuple[str, int], int | None] = field(default_factory=dict)

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
    """Classify every message, drop repeats of an event_id within the batch.

    The same batch as `assemble_batch` builds from `classify` of each message in
    (topic, partition, offset) order, without a Python object per valid event.
    """
    ordered = sorted(messages, key=_POSITION)
    decision = decide_columns([message.value for message in ordered])
    rows, columns = decision.rows, decision.columns
    rejections: list[tuple[int, Rejection]] = []
    judged_valid: list[tuple[int, UsageEvent]] = []
    for index in decision.undecided:
        outcome = classify_fully(ordered[index].value)
        if isinstance(outcome, Rejection):
            rejections.append((index, outcome))
        else:
            judged_valid.append((index, outcome))
    if judged_valid:  # merge them in message order
        rows = rows + [index for index, _ in judged_valid]
        columns = columns.joined(EventColumns.of_events(event for _, event in judged_valid))
        order = sorted(range(len(rows)), key=rows.__getitem__)
        rows, columns = [rows[k] for k in order], columns.take(order)
    batch = _batch_of_sorted(ordered, rows, columns, rejections, extents or {})
    # What the flush writes of the valid events, built here, while the previous batch
    # is being flushed: the staged columns and the content lines.
    counted_event_arrays(batch.valid)
    counted_event_lines(batch.valid)
    return batch


def _batch_of_sorted(
    ordered: Sequence[SourceMessage],
    rows: list[int],
    columns: EventColumns,
    rejections: list[tuple[int, Rejection]],
    extents: Extents,
) -> ClassifiedBatch:
    """The flush of messages in (topic, partition, offset) order: `rows` (ascending)
    are the indices of the valid ones, `columns` their events, `rejections` the rest."""
    batch = _with_extents(extents)
    sources = list(map(ordered.__getitem__, rows))
    keep, repeated = _first_occurrences(columns.event_id)
    if repeated:
        batch.valid = ValidEvents(list(compress(sources, keep)), columns.kept(keep))
        batch.in_batch_duplicates = ValidEvents(
            [sources[row] for row in repeated], columns.take(repeated)
        )
    else:
        batch.valid = ValidEvents(sources, columns)
    batch.rejected = [RejectedMessage(ordered[index], why) for index, why in rejections]
    rejected_at = [index for index, _ in rejections]
    repeated_at = [rows[k] for k in repeated]
    keys = list(map(_PARTITION_KEY, ordered))
    start = 0
    while start < len(keys):
        key = keys[start]
        stop = bisect_right(keys, key, lo=start)
        first, last = ordered[start].offset, ordered[stop - 1].offset
        extent = extents.get(key)
        if extent is not None:
            if first < extent[0] or last > extent[1]:
                _refuse_outside(ordered[start:stop], extent)
            partition_range = batch.ranges[key]
        else:
            partition_range = PartitionRange(key[0], key[1], first, last)
            batch.ranges[key] = partition_range
        partition_range.messages += stop - start
        partition_range.rejected += _count_between(rejected_at, start, stop)
        partition_range.duplicates += _count_between(repeated_at, start, stop)
        start = stop
    return batch


def _first_occurrences(event_ids: list[str]) -> tuple[list[bool], list[int]]:
    """Which rows hold an id for the first time, and the rows that repeat one."""
    if len(set(event_ids)) == len(event_ids):
        return [], []
    seen: set[str] = set()
    keep: list[bool] = []
    repeated: list[int] = []
    for row, event_id in enumerate(event_ids):
        first = event_id not in seen
        keep.append(first)
        if first:
            seen.add(event_id)
        else:
            repeated.append(row)
    return keep, repeated


def _count_between(ascending: list[int], start: int, stop: int) -> int:
    return bisect_left(ascending, stop) - bisect_left(ascending, start)


def _with_extents(extents: Extents) -> ClassifiedBatch:
    batch = ClassifiedBatch()
    for (topic, partition), (first, last) in extents.items():
        if last < first:
            raise BatchError(f"{topic}[{partition}]: empty extent {first}..{last}")
        batch.ranges[(topic, partition)] = PartitionRange(topic, partition, first, last)
    return batch


def _refuse_outside(messages: Iterable[SourceMessage], extent: tuple[int, int]) -> None:
    for message in messages:
        if not extent[0] <= message.offset <= extent[1]:
            raise BatchError(
                f"{message.topic}[{message.partition}]: offset {message.offset} outside "
                f"the flush's range {extent[0]}..{extent[1]}"
            )


def assemble_batch(
    outcomes: Iterable[tuple[SourceMessage, UsageEvent | Rejection]],
    extents: Extents | None = None,
) -> ClassifiedBatch:
    """Build a flush from classified messages given in (topic, partition, offset) order.

    With `extents`, every partition of it gets its range, with or without messages,
    and every message must lie inside its partition's extent.
    """
    bounded = dict(extents or {})
    batch = _with_extents(bounded)
    seen_ids: set[str] = set()
    for message, outcome in outcomes:
        key = (message.topic, message.partition)
        extent = bounded.get(key)
        if extent is not None:
            _refuse_outside([message], extent)
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
            batch.in_batch_duplicates.append(message, outcome)
            partition_range.duplicates += 1
        else:
            seen_ids.add(outcome.event_id)
            batch.valid.append(message, outcome)
    return batch
