"""Flush packages: classified messages of one source partition, relayed to the store owner.

When several processor workers share the events topic but one process owns the
store, processors classify and publish packages; the owner writes them. A package
carries offsets, validated event fields and rejection reasons: never the original
bytes, so never message content.

The relay topic is an input like the events topic, so a package is checked as
strictly as an event before anything in it is admitted: a package that is not JSON,
has fields of the wrong type or unknown fields, offsets out of order, counts that do
not add up, an event that breaks the contract or a rejection with an unknown reason is
refused whole with one `PackageReason` (`decode_package` raises `PackageError`). The
store owner logs it, counts it in /metrics and counts none of its messages.

Version 2 (written since the check was added) states its counts: the first and last
offsets, and how many events and rejections it holds. Version 1 packages (from older
processors) are still read, with every check but the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final

import orjson
from pydantic import ValidationError

from schemas.errors import InputError
from schemas.events import UsageEvent
from schemas.rejections import Reason, Rejection
from streams.batch import SourceMessage

__all__ = [
    "PACKAGE_VERSION",
    "PackageError",
    "PackageReason",
    "decode_package",
    "encode_package",
]

PACKAGE_VERSION: Final = 2
_READABLE_VERSIONS: Final = (1, 2)
_EVENT_FIELDS: Final = tuple(UsageEvent.model_fields)
_REJECTION_ITEM_LENGTH: Final = 7  # offset, "r", reason, detail, event_id, agency_id, size
_COMMON_KEYS: Final = frozenset({"v", "topic", "partition", "items"})
_COUNT_KEYS: Final = ("first_offset", "last_offset", "events", "rejections")
_KEYS: Final = {1: _COMMON_KEYS, 2: _COMMON_KEYS | frozenset(_COUNT_KEYS)}
_REASONS: Final = frozenset(str(reason) for reason in Reason)
_MAX_DETAIL_CHARS: Final = 1000
_MAX_ID_CHARS: Final = 128


class PackageReason(StrEnum):
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OFFSETS_OUT_OF_ORDER = "offsets_out_of_order"
    COUNTS_MISMATCH = "counts_mismatch"
    INVALID_EVENT = "invalid_event"
    INVALID_REJECTION = "invalid_rejection"
    UNKNOWN_TOPIC = "unknown_topic"  # judged by the store owner, which knows the topic


class PackageError(InputError):
    """A relay package refused whole; `detail` names fields and rules, never values."""

    def __init__(self, reason: PackageReason, detail: str) -> None:
        super().__init__(f"flush package refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


def encode_package(outcomes: Sequence[tuple[SourceMessage, UsageEvent | Rejection]]) -> bytes:
    """One package for messages of a single topic-partition, in offset order."""
    if not outcomes:
        raise ValueError("a package needs at least one message")
    first = outcomes[0][0]
    items: list[list[Any]] = []
    events = rejections = 0
    previous = -1
    for message, outcome in outcomes:
        if (message.topic, message.partition) != (first.topic, first.partition):
            raise ValueError("a package holds messages of one topic-partition only")
        if message.offset <= previous:
            raise ValueError("a package holds messages in increasing offset order")
        previous = message.offset
        if isinstance(outcome, Rejection):
            rejections += 1
            items.append(
                [
                    message.offset,
                    "r",
                    str(outcome.reason),
                    outcome.detail,
                    outcome.event_id,
                    outcome.agency_id,
                    message.size,
                ]
            )
        else:
            events += 1
            fields = [getattr(outcome, name) for name in _EVENT_FIELDS]
            items.append([message.offset, "e", *fields])
    return orjson.dumps(
        {
            "v": PACKAGE_VERSION,
            "topic": first.topic,
            "partition": first.partition,
            "first_offset": first.offset,
            "last_offset": outcomes[-1][0].offset,
            "events": events,
            "rejections": rejections,
            "items": items,
        },
        option=orjson.OPT_UTC_Z,  # "...Z": the fast path of the timestamp check
    )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse(reason: PackageReason, detail: str) -> PackageError:
    return PackageError(reason, detail)


def decode_package(raw: bytes) -> list[tuple[SourceMessage, UsageEvent | Rejection]]:
    """Every message of a package, each validated; PackageError if anything is wrong."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _refuse(PackageReason.INVALID_JSON, "not parseable JSON") from None
    if not isinstance(document, dict):
        raise _refuse(PackageReason.WRONG_TYPE, "a package is a JSON object")
    version = document.get("v")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise _refuse(
            PackageReason.UNSUPPORTED_VERSION,
            f"field v must be one of {list(_READABLE_VERSIONS)}",
        )
    allowed = _KEYS[version]
    unknown = sorted(str(key)[:64] for key in document if key not in allowed)
    if unknown:
        raise _refuse(PackageReason.UNKNOWN_FIELD, f"unknown fields {unknown}")
    missing = sorted(allowed - set(document))
    if missing:
        raise _refuse(PackageReason.MISSING_FIELD, f"missing fields {missing}")
    topic, partition, items = document["topic"], document["partition"], document["items"]
    if not isinstance(topic, str) or not topic:
        raise _refuse(PackageReason.WRONG_TYPE, "topic must be a non-empty string")
    if not _whole(partition):
        raise _refuse(PackageReason.WRONG_TYPE, "partition must be an integer >= 0")
    if not isinstance(items, list) or not items:
        raise _refuse(PackageReason.WRONG_TYPE, "items must be a non-empty array")
    outcomes: list[tuple[SourceMessage, UsageEvent | Rejection]] = []
    previous = -1
    events = rejections = 0
    for position, item in enumerate(items):
        where = f"items[{position}]"
        if not isinstance(item, list) or len(item) < 2:
            raise _refuse(PackageReason.WRONG_TYPE, f"{where} must be an array [offset, kind, ...]")
        offset, kind = item[0], item[1]
        if not _whole(offset):
            raise _refuse(PackageReason.WRONG_TYPE, f"{where}: the offset must be an integer >= 0")
        if offset <= previous:
            raise _refuse(
                PackageReason.OFFSETS_OUT_OF_ORDER,
                f"{where}: offsets must increase (offset {offset} after {previous})",
            )
        previous = offset
        if kind == "e":
            events += 1
            outcomes.append(
                (SourceMessage(topic, partition, offset, None, b""), _event(item, where))
            )
        elif kind == "r":
            rejections += 1
            rejection, size = _rejection(item, where)
            source = SourceMessage(topic, partition, offset, None, b"", value_size=size)
            outcomes.append((source, rejection))
        else:
            raise _refuse(PackageReason.WRONG_TYPE, f"{where}: kind must be 'e' or 'r'")
    if version >= 2:
        stated = {key: document[key] for key in _COUNT_KEYS}
        if not all(_whole(value) for value in stated.values()):
            raise _refuse(PackageReason.WRONG_TYPE, f"{list(_COUNT_KEYS)} must be integers >= 0")
        actual = {
            "first_offset": items[0][0],
            "last_offset": previous,
            "events": events,
            "rejections": rejections,
        }
        wrong = [
            f"{key} says {stated[key]}, holds {actual[key]}"
            for key in _COUNT_KEYS
            if stated[key] != actual[key]
        ]
        if wrong:
            raise _refuse(PackageReason.COUNTS_MISMATCH, "; ".join(wrong))
    return outcomes


def _event(item: list[Any], where: str) -> UsageEvent:
    values = item[2:]
    if len(values) != len(_EVENT_FIELDS):
        raise _refuse(
            PackageReason.WRONG_TYPE,
            f"{where}: an event item holds {len(_EVENT_FIELDS)} fields, not {len(values)}",
        )
    try:
        # The same strict model as an event on the wire (CONTRACT section 1).
        return UsageEvent.model_validate(dict(zip(_EVENT_FIELDS, values, strict=True)))
    except ValidationError as error:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})
        raise _refuse(PackageReason.INVALID_EVENT, f"{where}: invalid {fields}") from None


def _rejection(item: list[Any], where: str) -> tuple[Rejection, int]:
    if len(item) != _REJECTION_ITEM_LENGTH:
        raise _refuse(
            PackageReason.WRONG_TYPE,
            f"{where}: a rejection item holds {_REJECTION_ITEM_LENGTH} values, not {len(item)}",
        )
    _, _, reason, detail, event_id, agency_id, size = item
    problems = []
    if not isinstance(reason, str) or reason not in _REASONS:
        problems.append(f"reason must be one of {sorted(_REASONS)}")
    # The bounds the classifier itself keeps (schemas/rejections.py): a longer detail or
    # identifier did not come from it, and could carry what must never be stored.
    if not isinstance(detail, str) or len(detail) > _MAX_DETAIL_CHARS:
        problems.append(f"detail must be a string of at most {_MAX_DETAIL_CHARS} characters")
    for name, value in (("event_id", event_id), ("agency_id", agency_id)):
        if value is not None and not (
            isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS and value.isprintable()
        ):
            problems.append(
                f"{name} must be null or a printable string of at most {_MAX_ID_CHARS} characters"
            )
    if not _whole(size):
        problems.append("size must be an integer >= 0")
    if problems:
        raise _refuse(PackageReason.INVALID_REJECTION, f"{where}: " + "; ".join(problems))
    return Rejection(Reason(reason), detail, event_id, agency_id), size
