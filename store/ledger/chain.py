"""The canonical content hash of one flush and the chain over flushes. Pure: no I/O.

The sink computes it from the rows it staged (before step 4, the commit) and writes
it on every ledger row of the flush; `metering verify` recomputes it from the store
alone (counted_events, rejections_log and flush_ledger of that flush_seq). The two
must agree byte for byte, so the definition is fixed here:

    content_sha256 = sha256 of the UTF-8 text
        "govmeter-flush-v1\\n"
        one line per counted event, sorted by event_id (canonical lower-case UUID):
            "E" + JSON [event_id, occurred_at_ms, tenant, agency_id, agency_level,
                        user_id, model, feature, tokens_in, tokens_out,
                        topic, partition, offset]
        one line per rejection, sorted by (topic, partition, offset):
            "R" + JSON [reason, event_id|null, agency_id|null, topic, partition,
                        offset, size_bytes]
        one line per ledger range, sorted by (topic, partition):
            "L" + JSON [topic, partition, first_offset, last_offset,
                        messages, counted, duplicates, rejected]
    each line ending in "\\n"; JSON compact (separators "," and ":"), ASCII only
    (non-ASCII characters as \\uXXXX escapes), integers as integers;
    occurred_at_ms = milliseconds since 1970-01-01T00:00:00Z (the stored precision).

    chain_sha256 = sha256(previous chain_sha256 + content_sha256), both as lower-case
    hex text; the previous chain of the first chained flush is the last committed
    flush's chain ('' for a store whose flushes all predate migration 0008).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "HEADER",
    "ChainedEvent",
    "ChainedRange",
    "ChainedRejection",
    "chain_sha256",
    "content_sha256",
    "epoch_milliseconds",
]

HEADER: Final = "govmeter-flush-v1\n"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def epoch_milliseconds(moment: datetime) -> int:
    """Whole milliseconds since the epoch (floor), as DateTime64(3) stores them."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    event_id: str
    occurred_at_ms: int
    tenant: str
    agency_id: str
    agency_level: str
    user_id: str
    model: str
    feature: str
    tokens_in: int
    tokens_out: int
    topic: str
    partition: int
    offset: int

    def fields(self) -> list[object]:
        return [
            self.event_id,
            self.occurred_at_ms,
            self.tenant,
            self.agency_id,
            self.agency_level,
            self.user_id,
            self.model,
            self.feature,
            self.tokens_in,
            self.tokens_out,
            self.topic,
            self.partition,
            self.offset,
        ]


@dataclass(frozen=True, slots=True)
class ChainedRejection:
    reason: str
    event_id: str | None
    agency_id: str | None
    topic: str
    partition: int
    offset: int
    size_bytes: int

    def fields(self) -> list[object]:
        return [
            self.reason,
            self.event_id,
            self.agency_id,
            self.topic,
            self.partition,
            self.offset,
            self.size_bytes,
        ]


@dataclass(frozen=True, slots=True)
class ChainedRange:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    messages: int
    counted: int
    duplicates: int
    rejected: int

    def fields(self) -> list[object]:
        return [
            self.topic,
            self.partition,
            self.first_offset,
            self.last_offset,
            self.messages,
            self.counted,
            self.duplicates,
            self.rejected,
        ]


def _line(kind: str, fields: list[object]) -> str:
    return kind + json.dumps(fields, separators=(",", ":"), ensure_ascii=True) + "\n"


def content_lines(
    events: Iterable[ChainedEvent],
    rejections: Iterable[ChainedRejection],
    ranges: Iterable[ChainedRange],
) -> list[str]:
    """The canonical text of one flush, line by line (the hash is over their join)."""
    lines = [HEADER]
    lines.extend(_line("E", e.fields()) for e in sorted(events, key=lambda e: e.event_id))
    lines.extend(
        _line("R", r.fields())
        for r in sorted(rejections, key=lambda r: (r.topic, r.partition, r.offset))
    )
    lines.extend(
        _line("L", r.fields()) for r in sorted(ranges, key=lambda r: (r.topic, r.partition))
    )
    return lines


def content_sha256(
    events: Iterable[ChainedEvent],
    rejections: Iterable[ChainedRejection],
    ranges: Iterable[ChainedRange],
) -> str:
    digest = hashlib.sha256()
    for line in content_lines(events, rejections, ranges):
        digest.update(line.encode("ascii"))
    return digest.hexdigest()


def chain_sha256(previous: str, content: str) -> str:
    return hashlib.sha256((previous + content).encode("ascii")).hexdigest()
