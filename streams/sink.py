"""The ClickHouse sink: one flush per batch, written as numbered steps.

    0. catch up with what other writers committed since this one last looked (their
       ledger rows and chain, their ids into the dedupe filter), and refuse the flush
       (`StaleFlushError`, nothing written) if the ledger of one of its partitions is no
       longer where this writer read it from
    1. look up which event ids were already counted (committed flushes only); an
       in-memory filter of committed ids clears most of them, the store judges the rest
    2. stage the newly counted events and the rejections, tagged with the flush's own
       number (`store.writers.flush_numbers`: no other writer ever uses it, and it
       lies above the flushes before it, so a fold reads back only its own)
    3. publish the dead-letter copies and wait for the broker's acknowledgement
    4. COMMIT: append the flush's ledger rows at commit_seq = head + 1 (one conditional
       insert: all or nothing, and only if nobody holds that number yet). Each row
       carries the sha256 of the flush's staged rows and ranges, chained to the previous
       commit's (`store.ledger.chain`; `metering verify` recomputes both). If another
       writer's commit took the number first, catch up again: refuse the flush if that
       commit counted one of its partitions; start over from step 1 under a new number
       if it counted one of its events (exactly one copy counts: the one committed
       first); else append at the new head.
    5. fold the flush into every rollup (INSERT ... SELECT with a token per flush and
       rollup, conditional on the flush not being marked applied and on no correction
       being applied meanwhile: the corrections lease)
    6. mark the flush applied (conditional the same way; steps 5 and 6 wait while a
       correction holds the lease)
  and only then may the stream acknowledge the messages (Kafka offsets trail the ledger).
Nothing here needs a lock or the other writers' host: the store orders commits, and
each writer checks its own flush against every commit before its own.

Where the process dies decides only what the next writer to look does (any writer of
the store, on any host: `store.ledger.recovery`):
  - before step 4: the flush never happened; its staged rows are orphans, deleted once
    the ledger resumes one of their partitions past them (then no writer could commit
    them any more); the messages are read again (the ledger has not moved);
  - after step 4: the flush happened; steps 5 and 6 are redone by any writer with the
    same tokens and conditions, which makes a repeat a no-op; the messages are skipped
    as already counted.
A step that fails is judged by `streams.store_failures`: a transient failure (store
down or restarting, a timeout, TOO_MANY_PARTS) is retried with backoff, with the same
flush number and tokens, for as long as it takes; nothing is acknowledged meanwhile.
Any other failure (credentials refused, a schema that does not match, a bug) is tried
`fatal_tries` times in all, then raised as `StoreFailureError`, which stops the worker
with the cause and what to do: a restart after the fix resumes from the ledger.
Dead-letter publishing (step 3) follows the same policy with Kafka's own judgement of
its errors, and is counted and logged apart from the store.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import numpy as np
import pyarrow as pa

from schemas.errors import ServiceError
from store.ledger import COUNTED_EVENT_COLUMNS, Commit, CommittedRange, Ledger, Positions
from store.ledger.chain import (
    ChainedRange,
    ChainedRejection,
    chain_sha256,
    content_lines,
)
from store.writers import FlushNumbers, Registry
from streams.batch import ClassifiedBatch, PartitionRange, RejectedMessage, ValidMessage
from streams.content_digest import counted_event_lines
from streams.dead_letter import DeadLetterPublisher, dead_letter_for
from streams.faults import FaultPlan
from streams.metrics import Metrics
from streams.seen_ids import Halves, SeenIdFilter, halves_of
from streams.staged_columns import UTC_MILLISECONDS, counted_event_arrays
from streams.store_failures import Failure, classify_publish_error, classify_store_error
from streams.valid_events import ValidEvents

__all__ = [
    "ArbitrationError",
    "ClickHouseSink",
    "DeadLetterFailureError",
    "FlushResult",
    "StaleFlushError",
    "StoreFailureError",
]

log = logging.getLogger("govmeter.sink")

T = TypeVar("T")

DEFAULT_FATAL_TRIES = 3


class StoreFailureError(ServiceError):
    """A store step failed in a way retrying does not fix; the message says what to do."""


class DeadLetterFailureError(ServiceError):
    """Dead letters could not be published in a way retrying does not fix."""


class StaleFlushError(Exception):
    """Another writer counted in a partition of this flush since it was read: the flush
    is not counted; read its partitions again from `ledger` (where the ledger resumes
    each partition now; a partition missing from it was never counted)."""

    def __init__(
        self, stale: Sequence[tuple[str, int]], ledger: Positions, by: Sequence[str] = ()
    ) -> None:
        self.stale = list(stale)
        self.ledger = dict(ledger)
        where = ", ".join(f"{topic}[{partition}]" for topic, partition in self.stale)
        who = f" ({'; '.join(by)})" if by else ""
        super().__init__(f"the ledger moved in {where} since this writer read it{who}")


@dataclass(frozen=True)
class FlushResult:
    flush_seq: int
    messages: int
    counted: int
    duplicates: int
    rejected: int
    commit_seq: int = 0


@dataclass(frozen=True)
class _Lookup:
    """What step 1 found: the batch itself is never changed (it stays a value)."""

    new: ValidEvents
    new_halves: Halves
    asked: int
    counted: Counter[tuple[str, int]]  # per partition: newly counted events
    already_counted: Counter[tuple[str, int]]  # per partition: duplicates of earlier flushes

    def ranges(self, batch: ClassifiedBatch) -> list[PartitionRange]:
        """The batch's ranges with what this flush counts in each: the ledger rows."""
        return [
            replace(
                r,
                counted=self.counted.get(key, 0),
                duplicates=r.duplicates + self.already_counted.get(key, 0),
            )
            for key, r in batch.ranges.items()
        ]


class _CountedMeanwhile(Exception):
    """A commit that took this flush's number counted some of its events: the flush
    starts over from step 1 under a new number (its staged rows are deleted)."""


# How many times a commit may find its number neither taken by another flush nor its
# own before the store is judged unable to arbitrate (it does not keep tokens, or a
# condition does not hold the way the protocol needs).
_EMPTY_COMMITS: Final = 3
_FOLD_WAIT_FIRST: Final = 0.05
_FOLD_WAIT_MAX: Final = 1.0


class ArbitrationError(ServiceError):
    """The store does not arbitrate between writers as the protocol needs: nothing was
    counted; the message says why and what to do."""


class ClickHouseSink:
    """Writes flushes to one store. Store calls run on one dedicated thread."""

    def __init__(
        self,
        ledger: Ledger,
        dead_letters: DeadLetterPublisher,
        *,
        writer_no: int,
        worker: str,
        filter_caught_up_to: int = 0,
        retry_max_seconds: float = 30.0,
        fatal_tries: int = DEFAULT_FATAL_TRIES,
        retry_first_seconds: float = 0.2,
        faults: FaultPlan | None = None,
        metrics: Metrics | None = None,
        seen_ids: SeenIdFilter | None = None,
        registry: Registry | None = None,
        when_folds_wait: Callable[[], Awaitable[None]] | None = None,
        flush_numbers: FlushNumbers | None = None,
    ) -> None:
        if writer_no <= 0:
            raise ValueError(f"a sink needs a registered writer number, not {writer_no}")
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._writer_no = writer_no
        self._numbers = flush_numbers or FlushNumbers(writer_no)
        if self._numbers.writer_no != writer_no:
            raise ValueError(
                f"the flush numbers of writer {self._numbers.writer_no} given to the sink "
                f"of writer {writer_no}"
            )
        self._worker = worker
        self._run_id = uuid.uuid4().hex[:12]
        self._retry_max = retry_max_seconds
        if fatal_tries < 1:
            raise ValueError(f"fatal_tries must be at least 1, not {fatal_tries}")
        self._fatal_tries = fatal_tries
        self._retry_first = retry_first_seconds
        self._faults = faults or FaultPlan()
        self._metrics = metrics or Metrics()
        self._registry = registry
        self._when_folds_wait = when_folds_wait
        self._flushes_started = 0
        self._letters_pending = True  # the flush under way has not published them yet
        # Ids of committed flushes; None looks every id up in the store. It holds every
        # id committed up to `filter_caught_up_to` (read before the filter was loaded).
        self._seen_ids = seen_ids
        self._filter_known = filter_caught_up_to
        # What this writer knows of the ledger: every commit up to `_known`, the chain
        # hash of that commit, and where the ledger resumes each partition after it.
        self._synced = False
        self._known = 0
        self._chain_head = ""
        self._positions: Positions = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def writer_no(self) -> int:
        return self._writer_no

    async def run_on_store(self, call: Callable[[], T]) -> T:
        """Run a store call on the sink's thread (serialised with flushes)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def flush(self, batch: ClassifiedBatch) -> FlushResult:
        """Flush one batch (steps 0 to 6); `StaleFlushError` if it is refused."""
        self._flushes_started += 1
        self._faults.flush_started(self._flushes_started)
        try:
            return await self._flush(batch)
        except StaleFlushError:
            self._metrics.flushes_refused.inc()
            raise

    async def _flush(self, batch: ClassifiedBatch) -> FlushResult:
        # 0. What other writers committed since this one last looked; refuse the flush
        #    if one of them counted in a partition of this batch.
        await self._store("catch up with the ledger", lambda: self._catch_up(batch))
        clock = asyncio.get_running_loop().time
        started = clock()
        timings: dict[str, float] = {}

        def lap(step: str) -> None:
            timings[step] = round(clock() - started - sum(timings.values()), 4)

        self._letters_pending = True
        # Steps 1 to 4; again under a new number when a commit before this flush's
        # counted some of its events.
        while True:
            try:
                seq, lookup, commit_seq = await self._count(batch, lap)
            except _CountedMeanwhile:
                self._metrics.flushes_redone.inc()
                continue
            break
        self._faults.maybe_crash("after_commit", seq)
        lap("commit")

        # 5 and 6. Fold the flush into the rollups, then mark it applied.
        await self._fold(seq)
        self._faults.maybe_crash("after_apply", seq)
        lap("apply")

        new = lookup.new
        result = FlushResult(
            flush_seq=seq,
            messages=batch.messages,
            counted=len(new),
            duplicates=len(batch.valid) - len(new) + len(batch.in_batch_duplicates),
            rejected=len(batch.rejected),
            commit_seq=commit_seq,
        )
        seconds = clock() - started
        self._metrics.record_flush(result, batch, seconds)
        log.info(
            "flush committed",
            extra={
                "flush_seq": seq,
                "commit_seq": commit_seq,
                "messages": result.messages,
                "counted": result.counted,
                "duplicates": result.duplicates,
                "rejected": result.rejected,
                "ids_looked_up": lookup.asked,
                "seconds": round(seconds, 4),
                "step_seconds": timings,
            },
        )
        return result

    async def _count(
        self, batch: ClassifiedBatch, lap: Callable[[str], None]
    ) -> tuple[int, _Lookup, int]:
        """Steps 1 to 4 under a new flush number: (the number, the lookup, the commit)."""
        seq = self._next_flush_seq()
        now = datetime.now(UTC)
        token = f"flush-{seq}-{self._run_id}"

        # 1. Which of the batch's event ids were counted before (by any partition)?
        #    The filter clears most ids in memory; the store judges the rest.
        #    (Runs on the store thread, like every step: the event loop stays free to
        #    read and classify the next batch meanwhile.)
        lookup = await self._store("look up counted ids", lambda: self._look_up(batch))
        new = lookup.new
        self._faults.maybe_crash("after_lookup", seq)
        lap("lookup")

        # 2. Stage counted events and rejections, tagged with the flush.
        rejection_rows = [rejection_row(r, seq, now) for r in batch.rejected]
        if new:
            await self._store(
                "stage counted events",
                lambda: self._ledger.stage_counted_events(
                    counted_events_table(new, seq, now), f"{token}-events"
                ),
            )
        if rejection_rows:
            await self._store(
                "stage rejections",
                lambda: self._ledger.stage_rejections(rejection_rows, f"{token}-rejections"),
            )
        self._faults.maybe_crash("after_stage", seq)
        lap("stage")

        # 3. Dead-letter copies, acknowledged by the broker before the commit (once per
        #    batch, even when the flush starts over under a new number).
        if batch.rejected and self._letters_pending:
            letters = [dead_letter_for(r, now) for r in batch.rejected]
            await self._retry(
                "publish dead letters",
                lambda: self._dead_letters.publish(letters),
                kind="dead_letters",
            )
        self._letters_pending = False
        self._faults.maybe_crash("after_dead_letters", seq)
        lap("dead_letters")

        # 4. COMMIT POINT: the ledger rows of every partition, in one conditional append
        #    at the head + 1, each with the content hash of exactly the rows staged in
        #    step 2 and the ranges, chained to the commit before it.
        ranges = lookup.ranges(batch)
        content = flush_content_sha256(new, batch.rejected, ranges)
        commit_seq = await self._commit(batch, seq, lookup, ranges, content)
        return seq, lookup, commit_seq

    def _next_flush_seq(self) -> int:
        return self._numbers.next()

    async def _commit(
        self,
        batch: ClassifiedBatch,
        seq: int,
        lookup: _Lookup,
        ranges: Sequence[PartitionRange],
        content: str,
    ) -> int:
        """Step 4: append at the head + 1 until this flush holds a commit number;
        returns it. `StaleFlushError` or `_CountedMeanwhile` when a commit that came
        first makes this flush wrong (its staged rows are deleted first)."""
        empty = 0
        while True:
            commit_seq = self._known + 1
            chain = chain_sha256(self._chain_head, content)
            rows = [
                {
                    "flush_seq": seq,
                    "topic": r.topic,
                    "partition": r.partition,
                    "first_offset": r.first_offset,
                    "last_offset": r.last_offset,
                    "messages": r.messages,
                    "counted": r.counted,
                    "duplicates": r.duplicates,
                    "rejected": r.rejected,
                    "worker": self._worker,
                    "writer_no": self._writer_no,
                    "content_sha256": content,
                    "chain_sha256": chain,
                }
                for r in ranges
            ]
            holders = await self._store(
                "commit flush", functools.partial(self._ledger.append, commit_seq, rows)
            )
            if holders == [Commit(seq, self._writer_no)]:
                self._known = commit_seq
                self._chain_head = chain
                for r in ranges:
                    self._positions[(r.topic, r.partition)] = r.last_offset + 1
                if self._seen_ids is not None:
                    self._seen_ids.add(lookup.new_halves)
                return commit_seq
            if any(holder.flush_seq == seq for holder in holders):
                raise ArbitrationError(
                    f"commit number {commit_seq} holds flush {seq} beside "
                    f"{[h.flush_seq for h in holders if h.flush_seq != seq]}: the store "
                    "stored two appends of one number, so it does not deduplicate "
                    "metering.flush_ledger's inserts (check its deduplication window, "
                    "docs/several-writers.md); stop every writer and run `metering verify`"
                )
            if not holders:
                empty += 1
                if empty >= _EMPTY_COMMITS:
                    raise ArbitrationError(
                        f"the commit of flush {seq} at commit number {commit_seq} was "
                        f"neither stored nor taken by another flush, {empty} times: the "
                        "store does not evaluate the commit's condition as the protocol "
                        "needs (docs/several-writers.md); nothing of this flush counts"
                    )
            else:
                self._metrics.commits_retried.inc()
            await self._store(
                "catch up after a commit that came first",
                lambda: self._recheck(batch, seq, lookup),
            )

    def _recheck(self, batch: ClassifiedBatch, seq: int, lookup: _Lookup) -> None:
        """On the store thread, after another flush took the number this one tried:
        catch up, then refuse the flush if a commit before it counted one of its
        partitions or one of its events."""
        caught = self._advance()
        others = [row for row in caught if row.writer_no != self._writer_no]
        try:
            self._refuse_if_stale(batch, others)
        except StaleFlushError:
            self._ledger.delete_flushes([seq])
            raise
        if not lookup.new or not others:
            return
        ids = lookup.new.events.event_id
        if self._seen_ids is None:
            ask = list(ids)
        else:
            maybe = self._seen_ids.maybe_seen(lookup.new_halves)
            ask = [ids[row] for row in np.flatnonzero(maybe).tolist()]
        counted = self._ledger.already_counted(ask)
        if counted:
            log.info(
                "flush starts over: a commit before it counted some of its events",
                extra={"flush_seq": seq, "events_counted_meanwhile": len(counted)},
            )
            self._ledger.delete_flushes([seq])
            raise _CountedMeanwhile

    async def _fold(self, seq: int) -> None:
        """Steps 5 and 6, until the flush is marked applied (they wait while another
        writer applies a correction: it holds the corrections lease)."""
        delay = _FOLD_WAIT_FIRST
        waited = False
        while True:
            applied = await self._store(
                "apply rollups",
                lambda: self._ledger.apply(
                    seq,
                    after_each=lambda name: self._faults.maybe_crash(f"after_apply_{name}", seq),
                ),
            )
            if applied:
                if waited:
                    log.info("flush folded after the correction", extra={"flush_seq": seq})
                return
            if not waited:
                log.info(
                    "flush fold waits for a correction being applied", extra={"flush_seq": seq}
                )
                waited = True
            if self._when_folds_wait is not None:
                await self._when_folds_wait()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FOLD_WAIT_MAX)

    # -- store access -------------------------------------------------------

    def _advance(self) -> list[CommittedRange]:
        """Read every commit after the last one this writer knows (in order, up to the
        first gap), and take in their positions, chain and ids."""
        if not self._synced:
            self._known, self._chain_head = self._ledger.head()
            self._numbers.observe(self._ledger.max_flush_seq())
            self._positions = self._ledger.resume_positions()
            if self._seen_ids is not None and self._known > self._filter_known:
                self._seen_ids.add(
                    halves_of(
                        self._ledger.committed_id_halves(self._filter_known + 1, self._known + 1)
                    )
                )
            self._synced = True
        caught: list[CommittedRange] = []
        expected = self._known + 1
        for row in self._ledger.commits_since(self._known):
            if row.commit_seq > expected:
                break  # not yet visible here (a replica behind): the next look reads it
            if row.commit_seq == expected:
                expected += 1
            caught.append(row)
            self._numbers.observe(row.flush_seq)
            key = (row.topic, row.partition)
            self._positions[key] = max(self._positions.get(key, 0), row.last_offset + 1)
            self._chain_head = row.chain_sha256
            self._known = row.commit_seq
        flushes = sorted({row.flush_seq for row in caught if row.writer_no != self._writer_no})
        if self._seen_ids is not None and flushes:
            self._seen_ids.add(halves_of(self._ledger.id_halves_of(flushes)))
        return caught

    def _catch_up(self, batch: ClassifiedBatch) -> None:
        """Step 0 on the store thread: catch up, then check that every partition's ledger
        is where the batch was read from."""
        caught = self._advance()
        self._refuse_if_stale(batch, [row for row in caught if row.writer_no != self._writer_no])

    def _refuse_if_stale(self, batch: ClassifiedBatch, others: Sequence[CommittedRange]) -> None:
        if not batch.read_from:
            return
        stale = [
            tp for tp, read_from in batch.read_from.items() if self._positions.get(tp) != read_from
        ]
        if not stale:
            return
        by = self._who_counted(stale, others)
        log.warning(
            "flush refused: another writer counted in its partitions since they were read",
            extra={
                "partitions": [f"{topic}[{partition}]" for topic, partition in stale],
                "read_from": [batch.read_from[tp] for tp in stale],
                "ledger_resumes_at": [self._positions.get(tp) for tp in stale],
                "counted_by": by,
            },
        )
        raise StaleFlushError(stale, self._positions, by)

    def _who_counted(
        self, stale: Sequence[tuple[str, int]], others: Sequence[CommittedRange]
    ) -> list[str]:
        """The writers whose commits moved the stale partitions (as messages name them)."""
        numbers = {row.writer_no for row in others if (row.topic, row.partition) in stale}
        for topic, partition in stale:
            if not any((row.topic, row.partition) == (topic, partition) for row in others):
                last = self._ledger.last_writer_of(topic, partition)
                if last is not None:
                    numbers.add(last)
        writers = sorted(numbers)
        if self._registry is None:
            return [f"writer {number}" for number in writers]
        named = []
        for number in writers:
            try:
                named.append(self._registry.describe(number))
            except Exception:  # naming is a courtesy; the refusal stands without it
                named.append(f"writer {number}")
        return named

    def _look_up(self, batch: ClassifiedBatch) -> _Lookup:
        """Step 1 on the store thread: ask the store about the ids the filter cannot
        clear, then count each valid message as counted or duplicate per partition."""
        valid = batch.valid
        ids = valid.events.event_id
        halves = valid.id_halves()
        if self._seen_ids is None:
            ask = ids
        else:
            maybe = self._seen_ids.maybe_seen(halves)
            ask = [ids[row] for row in np.flatnonzero(maybe).tolist()]
        already = self._ledger.already_counted(ask)
        keys = list(zip(valid.topics(), valid.partitions(), strict=True))
        if not already:  # the common case: one count per partition, no per-event split
            return _Lookup(valid, halves, len(ask), Counter(keys), Counter())
        is_new = [event_id not in already for event_id in ids]
        counted: Counter[tuple[str, int]] = Counter()
        duplicates: Counter[tuple[str, int]] = Counter()
        for key, fresh in zip(keys, is_new, strict=True):
            if fresh:
                counted[key] += 1
            else:
                duplicates[key] += 1
        new = valid.take([row for row, fresh in enumerate(is_new) if fresh])
        return _Lookup(new, halves[np.array(is_new, dtype=np.bool_)], len(ask), counted, duplicates)

    async def _store(self, what: str, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()

        def guarded() -> T:
            self._faults.maybe_fail_store()
            return call()

        async def attempt() -> T:
            return await loop.run_in_executor(self._thread, guarded)

        return await self._retry(what, attempt)

    async def _retry(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        kind: Literal["store", "dead_letters"] = "store",
    ) -> T:
        """Run `attempt` until it succeeds; a failure that is not transient ends it after
        `fatal_tries` tries in all, raised as StoreFailureError or DeadLetterFailureError."""
        delay = self._retry_first
        failures = 0
        refused = 0
        while True:
            try:
                return await attempt()
            except (asyncio.CancelledError, StaleFlushError, _CountedMeanwhile):
                raise
            except Exception as error:
                failures += 1
                if kind == "store":
                    failure = classify_store_error(error)
                    self._metrics.record_store_failure(failure, what)
                else:
                    failure = classify_publish_error(error)
                    self._metrics.record_dead_letter_failure(failure)
                if not failure.transient:
                    refused += 1
                    if refused >= self._fatal_tries:
                        raise self._give_up(what, kind, failure, error, failures) from error
                log.warning(
                    "store step failed, retrying"
                    if kind == "store"
                    else "dead-letter publish failed, retrying",
                    extra={
                        "step": what,
                        "attempt": failures,
                        "transient": failure.transient,
                        "cause": failure.cause,
                        "tries_left": None if failure.transient else self._fatal_tries - refused,
                        "retry_in_s": round(delay, 2),
                        "error": type(error).__name__,
                        "error_message": str(error)[:300],
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)

    def _give_up(
        self,
        what: str,
        kind: Literal["store", "dead_letters"],
        failure: Failure,
        error: Exception,
        attempts: int,
    ) -> Exception:
        where = "the store" if kind == "store" else "the dead-letter topic (METERING_DLQ_TOPIC)"
        message = (
            f"{what}: {where} failed {self._fatal_tries} time(s) with {failure.cause}, which "
            f"retrying does not fix ({type(error).__name__}: {str(error)[:160]}). "
            f"What to do: {failure.advice}. Nothing past the ledger was acknowledged; "
            "after the fix, restart the worker: it resumes from the ledger."
        )
        log.critical(
            "store step failed and retrying cannot fix it; stopping the worker"
            if kind == "store"
            else "dead-letter publish failed and retrying cannot fix it; stopping the worker",
            extra={
                "step": what,
                "cause": failure.cause,
                "what_to_do": failure.advice,
                "attempts": attempts,
                "error": type(error).__name__,
                "error_message": str(error)[:300],
            },
        )
        if kind == "store":
            return StoreFailureError(message)
        return DeadLetterFailureError(message)


def counted_events_table(
    new: ValidEvents | Sequence[ValidMessage], seq: int, now: datetime
) -> pa.Table:
    """The staged rows of one flush, column by column (`COUNTED_EVENT_COLUMNS`)."""
    valid = new if isinstance(new, ValidEvents) else ValidEvents.of_messages(new)
    rows = len(valid)
    columns: dict[str, pa.Array] = {
        **counted_event_arrays(valid),
        "flush_seq": pa.repeat(pa.scalar(seq, pa.uint64()), rows),
        "ingested_at": pa.repeat(pa.scalar(now, UTC_MILLISECONDS), rows),
    }
    if tuple(columns) != COUNTED_EVENT_COLUMNS:
        raise RuntimeError(
            "counted_events_table builds columns "
            f"{list(columns)}, but store/ledger/sql.py COUNTED_EVENT_COLUMNS lists "
            f"{list(COUNTED_EVENT_COLUMNS)}: make the two agree"
        )
    return pa.table(columns)


def flush_content_sha256(
    new: ValidEvents | Sequence[ValidMessage],
    rejected: Sequence[RejectedMessage],
    ranges: Sequence[PartitionRange],
) -> str:
    """The canonical content hash (`store.ledger.chain`) of what one flush stages and
    commits: its counted events, its rejections and its ledger ranges."""
    valid = new if isinstance(new, ValidEvents) else ValidEvents.of_messages(new)
    rejections = [
        ChainedRejection(
            str(r.rejection.reason),
            r.rejection.event_id,
            r.rejection.agency_id,
            r.source.topic,
            r.source.partition,
            r.source.offset,
            r.source.size,
        )
        for r in rejected
    ]
    chained_ranges = [
        ChainedRange(
            r.topic,
            r.partition,
            r.first_offset,
            r.last_offset,
            r.messages,
            r.counted,
            r.duplicates,
            r.rejected,
        )
        for r in ranges
    ]
    # The event lines straight from the columns; the header, rejection and range lines
    # as `store.ledger.chain` writes them (its lines for no events).
    header, *others = content_lines([], rejections, chained_ranges)
    digest = hashlib.sha256(header.encode("ascii"))
    digest.update(counted_event_lines(valid))
    for line in others:
        digest.update(line.encode("ascii"))
    return digest.hexdigest()


def rejection_row(rejected: Any, seq: int, now: datetime) -> list[Any]:
    source = rejected.source
    rejection = rejected.rejection
    return [
        now,
        str(rejection.reason),
        rejection.detail,
        rejection.event_id,
        rejection.agency_id,
        source.topic,
        source.partition,
        source.offset,
        source.size,
        seq,
    ]
