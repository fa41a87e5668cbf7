"""The flush's content hash and staged table built from columns equal the definitions
of `store.ledger.chain` and the per-event construction, on every kind of string."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from schemas.events import UsageEvent
from store.ledger import COUNTED_EVENT_COLUMNS
from store.ledger.chain import (
    ChainedEvent,
    ChainedRange,
    content_lines,
    content_sha256,
    epoch_milliseconds,
)
from streams import content_digest
from streams.batch import PartitionRange, SourceMessage, ValidEvents, ValidMessage
from streams.content_digest import counted_event_lines
from streams.seen_ids import id_halves
from streams.sink import counted_events_table, flush_content_sha256

AWKWARD = [
    "plain",
    "",
    'quote " inside',
    "back\\slash",
    "line\nbreak",
    "tab\tand\x00nul\x1f",
    "del\x7f",
    "caf\u00e9",
    "😀",
    '],["E',
    "]\nE[",
]


def _event(n: int, text: str) -> ValidMessage:
    event = UsageEvent.model_validate(
        {
            "schema_version": 1,
            "event_id": f"{n:08x}-0000-4000-8000-00000000000{n % 10}",
            "occurred_at": f"2026-11-02T14:03:{n % 60:02d}.{n:03d}Z",
            "tenant": "chatgpt-gov",
            "agency_id": "fed-gsa",
            "agency_level": "federal",
            "user_id": text or "u",
            "conversation_id": "c-1",
            "model": text[:64] or "m",
            "tokens_in": n,
            "tokens_out": 1_000_000 - n,
            "feature": text,
        }
    )
    return ValidMessage(SourceMessage("usage.events", n % 3, 10**12 + n, None, b""), event)


def _chained(valid: ValidMessage) -> ChainedEvent:
    e, s = valid.event, valid.source
    return ChainedEvent(
        e.event_id,
        epoch_milliseconds(e.occurred_at),
        e.tenant,
        e.agency_id,
        e.agency_level,
        e.user_id,
        e.model,
        e.feature,
        e.tokens_in,
        e.tokens_out,
        s.topic,
        s.partition,
        s.offset,
    )


@pytest.mark.parametrize("text", AWKWARD)
def test_event_lines_equal_the_chain_definition(text: str) -> None:
    # Listed out of id order: the lines are sorted by event id.
    messages = [_event(n, text if n % 2 else "plain") for n in (7, 3, 9, 1, 4)]
    expected = "".join(content_lines([_chained(v) for v in messages], [], [])[1:])
    assert counted_event_lines(ValidEvents.of_messages(messages)) == expected.encode("ascii")


def test_no_events_no_lines() -> None:
    assert counted_event_lines(ValidEvents()) == b""


def test_flush_hash_equals_the_chain_hash() -> None:
    messages = [_event(n, AWKWARD[n % len(AWKWARD)]) for n in range(40)]
    ranges = [PartitionRange("usage.events", p, 0, 99, 40, 13, 1, 2) for p in (2, 0, 1)]
    expected = content_sha256(
        [_chained(v) for v in messages],
        [],
        [ChainedRange(r.topic, r.partition, 0, 99, 40, 13, 1, 2) for r in ranges],
    )
    assert flush_content_sha256(ValidEvents.of_messages(messages), [], ranges) == expected
    assert flush_content_sha256(messages, [], ranges) == expected


def test_staged_table_holds_the_model_values() -> None:
    messages = [_event(n, AWKWARD[n % len(AWKWARD)] or "x") for n in range(12)]
    now = datetime(2026, 11, 3, 8, 0, 0, 123000, tzinfo=UTC)
    table = counted_events_table(ValidEvents.of_messages(messages), 5, now)
    assert table.equals(counted_events_table(messages, 5, now))
    rows = table.to_pylist()
    for row, valid in zip(rows, messages, strict=True):
        e = valid.event
        assert row["event_id"].hex() == e.event_id.replace("-", "")
        assert row["occurred_at"] == e.occurred_at
        assert [row[name] for name in ("tenant", "agency_id", "agency_level", "user_id")] == [
            e.tenant,
            e.agency_id,
            e.agency_level,
            e.user_id,
        ]
        assert [row[name] for name in ("conversation_id", "model", "feature")] == [
            e.conversation_id,
            e.model,
            e.feature,
        ]
        assert (row["tokens_in"], row["tokens_out"]) == (e.tokens_in, e.tokens_out)
        assert (row["topic"], row["partition"], row["offset"]) == (
            valid.source.topic,
            valid.source.partition,
            valid.source.offset,
        )
        assert (row["flush_seq"], row["ingested_at"]) == (5, now)
    assert table.schema.field("event_id").type == pa.binary(16)
    assert table.schema.names == list(COUNTED_EVENT_COLUMNS)


def test_id_halves_equal_the_filter_s() -> None:
    messages = [_event(n, "x") for n in range(9)]
    valid = ValidEvents.of_messages(messages)
    assert (valid.id_halves() == id_halves([v.event.event_id for v in messages])).all()
    assert ValidEvents().id_halves().shape == (0, 2)


def test_event_lines_are_sorted_as_the_id_text_sorts() -> None:
    rng = random.Random(13)
    messages = [_event(n, "x") for n in range(300)]
    spelled = [
        ValidMessage(
            v.source,
            v.event.model_copy(update={"event_id": str(uuid.UUID(int=rng.getrandbits(128)))}),
        )
        for v in messages
    ]
    expected = "".join(content_lines([_chained(v) for v in spelled], [], [])[1:])
    assert counted_event_lines(ValidEvents.of_messages(spelled)) == expected.encode("ascii")


def test_what_was_derived_is_forgotten_when_a_row_is_added() -> None:
    valid = ValidEvents.of_messages([_event(1, "x")])
    assert counted_event_lines(valid).count(b"\n") == 1
    valid.append(_event(2, "y").source, _event(2, "y").event)
    assert counted_event_lines(valid).count(b"\n") == 2
    assert valid.offsets() == [10**12 + 1, 10**12 + 2]


PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))


def test_lines_joined_by_arrow_equal_the_chain_definition_on_printable_text() -> None:
    """Every printable ASCII character but `"` and `\\` is joined by Arrow as it is,
    the row separators of JSON included; the other two take the slower paths."""
    rng = random.Random(29)
    plain = PRINTABLE.replace('"', "").replace("\\", "")
    texts = ["],[", "],[E", "] E[", "/~'`{}", " ", "x" * 64]
    texts += ["".join(rng.choice(plain) for _ in range(rng.randrange(1, 40))) for _ in range(60)]
    messages = [_event(n, texts[n % len(texts)]) for n in range(len(texts) * 3)]
    valid = ValidEvents.of_messages(messages)
    expected = "".join(content_lines([_chained(v) for v in messages], [], [])[1:])
    joined = content_digest._joined_by_arrow(valid)
    assert joined == expected.encode("ascii")
    assert counted_event_lines(valid) == joined


@pytest.mark.parametrize("text", ['quote " inside', "back\\slash", "tab\t", "del\x7f", "caf\u00e9"])
def test_a_string_that_needs_an_escape_is_not_joined_by_arrow(text: str) -> None:
    messages = [_event(n, text if n == 2 else "plain") for n in range(4)]
    valid = ValidEvents.of_messages(messages)
    assert content_digest._joined_by_arrow(valid) is None
    expected = "".join(content_lines([_chained(v) for v in messages], [], [])[1:])
    assert counted_event_lines(valid) == expected.encode("ascii")


def test_the_largest_numbers_are_joined_as_json_writes_them() -> None:
    messages = [_event(n, "x") for n in range(3)]
    edged = [
        ValidMessage(
            SourceMessage("usage.events", 2**31 - 1, 2**63 - 1 - n, None, b""),
            v.event.model_copy(update={"tokens_in": 2**32 - 1, "tokens_out": 0}),
        )
        for n, v in enumerate(messages)
    ]
    valid = ValidEvents.of_messages(edged)
    expected = "".join(content_lines([_chained(v) for v in edged], [], [])[1:])
    assert content_digest._joined_by_arrow(valid) == expected.encode("ascii")
