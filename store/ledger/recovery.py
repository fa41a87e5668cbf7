"""What any writer does for the store, at start and now and then: the work that a
writer which stopped midway (killed, paused, cut off, on any host) left undone.

    1. fold committed flushes that stayed unfolded for `fold_after` seconds: the same
       statements with the same tokens and conditions as their own writer's
       (`Ledger.apply`), so a fold it did make is dropped as a duplicate, and when it
       comes back it folds nothing again (the flush is marked applied by then);
    2. delete the staged rows of flushes that can never commit: once the ledger resumes
       one of their partitions past the first offset they hold there, their writer's
       commit would be refused (its read no longer starts where the ledger resumes),
       whoever and wherever that writer is. Staged rows of a flush that could still
       commit are left alone, however long its writer has been silent.

Nothing here needs to know whether another writer is alive: step 1 is harmless while
its writer still folds (tokens), and step 2 waits for the ledger, not for a timeout.

Refolding relies on the rollups' deduplication window (10,000 inserts per table) to
drop a fold that a writer made just before it stopped and never marked: the janitor
refolds within `fold_after` + its period of the commit, while at most a few hundred
folds can land in between (docs/several-writers.md has the bound).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from store.ledger import sql
from store.ledger.ledger import Ledger

__all__ = ["Janitor", "JanitorReport", "fold_unapplied_flushes"]

log = logging.getLogger("govmeter.recovery")

FOLD_AFTER_SECONDS: Final = 5.0


@dataclass(frozen=True)
class JanitorReport:
    folded: tuple[int, ...] = ()
    orphan_flushes_deleted: tuple[int, ...] = ()


class Janitor:
    """Runs on a writer's store thread (not thread-safe)."""

    def __init__(self, ledger: Ledger, *, fold_after: float = FOLD_AFTER_SECONDS) -> None:
        self._ledger = ledger
        self._fold_after = fold_after
        # Every flush committed up to this commit number is known to be folded.
        self._folded_up_to = 0

    def fold_stuck(self, *, fold_after: float | None = None) -> tuple[int, ...]:
        """Fold every committed flush unfolded for `fold_after` seconds (the janitor's
        own when None); returns the flushes folded now."""
        wait = self._fold_after if fold_after is None else fold_after
        head = self._ledger.max_committed_seq()
        pending = self._ledger.unapplied(after=self._folded_up_to, head=head)
        folded: list[int] = []
        left: list[int] = []
        for flush in pending:
            if flush.age >= wait and self._ledger.apply(flush.flush_seq):
                folded.append(flush.flush_seq)
            else:
                left.append(flush.commit_seq)
        self._folded_up_to = left[0] - 1 if left else max(head, self._folded_up_to)
        if folded:
            log.warning(
                "folded committed flushes their writer did not fold",
                extra={"flush_seqs": folded},
            )
        return tuple(folded)

    def delete_orphans(self) -> tuple[int, ...]:
        """Delete the staged rows of flushes that can never commit; returns them."""
        orphans = self._ledger.orphans()
        if not orphans:
            return ()
        resume = self._ledger.resume_positions()
        dead = sorted(
            {
                orphan.flush_seq
                for orphan in orphans
                if resume.get((orphan.topic, orphan.partition), -1) > orphan.first_offset
            }
        )
        if dead:
            self._ledger.delete_flushes(dead)
            log.warning(
                "deleted staged rows of flushes that never committed and never can",
                extra={"flush_seqs": dead},
            )
        return tuple(dead)

    def run(self, *, fold_after: float | None = None) -> JanitorReport:
        return JanitorReport(self.fold_stuck(fold_after=fold_after), self.delete_orphans())


def fold_unapplied_flushes(
    ledger: Ledger,
    rollups: tuple[str, ...] = tuple(sql.APPLY_ROLLUPS),
    *,
    guarded: bool = True,
) -> list[int]:
    """Fold every committed flush not yet marked applied into `rollups`, then mark it.

    Run before a migration changes the schema, with the rollups that exist then
    (`guarded=False` before migration 0012 created the leases the conditions read): a
    migration that adds a rollup backfills it from the existing ones, which must
    already hold every committed flush, or a flush folded half before the upgrade
    would be counted twice in the new rollup (once by the backfill, once by the fold).
    """
    if guarded:
        unapplied = ledger.unapplied_flushes()
    else:
        rows = ledger.client.query(sql.UNAPPLIED_BEFORE_0012).result_rows
        unapplied = [int(row[0]) for row in rows]
    for seq in unapplied:
        ledger.apply(seq, rollups=rollups, corrections_term=0 if guarded else None)
    if unapplied:
        log.warning(
            "re-applied committed flushes", extra={"flush_seqs": unapplied, "rollups": rollups}
        )
    return unapplied
