"""Rejection reasons and their order (CONTRACT section 2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.events import CONTENT_FIELDS, UsageEvent
from schemas.rejections import MAX_MESSAGE_BYTES, Reason, Rejection, classify, may_hold_content

EVENT_ID = "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10"
MARKER = "zq7-secret-marker-41"

BASE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": EVENT_ID,
    "occurred_at": "2026-11-02T14:03:12.345Z",
    "tenant": "chatgpt-gov",
    "agency_id": "dept-of-energy",
    "agency_level": "federal",
    "user_id": "u-1",
    "conversation_id": "c-1",
    "model": "gpt-4o",
    "tokens_in": 120,
    "tokens_out": 480,
}


def raw_event(**changes: Any) -> bytes:
    return json.dumps(dict(BASE, **changes)).encode()


def padded_event(size: int) -> bytes:
    """A valid event of exactly `size` bytes (padded by an ignored extra field)."""
    empty = raw_event(pad="")
    raw = raw_event(pad="p" * (size - len(empty)))
    assert len(raw) == size
    return raw


def rejection_of(raw: bytes) -> Rejection:
    outcome = classify(raw)
    assert isinstance(outcome, Rejection), outcome
    return outcome


def test_limit_is_64_kib() -> None:
    assert MAX_MESSAGE_BYTES == 65_536


def test_exactly_65536_bytes_is_not_too_large() -> None:
    outcome = classify(padded_event(65_536))
    assert isinstance(outcome, UsageEvent)
    assert outcome.event_id == EVENT_ID


def test_65537_bytes_is_too_large() -> None:
    outcome = rejection_of(padded_event(65_537))
    assert outcome.reason is Reason.TOO_LARGE
    assert outcome.detail == "65537 bytes, limit 65536"
    assert outcome.event_id is None
    assert outcome.agency_id is None


def test_70_kib_object_holding_content_is_too_large() -> None:
    raw = raw_event(content=MARKER + "x" * (70 * 1024))
    outcome = rejection_of(raw)
    assert outcome.reason is Reason.TOO_LARGE
    assert MARKER not in outcome.detail


def test_too_large_invalid_json_is_too_large() -> None:
    outcome = rejection_of(b"{" + b"x" * (70 * 1024))
    assert outcome.reason is Reason.TOO_LARGE


def test_too_large_with_unsupported_version_is_too_large() -> None:
    outcome = rejection_of(raw_event(schema_version=2, pad="p" * 70_000))
    assert outcome.reason is Reason.TOO_LARGE


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"schema_version": 1,',
        b"not json",
        b"",
        b"   ",
        b'{"a": 1} trailing',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"content": "x"',  # content field, but not parseable
    ],
)
def test_unparseable_json_is_invalid_json(raw: bytes) -> None:
    assert rejection_of(raw).reason is Reason.INVALID_JSON


@pytest.mark.parametrize(
    "raw",
    [
        b'{"tenant": "\xff"}',
        b"\xff\xfe{}",
        b'{"content": "\xc3\x28"}',
        raw_event()[:-1] + b', "x": "\xed\xa0\x80"}',  # UTF-8-encoded surrogate
    ],
)
def test_invalid_utf8_is_invalid_json(raw: bytes) -> None:
    outcome = rejection_of(raw)
    assert outcome.reason is Reason.INVALID_JSON
    assert outcome.event_id is None


def test_integers_beyond_64_bits_are_json_so_a_schema_violation() -> None:
    raw = raw_event()[:-1] + b', "tokens_in": 100000000000000000000000000000}'
    outcome = rejection_of(raw)
    assert outcome.reason is Reason.SCHEMA_VIOLATION
    assert outcome.detail.startswith("tokens_in: ")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "an array"),
        (json.dumps([BASE]).encode(), "an array"),
        (b'"a string"', "a string"),
        (b"12", "a number"),
        (b"1.5", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_non_object_json_is_a_schema_violation(raw: bytes, kind: str) -> None:
    outcome = rejection_of(raw)
    assert outcome.reason is Reason.SCHEMA_VIOLATION
    assert outcome.detail == f"top level is {kind}, expected an object"


def test_content_field_names_are_the_contract_ones() -> None:
    assert CONTENT_FIELDS == ("content", "prompt", "completion", "text", "messages")


@pytest.mark.parametrize("field", ["content", "prompt", "completion", "text", "messages"])
@pytest.mark.parametrize("value", [MARKER, [{"role": "user", "content": MARKER}], None, ""])
def test_each_content_field_is_content_not_allowed(field: str, value: Any) -> None:
    outcome = rejection_of(raw_event(**{field: value}))
    assert outcome.reason is Reason.CONTENT_NOT_ALLOWED
    assert outcome.detail == f"top-level content field(s) {field}"
    assert outcome.event_id == EVENT_ID
    assert outcome.agency_id == "dept-of-energy"


def test_several_content_fields_are_named_in_contract_order() -> None:
    outcome = rejection_of(raw_event(messages=MARKER, prompt=MARKER))
    assert outcome.detail == "top-level content field(s) prompt, messages"


def test_content_field_wins_over_unsupported_schema_version() -> None:
    outcome = rejection_of(raw_event(content=MARKER, schema_version=2))
    assert outcome.reason is Reason.CONTENT_NOT_ALLOWED


def test_content_field_wins_over_schema_violations() -> None:
    outcome = rejection_of(json.dumps({"prompt": MARKER}).encode())
    assert outcome.reason is Reason.CONTENT_NOT_ALLOWED
    assert outcome.event_id is None
    assert outcome.agency_id is None


def test_nested_content_is_not_top_level_content() -> None:
    outcome = classify(raw_event(meta={"content": "x"}))
    assert isinstance(outcome, UsageEvent)


def test_unsupported_schema_version_wins_over_schema_violation() -> None:
    outcome = rejection_of(raw_event(schema_version=2, tokens_in="12", tenant="BAD"))
    assert outcome.reason is Reason.UNSUPPORTED_SCHEMA_VERSION
    assert outcome.detail == "schema_version is 2, supported: 1"


@pytest.mark.parametrize(
    ("value", "described"),
    [(2, "2"), (0, "0"), ("1", "a string"), (True, "a boolean"), (1.5, "a number")],
)
def test_unsupported_schema_version_detail(value: Any, described: str) -> None:
    outcome = rejection_of(raw_event(schema_version=value))
    assert outcome.reason is Reason.UNSUPPORTED_SCHEMA_VERSION
    assert outcome.detail == f"schema_version is {described}, supported: 1"
    assert outcome.event_id == EVENT_ID
    assert outcome.agency_id == "dept-of-energy"


def test_rejection_keeps_identifiers_as_sent_only_when_short_strings() -> None:
    outcome = rejection_of(raw_event(event_id=EVENT_ID.upper(), tokens_in=-1))
    assert outcome.event_id == EVENT_ID.upper()
    assert outcome.agency_id == "dept-of-energy"
    outcome = rejection_of(raw_event(event_id=12, agency_id="a" * 129, tokens_in=-1))
    assert outcome.event_id is None
    assert outcome.agency_id is None
    outcome = rejection_of(raw_event(event_id="", agency_id="a" * 128))
    assert outcome.event_id is None
    assert outcome.agency_id == "a" * 128


@pytest.mark.parametrize(
    "changes",
    [
        {"tenant": MARKER.upper()},
        {"agency_id": "-" + MARKER},
        {"agency_level": MARKER},
        {"user_id": MARKER * 10},
        {"conversation_id": MARKER * 10},
        {"model": MARKER * 4},
        {"event_id": MARKER},
        {"occurred_at": MARKER},
        {"occurred_at": "2026-11-02T14:03:12" + MARKER},
        {"tokens_in": MARKER},
        {"tokens_out": [MARKER]},
        {"feature": {"x": MARKER}},
        {"schema_version": MARKER},
        {"schema_version": [MARKER]},
        {"content": MARKER},
        {"prompt": MARKER},
        {"completion": MARKER},
        {"text": MARKER},
        {"messages": [{"role": "user", "content": MARKER}]},
        {"content": MARKER, "schema_version": 2},
        {"content": MARKER + "x" * 70_000},
    ],
)
def test_detail_never_contains_field_values(changes: dict[str, Any]) -> None:
    outcome = rejection_of(raw_event(**changes))
    assert MARKER not in outcome.detail
    assert MARKER.upper() not in outcome.detail


@pytest.mark.parametrize(
    "raw",
    [
        b'{"tenant": "' + MARKER.encode(),
        b'{"tenant": ' + MARKER.encode() + b"}",
        MARKER.encode(),
        b'{"a": "' + MARKER.encode() + b'\\q"}',
        b'{"a": "' + MARKER.encode() + b'\xff"}',
        b'{"a": 1} ' + MARKER.encode(),
        json.dumps(MARKER).encode(),
        json.dumps([MARKER]).encode(),
    ],
)
def test_detail_of_unparseable_or_non_object_never_contains_values(raw: bytes) -> None:
    assert MARKER not in rejection_of(raw).detail


def test_may_hold_content_flags_content_names_anywhere_and_oversize() -> None:
    assert may_hold_content(b'{"a": 1}') is False
    assert may_hold_content(b'{"meta": {"Prompt": 1}}') is True
    # Conservative: a content name anywhere, even as a value, counts.
    assert may_hold_content(b'{"x": "TEXT"}') is True
    assert may_hold_content(b'{"x": "context"}') is False
    assert may_hold_content(b'"messages"') is True
    assert may_hold_content(b"x" * 65_536) is False
    assert may_hold_content(b"x" * 65_537) is True
