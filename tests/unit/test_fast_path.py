"""The msgspec fast path agrees with the full pydantic classifier, or steps aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.events import UsageEvent
from schemas.fast_path import fast_validate
from schemas.rejections import classify_fully

CORPUS = Path(__file__).resolve().parents[1] / "replay" / "corpus.jsonl"

BASE = {
    "schema_version": 1,
    "event_id": "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10",
    "occurred_at": "2026-11-02T14:03:12.345Z",
    "tenant": "chatgpt-gov",
    "agency_id": "fed-gsa",
    "agency_level": "federal",
    "user_id": "u-1",
    "conversation_id": "c-1",
    "model": "gpt-4o",
    "tokens_in": 10,
    "tokens_out": 20,
}


def corpus_lines() -> list[bytes]:
    return [line.rstrip(b"\r") for line in CORPUS.read_bytes().split(b"\n") if line]


def assert_agrees(raw: bytes) -> bool:
    """True when the fast path decided; either way it must agree with the full path."""
    fast = fast_validate(raw)
    full = classify_fully(raw)
    if fast is None:
        return False
    assert isinstance(full, UsageEvent), (raw[:200], full)
    assert fast.model_dump() == full.model_dump()
    return True


def test_fast_path_agrees_on_every_corpus_line_and_decides_the_plain_valid_ones() -> None:
    lines = corpus_lines()
    decided = sum(assert_agrees(raw) for raw in lines)
    plain_valid = sum(
        1 for raw in lines if isinstance(classify_fully(raw), UsageEvent) and b"\\u" not in raw
    )
    assert decided == plain_valid


def variant(**changes: object) -> bytes:
    document = dict(BASE)
    for key, value in changes.items():
        if value is ...:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "raw",
    [
        variant(),
        variant(feature="file-analysis", extra={"nested": [1, 2]}),
        variant(schema_version=True),
        variant(schema_version="1"),
        variant(schema_version=1.0),
        variant(schema_version=...),
        variant(tokens_in="12"),
        variant(tokens_in=True),
        variant(tokens_in=12.0),
        variant(tokens_in=-1),
        variant(tokens_out=1_000_001),
        variant(tokens_in=10**30),
        variant(occurred_at="2026-11-02T14:03:12"),
        variant(occurred_at="2026-11-02"),
        variant(occurred_at="2026-11-02t14:03:12z"),
        variant(occurred_at="2026-11-02T14:03:12.123456789+05:45"),
        variant(agency_level="county"),
        variant(agency_id="-x"),
        variant(agency_id="a" * 65),
        variant(tenant="Chatgpt"),
        variant(user_id=""),
        variant(user_id="u" * 129),
        variant(user_id="ü" * 128),
        variant(model="m" * 65),
        variant(conversation_id=...),
        variant(feature=None),
        variant(content=None),
        variant(prompt="x"),
        variant(messages=[]),
        variant(text=""),
        variant(completion={}),
        variant(event_id="7D3F0F4E5B8E4A539D553F1C2A9E8B10"),
        variant(event_id="not-a-uuid"),
        json.dumps(BASE).encode()[:-1] + b', "tokens_in": 99}',
        json.dumps(BASE).encode()[:-1] + b', "\\u0063ontent": "x"}',
        b"[1, 2]",
        b"null",
        b'"text"',
        b"{}",
        b"",
        b" ",
        b"\xff\xfe",
        json.dumps(BASE).encode() + b" trailing",
        json.dumps(BASE).encode() + b"   ",
    ],
)
def test_fast_path_agrees_with_the_full_classifier(raw: bytes) -> None:
    assert_agrees(raw)


def test_fast_path_decides_a_plain_valid_event() -> None:
    assert fast_validate(variant()) is not None
