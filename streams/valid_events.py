"""The valid events of a flush with the Kafka messages they came from, column by column.

A flush handles tens of thousands of events; they stay in columns
(`schemas.event_columns.EventColumns`) from the fast path's decode to the store's
insert. Iterating yields one `ValidMessage` per event, built on demand (for tests and
the rare per-event reader).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final, TypeVar, cast

import numpy as np

from schemas.event_columns import EventColumns
from schemas.events import UsageEvent
from streams.messages import SourceMessage, ValidMessage

__all__ = ["ValidEvents"]

T = TypeVar("T")

_TOPIC: Final = attrgetter("topic")
_PARTITION: Final = attrgetter("partition")
_OFFSET: Final = attrgetter("offset")


@dataclass(slots=True)
class ValidEvents:
    """Valid events: `sources[i]` is the message `events` row i came from."""

    sources: list[SourceMessage] = field(default_factory=list)
    events: EventColumns = field(default_factory=EventColumns)
    # What was derived from these rows (Arrow columns, content lines), by name: built
    # once, possibly on another thread than the one that writes them.
    derived: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of_messages(cls, messages: Iterable[ValidMessage]) -> ValidEvents:
        valid = cls()
        for message in messages:
            valid.append(message.source, message.event)
        return valid

    def append(self, source: SourceMessage, event: UsageEvent) -> None:
        self.sources.append(source)
        self.events.append(event)
        self.derived.clear()

    def derive(self, name: str, build: Callable[[ValidEvents], T]) -> T:
        """`build(self)`, computed once while the rows stay as they are."""
        if name not in self.derived:
            self.derived[name] = build(self)
        return cast(T, self.derived[name])

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[ValidMessage]:
        for row, source in enumerate(self.sources):
            yield ValidMessage(source, self.events.event(row))

    def take(self, rows: Sequence[int]) -> ValidEvents:
        """The given rows, in the given order."""
        return ValidEvents([self.sources[row] for row in rows], self.events.take(rows))

    def topics(self) -> list[str]:
        return self.derive("topics", lambda valid: list(map(_TOPIC, valid.sources)))

    def partitions(self) -> list[int]:
        return self.derive("partitions", lambda valid: list(map(_PARTITION, valid.sources)))

    def offsets(self) -> list[int]:
        return self.derive("offsets", lambda valid: list(map(_OFFSET, valid.sources)))

    def id_bytes(self) -> bytes:
        """The event ids as 16 bytes each (RFC 4122 order), one after the other."""
        return self.derive(
            "id_bytes", lambda valid: bytes.fromhex("".join(valid.events.event_id).replace("-", ""))
        )

    def id_halves(self) -> np.ndarray[tuple[int, int], np.dtype[np.uint64]]:
        """What `streams.seen_ids.id_halves` gives for the event ids."""
        return np.frombuffer(self.id_bytes(), dtype="<u8").astype(np.uint64).reshape(-1, 2)
