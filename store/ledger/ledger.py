"""The flush ledger: every question and every write about flushes, resume positions,
counted ids and recovery, behind one class. The statements are in `sql.py`.

A flush is counted if and only if its rows are in `metering.flush_ledger`; those rows
are written by one insert into an unpartitioned table, so that step is atomic (the
commit point of the sink's numbered flush, `streams/sink.py`). Everything else a
flush writes is either staged before the commit (deleted by recovery when the commit
never came) or folded in after it with per-flush deduplication tokens (redone by
recovery when the process died midway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from store.ledger import sql

__all__ = ["Ledger", "Positions"]

Positions = dict[tuple[str, int], int]
_DEDUPLICATED: Final = {"insert_deduplicate": 1}


class Ledger:
    """One store's ledger. Not thread-safe: the sink calls it from its store thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- questions -------------------------------------------------------------

    def max_committed_seq(self) -> int:
        return int(self.client.query(sql.MAX_COMMITTED_SEQ).result_rows[0][0] or 0)

    def head(self) -> tuple[int, str]:
        """(the last committed flush number, its chain hash): (0, '') before any flush."""
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

    def already_counted(self, event_ids: Sequence[str]) -> set[str]:
        """The ids among `event_ids` that a committed flush counted (orphans do not count)."""
        if not event_ids:
            return set()
        rows = self.client.query(sql.already_counted_sql(event_ids)).result_rows
        return {str(row[0]) for row in rows}

    def unapplied_flushes(self) -> list[int]:
        """Committed flushes not yet folded into the rollups, in order."""
        return [int(row[0]) for row in self.client.query(sql.UNAPPLIED_SEQS).result_rows]

    def committed_flush_range(self) -> tuple[int, int, int]:
        """(number of ledger rows, first flush_seq, last flush_seq)."""
        count, first, last = self.client.query(sql.FLUSH_RANGE).result_rows[0]
        return int(count), int(first or 0), int(last or 0)

    def committed_id_halves(self, first: int, stop: int) -> pa.Table:
        """Columns `high`, `low` (UInt64) of every id counted by flushes first..stop-1."""
        table: pa.Table = self.client.query_arrow(
            sql.COMMITTED_ID_HALVES,
            parameters={"first": first, "stop": stop},
            use_strings=False,
        )
        return table

    def counted_totals(self) -> tuple[int, int]:
        """(events the ledger says were counted, rows counted_events holds for committed
        flushes): equal unless rows were lost or written outside the sink."""
        ledger_counted, counted_rows = self.client.query(sql.COUNTED_TOTALS).result_rows[0]
        return int(ledger_counted or 0), int(counted_rows or 0)

    def chain_head(self) -> str:
        """The chain hash of the last committed flush: the next flush chains to it."""
        rows = self.client.query(sql.CHAIN_HEAD).result_rows
        return str(rows[0][0]) if rows else ""

    def orphan_rows(self, committed: int) -> int:
        counts = self.client.query(sql.ORPHAN_COUNTS, parameters={"seq": committed}).result_rows[0]
        return int(counts[0]) + int(counts[1])

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

    def commit(self, rows: list[list[Any]], token: str) -> None:
        """Step 4, the commit point: the flush's ledger rows (`LEDGER_COLUMNS`), one insert."""
        self._insert("metering.flush_ledger", rows, sql.LEDGER_COLUMNS, token)

    def apply(
        self,
        seq: int,
        rollups: Iterable[str] = tuple(sql.APPLY_ROLLUPS),
        after_each: Callable[[str], None] | None = None,
    ) -> None:
        """Steps 5 and 6 for one committed flush; safe to repeat (tokens deduplicate)."""
        for name in rollups:
            self.client.command(sql.apply_rollup_sql(name, seq), parameters={"flush_seq": seq})
            if after_each is not None:
                after_each(name)
        self.client.insert(
            sql.MARK_APPLIED,
            [[seq, datetime.now(UTC)]],
            column_names=["flush_seq", "applied_at"],
        )

    def delete_orphans(self, committed: int) -> None:
        """Rows staged by flushes after the last committed one (a crash before step 4)."""
        for statement in sql.DELETE_ORPHANS:
            self.client.command(
                statement, parameters={"seq": committed}, settings={"mutations_sync": 2}
            )

    def _insert(
        self, table: str, rows: list[list[Any]], columns: Sequence[str], token: str
    ) -> None:
        self.client.insert(
            table,
            rows,
            column_names=list(columns),
            settings={"insert_deduplication_token": token, **_DEDUPLICATED},
        )
