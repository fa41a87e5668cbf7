"""classify_batch: per-partition offset ranges (with and without extents) and in-batch
deduplication."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.rejections import Reason
from streams.batch import BatchError, PartitionRange, SourceMessage, classify_batch

ID_A = "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10"
ID_B = "0b5c2d8e-1f3a-4c6b-8d9e-2a7f4b1c3e50"
ID_C = "c1a2b3c4-d5e6-4f70-8a91-b2c3d4e5f607"

TOPIC = "usage.events"


def event(event_id: str, **changes: Any) -> bytes:
    document = {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": "2026-11-02T14:03:12.345Z",
        "tenant": "chatgpt-gov",
        "agency_id": "dept-of-energy",
        "agency_level": "federal",
        "user_id": "u-1",
        "conversation_id": "c-1",
        "model": "gpt-4o",
        "tokens_in": 1,
        "tokens_out": 2,
    }
    document.update(changes)
    return json.dumps(document).encode()


def msg(partition: int, offset: int, value: bytes, topic: str = TOPIC) -> SourceMessage:
    return SourceMessage(topic, partition, offset, b"dept-of-energy", value)


def test_empty_batch() -> None:
    batch = classify_batch([])
    assert len(batch.valid) == 0
    assert batch.rejected == []
    assert len(batch.in_batch_duplicates) == 0
    assert batch.ranges == {}
    assert batch.messages == 0


def test_ranges_per_partition_are_exact() -> None:
    messages = [
        msg(0, 10, event(ID_A)),
        msg(0, 11, b"not json"),
        msg(0, 12, event(ID_A)),  # duplicate of offset 10
        msg(0, 13, event(ID_B)),
        msg(3, 7, event(ID_C)),
        msg(3, 8, event(ID_C, tokens_in=-1)),  # rejected
    ]
    batch = classify_batch(messages)
    assert batch.ranges == {
        (TOPIC, 0): PartitionRange(
            TOPIC, 0, first_offset=10, last_offset=13, messages=4, duplicates=1, rejected=1
        ),
        (TOPIC, 3): PartitionRange(
            TOPIC, 3, first_offset=7, last_offset=8, messages=2, duplicates=0, rejected=1
        ),
    }
    assert batch.messages == 6
    assert [(v.source.partition, v.source.offset) for v in batch.valid] == [
        (0, 10),
        (0, 13),
        (3, 7),
    ]
    assert [(r.source.partition, r.source.offset) for r in batch.rejected] == [(0, 11), (3, 8)]
    assert [r.rejection.reason for r in batch.rejected] == [
        Reason.INVALID_JSON,
        Reason.SCHEMA_VIOLATION,
    ]
    assert [(d.source.partition, d.source.offset) for d in batch.in_batch_duplicates] == [(0, 12)]
    assert batch.range_of(messages[4]) is batch.ranges[(TOPIC, 3)]


def test_ranges_are_kept_per_topic_and_partition() -> None:
    batch = classify_batch([msg(1, 5, event(ID_A), topic="a"), msg(1, 9, event(ID_B), topic="b")])
    assert set(batch.ranges) == {("a", 1), ("b", 1)}
    assert (batch.ranges[("a", 1)].first_offset, batch.ranges[("a", 1)].last_offset) == (5, 5)
    assert (batch.ranges[("b", 1)].first_offset, batch.ranges[("b", 1)].last_offset) == (9, 9)


def test_messages_out_of_order_are_processed_in_offset_order() -> None:
    # The duplicate at the higher offset loses, whatever order the batch arrived in.
    batch = classify_batch(
        [msg(0, 21, event(ID_A, tokens_in=21)), msg(0, 20, event(ID_A, tokens_in=20))]
    )
    assert [(v.source.offset, v.event.tokens_in) for v in batch.valid] == [(20, 20)]
    assert [(d.source.offset, d.event.tokens_in) for d in batch.in_batch_duplicates] == [(21, 21)]
    r = batch.ranges[(TOPIC, 0)]
    assert (r.first_offset, r.last_offset, r.messages, r.duplicates) == (20, 21, 2, 1)


def test_first_occurrence_wins_by_partition_then_offset() -> None:
    batch = classify_batch(
        [
            msg(2, 1, event(ID_A, user_id="p2")),
            msg(0, 50, event(ID_A, user_id="p0")),
            msg(1, 3, event(ID_A, user_id="p1")),
        ]
    )
    assert [(v.source.partition, v.event.user_id) for v in batch.valid] == [(0, "p0")]
    assert [(d.source.partition, d.event.user_id) for d in batch.in_batch_duplicates] == [
        (1, "p1"),
        (2, "p2"),
    ]
    assert batch.ranges[(TOPIC, 0)].duplicates == 0
    assert batch.ranges[(TOPIC, 1)].duplicates == 1
    assert batch.ranges[(TOPIC, 2)].duplicates == 1


def test_same_uuid_in_another_spelling_is_an_in_batch_duplicate() -> None:
    batch = classify_batch(
        [
            msg(0, 0, event(ID_A)),
            msg(0, 1, event(ID_A.upper())),
            msg(0, 2, event(ID_A.replace("-", ""))),
        ]
    )
    assert len(batch.valid) == 1
    assert [d.source.offset for d in batch.in_batch_duplicates] == [1, 2]


def test_rejected_message_does_not_claim_its_event_id() -> None:
    batch = classify_batch(
        [
            msg(0, 0, event(ID_A, tokens_in="12")),  # rejected, same event_id
            msg(0, 1, event(ID_A, content="x")),  # rejected, same event_id
            msg(0, 2, event(ID_A)),  # the first valid one: counted
        ]
    )
    assert [v.source.offset for v in batch.valid] == [2]
    assert len(batch.in_batch_duplicates) == 0
    assert [r.rejection.reason for r in batch.rejected] == [
        Reason.SCHEMA_VIOLATION,
        Reason.CONTENT_NOT_ALLOWED,
    ]
    r = batch.ranges[(TOPIC, 0)]
    assert (r.messages, r.rejected, r.duplicates) == (3, 2, 0)


def test_counted_is_left_for_the_sink() -> None:
    batch = classify_batch([msg(0, 0, event(ID_A)), msg(0, 1, event(ID_B))])
    assert batch.ranges[(TOPIC, 0)].counted == 0
    assert [v.event.event_id for v in batch.valid] == [ID_A, ID_B]


# -- extents: the part of each partition a flush accounts for -------------------------


def test_extents_set_the_ranges_and_the_skipped_offsets_are_the_difference() -> None:
    # Partition 0 resumed at 10 and the read ended at 17; 12, 15 and 16 held no record.
    # Partition 1 moved from 40 to 42 past two markers, without a record.
    messages = [msg(0, 10, event(ID_A)), msg(0, 11, b"{"), msg(0, 13, event(ID_A))]
    messages.append(msg(0, 14, event(ID_B)))
    batch = classify_batch(messages, {(TOPIC, 0): (10, 16), (TOPIC, 1): (40, 41)})
    assert batch.ranges == {
        (TOPIC, 0): PartitionRange(
            TOPIC, 0, first_offset=10, last_offset=16, messages=4, duplicates=1, rejected=1
        ),
        (TOPIC, 1): PartitionRange(TOPIC, 1, first_offset=40, last_offset=41, messages=0),
    }
    assert batch.messages == 4
    assert batch.skipped_offsets == 3 + 2
    assert [v.source.offset for v in batch.valid] == [10, 14]


def test_partitions_without_an_extent_keep_their_message_offsets() -> None:
    batch = classify_batch(
        [msg(0, 10, event(ID_A)), msg(2, 7, event(ID_B)), msg(2, 9, event(ID_C))],
        {(TOPIC, 0): (8, 12)},
    )
    assert batch.ranges[(TOPIC, 0)] == PartitionRange(TOPIC, 0, 8, 12, messages=1)
    assert batch.ranges[(TOPIC, 2)] == PartitionRange(TOPIC, 2, 7, 9, messages=2)
    assert batch.skipped_offsets == 4 + 1


def test_a_message_outside_its_extent_is_refused() -> None:
    with pytest.raises(BatchError):
        classify_batch([msg(0, 13, event(ID_A))], {(TOPIC, 0): (10, 12)})
    with pytest.raises(BatchError):
        classify_batch([msg(0, 9, event(ID_A))], {(TOPIC, 0): (10, 12)})


def test_an_empty_extent_is_refused() -> None:
    with pytest.raises(BatchError):
        classify_batch([], {(TOPIC, 0): (10, 9)})
