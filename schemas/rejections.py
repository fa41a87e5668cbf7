"""Classify one raw Kafka message: a valid `UsageEvent`, or a `Rejection` with one reason.

The checks run in the order of CONTRACT section 2, first match wins:
too_large, invalid_json, content_not_allowed, unsupported_schema_version, schema_violation.
A rejection never carries message content: its detail names fields and rules only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson
from pydantic import ValidationError

from schemas.events import CONTENT_FIELDS, MAX_MESSAGE_BYTES, SCHEMA_VERSION, UsageEvent
from schemas.fast_path import fast_validate

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Reason",
    "Rejection",
    "classify",
    "classify_fully",
    "may_hold_content",
]

_CONTENT_TOKENS: Final = tuple(f'"{name}"'.encode() for name in CONTENT_FIELDS)
_MAX_ID_CHARS: Final = 128


class Reason(StrEnum):
    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    CONTENT_NOT_ALLOWED = "content_not_allowed"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SCHEMA_VIOLATION = "schema_violation"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was not counted. `detail` names fields and rules, never values."""

    reason: Reason
    detail: str
    event_id: str | None = None
    agency_id: str | None = None


def classify(raw: bytes) -> UsageEvent | Rejection:
    """Return the validated event, or the one reason it is rejected."""
    event = fast_validate(raw)
    if event is not None:
        return event
    return classify_fully(raw)


def classify_fully(raw: bytes) -> UsageEvent | Rejection:
    """The contract's checks in order, with pydantic as the judge of section 1."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(Reason.TOO_LARGE, f"{len(raw)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        document = _parse_json(raw)
    except ValueError as error:
        return Rejection(Reason.INVALID_JSON, _json_error_summary(error))
    if not isinstance(document, dict):
        return Rejection(
            Reason.SCHEMA_VIOLATION, f"top level is {_json_type(document)}, expected an object"
        )
    event_id, agency_id = _identifiers(document)
    present_content = [name for name in CONTENT_FIELDS if name in document]
    if present_content:
        return Rejection(
            Reason.CONTENT_NOT_ALLOWED,
            "top-level content field(s) " + ", ".join(present_content),
            event_id,
            agency_id,
        )
    if "schema_version" in document and not _is_exact_int(
        document["schema_version"], SCHEMA_VERSION
    ):
        return Rejection(
            Reason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version is {_describe_version(document['schema_version'])}, supported: 1",
            event_id,
            agency_id,
        )
    try:
        return UsageEvent.model_validate(document)
    except ValidationError as error:
        return Rejection(Reason.SCHEMA_VIOLATION, _validation_summary(error), event_id, agency_id)


def may_hold_content(raw: bytes) -> bool:
    """True when the bytes mention a content field name anywhere (case-insensitive).

    Used to withhold the original bytes from dead-letter copies: a message that
    might carry content is never copied, only referenced by topic, partition and offset.
    """
    lowered = raw.lower()
    return (
        len(raw) > MAX_MESSAGE_BYTES
        # A \u escape can spell a content field name that no byte search would see.
        or b"\\u" in raw
        or any(token in lowered for token in _CONTENT_TOKENS)
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as fast_error:
        # orjson refuses integers beyond 64 bits; those are valid JSON (and then a
        # schema violation), so give the standard parser a second opinion.
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not valid UTF-8") from None
        try:
            document = json.loads(text, parse_constant=_reject_constant)
            # Lone surrogates (\ud800) are not Unicode text: nothing downstream can store them.
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):
            raise ValueError(str(fast_error)) from None
        return document


def _json_error_summary(error: ValueError) -> str:
    # orjson messages quote positions and rules, never the document text.
    message = str(error).split(":", 1)[0]
    return f"not parseable JSON ({message[:120]})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_exact_int(value: Any, expected: int) -> bool:
    return type(value) is int and value == expected


def _describe_version(value: Any) -> str:
    if type(value) is int:
        return str(value)
    return _json_type(value)


def _identifiers(document: dict[str, Any]) -> tuple[str | None, str | None]:
    """The event_id and agency_id of a rejected object, when they are short strings."""

    def short_string(name: str) -> str | None:
        value = document.get(name)
        if isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS and value.isprintable():
            return value
        return None

    return short_string("event_id"), short_string("agency_id")


def _validation_summary(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        field = ".".join(str(part) for part in item["loc"]) or "(event)"
        problems.append(f"{field}: {item['msg']}")
    return "; ".join(problems)[:1000]
