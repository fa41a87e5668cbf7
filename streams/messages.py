"""One Kafka message as read, and what classification made of it."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import UsageEvent
from schemas.rejections import Rejection

__all__ = ["RejectedMessage", "SourceMessage", "ValidMessage"]


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """One Kafka message as read: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    @property
    def size(self) -> int:
        return len(self.value)


@dataclass(frozen=True, slots=True)
class ValidMessage:
    source: SourceMessage
    event: UsageEvent


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    source: SourceMessage
    rejection: Rejection
