"""Is the ledger ahead of its data? The questions and writes of a repair.

A committed flush always has its staged rows: the sink stages them before it commits.
So a ledger row whose flush has fewer rows in `counted_events` or `rejections_log` than
it says it counted or rejected means the store lost them (a power loss drops the newest
parts of a table, and the ledger's part may survive while the others do not). The
ledger then claims offsets whose rows are gone, and no writer would read them again.

`damaged_flushes` finds every such flush in one pass over the flush_seq columns;
`streams.ledger_repair` reads its ranges from Kafka again and stages exactly what it
counted, or records the range as lost (`metering.lost_ranges`, which fails `certify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from clickhouse_connect.driver.client import Client

__all__ = [
    "DamagedFlush",
    "LedgerRange",
    "LostRange",
    "counted_before_sql",
    "damaged_flushes",
    "lost_ranges",
    "record_lost",
    "restage_delete_sql",
]


@dataclass(frozen=True)
class LedgerRange:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    messages: int
    counted: int
    duplicates: int
    rejected: int


@dataclass(frozen=True)
class DamagedFlush:
    """A committed flush whose staged rows are fewer than its ledger rows say."""

    commit_seq: int
    flush_seq: int
    content_sha256: str
    ranges: tuple[LedgerRange, ...]
    events_found: int
    rejections_found: int

    @property
    def counted(self) -> int:
        return sum(r.counted for r in self.ranges)

    @property
    def rejected(self) -> int:
        return sum(r.rejected for r in self.ranges)

    def describe(self) -> str:
        where = ", ".join(
            f"{r.topic}[{r.partition}] {r.first_offset}..{r.last_offset}" for r in self.ranges
        )
        return (
            f"flush {self.flush_seq} (commit {self.commit_seq}, {where}): the ledger counted "
            f"{self.counted} event(s) and {self.rejected} rejection(s), the store holds "
            f"{self.events_found} and {self.rejections_found}"
        )


_DAMAGED: Final = """
SELECT l.flush_seq, l.commit_seq, l.counted, l.rejected, e.n, r.n
FROM
(
    SELECT flush_seq, min(commit_seq) AS commit_seq, sum(counted) AS counted,
           sum(rejected) AS rejected
    FROM metering.flush_ledger
    GROUP BY flush_seq
) AS l
LEFT JOIN (SELECT flush_seq, count() AS n FROM metering.counted_events GROUP BY flush_seq)
    AS e ON e.flush_seq = l.flush_seq
LEFT JOIN (SELECT flush_seq, count() AS n FROM metering.rejections_log GROUP BY flush_seq)
    AS r ON r.flush_seq = l.flush_seq
WHERE l.counted != e.n OR l.rejected != r.n
ORDER BY l.commit_seq
SETTINGS join_use_nulls = 0
"""

_RANGES_OF: Final = """
SELECT flush_seq, topic, partition, first_offset, last_offset, messages, counted,
       duplicates, rejected, content_sha256
FROM metering.flush_ledger
WHERE flush_seq IN {flushes:Array(UInt64)}
ORDER BY flush_seq, topic, partition
"""

_LOST: Final = """
SELECT topic, partition, first_offset, last_offset, any(flush_seq), any(reason),
       max(events_lost), max(rejections_lost)
FROM metering.lost_ranges
GROUP BY topic, partition, first_offset, last_offset
ORDER BY topic, partition, first_offset
"""

LOST_COLUMNS: Final = (
    "topic",
    "partition",
    "first_offset",
    "last_offset",
    "flush_seq",
    "commit_seq",
    "events_lost",
    "rejections_lost",
    "reason",
    "worker",
)


def damaged_flushes(client: Client) -> list[DamagedFlush]:
    rows = client.query(_DAMAGED).result_rows
    if not rows:
        return []
    found = {int(r[0]): (int(r[1]), int(r[4]), int(r[5])) for r in rows}
    ranges: dict[int, list[LedgerRange]] = {}
    content: dict[int, str] = {}
    for r in client.query(_RANGES_OF, parameters={"flushes": sorted(found)}).result_rows:
        seq = int(r[0])
        ranges.setdefault(seq, []).append(
            LedgerRange(
                str(r[1]),
                int(r[2]),
                int(r[3]),
                int(r[4]),
                int(r[5]),
                int(r[6]),
                int(r[7]),
                int(r[8]),
            )
        )
        content[seq] = str(r[9])
    return [
        DamagedFlush(commit, seq, content[seq], tuple(ranges[seq]), events, rejections)
        for seq, (commit, events, rejections) in sorted(found.items(), key=lambda kv: kv[1][0])
    ]


def record_lost(client: Client, flush: DamagedFlush, reason: str, worker: str) -> None:
    """The flush's ranges as lost, each with what it lost and why."""
    found: dict[tuple[str, str, int], int] = {}
    for table in ("counted_events", "rejections_log"):
        rows = client.query(
            f"SELECT toString(topic), partition, count() FROM metering.{table} "
            "WHERE flush_seq = {flush:UInt64} GROUP BY topic, partition",
            parameters={"flush": flush.flush_seq},
        ).result_rows
        for topic, partition, count in rows:
            found[(table, str(topic), int(partition))] = int(count)
    lost: list[list[Any]] = [
        [
            r.topic,
            r.partition,
            r.first_offset,
            r.last_offset,
            flush.flush_seq,
            flush.commit_seq,
            max(0, r.counted - found.get(("counted_events", r.topic, r.partition), 0)),
            max(0, r.rejected - found.get(("rejections_log", r.topic, r.partition), 0)),
            reason,
            worker,
        ]
        for r in flush.ranges
    ]
    client.insert("metering.lost_ranges", lost, column_names=list(LOST_COLUMNS))


@dataclass(frozen=True)
class LostRange:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    flush_seq: int
    reason: str
    events_lost: int
    rejections_lost: int

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}] offsets {self.first_offset}..{self.last_offset} "
            f"(flush {self.flush_seq}): {self.events_lost} counted event(s) and "
            f"{self.rejections_lost} rejection(s) lost from the store: {self.reason}"
        )


def lost_ranges(client: Client) -> list[LostRange]:
    return [
        LostRange(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), str(r[5]), int(r[6]),
                  int(r[7]))
        for r in client.query(_LOST).result_rows
    ]  # fmt: skip


def counted_before_sql(ids: list[str], commit_seq: int) -> str:
    """The ids among `ids` counted by a commit before `commit_seq` (canonical UUIDs
    only, as `store.ledger.sql.already_counted_sql` checks)."""
    from store.ledger.sql import already_counted_sql

    return already_counted_sql(ids).replace(
        "flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)",
        "flush_seq IN (SELECT flush_seq FROM metering.flush_ledger "
        f"WHERE commit_seq < {int(commit_seq)})",
    )


def restage_delete_sql(table: str, flush_seq: int) -> str:
    """Delete what is left of a damaged committed flush's staged rows before they are
    staged again in full."""
    if table not in ("counted_events", "rejections_log"):
        raise ValueError(f"not a staging table: {table}")
    return (
        f"DELETE FROM metering.{table} WHERE flush_seq = {int(flush_seq)} "
        "SETTINGS lightweight_deletes_sync = 2"
    )
