"""Startup recovery: make the store consistent with its ledger, then say where to resume.

    1. the highest committed flush number is the one in flush_ledger;
    2. rows staged by any later flush are orphans of a crash before its commit: delete;
    3. committed flushes not yet folded into the rollups are applied again (the
       deduplication tokens make a repeat harmless);
    4. each topic-partition resumes after the last offset in the ledger.

Runs before the worker consumes anything, holding the writers' lock
(`store.ledger.writers_lock`): no other writer is between staging and commit then, so
the rows after the last committed flush are orphans of a writer that died. The lock's
next holder runs it again whenever its previous holder died holding it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from store.ledger import sql
from store.ledger.ledger import Ledger, Positions

__all__ = ["RecoveredState", "fold_unapplied_flushes", "recover"]

log = logging.getLogger("govmeter.recovery")


@dataclass(frozen=True)
class RecoveredState:
    next_flush_seq: int
    resume_offsets: Positions
    orphan_rows_deleted: int
    flushes_reapplied: int


def recover(ledger: Ledger) -> RecoveredState:
    # 1.
    committed = ledger.max_committed_seq()
    # 2.
    orphans = ledger.orphan_rows(committed)
    if orphans:
        ledger.delete_orphans(committed)
        log.warning(
            "deleted rows of a flush that never committed",
            extra={"orphan_rows": orphans, "after_flush_seq": committed},
        )
    # 3.
    unapplied = fold_unapplied_flushes(ledger)
    # 4.
    return RecoveredState(committed + 1, ledger.resume_positions(), orphans, len(unapplied))


def fold_unapplied_flushes(
    ledger: Ledger, rollups: tuple[str, ...] = tuple(sql.APPLY_ROLLUPS)
) -> list[int]:
    """Fold every committed flush not yet marked applied into `rollups`, then mark it.

    Also run before a migration changes the schema, with the rollups that exist then:
    a migration that adds a rollup backfills it from the existing ones, which must
    already hold every committed flush, or a flush folded half before the upgrade
    would be counted twice in the new rollup (once by the backfill, once by the fold).
    """
    unapplied = ledger.unapplied_flushes()
    for seq in unapplied:
        ledger.apply(seq, rollups=rollups)
    if unapplied:
        log.warning(
            "re-applied committed flushes", extra={"flush_seqs": unapplied, "rollups": rollups}
        )
    return unapplied
