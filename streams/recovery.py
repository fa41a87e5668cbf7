"""Startup recovery: make the store consistent with its ledger, then say where to resume.

    1. the highest committed flush number is the one in flush_ledger;
    2. rows staged by any later flush are orphans of a crash before its commit: delete;
    3. committed flushes not yet folded into the rollups are applied again (the
       deduplication tokens make a repeat harmless);
    4. each topic-partition resumes after the last offset in the ledger.

Runs before the worker consumes anything. It assumes this process is the only
writer to the store (the embedded store guarantees it; see the README for servers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from streams import ledger_sql
from streams.sink import apply_flush

__all__ = ["RecoveredState", "fold_unapplied_flushes", "recover"]

log = logging.getLogger("govmeter.recovery")


@dataclass(frozen=True)
class RecoveredState:
    next_flush_seq: int
    resume_offsets: dict[tuple[str, int], int]
    orphan_rows_deleted: int
    flushes_reapplied: int


def recover(client: Client) -> RecoveredState:
    # 1.
    committed = int(client.query(ledger_sql.MAX_COMMITTED_SEQ).result_rows[0][0] or 0)
    # 2.
    counts = client.query(ledger_sql.ORPHAN_COUNTS, parameters={"seq": committed}).result_rows[0]
    orphans = int(counts[0]) + int(counts[1])
    if orphans:
        for statement in ledger_sql.DELETE_ORPHANS:
            client.command(statement, parameters={"seq": committed}, settings={"mutations_sync": 2})
        log.warning(
            "deleted rows of a flush that never committed",
            extra={"orphan_rows": orphans, "after_flush_seq": committed},
        )
    # 3.
    unapplied = fold_unapplied_flushes(client)
    # 4.
    resume = {
        (str(topic), int(partition)): int(next_offset)
        for topic, partition, next_offset in client.query(ledger_sql.RESUME_POSITIONS).result_rows
    }
    return RecoveredState(committed + 1, resume, orphans, len(unapplied))


def fold_unapplied_flushes(
    client: Client, rollups: tuple[str, ...] = tuple(ledger_sql.APPLY_ROLLUPS)
) -> list[int]:
    """Fold every committed flush not yet marked applied into `rollups`, then mark it.

    Also run before a migration changes the schema, with the rollups that exist then:
    a migration that adds a rollup backfills it from the existing ones, which must
    already hold every committed flush, or a flush folded half before the upgrade
    would be counted twice in the new rollup (once by the backfill, once by the fold).
    """
    unapplied = [int(row[0]) for row in client.query(ledger_sql.UNAPPLIED_SEQS).result_rows]
    for seq in unapplied:
        apply_flush(client, seq, rollups=rollups)
    if unapplied:
        log.warning(
            "re-applied committed flushes", extra={"flush_seqs": unapplied, "rollups": rollups}
        )
    return unapplied
