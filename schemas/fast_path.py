"""A compiled fast path for the common case: a valid event, decoded by msgspec.

`UsageEvent` (pydantic) stays the source of truth. The fast path may only say
"valid, and here is the same event pydantic would build"; on any doubt it returns
None and the caller runs the full classifier. Doubt covers every rejection class:
too large, not decodable (msgspec's typed decoder is as strict as the contract:
no "12" or true for an int, no 12.0), a content field present, a schema_version
other than 1, any field rule broken, and any `\\u` escape in the bytes (escapes
can spell content field names or lone surrogates). `tests/unit/test_fast_path.py`
checks that it agrees with the full classifier on every case of the unit suites
and on every line of the golden corpus.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

from schemas.events import (
    AGENCY_ID,
    MAX_MESSAGE_BYTES,
    TENANT,
    UsageEvent,
    canonical_uuid,
    parse_rfc3339,
)

__all__ = ["fast_validate"]

_UNSET: Final = msgspec.UNSET


class _WireEvent(msgspec.Struct, forbid_unknown_fields=False):
    schema_version: Literal[1]
    event_id: str
    occurred_at: str
    tenant: str
    agency_id: str
    agency_level: Literal["federal", "state", "local"]
    user_id: str
    conversation_id: str
    model: str
    tokens_in: int
    tokens_out: int
    feature: str = "chat"
    # Content fields are declared only to notice them: any value at all sends the
    # message to the full classifier (which rejects it as content_not_allowed).
    content: msgspec.Raw | msgspec.UnsetType = _UNSET
    prompt: msgspec.Raw | msgspec.UnsetType = _UNSET
    completion: msgspec.Raw | msgspec.UnsetType = _UNSET
    text: msgspec.Raw | msgspec.UnsetType = _UNSET
    messages: msgspec.Raw | msgspec.UnsetType = _UNSET


_DECODER: Final = msgspec.json.Decoder(_WireEvent)
_TENANT: Final = TENANT
_AGENCY: Final = AGENCY_ID
_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)
_MAX_TOKENS: Final = 1_000_000


def fast_validate(raw: bytes) -> UsageEvent | None:
    """The valid event, or None when the full classifier must decide."""
    if len(raw) > MAX_MESSAGE_BYTES or b"\\u" in raw:
        return None
    if not raw.isascii():
        # msgspec skips unknown fields without checking their UTF-8.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        wire = _DECODER.decode(raw)
    except (msgspec.MsgspecError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if (
        wire.content is not _UNSET
        or wire.prompt is not _UNSET
        or wire.completion is not _UNSET
        or wire.text is not _UNSET
        or wire.messages is not _UNSET
    ):
        return None
    if not (
        0 <= wire.tokens_in <= _MAX_TOKENS
        and 0 <= wire.tokens_out <= _MAX_TOKENS
        and 1 <= len(wire.user_id) <= 128
        and 1 <= len(wire.conversation_id) <= 128
        and 1 <= len(wire.model) <= 64
        and _TENANT.fullmatch(wire.tenant) is not None
        and _AGENCY.fullmatch(wire.agency_id) is not None
        and _UUID.fullmatch(wire.event_id) is not None
    ):
        return None
    try:
        occurred_at = parse_rfc3339(wire.occurred_at)
    except ValueError:
        return None
    return _built(
        {
            "schema_version": 1,
            "event_id": canonical_uuid(wire.event_id),
            "occurred_at": occurred_at,
            "tenant": wire.tenant,
            "agency_id": wire.agency_id,
            "agency_level": wire.agency_level,
            "user_id": wire.user_id,
            "conversation_id": wire.conversation_id,
            "model": wire.model,
            "tokens_in": wire.tokens_in,
            "tokens_out": wire.tokens_out,
            "feature": wire.feature,
        }
    )


_ALL_FIELDS: Final = frozenset(UsageEvent.model_fields)
_set_attribute = object.__setattr__


def _built(values: dict[str, object]) -> UsageEvent:
    """What `UsageEvent.model_construct` builds, for already validated values, faster."""
    event = UsageEvent.__new__(UsageEvent)
    _set_attribute(event, "__dict__", values)
    _set_attribute(event, "__pydantic_fields_set__", set(_ALL_FIELDS))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event
