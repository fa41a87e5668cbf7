"""The flush ledger: every question and every write about flushes, resume positions,
counted ids and recovery, behind one class. The statements are in `sql.py`.

A flush is counted if and only if its rows are in `metering.flush_ledger`. They are
written by one insert into an unpartitioned table, so that step is atomic, and the
insert is conditional (`store.conditional_insert`): it appends at commit_seq = head + 1
only while nobody has that number, so commits of any number of writers, on any hosts,
form one order that the store decides (`append`). Everything else a flush writes is
either staged before its commit (its rows are orphans while the ledger lacks it) or
folded in after it with per-flush deduplication tokens and conditions (redone by any
writer when its own writer stopped midway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from store.conditional_insert import insert_if
from store.ledger import sql
from store.writers import CORRECTIONS_LEASE, lease_allows

__all__ = ["Commit", "CommittedRange", "Ledger", "Orphan", "Positions", "Unapplied"]

Positions = dict[tuple[str, int], int]
_DEDUPLICATED: Final = {"insert_deduplicate": 1}
_NO_HEAD: Final = 2**64 - 1


@dataclass(frozen=True)
class CommittedRange:
    """One ledger row as a writer catching up reads it."""

    commit_seq: int
    flush_seq: int
    writer_no: int
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    chain_sha256: str


@dataclass(frozen=True)
class Commit:
    """Who holds one commit number."""

    flush_seq: int
    writer_no: int


@dataclass(frozen=True)
class Unapplied:
    """A committed flush not yet folded into the rollups."""

    commit_seq: int
    flush_seq: int
    age: float  # seconds since its commit, on the server's clock


@dataclass(frozen=True)
class Orphan:
    """Staged rows of a flush that never committed, in one partition."""

    flush_seq: int
    topic: str
    partition: int
    first_offset: int


class Ledger:
    """One store's ledger. Not thread-safe: the sink calls it from its store thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- questions -------------------------------------------------------------

    def max_committed_seq(self) -> int:
        """The head: the last commit number (0 before any flush)."""
        return int(self.client.query(sql.MAX_COMMITTED_SEQ).result_rows[0][0] or 0)

    def max_flush_seq(self) -> int:
        """The highest flush number committed (0 before any flush)."""
        rows = self.client.query(sql.MAX_FLUSH_SEQ).result_rows
        return int(rows[0][0] or 0) if rows else 0

    def head(self) -> tuple[int, str]:
        """(the last commit number, its chain hash): (0, '') before any flush."""
        rows = self.client.query(sql.LEDGER_HEAD).result_rows
        if not rows or not rows[0][0]:
            return 0, ""
        return int(rows[0][0]), str(rows[0][1] or "")

    def resume_positions(self) -> Positions:
        """Where each topic-partition resumes: after the last offset its flushes cover."""
        return {
            (str(topic), int(partition)): int(next_offset)
            for topic, partition, next_offset in self.client.query(sql.RESUME_POSITIONS).result_rows
        }

    def commits_since(self, after: int) -> list[CommittedRange]:
        """Every ledger row committed after commit number `after`, in commit order."""
        return [
            CommittedRange(
                int(r[0]),
                int(r[1]),
                int(r[2]),
                str(r[3]),
                int(r[4]),
                int(r[5]),
                int(r[6]),
                str(r[7]),
            )
            for r in self.client.query(sql.COMMITS_SINCE, parameters={"after": after}).result_rows
        ]

    def commits_at(self, commit_seq: int) -> list[Commit]:
        rows = self.client.query(sql.COMMITS_AT, parameters={"commit_seq": commit_seq}).result_rows
        return [Commit(int(flush), int(writer)) for flush, writer in rows]

    def already_counted(self, event_ids: Sequence[str]) -> set[str]:
        """The ids among `event_ids` that a committed flush counted (orphans do not count)."""
        if not event_ids:
            return set()
        rows = self.client.query(sql.already_counted_sql(event_ids)).result_rows
        return {str(row[0]) for row in rows}

    def unapplied(self, *, after: int = 0, head: int | None = None) -> list[Unapplied]:
        """Committed flushes not yet folded into the rollups, in commit order: committed
        after commit number `after` and up to `head`."""
        rows = self.client.query(
            sql.UNAPPLIED,
            parameters={"after": after, "head": _NO_HEAD if head is None else head},
        ).result_rows
        return [
            Unapplied(int(commit), int(flush), max(0.0, int(age_ms) / 1000))
            for commit, flush, age_ms in rows
        ]

    def unapplied_flushes(self) -> list[int]:
        """Every committed flush not yet folded into the rollups, in commit order."""
        return [flush.flush_seq for flush in self.unapplied()]

    def committed_flush_range(self) -> tuple[int, int, int]:
        """(number of commits, first commit_seq, last commit_seq)."""
        count, first, last = self.client.query(sql.FLUSH_RANGE).result_rows[0]
        return int(count), int(first or 0), int(last or 0)

    def committed_id_halves(self, first: int, stop: int) -> pa.Table:
        """Columns `high`, `low` (UInt64) of every id counted by commits first..stop-1."""
        table: pa.Table = self.client.query_arrow(
            sql.COMMITTED_ID_HALVES,
            parameters={"first": first, "stop": stop},
            use_strings=False,
        )
        return table

    def id_halves_of(self, flush_seqs: Sequence[int]) -> pa.Table:
        """Columns `high`, `low` of every id counted by the named committed flushes."""
        table: pa.Table = self.client.query_arrow(sql.flush_ids_sql(flush_seqs), use_strings=False)
        return table

    def counted_totals(self) -> tuple[int, int]:
        """(events the ledger says were counted, rows counted_events holds for committed
        flushes): equal unless rows were lost or written outside the sink."""
        ledger_counted, counted_rows = self.client.query(sql.COUNTED_TOTALS).result_rows[0]
        return int(ledger_counted or 0), int(counted_rows or 0)

    def chain_head(self) -> str:
        """The chain hash of the last commit: the next flush chains to it."""
        return self.head()[1]

    def orphans(self) -> list[Orphan]:
        """Staged rows of flushes the ledger does not hold, per flush and partition."""
        return [
            Orphan(int(flush), str(topic), int(partition), int(first))
            for flush, topic, partition, first in self.client.query(sql.ORPHANS).result_rows
        ]

    def last_writer_of(self, topic: str, partition: int) -> int | None:
        """The number of the writer that committed last in a partition (0: a writer of
        a release before writers registered; None: nobody)."""
        rows = self.client.query(
            sql.LAST_WRITER_OF, parameters={"topic": topic, "partition": partition}
        ).result_rows
        return int(rows[0][0]) if rows else None

    def is_applied(self, flush_seq: int) -> bool:
        rows = self.client.query(sql.IS_APPLIED, parameters={"flush_seq": flush_seq}).result_rows
        return int(rows[0][0]) > 0

    # -- writes: the flush's steps ----------------------------------------------

    def stage_counted_events(self, columns: pa.Table, token: str) -> None:
        """Step 2: the flush's counted events, tagged with its flush_seq."""
        if tuple(columns.column_names) != sql.COUNTED_EVENT_COLUMNS:
            raise ValueError(
                f"counted events columns {columns.column_names} differ from "
                f"store/ledger/sql.py COUNTED_EVENT_COLUMNS {list(sql.COUNTED_EVENT_COLUMNS)}"
            )
        self.client.insert_arrow(
            "metering.counted_events",
            columns,
            settings={"insert_deduplication_token": token, **_DEDUPLICATED},
        )

    def stage_rejections(self, rows: list[list[Any]], token: str) -> None:
        """Step 2: the flush's rejections (`REJECTION_COLUMNS`), tagged with its flush_seq."""
        self._insert("metering.rejections_log", rows, sql.REJECTION_COLUMNS, token)

    def append(self, commit_seq: int, rows: Sequence[Mapping[str, Any]]) -> list[Commit]:
        """Step 4, the commit point: append one flush's ledger rows (`COMMIT_COLUMNS`,
        without commit_seq and committed_at) at `commit_seq`, only if nobody holds that
        number or a later one yet. Returns who holds `commit_seq` afterwards: this flush
        if it won, another writer's flush if that one came first, nobody if the ledger
        had moved past it (the caller catches up and tries the new head)."""
        insert_if(
            self.client,
            "metering.flush_ledger",
            sql.COMMIT_COLUMNS,
            [{**row, "commit_seq": commit_seq} for row in rows],
            token=f"commit-{int(commit_seq)}",
            condition=sql.COMMIT_CONDITION,
            parameters={"commit_seq": commit_seq},
            computed={"committed_at": "now64(3)"},
        )
        return self.commits_at(commit_seq)

    def apply(
        self,
        seq: int,
        rollups: Iterable[str] = tuple(sql.APPLY_ROLLUPS),
        after_each: Callable[[str], None] | None = None,
        *,
        corrections_term: int | None = 0,
    ) -> bool:
        """Steps 5 and 6 for one committed flush; safe to repeat, by anyone (tokens
        deduplicate, and nothing is folded once the flush is marked applied). Returns
        whether the flush is marked applied now: not while the corrections lease is held
        under another term than `corrections_term` (0: by anybody); fold it again after.

        `corrections_term=None` folds without conditions (before migration 0012, when no
        other writer of this release can run).
        """
        guard = (
            None if corrections_term is None else lease_allows(CORRECTIONS_LEASE, corrections_term)
        )
        if guard is not None and not int(self.client.query(f"SELECT {guard}").result_rows[0][0]):
            # Held now: fold nothing. Checked first because the statements below are
            # judged one by one: a lease released between the last fold and the mark
            # would let through the mark of a flush whose folds it had blocked. Once this
            # check passed, a flush committed before it is one the next holder folds
            # itself (it reads the head after taking the lease), so a lease taken midway
            # leaves nothing undone.
            return False
        for name in rollups:
            self.client.command(
                sql.apply_rollup_sql(name, seq, guard=guard), parameters={"flush_seq": seq}
            )
            if after_each is not None:
                after_each(name)
        if guard is None:
            self.client.insert(
                sql.MARK_APPLIED,
                [[seq, datetime.now(UTC)]],
                column_names=["flush_seq", "applied_at"],
            )
            return True
        self.client.command(sql.mark_applied_sql(guard), parameters={"flush_seq": seq})
        return self.is_applied(seq)

    def delete_flushes(self, flush_seqs: Sequence[int]) -> None:
        """Delete the staged rows of flushes that never committed and never will."""
        if not flush_seqs:
            return
        for table in ("counted_events", "rejections_log"):
            self.client.command(sql.delete_flushes_sql(table, flush_seqs))

    def _insert(
        self, table: str, rows: list[list[Any]], columns: Sequence[str], token: str
    ) -> None:
        self.client.insert(
            table,
            rows,
            column_names=list(columns),
            settings={"insert_deduplication_token": token, **_DEDUPLICATED},
        )
