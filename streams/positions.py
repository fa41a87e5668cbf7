"""Where each topic-partition resumes, according to the flush ledger. Pure.

The ledger, not Kafka's committed offset, decides what is new: a message at or
below the last committed offset of its partition was already counted (or rejected)
and is skipped; a message beyond the next expected offset means the consumer
jumped past messages nobody counted, and it must seek back.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Admission", "Positions"]


class Admission(Enum):
    NEW = "new"
    ALREADY_COUNTED = "already_counted"
    GAP = "gap"


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

    def accept_from(self, topic: str, partition: int, offset: int) -> None:
        """Resume at `offset` (used when earlier offsets no longer exist on the broker)."""
        self._next[(topic, partition)] = offset

    def reset(self, next_offsets: dict[tuple[str, int], int]) -> None:
        self._next = dict(next_offsets)

    def snapshot(self) -> dict[tuple[str, int], int]:
        return dict(self._next)
