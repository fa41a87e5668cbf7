"""The dead-letter copy of a rejected message, and who publishes it.

The envelope says why and where (topic, partition, offset, sha256). The original
bytes ride along only when they cannot hold message content: anything over the size
limit, or mentioning a content field name anywhere, is referenced, never copied.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import orjson

from schemas.rejections import Reason, may_hold_content
from streams.batch import RejectedMessage

__all__ = ["DeadLetter", "DeadLetterPublisher", "dead_letter_for"]


class DeadLetter(Protocol):
    key: bytes | None
    value: bytes


class _Letter:
    __slots__ = ("key", "value")

    def __init__(self, key: bytes | None, value: bytes) -> None:
        self.key = key
        self.value = value


class DeadLetterPublisher(Protocol):
    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter and return only once the broker acknowledged all of them."""


def dead_letter_for(rejected: RejectedMessage, received_at: datetime) -> DeadLetter:
    source = rejected.source
    rejection = rejected.rejection
    envelope: dict[str, object] = {
        "reason": str(rejection.reason),
        "detail": rejection.detail,
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "size_bytes": len(source.value),
        "sha256": hashlib.sha256(source.value).hexdigest(),
        "received_at": received_at.isoformat(timespec="milliseconds"),
        "event_id": rejection.event_id,
        "agency_id": rejection.agency_id,
    }
    if rejection.reason is Reason.CONTENT_NOT_ALLOWED or may_hold_content(source.value):
        envelope["original_withheld"] = (
            "may hold message content; read it at its topic, partition and offset"
        )
    else:
        try:
            envelope["original"] = source.value.decode("utf-8")
        except UnicodeDecodeError:
            envelope["original_base64"] = base64.b64encode(source.value).decode("ascii")
    return _Letter(source.key, orjson.dumps(envelope))
