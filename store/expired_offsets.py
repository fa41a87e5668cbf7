"""Offsets the broker deleted before they were counted: `metering.expired_offsets`.

A worker records each gap it finds (at start, or when it reads a partition whose
earliest offset lies beyond the ledger's resume point) before it resumes past it.
`reconcile` and `certify` read the gaps back, so a loss stays visible in the evidence
instead of vanishing with the broker's retention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from clickhouse_connect.driver.client import Client

__all__ = ["Gap", "read_expired", "record_expired"]


@dataclass(frozen=True)
class Gap:
    """Offsets first_missing .. resume_at - 1 of a partition: deleted, never counted."""

    topic: str
    partition: int
    first_missing: int
    resume_at: int
    detected_at: datetime | None = None  # None: seen on the broker, not yet recorded
    worker: str = ""

    @property
    def messages(self) -> int:
        return self.resume_at - self.first_missing

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}] offsets {self.first_missing}..{self.resume_at - 1} "
            f"({self.messages:,} message(s))"
        )


_RECORD_COLUMNS: Final = [
    "topic",
    "partition",
    "first_missing",
    "resume_at",
    "detected_at",
    "worker",
]

# One gap may be recorded more than once (seen at start and by the pipeline, or by two
# runs of a worker that counted nothing past it): one row per gap, the furthest resume.
_EXPIRED_SQL: Final = """
SELECT topic, partition, first_missing, max(resume_at), min(detected_at), any(worker)
FROM metering.expired_offsets
GROUP BY topic, partition, first_missing
ORDER BY topic, partition, first_missing
"""


def record_expired(client: Client, gaps: Sequence[Gap], worker: str) -> None:
    """One row per gap, stamped now and with the worker that found it."""
    now = datetime.now(UTC)
    client.insert(
        "metering.expired_offsets",
        [[g.topic, g.partition, g.first_missing, g.resume_at, now, worker] for g in gaps],
        column_names=_RECORD_COLUMNS,
    )


def read_expired(client: Client) -> list[Gap]:
    """Every recorded gap once, in partition and offset order."""
    return [
        Gap(str(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4], str(r[5]))
        for r in client.query(_EXPIRED_SQL).result_rows
    ]
