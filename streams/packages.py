"""Flush packages: classified messages of one source partition, relayed to the store owner.

When several processor workers share the events topic but one process owns the
embedded store, processors classify and publish packages; the owner writes them.
A package carries offsets, validated event fields and rejection reasons: never the
original bytes, so never message content.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from schemas.events import UsageEvent
from schemas.rejections import Reason, Rejection
from streams.batch import SourceMessage

__all__ = ["PACKAGE_VERSION", "PackageError", "decode_package", "encode_package"]

PACKAGE_VERSION = 1
_EVENT_FIELDS = tuple(UsageEvent.model_fields)


class PackageError(ValueError):
    pass


def encode_package(outcomes: Sequence[tuple[SourceMessage, UsageEvent | Rejection]]) -> bytes:
    """One package for messages of a single topic-partition, in offset order."""
    if not outcomes:
        raise PackageError("a package needs at least one message")
    first = outcomes[0][0]
    items: list[list[Any]] = []
    for message, outcome in outcomes:
        if (message.topic, message.partition) != (first.topic, first.partition):
            raise PackageError("a package holds messages of one topic-partition only")
        if isinstance(outcome, Rejection):
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
            fields = [getattr(outcome, name) for name in _EVENT_FIELDS]
            items.append([message.offset, "e", *fields])
    return orjson.dumps(
        {"v": PACKAGE_VERSION, "topic": first.topic, "partition": first.partition, "items": items}
    )


def decode_package(raw: bytes) -> list[tuple[SourceMessage, UsageEvent | Rejection]]:
    try:
        document = orjson.loads(raw)
        if document.get("v") != PACKAGE_VERSION:
            raise PackageError(f"package version {document.get('v')!r}, expected 1")
        topic = str(document["topic"])
        partition = int(document["partition"])
        outcomes: list[tuple[SourceMessage, UsageEvent | Rejection]] = []
        for item in document["items"]:
            offset, kind = int(item[0]), item[1]
            if kind == "r":
                _, _, reason, detail, event_id, agency_id, size = item
                source = SourceMessage(topic, partition, offset, None, b"", value_size=int(size))
                outcomes.append((source, Rejection(Reason(reason), detail, event_id, agency_id)))
            elif kind == "e":
                values = dict(zip(_EVENT_FIELDS, item[2:], strict=True))
                values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
                event = UsageEvent.model_construct(**values)
                outcomes.append((SourceMessage(topic, partition, offset, None, b""), event))
            else:
                raise PackageError(f"unknown item kind {kind!r}")
        return outcomes
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as error:
        raise PackageError(f"malformed flush package: {error}") from None
