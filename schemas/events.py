"""The usage event, wire format v1 (CONTRACT section 1), as a strict pydantic model.

Strict means strict: ``"12"`` and ``true`` are not integers, a timestamp without an
explicit offset is not a timestamp. Unknown extra fields are ignored and never kept.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "AGENCY_ID",
    "AGENCY_LEVELS",
    "CONTENT_FIELDS",
    "MAX_MESSAGE_BYTES",
    "MAX_TOKENS",
    "SCHEMA_VERSION",
    "TENANT",
    "UsageEvent",
    "canonical_uuid",
    "parse_rfc3339",
]

SCHEMA_VERSION: Final = 1
MAX_TOKENS: Final = 1_000_000
MAX_MESSAGE_BYTES: Final = 64 * 1024
AGENCY_LEVELS: Final = ("federal", "state", "local")
# Identifier patterns of section 1, spelled once (the fast path, access control and the
# local server's users use them too).
TENANT: Final = re.compile(r"[a-z0-9-]{1,64}")
AGENCY_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
CONTENT_FIELDS: Final = ("content", "prompt", "completion", "text", "messages")

# ClickHouse `Date` covers 1970-01-01 .. 2149-06-06; an event outside it has no day row.
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2149, 6, 6, tzinfo=UTC)
_EARLIEST_DAY: Final = _EARLIEST.date().isoformat()
_LATEST_DAY: Final = _LATEST.date().isoformat()
_OUT_OF_RANGE: Final = "must lie between 1970-01-01 and 2149-06-05 (UTC)"

_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<frac>[0-9]{1,9}))?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)


# The shape producers send almost always: UTC, "T", "Z", up to 6 fractional digits.
_COMMON_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset into UTC, millisecond precision.

    Sub-millisecond digits are truncated (never rounded up into the next day).
    """
    if _COMMON_UTC.fullmatch(value) is not None:
        try:
            parsed = datetime.fromisoformat(value)  # tzinfo is UTC: the string ends in Z
        except ValueError:
            raise ValueError("not a calendar date and time") from None
        if len(value) > 24:  # more than 3 fractional digits
            parsed = parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
        # Fixed-width ASCII digits: comparing the date text is comparing the dates.
        if not _EARLIEST_DAY <= value[:10] < _LATEST_DAY:
            raise ValueError(_OUT_OF_RANGE)
        return parsed
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError("must be RFC 3339 with an explicit offset, e.g. 2026-11-02T14:03:12.345Z")
    year, month, day = (int(part) for part in match["date"].split("-"))
    frac = (match["frac"] or "").ljust(3, "0")[:3]
    offset = timedelta(0)
    if match["z"] is None:
        hours, minutes = int(match["oh"]), int(match["om"])
        if hours > 23 or minutes > 59:
            raise ValueError("offset out of range")
        offset = timedelta(hours=hours, minutes=minutes)
        if match["sign"] == "-":
            offset = -offset
    local = datetime(
        year,
        month,
        day,
        int(match["h"]),
        int(match["m"]),
        int(match["s"]),
        int(frac) * 1000,
        tzinfo=timezone(offset),
    )
    try:
        utc = local.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00: past the last year datetime holds
        raise ValueError(_OUT_OF_RANGE) from None
    if not _EARLIEST <= utc < _LATEST:
        raise ValueError(_OUT_OF_RANGE)
    return utc


def _timestamp_from_wire(value: Any) -> Any:
    if isinstance(value, str):
        return parse_rfc3339(value)
    raise ValueError("must be a string")


_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: str) -> str:
    """Lower-case hyphenated form: the same UUID in any spelling is the same event."""
    if _CANONICAL_UUID.fullmatch(value) is not None:
        return value
    if _UUID.fullmatch(value) is None:
        raise ValueError("must be a UUID, e.g. 7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10")
    return str(uuid.UUID(value))


UtcTimestamp = Annotated[datetime, BeforeValidator(_timestamp_from_wire)]
EventId = Annotated[str, AfterValidator(canonical_uuid)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


class UsageEvent(BaseModel):
    """One user message sent in a tenant: counts and identifiers, never content."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    schema_version: Literal[1]
    event_id: EventId
    occurred_at: UtcTimestamp
    tenant: Annotated[str, Field(pattern=rf"^{TENANT.pattern}$")]
    agency_id: Annotated[str, Field(pattern=rf"^{AGENCY_ID.pattern}$")]
    agency_level: Literal["federal", "state", "local"]
    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    conversation_id: Annotated[str, Field(min_length=1, max_length=128)]
    model: Annotated[str, Field(min_length=1, max_length=64)]
    tokens_in: TokenCount
    tokens_out: TokenCount
    feature: str = "chat"
