"""Flush numbers: unique per flush, growing across writers, of a form told apart from
the older writer_no * 10^9 + n."""

from __future__ import annotations

import pytest

from store.writers import FLUSHES_PER_WRITER, FlushNumbers, flush_number, writer_of_flush

FORM = 1 << 62


class Clock:
    def __init__(self, millis: int) -> None:
        self.millis = millis

    def __call__(self) -> int:
        return self.millis


def test_a_number_is_the_form_bit_the_milliseconds_and_the_writer() -> None:
    numbers = FlushNumbers(5, Clock(1_000))
    assert numbers.next() == FORM + (1_000 << 22) + 5
    assert flush_number(5, 1_000) == FORM + (1_000 << 22) + 5


def test_one_writer_never_repeats_a_number_within_one_millisecond() -> None:
    clock = Clock(1_000)
    numbers = FlushNumbers(3, clock)
    got = [numbers.next() for _ in range(4)]
    assert got == [flush_number(3, ms) for ms in (1_000, 1_001, 1_002, 1_003)]
    clock.millis = 1_002  # a clock that was ahead of the wall: still no repeat
    assert numbers.next() == flush_number(3, 1_004)
    clock.millis = 5_000
    assert numbers.next() == flush_number(3, 5_000)


def test_a_writer_behind_goes_on_above_what_it_saw_in_the_ledger() -> None:
    ahead = FlushNumbers(1, Clock(9_000))
    behind = FlushNumbers(2, Clock(1_000))
    seen = ahead.next()
    behind.observe(seen)
    assert behind.next() == flush_number(2, 9_001)
    assert behind.next() > seen
    # Numbers of the older form say nothing of time: they move nothing.
    fresh = FlushNumbers(4, Clock(1_000))
    fresh.observe(7 * FLUSHES_PER_WRITER + 12)
    assert fresh.next() == flush_number(4, 1_000)


def test_two_writers_at_the_same_millisecond_differ() -> None:
    a = FlushNumbers(1, Clock(2_000)).next()
    b = FlushNumbers(2, Clock(2_000)).next()
    assert (a, b) == (flush_number(1, 2_000), flush_number(2, 2_000))
    assert a != b


def test_writer_of_flush_reads_both_forms() -> None:
    assert writer_of_flush(flush_number(4_194_303, 0)) == 4_194_303
    assert writer_of_flush(flush_number(17, (1 << 40) - 1)) == 17
    assert writer_of_flush(3 * FLUSHES_PER_WRITER + 999_999_999) == 3
    assert writer_of_flush(41) == 0  # committed before writers registered


def test_every_new_number_lies_above_every_number_of_the_older_form() -> None:
    # The largest older number a store could hold (writer numbers up to 2^22).
    assert flush_number(1, 0) > (1 << 22) * FLUSHES_PER_WRITER + FLUSHES_PER_WRITER
    # The largest new number still fits a signed 64-bit integer.
    assert flush_number((1 << 22) - 1, (1 << 40) - 1) == (1 << 63) - 1


def test_a_number_out_of_range_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="writer number 4194304 does not fit a flush number"):
        FlushNumbers(1 << 22)
    with pytest.raises(ValueError, match="writer number 0 does not fit"):
        FlushNumbers(0)
    with pytest.raises(ValueError, match="flush numbers end at 1099511627775 ms"):
        FlushNumbers(1, Clock(1 << 40)).next()
