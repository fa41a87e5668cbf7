"""The dead-letter envelope: why and where, and the original only when it cannot hold content."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.rejections import Rejection, classify
from streams.batch import RejectedMessage, SourceMessage
from streams.dead_letter import dead_letter_for

EVENT_ID = "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10"
MARKER = "zq7-secret-marker-41"
RECEIVED = datetime(2026, 11, 2, 14, 3, 12, 345678, tzinfo=UTC)

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


def rejected(raw: bytes, key: bytes | None = b"dept-of-energy") -> RejectedMessage:
    outcome = classify(raw)
    assert isinstance(outcome, Rejection), outcome
    return RejectedMessage(SourceMessage("usage.events", 4, 1234, key, raw), outcome)


def envelope(raw: bytes, key: bytes | None = b"dept-of-energy") -> tuple[bytes | None, bytes]:
    letter = dead_letter_for(rejected(raw, key), RECEIVED)
    return letter.key, letter.value


def test_plain_schema_violation_envelope_is_exact_and_includes_the_original() -> None:
    raw = json.dumps(dict(BASE, tokens_in=-1)).encode()
    key, value = envelope(raw)
    assert key == b"dept-of-energy"
    assert orjson.loads(value) == {
        "reason": "schema_violation",
        "detail": "tokens_in: Input should be greater than or equal to 0",
        "topic": "usage.events",
        "partition": 4,
        "offset": 1234,
        "size_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "received_at": "2026-11-02T14:03:12.345+00:00",
        "event_id": EVENT_ID,
        "agency_id": "dept-of-energy",
        "original": raw.decode(),
    }


def test_unkeyed_invalid_json_envelope_has_null_identifiers() -> None:
    raw = b'{"tenant": "gov"'
    key, value = envelope(raw, key=None)
    assert key is None
    assert orjson.loads(value) == {
        "reason": "invalid_json",
        "detail": "not parseable JSON (unexpected end of data)",
        "topic": "usage.events",
        "partition": 4,
        "offset": 1234,
        "size_bytes": 16,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "received_at": "2026-11-02T14:03:12.345+00:00",
        "event_id": None,
        "agency_id": None,
        "original": '{"tenant": "gov"',
    }


def test_invalid_utf8_original_is_carried_as_base64() -> None:
    raw = b'{"tenant": "\xff\xfe"}'
    _, value = envelope(raw)
    letter = orjson.loads(value)
    assert letter["reason"] == "invalid_json"
    assert "original" not in letter
    assert letter["original_base64"] == base64.b64encode(raw).decode("ascii")
    assert base64.b64decode(letter["original_base64"]) == raw


@pytest.mark.parametrize("field", ["content", "prompt", "completion", "text", "messages"])
def test_content_bearing_original_is_withheld(field: str) -> None:
    raw = json.dumps(dict(BASE, **{field: MARKER})).encode()
    _, value = envelope(raw)
    assert MARKER.encode() not in value
    letter = orjson.loads(value)
    assert letter["reason"] == "content_not_allowed"
    assert "original" not in letter
    assert "original_base64" not in letter
    assert letter["original_withheld"] == (
        "may hold message content; read it at its topic, partition and offset"
    )
    assert letter["sha256"] == hashlib.sha256(raw).hexdigest()
    assert letter["size_bytes"] == len(raw)


def test_content_with_unsupported_version_is_withheld() -> None:
    raw = json.dumps(dict(BASE, schema_version=2, content=MARKER)).encode()
    _, value = envelope(raw)
    assert MARKER.encode() not in value
    assert "original_withheld" in orjson.loads(value)


def test_too_large_original_is_withheld_even_without_content_names() -> None:
    raw = json.dumps(dict(BASE, note=MARKER + "x" * 70_000)).encode()
    _, value = envelope(raw)
    assert MARKER.encode() not in value
    letter = orjson.loads(value)
    assert letter["reason"] == "too_large"
    assert letter["size_bytes"] == len(raw)
    assert "original" not in letter
    assert "original_base64" not in letter
    assert len(value) < 2_000


def test_invalid_utf8_with_content_name_is_withheld_not_base64() -> None:
    raw = b'{"prompt": "' + MARKER.encode() + b'\xff"}'
    _, value = envelope(raw)
    assert MARKER.encode() not in value
    assert base64.b64encode(MARKER.encode()[:12]) not in value
    letter = orjson.loads(value)
    assert letter["reason"] == "invalid_json"
    assert "original_base64" not in letter
    assert "original_withheld" in letter


def test_upper_case_content_name_elsewhere_is_withheld_conservatively() -> None:
    raw = json.dumps(dict(BASE, tokens_in=-1, meta={"Prompt": MARKER})).encode()
    _, value = envelope(raw)
    assert MARKER.encode() not in value
    assert orjson.loads(value)["reason"] == "schema_violation"


def test_content_field_name_spelled_with_escapes_is_withheld() -> None:
    raw = json.dumps(dict(BASE))[:-1].encode() + b', "\\u0063ontent": "' + MARKER.encode() + b'"}'
    message = rejected(raw)
    assert message.rejection.reason == "content_not_allowed"
    letter = dead_letter_for(message, RECEIVED)
    assert MARKER.encode() not in letter.value


def test_lone_surrogate_identifiers_do_not_break_the_dead_letter() -> None:
    # A lone surrogate is not Unicode text: the message is not usable JSON text.
    raw = b'{"schema_version": 1, "event_id": "\\udc00", "agency_id": "\\ud800"}'
    letter = dead_letter_for(rejected(raw), RECEIVED)
    envelope = orjson.loads(letter.value)
    assert envelope["reason"] == "invalid_json"
    assert envelope["event_id"] is None
    assert envelope["agency_id"] is None
