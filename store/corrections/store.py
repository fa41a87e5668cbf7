"""Every question and write about corrections, behind one class (the statements are in
`sql.py`). The order of the writes, which makes a correction exactly once, is the
applier's (`streams/corrections.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from store.conditional_insert import insert_if
from store.corrections import sql
from store.corrections.sql import RollupKey

__all__ = ["CorrectionStore", "Decision", "Marked"]


@dataclass(frozen=True)
class Decision:
    """A correction already decided: its status and number."""

    status: str
    correction_seq: int
    refused_reason: str


@dataclass(frozen=True)
class Marked:
    events: int
    first_day: date | None
    last_day: date | None


class CorrectionStore:
    """One store's corrections. Not thread-safe: the applier runs it on the store thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- questions -----------------------------------------------------------------

    def decided(self, correction_id: str) -> Decision | None:
        rows = self.client.query(
            sql.DECIDED, parameters={"correction_id": correction_id}
        ).result_rows
        if not rows:
            return None
        status, seq, refused = rows[0]
        return Decision(str(status), int(seq), str(refused))

    def max_seq(self) -> int:
        return int(self.client.query(sql.MAX_SEQ).result_rows[0][0] or 0)

    def resume_positions(self) -> dict[tuple[str, int], int]:
        return {
            (str(topic), int(partition)): int(offset)
            for topic, partition, offset in self.client.query(sql.RESUME_POSITIONS).result_rows
        }

    def orphan_marks(self, committed: int) -> int:
        return int(
            self.client.query(sql.ORPHAN_MARKS, parameters={"seq": committed}).result_rows[0][0]
        )

    def unapplied(self) -> list[tuple[int, str, int]]:
        """(correction_seq, correction_id, ledger head it applies to) of each committed
        correction not yet rebuilt into the rollups."""
        return [
            (int(seq), str(correction_id), int(head))
            for seq, correction_id, head in self.client.query(sql.UNAPPLIED).result_rows
        ]

    def event_state(self, event_id: str) -> tuple[bool, bool]:
        """(in the corrected record now, counted by a committed flush at all)."""
        present, counted = self.client.query(
            sql.EVENT_STATE, parameters={"event_id": event_id}
        ).result_rows[0]
        return int(present) > 0, int(counted) > 0

    def range_count(self, agency_id: str, start: datetime, end: datetime) -> int:
        return int(
            self.client.query(
                sql.RANGE_COUNT, parameters={"agency_id": agency_id, "from": start, "to": end}
            ).result_rows[0][0]
        )

    def marked(self, seq: int) -> Marked:
        count, first, last = self.client.query(sql.MARKED, parameters={"seq": seq}).result_rows[0]
        return Marked(int(count), first if int(count) else None, last if int(count) else None)

    def marks_of(self, seq: int) -> list[tuple[Any, ...]]:
        """The committed marks of one correction (`chain.MARK_FIELDS` each)."""
        return [
            tuple(row)
            for row in self.client.query(sql.MARKS_OF, parameters={"seq": seq}).result_rows
        ]

    def chain_head(self) -> str:
        rows = self.client.query(sql.CHAIN_HEAD).result_rows
        return str(rows[0][0] or "") if rows else ""

    def affected_keys(self, seq: int) -> list[RollupKey]:
        rows = self.client.query(sql.AFFECTED_KEYS, parameters={"seq": seq}).result_rows
        return [(day, str(tenant), str(agency)) for day, tenant, agency in rows]

    # -- writes --------------------------------------------------------------------

    def delete_orphan_marks(self, committed: int, *, term: int) -> None:
        self.client.command(sql.delete_orphan_marks_sql(term), parameters={"seq": committed})

    def write_marks(
        self, scope: str, parameters: Mapping[str, Any], token: str, *, head: int, term: int
    ) -> None:
        """Step a: the marks of every event in scope (`sql.SCOPE_EVENT` or `SCOPE_RANGE`)
        counted up to commit `head`."""
        self.client.command(
            sql.marks_sql(scope, token, head=head, term=term), parameters=dict(parameters)
        )

    def commit(self, row: Mapping[str, Any], token: str, *, term: int) -> None:
        """Step b, the commit point: the correction's one row (`CORRECTION_COLUMNS`)."""
        insert_if(
            self.client,
            "metering.corrections",
            [(name, sql.CORRECTION_TYPES[name]) for name in sql.CORRECTION_COLUMNS],
            [row],
            token=token,
            condition=sql.holding(term),
        )

    def rebuild(
        self,
        keys: list[RollupKey],
        token: str,
        after_each: Callable[[str, str], None] | None = None,
        *,
        head: int,
        term: int,
    ) -> None:
        """Step c: delete and re-insert every affected key of every rollup from the
        corrected record of the flushes committed up to `head`. Safe to repeat: a
        repeat deletes what a crashed attempt left and inserts again under its own
        `token` (unique per attempt)."""
        if not keys:
            return
        for rollup in sql.REBUILD_GRAIN:
            self.client.command(sql.delete_keys_sql(rollup, keys, term=term))
            if after_each is not None:
                after_each("delete", rollup)
            self.client.command(
                sql.rebuild_keys_sql(rollup, keys, f"{token}-{rollup}", head=head, term=term)
            )
            if after_each is not None:
                after_each("rebuild", rollup)

    def fill_agencies(self, *, term: int) -> None:
        """Which agency may read which correction: the rows of every committed correction
        that has none yet (`sql.FILL_AGENCIES`; derived from the committed record, so
        safe to run at any time and again)."""
        self.client.command(sql.fill_agencies_sql(term))

    def mark_applied(self, seq: int, correction_id: str, keys: int, *, term: int) -> None:
        """Step d."""
        insert_if(
            self.client,
            sql.MARK_APPLIED,
            sql.APPLIED_COLUMNS,
            [{"correction_seq": seq, "correction_id": correction_id, "keys_rebuilt": keys}],
            token=f"correction-applied-{seq}-{term}",
            condition=sql.holding(term),
            computed={"applied_at": "now64(3)"},
        )

    def rollups_short_of(self, head: int) -> list[str]:
        """The rollups whose totals differ from the corrected record of the flushes
        committed up to `head` (each as 'name: rollup figures vs record')."""
        rows = {
            str(r[0]): tuple(int(v or 0) for v in r[1:])
            for r in self.client.query(sql.rollup_totals_sql(head)).result_rows
        }
        record = rows.pop("corrected_events")
        return [
            f"{name}: messages, tokens in, tokens out {figures} vs the counted events' {record}"
            for name, figures in rows.items()
            if figures != record
        ]

    def rebuild_all(self, token: str, *, head: int, term: int) -> None:
        """Every rollup again from the corrected record of the flushes up to `head`."""
        for rollup in sql.REBUILD_GRAIN:
            self.client.command(sql.delete_all_sql(rollup, term=term))
            self.client.command(
                sql.rebuild_all_sql(rollup, f"{token}-{rollup}", head=head, term=term)
            )
