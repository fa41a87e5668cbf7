"""Positions: which messages are new, already counted, or beyond a gap."""

from __future__ import annotations

from streams.positions import Admission, Positions

T = "usage.events"


def test_unknown_partition_admits_any_offset_as_new_and_advances() -> None:
    positions = Positions()
    assert positions.next_offset(T, 0) is None
    assert positions.admit(T, 0, 42) is Admission.NEW
    assert positions.next_offset(T, 0) == 43


def test_expected_offset_is_new_and_advances_by_one() -> None:
    positions = Positions({(T, 0): 10})
    assert positions.admit(T, 0, 10) is Admission.NEW
    assert positions.next_offset(T, 0) == 11
    assert positions.admit(T, 0, 11) is Admission.NEW
    assert positions.next_offset(T, 0) == 12


def test_offsets_below_next_are_already_counted_and_do_not_move() -> None:
    positions = Positions({(T, 0): 10})
    assert positions.admit(T, 0, 9) is Admission.ALREADY_COUNTED
    assert positions.admit(T, 0, 0) is Admission.ALREADY_COUNTED
    assert positions.next_offset(T, 0) == 10


def test_offset_beyond_next_is_a_gap_and_does_not_move() -> None:
    positions = Positions({(T, 0): 10})
    assert positions.admit(T, 0, 11) is Admission.GAP
    assert positions.next_offset(T, 0) == 10
    assert positions.admit(T, 0, 10) is Admission.NEW


def test_replaying_an_admitted_offset_is_already_counted() -> None:
    positions = Positions({(T, 0): 5})
    assert positions.admit(T, 0, 5) is Admission.NEW
    assert positions.admit(T, 0, 5) is Admission.ALREADY_COUNTED


def test_partitions_and_topics_are_independent() -> None:
    positions = Positions({(T, 0): 10, (T, 1): 3})
    assert positions.admit(T, 1, 3) is Admission.NEW
    assert positions.admit(T, 0, 3) is Admission.ALREADY_COUNTED
    assert positions.admit("other", 0, 3) is Admission.NEW
    assert positions.snapshot() == {(T, 0): 10, (T, 1): 4, ("other", 0): 4}


def test_accept_from_resumes_at_the_given_offset() -> None:
    positions = Positions({(T, 0): 10})
    positions.accept_from(T, 0, 500)
    assert positions.next_offset(T, 0) == 500
    assert positions.admit(T, 0, 499) is Admission.ALREADY_COUNTED
    assert positions.admit(T, 0, 501) is Admission.GAP
    assert positions.admit(T, 0, 500) is Admission.NEW
    assert positions.next_offset(T, 0) == 501


def test_reset_and_snapshot_are_copies() -> None:
    start = {(T, 0): 1}
    positions = Positions(start)
    positions.admit(T, 0, 1)
    assert start == {(T, 0): 1}
    snapshot = positions.snapshot()
    snapshot[(T, 0)] = 99
    assert positions.next_offset(T, 0) == 2
    positions.reset({(T, 2): 7})
    assert positions.snapshot() == {(T, 2): 7}
    assert positions.next_offset(T, 0) is None
