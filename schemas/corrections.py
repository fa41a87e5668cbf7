"""A correction record, wire format v1: what `metering correct` publishes on the
corrections topic and the worker applies (streams/corrections.py).

Here, beside the usage event, because both sides read it: the command that validates
and publishes (metering/corrections/) and the stream processor that applies it
(streams/ imports nothing from metering/). Every new value of an amendment follows the
usage event's own rules (`schemas.events`). Counts and identifiers only: a reason is
free text written by the requester, never message content.

    {"kind": "govmeter.correction", "schema_version": 1,
     "correction_id": UUID, "action": "void" | "amend",
     "event_id": UUID | null,                       one event, or ...
     "agency_id": ID | null, "from": RFC 3339 | null, "to": RFC 3339 | null,
                                                    ... an agency's events in [from, to)
     "set": {"agency_id", "agency_level", "tokens_in", "tokens_out"} (amend: at least one),
     "reason": text, "requested_by": name, "approved_by": another name,
     "requested_at": RFC 3339}
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import InputError
from schemas.events import AGENCY_ID, EventId, TokenCount, UtcTimestamp

__all__ = [
    "CORRECTION_KIND",
    "MAX_CORRECTION_BYTES",
    "AmendedFields",
    "CorrectionAction",
    "CorrectionError",
    "CorrectionRecord",
    "decode_correction",
    "describe_errors",
    "encode_correction",
    "validate_correction",
]

CORRECTION_KIND: Final = "govmeter.correction"
MAX_CORRECTION_BYTES: Final = 16 * 1024

AgencyId = Annotated[str, Field(pattern=rf"^{AGENCY_ID.pattern}$")]
Person = Annotated[str, Field(min_length=1, max_length=128)]


class CorrectionError(InputError):
    """A correction that cannot be applied as given; the message names each field."""


class CorrectionAction(StrEnum):
    VOID = "void"
    AMEND = "amend"


class AmendedFields(BaseModel):
    """The new values of an amendment; a field left out keeps the event's value."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    agency_id: AgencyId | None = None
    agency_level: Literal["federal", "state", "local"] | None = None
    tokens_in: TokenCount | None = None
    tokens_out: TokenCount | None = None

    def given(self) -> dict[str, str | int]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class CorrectionRecord(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["govmeter.correction"] = CORRECTION_KIND
    schema_version: Literal[1] = 1
    correction_id: EventId
    action: Literal["void", "amend"]
    event_id: EventId | None = None
    agency_id: AgencyId | None = None
    range_from: Annotated[UtcTimestamp | None, Field(alias="from")] = None
    range_to: Annotated[UtcTimestamp | None, Field(alias="to")] = None
    set: AmendedFields | None = None
    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    requested_by: Person
    approved_by: Person
    requested_at: UtcTimestamp

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        by_range = (self.agency_id, self.range_from, self.range_to)
        if self.event_id is not None and any(v is not None for v in by_range):
            problems.append("event_id: give one event id or an agency and a range, not both")
        elif self.event_id is None and any(v is None for v in by_range):
            problems.append(
                "event_id: required, or else agency_id, from and to together (an agency's "
                "events in [from, to))"
            )
        if (
            self.range_from is not None
            and self.range_to is not None
            and self.range_from >= self.range_to
        ):
            problems.append("to: must be later than from")
        if self.requested_by.strip().casefold() == self.approved_by.strip().casefold():
            problems.append(
                "approved_by: must be a different person from requested_by: a correction "
                "needs two people"
            )
        if self.action == "amend" and (self.set is None or not self.set.given()):
            problems.append(
                "set: an amendment needs at least one new value "
                "(agency_id, agency_level, tokens_in, tokens_out)"
            )
        if self.action == "void" and self.set is not None:
            problems.append("set: a void takes no new values")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def scope(self) -> str:
        if self.event_id is not None:
            return f"event {self.event_id}"
        assert self.range_from is not None and self.range_to is not None
        return f"agency {self.agency_id} from {_iso(self.range_from)} to {_iso(self.range_to)}"

    def wire(self) -> dict[str, object]:
        body = self.model_dump(mode="python", by_alias=True, exclude_none=True)
        for name in ("from", "to", "requested_at"):
            if name in body:
                body[name] = _iso(body[name])
        if self.set is not None:
            body["set"] = self.set.given()
        return body


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_correction(record: CorrectionRecord) -> bytes:
    """The record's bytes on the topic: JSON, keys sorted (the same record, the same bytes)."""
    return orjson.dumps(record.wire(), option=orjson.OPT_SORT_KEYS)


def decode_correction(value: bytes) -> CorrectionRecord:
    """Parse and validate a record read from the topic; CorrectionError names the fields."""
    if len(value) > MAX_CORRECTION_BYTES:
        raise CorrectionError(f"the record is {len(value)} bytes, over {MAX_CORRECTION_BYTES}")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise CorrectionError("the record is not JSON") from None
    return validate_correction(parsed)


def validate_correction(parsed: object) -> CorrectionRecord:
    if not isinstance(parsed, dict):
        raise CorrectionError("the record is not a JSON object")
    try:
        return CorrectionRecord.model_validate(parsed)
    except ValidationError as error:
        raise CorrectionError(describe_errors(error)) from None


def describe_errors(error: ValidationError) -> str:
    """Field names and rules, never values (a reason or a name is not echoed)."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "record"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
