"""A compiled fast path for the common case: valid events, decoded by msgspec, judged
column by column, never built as pydantic objects.

`UsageEvent` (pydantic) stays the source of truth. The fast path may only say "valid,
and here are the same field values pydantic would give"; on any doubt a message is
left undecided and the caller runs the full classifier on it. Doubt covers every
rejection class: too large, not decodable (msgspec's typed decoder is as strict as the
contract: no "12" or true for an int, no 12.0), a content field present (any value of
one fails the decode), a schema_version other than 1, any field rule broken, and any
`\\u` escape in the bytes (escapes can spell content field names or lone surrogates).

The field rules run once per batch over each column (`_column_rules`): a pattern over
the column's values joined by newlines (no valid value holds one), lengths and token
counts by their minimum and maximum, and timestamps of the usual shape
(`2026-11-02T14:03:12.345Z`) converted with numpy; only the rows a column check cannot
clear are judged one by one, with the model's own helpers (`parse_rfc3339`,
`canonical_uuid`). `tests/unit/test_fast_path.py` checks that every value equals the
model's on every case of the unit suites and on every line of the golden corpus.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from itertools import compress
from operator import attrgetter
from typing import Final, Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from schemas.event_columns import EventColumns, epoch_ms_of
from schemas.events import (
    AGENCY_ID,
    MAX_MESSAGE_BYTES,
    MAX_TOKENS,
    TENANT,
    UsageEvent,
    canonical_uuid,
    parse_rfc3339,
)

__all__ = ["FastDecision", "decide_columns", "fast_validate"]

_UNSET: Final = msgspec.UNSET


class _WireEvent(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """The wire types only: the rules on values are checked per column."""

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
    # Content fields are declared only to notice them: no JSON value decodes as UNSET,
    # so any value at all fails the decode and sends the message to the full
    # classifier (which rejects it as content_not_allowed).
    content: msgspec.UnsetType = _UNSET
    prompt: msgspec.UnsetType = _UNSET
    completion: msgspec.UnsetType = _UNSET
    text: msgspec.UnsetType = _UNSET
    messages: msgspec.UnsetType = _UNSET


_DECODER: Final = msgspec.json.Decoder(_WireEvent)
_FIELD_GETTERS: Final = tuple(
    attrgetter(name)
    for name in (
        "event_id",
        "occurred_at",
        "tenant",
        "agency_id",
        "agency_level",
        "user_id",
        "conversation_id",
        "model",
        "tokens_in",
        "tokens_out",
        "feature",
    )
)


class FastDecision(NamedTuple):
    """What the fast path decided about a list of raw messages."""

    columns: EventColumns  # the valid events, in message order
    rows: list[int]  # for each row of `columns`, the index of its message
    undecided: list[int]  # indices of the messages the full classifier must judge


def fast_validate(raw: bytes) -> UsageEvent | None:
    """The valid event, or None when the full classifier must decide.

    One message alone: the same rules as `decide_columns`, value by value."""
    if len(raw) > MAX_MESSAGE_BYTES or not _bytes_pass(raw):
        return None
    try:
        wire = _DECODER.decode(raw)
    except (msgspec.MsgspecError, ValueError):
        return None
    if not (
        0 <= wire.tokens_in <= MAX_TOKENS
        and 0 <= wire.tokens_out <= MAX_TOKENS
        and 1 <= len(wire.user_id) <= 128
        and 1 <= len(wire.conversation_id) <= 128
        and 1 <= len(wire.model) <= 64
        and _TENANT.one.fullmatch(wire.tenant) is not None
        and _AGENCY.one.fullmatch(wire.agency_id) is not None
    ):
        return None
    try:
        event_id = canonical_uuid(wire.event_id)
        occurred_at = parse_rfc3339(wire.occurred_at)
    except ValueError:
        return None
    return _built(
        {
            "schema_version": 1,
            "event_id": event_id,
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


def decide_columns(raws: Sequence[bytes]) -> FastDecision:
    """Decode every message the fast path can decide, then check the rules per column."""
    wires: list[_WireEvent] = []
    decoded: list[int] = []
    undecided: list[int] = []
    decode = _DECODER.decode
    for index in _byte_checks_passed(raws, undecided):
        try:
            wires.append(decode(raws[index]))
        except (msgspec.MsgspecError, ValueError):  # UnicodeDecodeError is a ValueError
            undecided.append(index)
            continue
        decoded.append(index)
    if not wires:
        return FastDecision(EventColumns(), [], sorted(undecided))
    columns, broken = _column_rules(wires)
    if broken:
        keep = [True] * len(wires)
        for row in broken:
            keep[row] = False
        columns = columns.kept(keep)
        undecided.extend(decoded[row] for row in broken)
        decoded = list(compress(decoded, keep))
    undecided.sort()
    return FastDecision(columns, decoded, undecided)


def _byte_checks_passed(raws: Sequence[bytes], failed: list[int]) -> Sequence[int]:
    """Indices of the messages within the size limit, with no `\\u` escape, in UTF-8;
    the others are added to `failed`. One look at the whole batch clears the bytes of
    every message most of the time (joined by newlines: no escape spans two messages,
    and a newline never continues a UTF-8 sequence)."""
    sizes = list(map(len, raws))
    if max(sizes, default=0) <= MAX_MESSAGE_BYTES:
        within: Sequence[int] = range(len(raws))
    else:
        within = [index for index, size in enumerate(sizes) if size <= MAX_MESSAGE_BYTES]
        failed.extend(index for index, size in enumerate(sizes) if size > MAX_MESSAGE_BYTES)
    if _bytes_pass(b"\n".join(raws)):
        return within
    passed = []
    for index in within:
        if _bytes_pass(raws[index]):
            passed.append(index)
        else:
            failed.append(index)
    return passed


def _bytes_pass(raw: bytes) -> bool:
    """No `\\u` escape, and valid UTF-8 (msgspec skips unknown fields without checking
    their UTF-8)."""
    if b"\\u" in raw:
        return False
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- the rules of CONTRACT section 1, column by column -------------------------------


def _column_rules(wires: list[_WireEvent]) -> tuple[EventColumns, set[int]]:
    """The decoded events as columns, and the rows that break a rule (or may)."""
    (
        event_id,
        occurred_at,
        tenant,
        agency_id,
        agency_level,
        user_id,
        conversation_id,
        model,
        tokens_in,
        tokens_out,
        feature,
    ) = (list(map(field, wires)) for field in _FIELD_GETTERS)
    broken: set[int] = set()
    broken.update(_outside_range(tokens_in, 0, MAX_TOKENS))
    broken.update(_outside_range(tokens_out, 0, MAX_TOKENS))
    broken.update(_outside_range(list(map(len, user_id)), 1, 128))
    broken.update(_outside_range(list(map(len, conversation_id)), 1, 128))
    broken.update(_outside_range(list(map(len, model)), 1, 64))
    broken.update(_not_matching(tenant, _TENANT))
    broken.update(_not_matching(agency_id, _AGENCY))
    broken.update(_not_canonical_ids(event_id))
    milliseconds, unreadable = _epoch_milliseconds(occurred_at)
    broken.update(unreadable)
    columns = EventColumns(
        event_id,
        milliseconds,
        tenant,
        agency_id,
        agency_level,
        user_id,
        conversation_id,
        model,
        tokens_in,
        tokens_out,
        feature,
    )
    return columns, broken


def _outside_range(values: list[int], low: int, high: int) -> list[int]:
    if low <= min(values) and max(values) <= high:
        return []
    return [row for row, value in enumerate(values) if not low <= value <= high]


class _Pattern(NamedTuple):
    one: re.Pattern[str]  # one value
    run: re.Pattern[str]  # values joined by "\n"


def _pattern(one: re.Pattern[str]) -> _Pattern:
    body = one.pattern
    return _Pattern(one, re.compile(f"(?:{body})(?:\n(?:{body}))*"))


_TENANT: Final = _pattern(TENANT)
_AGENCY: Final = _pattern(AGENCY_ID)


def _not_matching(values: list[str], pattern: _Pattern) -> list[int]:
    """Rows whose value does not match: one regex pass over the whole column when none
    holds a newline (the patterns admit none, so the joined text splits back exactly)."""
    joined = "\n".join(values)
    if joined.count("\n") == len(values) - 1 and pattern.run.fullmatch(joined) is not None:
        return []
    return [row for row, value in enumerate(values) if pattern.one.fullmatch(value) is None]


_CANONICAL_UUID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL_ONE: Final = re.compile(_CANONICAL_UUID)
_CANONICAL_RUN: Final = re.compile(f"(?:{_CANONICAL_UUID})*")


def _not_canonical_ids(event_ids: list[str]) -> list[int]:
    """Rewrite other spellings of a UUID in place (as the model does); the rows that are
    no UUID at all."""
    if set(map(len, event_ids)) == {36} and _CANONICAL_RUN.fullmatch("".join(event_ids)):
        return []
    broken: list[int] = []
    for row, value in enumerate(event_ids):
        if _CANONICAL_ONE.fullmatch(value) is None:
            try:
                event_ids[row] = canonical_uuid(value)
            except ValueError:
                broken.append(row)
    return broken


# -- timestamps ------------------------------------------------------------------------


class _Shape(NamedTuple):
    """A fixed-width spelling of RFC 3339 that numpy reads: where its digits and its
    separators are. Milliseconds always; an offset (+HH:MM or -HH:MM) or "Z"."""

    length: int
    digits_at: npt.NDArray[np.intp]
    separators_at: npt.NDArray[np.intp]
    separators: npt.NDArray[np.uint8]
    with_offset: bool


def _shape(example: str) -> _Shape:
    """The shape of `example`: every digit stands for any digit, other characters for
    themselves, except the offset's sign, which may be + or -."""
    with_offset = example[-6] in "+-"
    fixed = [
        at
        for at, char in enumerate(example)
        if not char.isdigit() and not (with_offset and at == len(example) - 6)
    ]
    return _Shape(
        len(example),
        np.array([at for at, char in enumerate(example) if char.isdigit()], dtype=np.intp),
        np.array(fixed, dtype=np.intp),
        np.frombuffer("".join(example[at] for at in fixed).encode("ascii"), dtype=np.uint8),
        with_offset,
    )


# The shapes producers send almost always: UTC with "Z", or another offset.
_SHAPES: Final = (_shape("2026-11-02T14:03:12.345Z"), _shape("2026-11-02T09:03:12.345-05:00"))
_FEWEST_FOR_NUMPY: Final = 32  # below this, one by one is cheaper
_MONTH_DAYS: Final = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
# The first day the model refuses (ClickHouse `Date` ends on 2149-06-06), days since 1970.
_LATEST_DAY_NUMBER: Final = (date(2149, 6, 6) - date(1970, 1, 1)).days
_DAY_MS: Final = 86_400_000

Int64s = npt.NDArray[np.int64]


def _epoch_milliseconds(texts: list[str]) -> tuple[list[int], list[int]]:
    """Each timestamp as epoch milliseconds, exactly as `parse_rfc3339` gives it; the
    rows it refuses (their value in the first list is 0)."""
    milliseconds = [0] * len(texts)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    elsewise = np.ones(len(texts), dtype=np.bool_)  # rows left to parse_rfc3339
    for shape in _SHAPES:
        rows = np.flatnonzero(lengths == shape.length)
        if len(rows) < _FEWEST_FOR_NUMPY:
            continue
        if len(rows) == len(texts):
            joined = "".join(texts)
        else:
            joined = "".join([texts[row] for row in rows.tolist()])
        if not joined.isascii():
            continue
        values, readable = _epoch_ms_of_shape(joined.encode("ascii"), shape)
        for row, value in zip(rows[readable].tolist(), values[readable].tolist(), strict=True):
            milliseconds[row] = value
        elsewise[rows[readable]] = False
    broken: list[int] = []
    for row in np.flatnonzero(elsewise).tolist():
        try:
            milliseconds[row] = epoch_ms_of(parse_rfc3339(texts[row]))
        except ValueError:
            broken.append(row)
    return milliseconds, broken


def _epoch_ms_of_shape(text: bytes, shape: _Shape) -> tuple[Int64s, npt.NDArray[np.bool_]]:
    """Epoch milliseconds of timestamps of one shape, one after the other in `text`, and
    which of them are readable: of the shape, a calendar date and time, an offset of at
    most 23:59, inside the stored range (the others are left to `parse_rfc3339`)."""
    chars = np.frombuffer(text, dtype=np.uint8).reshape(-1, shape.length)
    digits = chars[:, shape.digits_at].astype(np.int64) - ord("0")
    readable = ((digits >= 0) & (digits <= 9)).all(axis=1)
    readable &= (chars[:, shape.separators_at] == shape.separators).all(axis=1)

    def number(first: int, width: int) -> Int64s:
        value = digits[:, first]
        for column in range(first + 1, first + width):
            value = value * 10 + digits[:, column]
        return value

    year, month, day = number(0, 4), number(4, 2), number(6, 2)
    hour, minute, second, millisecond = number(8, 2), number(10, 2), number(12, 2), number(14, 3)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 1, 12) - 1] + (leap & (month == 2))
    readable &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    readable &= (hour <= 23) & (minute <= 59) & (second <= 59)
    days = _days_from_civil(year, month, day)
    values = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millisecond
    if shape.with_offset:
        offset_hours, offset_minutes = number(17, 2), number(19, 2)
        readable &= (offset_hours <= 23) & (offset_minutes <= 59)
        sign = np.where(chars[:, shape.length - 6] == ord("-"), -1, 1)
        readable &= (chars[:, shape.length - 6] == ord("-")) | (
            chars[:, shape.length - 6] == ord("+")
        )
        values = values - sign * (offset_hours * 60 + offset_minutes) * 60_000
    readable &= (values >= 0) & (values < _LATEST_DAY_NUMBER * _DAY_MS)
    return values, readable


def _days_from_civil(year: Int64s, month: Int64s, day: Int64s) -> Int64s:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    shifted = year - (month <= 2)
    era = shifted // 400
    year_of_era = shifted - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days: Int64s = era * 146_097 + day_of_era - 719_468
    return days
