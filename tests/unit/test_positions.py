"""Positions: which messages are new, already counted, or beyond a gap; what a read
covered; which gaps the broker left on purpose."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import cast

import pytest

from streams.batch import ClassifiedBatch, SourceMessage
from streams.metrics import Metrics
from streams.pipeline import MeteringPipeline
from streams.positions import (
    Admission,
    PositionError,
    Positions,
    Span,
    SpanAdmission,
    gap_inside_delivery,
)
from streams.sink import ClickHouseSink

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


# -- spans: what one read of a partition covered --------------------------------------


def test_a_span_from_the_resume_point_admits_everything_and_resumes_at_its_end() -> None:
    positions = Positions({(T, 0): 10})
    # Offsets 12 and 15-16 held no record for this reader (markers, aborted records).
    verdict = positions.admit_span(T, 0, Span(10, 17), [10, 11, 13, 14])
    assert verdict == SpanAdmission(Admission.NEW, 0, 10, 17)
    assert positions.next_offset(T, 0) == 17


def test_a_span_with_only_markers_still_moves_the_partition() -> None:
    positions = Positions({(T, 0): 40})
    assert positions.admit_span(T, 0, Span(40, 41), []) == SpanAdmission(Admission.NEW, 0, 40, 41)
    assert positions.next_offset(T, 0) == 41


def test_a_span_starting_before_the_resume_point_skips_what_was_counted() -> None:
    positions = Positions({(T, 0): 12})
    verdict = positions.admit_span(T, 0, Span(8, 20), [8, 9, 11, 12, 19])
    assert verdict == SpanAdmission(Admission.NEW, 3, 12, 20)
    assert positions.next_offset(T, 0) == 20


def test_a_span_ending_before_the_resume_point_moves_nothing() -> None:
    positions = Positions({(T, 0): 30})
    verdict = positions.admit_span(T, 0, Span(20, 25), [20, 21, 24])
    assert verdict == SpanAdmission(Admission.ALREADY_COUNTED, 3, 30, 30)
    assert positions.next_offset(T, 0) == 30


def test_a_span_starting_beyond_the_resume_point_is_a_gap_and_moves_nothing() -> None:
    positions = Positions({(T, 0): 10})
    # The consumer was put at 11 by someone else: offset 10 was never read.
    verdict = positions.admit_span(T, 0, Span(11, 14), [11, 12, 13])
    assert verdict == SpanAdmission(Admission.GAP, 0, 10, 10)
    assert positions.next_offset(T, 0) == 10


def test_a_span_of_an_unknown_partition_starts_at_its_start() -> None:
    positions = Positions()
    assert positions.admit_span(T, 0, Span(5, 9), [6, 8]) == SpanAdmission(Admission.NEW, 0, 5, 9)


@pytest.mark.parametrize(
    ("span", "offsets"),
    [
        (Span(10, 15), [9, 11]),  # before the read started
        (Span(10, 15), [10, 15]),  # at or past where it ended
        (Span(10, 15), [12, 11]),  # out of order
        (Span(10, 15), [11, 11]),  # twice
        (Span(15, 10), []),  # ends before it starts
    ],
)
def test_records_that_no_contiguous_read_returns_are_refused(
    span: Span, offsets: list[int]
) -> None:
    positions = Positions({(T, 0): 10})
    with pytest.raises(PositionError):
        positions.admit_span(T, 0, span, offsets)
    assert positions.next_offset(T, 0) == 10


def test_consecutive_spans_tile_the_offsets_without_holes() -> None:
    rng = random.Random(5)
    positions = Positions({(T, 0): 0})
    at = 0
    ranges: list[tuple[int, int]] = []
    received = 0
    for _ in range(200):
        end = at + rng.randrange(0, 30)
        # Any subset of the span's offsets may come back as records.
        offsets = sorted(rng.sample(range(at, end), k=rng.randrange(0, end - at + 1)))
        received += len(offsets)
        verdict = positions.admit_span(T, 0, Span(at, end), offsets)
        if verdict.resume_at > verdict.resume_from:
            ranges.append((verdict.resume_from, verdict.resume_at - 1))
        at = end
    assert ranges[0][0] == 0
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert ranges[-1][1] + 1 == at == positions.next_offset(T, 0)
    # Every offset is in exactly one range; those without a record are the skipped ones.
    assert sum(last - first + 1 for first, last in ranges) == at
    assert 0 < received < at


@pytest.mark.parametrize(
    ("expected", "previous", "offset", "inside"),
    [
        (10, 9, 12, True),  # the reader delivered 9, then 12: 10 and 11 hold no record
        (10, 11, 14, True),  # it delivered a counted 11 past the resume point... then 14
        (10, None, 12, False),  # the first record: the reader may have started at 12
        (10, 7, 12, False),  # the reader was at 8: 8 and 9 were never counted
        (10, 12, 12, False),  # not an advance
    ],
)
def test_a_jump_is_inside_a_delivery_only_after_a_record_at_or_before_the_resume_point(
    expected: int, previous: int | None, offset: int, inside: bool
) -> None:
    assert gap_inside_delivery(expected, previous, offset) is inside


# -- admission in the pipeline: spans, deliveries and the broker's word ---------------


class FakeBroker:
    """The pipeline's view of Kafka: seeks it made, the earliest offset, a committed reader."""

    def __init__(self, earliest: int = 0, first_readable: int | None = None) -> None:
        self.earliest = earliest
        self.first = first_readable
        self.seeks: list[tuple[int, int]] = []
        self.asked: list[tuple[int, int, int]] = []

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))

    async def earliest_offset(self, topic: str, partition: int) -> int:
        return self.earliest

    async def first_readable(
        self, topic: str, partition: int, start: int, up_to: int
    ) -> int | None:
        self.asked.append((partition, start, up_to))
        return self.first


def admit(
    broker: FakeBroker,
    resume: dict[tuple[str, int], int],
    offsets: list[int],
    spans: dict[tuple[str, int], Span] | None = None,
    *,
    probe: bool = True,
) -> ClassifiedBatch | None:
    pipeline = MeteringPipeline(
        cast(ClickHouseSink, None),
        Positions(resume),
        Metrics(),
        seek=broker.seek,
        earliest_offset=broker.earliest_offset,
        first_readable=broker.first_readable if probe else None,
    )
    try:
        messages = [SourceMessage(T, 0, offset, None, b"not json") for offset in offsets]
        return asyncio.run(pipeline.prepare(messages, spans))
    finally:
        pipeline.close()


def only_range(batch: ClassifiedBatch | None) -> tuple[int, int, int]:
    assert batch is not None
    assert list(batch.ranges) == [(T, 0)]
    r = batch.ranges[(T, 0)]
    return r.first_offset, r.last_offset, r.messages


def test_pipeline_accepts_markers_inside_a_span_and_covers_them() -> None:
    broker = FakeBroker()
    batch = admit(broker, {(T, 0): 10}, [10, 11, 13, 14], {(T, 0): Span(10, 17)})
    assert only_range(batch) == (10, 16, 4)
    assert batch is not None and batch.skipped_offsets == 3
    assert broker.seeks == [] and broker.asked == []


def test_pipeline_flushes_a_span_that_moved_past_markers_only() -> None:
    batch = admit(FakeBroker(), {(T, 0): 40}, [], {(T, 0): Span(40, 42)})
    assert only_range(batch) == (40, 41, 0)


def test_pipeline_seeks_back_when_a_read_started_beyond_the_resume_point() -> None:
    broker = FakeBroker()
    assert admit(broker, {(T, 0): 10}, [12, 13], {(T, 0): Span(12, 14)}) is None
    assert broker.seeks == [(0, 10)]


@pytest.mark.parametrize(("first_readable", "accepted"), [(12, True), (13, True), (11, False)])
def test_pipeline_asks_the_broker_before_seeking_back_from_a_read_beyond_the_resume_point(
    first_readable: int, accepted: bool
) -> None:
    """A read from 12 when the store resumes at 10: fine if the broker has no committed
    record at 10 or 11 (its first one is 12 or later), a skipped message otherwise."""
    broker = FakeBroker(first_readable=first_readable)
    batch = admit(broker, {(T, 0): 10}, [13], {(T, 0): Span(12, 14)})
    assert broker.asked == [(0, 10, 11)]
    if accepted:
        assert only_range(batch) == (10, 13, 1)
        assert broker.seeks == []
    else:
        assert batch is None
        assert broker.seeks == [(0, 10)]


def test_pipeline_moves_the_ledger_up_to_a_consumer_that_stands_past_trailing_markers() -> None:
    """The last batch had no span and ended at 30; the consumer stands at 32 (two
    markers) and reads nothing more: the broker confirms, the ledger covers 30-31."""
    broker = FakeBroker(first_readable=32)
    batch = admit(broker, {(T, 0): 30}, [], {(T, 0): Span(32, 32)})
    assert only_range(batch) == (30, 31, 0)
    assert broker.asked == [(0, 30, 31)]
    assert admit(FakeBroker(), {(T, 0): 32}, [], {(T, 0): Span(32, 32)}) is None


def test_pipeline_starts_the_range_after_offsets_that_expired_uncounted() -> None:
    """A consumer reset past the resume point by retention: the hole stays visible."""
    broker = FakeBroker(earliest=25)
    batch = admit(broker, {(T, 0): 10}, [25, 26], {(T, 0): Span(10, 27)})
    assert only_range(batch) == (25, 26, 2)
    assert broker.seeks == []


def test_pipeline_asks_the_broker_about_a_jump_at_the_first_record_only() -> None:
    broker = FakeBroker(first_readable=13)
    # 10-12 before the first record, 14 and 16-17 between records of one delivery.
    batch = admit(broker, {(T, 0): 10}, [13, 15, 18])
    assert only_range(batch) == (10, 18, 3)
    assert broker.asked == [(0, 10, 13)]
    assert broker.seeks == []


def test_pipeline_seeks_back_when_the_broker_has_an_earlier_record() -> None:
    broker = FakeBroker(first_readable=11)
    assert admit(broker, {(T, 0): 10}, [13, 14]) is None
    assert broker.seeks == [(0, 10)]


@pytest.mark.parametrize("probe", [True, False])
def test_pipeline_seeks_back_when_nobody_can_confirm_a_jump(probe: bool) -> None:
    broker = FakeBroker(first_readable=None)
    assert admit(broker, {(T, 0): 10}, [13], probe=probe) is None
    assert broker.seeks == [(0, 10)]


def test_pipeline_refuses_a_record_a_committed_reader_does_not_get() -> None:
    broker = FakeBroker(first_readable=20)
    with pytest.raises(PositionError):
        admit(broker, {(T, 0): 10}, [13])


def test_an_earliest_offset_the_broker_did_not_say_is_not_taken_for_zero() -> None:
    from aiokafka.structs import TopicPartition

    from streams.intake import EarliestOffsetUnknownError, known_earliest

    tp = TopicPartition("usage.events", 3)
    assert known_earliest({tp: 1200}, tp) == 1200
    assert known_earliest({tp: 0}, tp) == 0
    for answer in ({}, {tp: None}):
        with pytest.raises(EarliestOffsetUnknownError, match=r"usage.events\[3\]: the broker"):
            known_earliest(answer, tp)
