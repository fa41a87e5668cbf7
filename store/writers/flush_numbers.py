"""Flush numbers: unique per flush, and growing with time across every writer.

A flush's number tags its staged rows (`counted_events.flush_seq`), and every fold reads
its flush back with `WHERE flush_seq = N`. `counted_events` is sorted by event id, so
that read prunes only through the minmax skip index on `flush_seq`: a granule is skipped
when N lies outside the numbers it holds. A merged part holds the flushes of every
writer, so the index prunes only while a new flush's number lies above the numbers of
the flushes before it, whoever wrote them. (The earlier form, writer_no * 10^9 + n, kept
writer 1's numbers below writer 2's: every merged part spanned both, and a fold read
nearly the whole table, more the longer the store ran.)

So a number is a hybrid logical clock with the writer's number below it:

    bit 62     1                    (marks this form: above every number of the old)
    bits 22-61 milliseconds since 2025-01-01 UTC, at least one more than the last
               number this writer used or saw in the ledger
    bits 0-21  the writer's number

Unique: every start of a writer registers a new writer number (`Registry.register`),
and one writer never repeats its milliseconds. Exactness never depends on the clock: a
clock that is behind or ahead costs pruning, never a count, and a writer that sees
another's later numbers in the ledger goes on above them. The numbers stay below 2^63,
so a signed 64-bit reader takes them as they are, until the year 2059.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

__all__ = [
    "FLUSHES_PER_WRITER",
    "WRITER_BITS",
    "FlushNumbers",
    "flush_number",
    "writer_of_flush",
]

WRITER_BITS: Final = 22
MAX_WRITER_NO: Final = (1 << WRITER_BITS) - 1
_CLOCK_BITS: Final = 40
_FORM_BIT: Final = 1 << (WRITER_BITS + _CLOCK_BITS)
_MAX_MILLIS: Final = (1 << _CLOCK_BITS) - 1
_EPOCH_MS: Final = 1_735_689_600_000  # 2025-01-01T00:00:00Z

# The earlier form: writer_no * 10^9 + n (still read: stores hold such numbers).
FLUSHES_PER_WRITER: Final = 1_000_000_000


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000 - _EPOCH_MS


class FlushNumbers:
    """The flush numbers of one registered writer. Not thread-safe: the sink's."""

    def __init__(self, writer_no: int, clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        if not 0 < writer_no <= MAX_WRITER_NO:
            raise ValueError(
                f"writer number {writer_no} does not fit a flush number (1 to "
                f"{MAX_WRITER_NO}): metering.writers has registered more writers than "
                "flush numbers can tell apart; see docs/several-writers.md"
            )
        self.writer_no = writer_no
        self._clock_ms = clock_ms
        self._last = 0  # the highest milliseconds used or seen

    def next(self) -> int:
        """A number no flush has had, above every number this writer used or saw."""
        millis = max(self._clock_ms(), self._last + 1)
        if millis > _MAX_MILLIS:
            raise ValueError(
                f"flush numbers end at {_MAX_MILLIS} ms after 2025-01-01 (the year 2059); "
                f"the writer's clock or a number in the ledger is past it ({millis})"
            )
        self._last = millis
        return _FORM_BIT | (millis << WRITER_BITS) | self.writer_no

    def observe(self, flush_seq: int) -> None:
        """Take in another writer's committed number: this writer's next one lies above."""
        if flush_seq & _FORM_BIT:
            self._last = max(self._last, (flush_seq >> WRITER_BITS) & _MAX_MILLIS)


def flush_number(writer_no: int, millis: int) -> int:
    """The number writer `writer_no` gives a flush at `millis` ms after 2025-01-01."""
    if not 0 < writer_no <= MAX_WRITER_NO or not 0 <= millis <= _MAX_MILLIS:
        raise ValueError(f"no flush number for writer {writer_no} at {millis} ms")
    return _FORM_BIT | (millis << WRITER_BITS) | writer_no


def writer_of_flush(flush_seq: int) -> int:
    """The writer number of a flush, of either form (0: committed before writers
    registered)."""
    if flush_seq & _FORM_BIT:
        return flush_seq & MAX_WRITER_NO
    return flush_seq // FLUSHES_PER_WRITER
