"""Many valid usage events held column by column, as the store's insert wants them.

Each column holds exactly the value `UsageEvent` gives for its field, except
`occurred_at_ms`: the timestamp as whole milliseconds since the epoch (UTC), which is
the model's value without loss (the model keeps millisecond precision). `event(i)`
builds the model object of one row, for the rare reader that wants one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress
from typing import Final

from schemas.events import UsageEvent

__all__ = ["EVENT_FIELDS", "EventColumns", "datetime_of_epoch_ms", "epoch_ms_of"]

EVENT_FIELDS: Final = (
    "event_id",
    "occurred_at_ms",
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

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def epoch_ms_of(moment: datetime) -> int:
    """Whole milliseconds since the epoch of an aware datetime (floor)."""
    return (moment - _EPOCH) // _MILLISECOND


def datetime_of_epoch_ms(milliseconds: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=milliseconds)


@dataclass(slots=True)
class EventColumns:
    """Valid events, one list per field, all of the same length."""

    event_id: list[str] = field(default_factory=list)  # canonical lower-case UUID
    occurred_at_ms: list[int] = field(default_factory=list)
    tenant: list[str] = field(default_factory=list)
    agency_id: list[str] = field(default_factory=list)
    agency_level: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    conversation_id: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    tokens_in: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)
    feature: list[str] = field(default_factory=list)

    @classmethod
    def of_events(cls, events: Iterable[UsageEvent]) -> EventColumns:
        columns = cls()
        for event in events:
            columns.append(event)
        return columns

    def __len__(self) -> int:
        return len(self.event_id)

    def columns(self) -> tuple[list[str] | list[int], ...]:
        """The columns in `EVENT_FIELDS` order."""
        return (
            self.event_id,
            self.occurred_at_ms,
            self.tenant,
            self.agency_id,
            self.agency_level,
            self.user_id,
            self.conversation_id,
            self.model,
            self.tokens_in,
            self.tokens_out,
            self.feature,
        )

    def append(self, event: UsageEvent) -> None:
        self.event_id.append(event.event_id)
        self.occurred_at_ms.append(epoch_ms_of(event.occurred_at))
        self.tenant.append(event.tenant)
        self.agency_id.append(event.agency_id)
        self.agency_level.append(event.agency_level)
        self.user_id.append(event.user_id)
        self.conversation_id.append(event.conversation_id)
        self.model.append(event.model)
        self.tokens_in.append(event.tokens_in)
        self.tokens_out.append(event.tokens_out)
        self.feature.append(event.feature)

    def joined(self, other: EventColumns) -> EventColumns:
        """These rows, then the other's."""
        return EventColumns(
            *(mine + theirs for mine, theirs in zip(self.columns(), other.columns(), strict=True))  # type: ignore[arg-type]
        )

    def kept(self, keep: Sequence[bool]) -> EventColumns:
        """The rows whose `keep` is true, in order."""
        return EventColumns(*(list(compress(column, keep)) for column in self.columns()))  # type: ignore[arg-type]

    def take(self, rows: Sequence[int]) -> EventColumns:
        """The given rows, in the given order."""
        return EventColumns(*([column[i] for i in rows] for column in self.columns()))  # type: ignore[arg-type]

    def event(self, row: int) -> UsageEvent:
        """The model object of one row (what `UsageEvent.model_validate` builds)."""
        return UsageEvent.model_construct(
            schema_version=1,
            event_id=self.event_id[row],
            occurred_at=datetime_of_epoch_ms(self.occurred_at_ms[row]),
            tenant=self.tenant[row],
            agency_id=self.agency_id[row],
            agency_level=self.agency_level[row],
            user_id=self.user_id[row],
            conversation_id=self.conversation_id[row],
            model=self.model[row],
            tokens_in=self.tokens_in[row],
            tokens_out=self.tokens_out[row],
            feature=self.feature[row],
        )
