"""The corrections lease as the applier and the folds use it.

One writer at a time applies corrections, whatever host it runs on: it holds the
store's `corrections` lease (`store.writers.leases`). While the lease is held, rollup
folds wait (their statements are conditional on it), because a correction deletes and
re-inserts rollup keys. A lease held by a writer whose heartbeats stopped is taken over
with the next term by whichever writer needs it next, a correction's applier or a
flush waiting to fold, and the new holder first finishes what the silent one left
(`finish_corrections`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from store.corrections import CorrectionStore
from store.ledger import Ledger
from store.writers import CORRECTIONS_LEASE, Leases, Registry

__all__ = [
    "CorrectionsLease",
    "HeldLease",
    "LeaseBusyError",
    "LeaseLostError",
    "finish_corrections",
    "fold_up_to",
    "rebuild_rollups_if_short",
]

log = logging.getLogger("govmeter.corrections")

AfterStep = Callable[[str, str], None]


class LeaseBusyError(Exception):
    """Another live writer holds the corrections lease; try again later."""


class LeaseLostError(Exception):
    """The lease was taken over while this writer worked under it (it was silent too
    long): what it did under its term may be partial, the new holder finishes it."""


@dataclass(frozen=True)
class HeldLease:
    term: int
    taken_over_from: int | None  # the silent writer's number, when taken over


class CorrectionsLease:
    """Not thread-safe: runs on the sink's store thread."""

    def __init__(self, leases: Leases, registry: Registry, writer_no: int, timeout: float):
        self._leases = leases
        self._registry = registry
        self._writer_no = writer_no
        self._timeout = timeout

    @property
    def writer_no(self) -> int:
        return self._writer_no

    def take(self) -> HeldLease:
        """The lease under a new term of this writer's; `LeaseBusyError` naming the live
        writer that holds it."""
        state = self._leases.state(CORRECTIONS_LEASE)
        taken_over: int | None = None
        if state is not None and not state.released:
            if state.writer_no != self._writer_no:
                holder = self._registry.get(state.writer_no)
                if holder is not None and holder.live(self._timeout):
                    raise LeaseBusyError(f"the corrections lease is held by {holder.describe()}")
            taken_over = state.writer_no
        term = (state.term if state is not None else 0) + 1
        if not self._leases.take(CORRECTIONS_LEASE, term, self._writer_no):
            raise LeaseBusyError(f"another writer took term {term} of the corrections lease")
        if taken_over is not None:
            log.warning(
                "took over the corrections lease of a silent writer",
                extra={
                    "term": term,
                    "from_writer": self._registry.describe(taken_over),
                },
            )
        return HeldLease(term, taken_over)

    def release(self, held: HeldLease) -> None:
        self._leases.release(CORRECTIONS_LEASE, held.term, self._writer_no)

    def still_held(self, held: HeldLease) -> bool:
        state = self._leases.state(CORRECTIONS_LEASE)
        return (
            state is not None
            and state.term == held.term
            and state.writer_no == self._writer_no
            and not state.released
        )

    def held_by_a_silent_writer(self) -> bool:
        """Is the lease held (not released) by a writer other than this one that is not
        live? Then folds wait for nothing: it should be taken over."""
        state = self._leases.state(CORRECTIONS_LEASE)
        if state is None or state.released or state.writer_no == self._writer_no:
            return False
        holder = self._registry.get(state.writer_no)
        return holder is None or not holder.live(self._timeout)


def fold_up_to(ledger: Ledger, head: int, term: int) -> int:
    """Fold every committed flush up to commit `head` not folded yet, under the lease's
    `term`; returns how many. `LeaseLostError` when the lease is no longer this term."""
    folded = 0
    for flush in ledger.unapplied(head=head):
        if not ledger.apply(flush.flush_seq, corrections_term=term):
            raise LeaseLostError(f"the corrections lease moved past term {term}")
        folded += 1
    return folded


def finish_corrections(
    store: CorrectionStore,
    ledger: Ledger,
    term: int,
    after_each: AfterStep | None = None,
) -> list[int]:
    """Under the lease's `term`: delete the marks of a correction that never committed,
    and rebuild every committed correction not yet rebuilt (over the flushes it applies
    to). Returns the corrections finished."""
    committed = store.max_seq()
    orphans = store.orphan_marks(committed)
    if orphans:
        store.delete_orphan_marks(committed, term=term)
        log.warning(
            "deleted marks of a correction that never committed",
            extra={"orphan_marks": orphans, "after_correction_seq": committed},
        )
    store.fill_agencies(term=term)  # of a correction committed just before a crash
    finished = []
    for seq, correction_id, head in store.unapplied():
        fold_up_to(ledger, min(head, ledger.max_committed_seq()), term)
        rebuild_and_mark(store, seq, correction_id, head=head, term=term, after_each=after_each)
        finished.append(seq)
    if finished:
        log.warning("finished committed corrections", extra={"correction_seqs": finished})
    return finished


def rebuild_and_mark(
    store: CorrectionStore,
    seq: int,
    correction_id: str,
    *,
    head: int,
    term: int,
    after_each: AfterStep | None = None,
) -> int:
    """Steps c and d of one committed correction; returns the keys rebuilt."""
    keys = store.affected_keys(seq)
    attempt = uuid.uuid4().hex[:12]
    store.rebuild(keys, f"correction-{correction_id}-{attempt}", after_each, head=head, term=term)
    store.mark_applied(seq, correction_id, len(keys), term=term)
    return len(keys)


def rebuild_rollups_if_short(
    store: CorrectionStore, ledger: Ledger, lease: CorrectionsLease, *, rebuild: bool = False
) -> list[str]:
    """Under the corrections lease (no fold runs meanwhile): fold every committed flush,
    compare each rollup with the corrected record, and rebuild them all from it when one
    differs (or when `rebuild`). Returns the differences found. `LeaseBusyError` while a
    live writer holds the lease."""
    held = lease.take()
    try:
        finish_corrections(store, ledger, held.term)
        head = ledger.max_committed_seq()
        fold_up_to(ledger, head, held.term)
        short = store.rollups_short_of(head)
        if short or rebuild:
            log.error(
                "the rollups differ from the counted events; rebuilding them",
                extra={"differences": short, "ledger_head": head},
            )
            store.rebuild_all(f"rebuild-{uuid.uuid4().hex[:12]}", head=head, term=held.term)
            after = store.rollups_short_of(head)
            if after:
                raise RuntimeError(f"the rollups still differ after a rebuild: {after}")
    except Exception:
        lease.release(held)
        raise
    lease.release(held)
    return short
