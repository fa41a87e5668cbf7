"""Where each topic-partition resumes, according to the flush ledger. Pure.

The ledger, not Kafka's committed offset, decides what is new: a message below the
resume point of its partition was already counted (or rejected) and is skipped.

Not every offset holds a message a consumer receives. With `read_committed` the
broker never hands out transaction markers (commit and abort records) nor the
records of aborted transactions, and a compacted topic has holes; the consumer's
position simply moves past them. So a partition's resume point after a read is the
consumer's position (the next offset it would fetch), not the last received offset
plus one, and the ledger range of a flush runs from the previous resume point to
that position minus one: consecutive ranges tile the offsets without holes, and
`last_offset - first_offset + 1 - messages` of a range is what the broker skipped.

A gap is legitimate only when the consumer itself read across it, starting at or
before the resume point: Kafka clients return the records of a partition
contiguously from their position (aiokafka drops fetched data whose offset no longer
matches the position), so offsets between that start and the position reached that
came back as no record were skipped by the broker, for this consumer, by design.
A read that *starts* beyond the resume point is different: the consumer was put
there by something other than the store (a group offset ahead of the ledger, a
rebalance, a wrong seek), the offsets in between were never read, and the reader
must seek back. Two ways to know where a read started:

  - a `Span` (batch intake): the consumer's position before the read, as the intake
    set it (seek at assignment, seek back) or as its previous read left it, and the
    position after it: `admit_span`;
  - one record after another (agent intake, no positions): a jump between two
    records delivered in order by the same read is inside it (`gap_inside_delivery`);
    a jump at the first record of a partition has to be confirmed by the broker
    (the pipeline asks a read_committed reader which record follows the resume point).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from schemas.errors import ServiceError

__all__ = [
    "Admission",
    "PositionError",
    "Positions",
    "Span",
    "SpanAdmission",
    "gap_inside_delivery",
]


class Admission(Enum):
    NEW = "new"
    ALREADY_COUNTED = "already_counted"
    GAP = "gap"


class PositionError(ServiceError):
    """Records that cannot come from one contiguous read; counting around them is unsafe."""


@dataclass(frozen=True, slots=True)
class Span:
    """One read of one partition: the consumer stood at `start` before it, at `end` after."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class SpanAdmission:
    """What a span means for the ledger.

    `already_counted` leading records are below the resume point; the rest are new.
    The partition moved from `resume_from` to `resume_at` (equal: nothing new), and
    the flush that writes the new records covers `[resume_from, resume_at - 1]`.
    """

    verdict: Admission
    already_counted: int
    resume_from: int
    resume_at: int


def gap_inside_delivery(expected: int, previous: int | None, offset: int) -> bool:
    """Is the jump from `expected` to `offset` inside one in-order delivery?

    `previous` is the offset of the record of the same partition delivered just
    before, in the same batch (None when `offset` is the first). When the reader was
    at or before the resume point (`previous >= expected - 1`) and delivered nothing
    until `offset`, it read across `[expected, offset)` and the broker returned no
    record there.
    """
    return previous is not None and expected - 1 <= previous < offset


class Positions:
    def __init__(self, next_offsets: dict[tuple[str, int], int] | None = None) -> None:
        self._next: dict[tuple[str, int], int] = dict(next_offsets or {})

    def next_offset(self, topic: str, partition: int) -> int | None:
        return self._next.get((topic, partition))

    def admit(self, topic: str, partition: int, offset: int) -> Admission:
        """Judge one message; a NEW one moves the partition's next offset past it.

        Messages must be admitted in offset order per partition. Moving on at once is
        safe because a batch is flushed until it succeeds or the process dies (and a
        new process starts again from the ledger).
        """
        expected = self._next.get((topic, partition))
        if expected is None or offset == expected:
            self._next[(topic, partition)] = offset + 1
            return Admission.NEW
        if offset < expected:
            return Admission.ALREADY_COUNTED
        return Admission.GAP

    def admit_span(
        self, topic: str, partition: int, span: Span, offsets: Sequence[int]
    ) -> SpanAdmission:
        """Judge what one read of a partition returned: the records' `offsets`, in order.

        A span that starts beyond the resume point is a GAP and moves nothing. Otherwise
        records below the resume point are already counted, the others are new, and the
        partition resumes at the span's end (or stays, when the read ended before it).
        Records outside the span or out of order raise `PositionError`.
        """
        key = (topic, partition)
        if span.end < span.start:
            raise PositionError(f"{topic}[{partition}]: a read cannot end before it starts")
        previous = span.start - 1
        for offset in offsets:
            if not previous < offset < span.end:
                raise PositionError(
                    f"{topic}[{partition}]: record at offset {offset} outside or out of order "
                    f"in a read from {span.start} to {span.end}"
                )
            previous = offset
        expected = self._next.get(key, span.start)
        if span.start > expected:
            return SpanAdmission(Admission.GAP, 0, expected, expected)
        already = sum(1 for offset in offsets if offset < expected)
        resume_at = max(expected, span.end)
        self._next[key] = resume_at
        verdict = Admission.NEW if resume_at > expected else Admission.ALREADY_COUNTED
        return SpanAdmission(verdict, already, expected, resume_at)

    def accept_from(self, topic: str, partition: int, offset: int) -> None:
        """Resume at `offset`: earlier offsets no longer exist on the broker, or the
        broker confirmed it has no record for this reader before it."""
        self._next[(topic, partition)] = offset

    def committed_up_to(self, topic: str, partition: int, offset: int) -> None:
        """A flush of this writer just committed the partition up to `offset` (its next
        offset): the partition resumes there at the earliest. A reload from the ledger
        read before that commit put it behind; an admitted later batch keeps it ahead."""
        current = self._next.get((topic, partition))
        if current is None or current < offset:
            self._next[(topic, partition)] = offset

    def forget(self, topic: str, partition: int) -> None:
        """Nothing of this partition is counted: it starts at the earliest offset again."""
        self._next.pop((topic, partition), None)

    def reset(self, next_offsets: dict[tuple[str, int], int]) -> None:
        self._next = dict(next_offsets)

    def snapshot(self) -> dict[tuple[str, int], int]:
        return dict(self._next)
