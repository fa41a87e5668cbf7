"""The ClickHouse sink: one flush per batch, written as numbered steps.

    0. take the writers' lock (`store.ledger.writers_lock`) and catch up with what other
       writers committed: the last flush number and chain hash, their ids into the
       dedupe filter; refuse the flush (`StaleFlushError`, nothing written) if the
       ledger of one of its partitions is no longer where this writer read it from
    1. look up which event ids were already counted (committed flushes only); an
       in-memory filter of committed ids clears most of them, the store judges the rest
    2. stage the newly counted events and the rejections, tagged with the flush
    3. publish the dead-letter copies and wait for the broker's acknowledgement
    4. COMMIT: write the flush's ledger rows (one insert: all or nothing), each carrying
       the sha256 of the flush's staged rows and ranges, chained to the previous flush's
       (`store.ledger.chain`; `metering verify` recomputes both from the store)
    5. fold the flush into every rollup (INSERT ... SELECT with a token per flush)
    6. mark the flush applied, and let go of the lock
  and only then may the stream acknowledge the messages (Kafka offsets trail the ledger).
With several writers the lock makes steps 1 to 6 of one flush run alone, so flush
numbers and the chain stay one order, the lookup sees every committed flush, and
staged rows without a ledger row belong to the holder (or to a holder that died: the
next one recovers the store first). A single writer takes the same lock uncontended.

Where the process dies decides only which recovery rule applies on restart:
  - before step 4: the flush never happened; its staged rows are orphans and are
    deleted, the messages are read again (the ledger has not moved);
  - after step 4: the flush happened; steps 5 and 6 are redone with the same tokens,
    which ClickHouse deduplicates; the messages are skipped as already counted.
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
import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa

from schemas.errors import ServiceError
from store.ledger import COUNTED_EVENT_COLUMNS, Ledger, Positions
from store.ledger.chain import (
    ChainedRange,
    ChainedRejection,
    chain_sha256,
    content_lines,
)
from store.ledger.writers_lock import WritersLock
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
    wrote nothing; read its partitions again from `ledger` (where the ledger resumes
    each partition now; a partition missing from it was never counted)."""

    def __init__(self, stale: Sequence[tuple[str, int]], ledger: Positions) -> None:
        self.stale = list(stale)
        self.ledger = dict(ledger)
        where = ", ".join(f"{topic}[{partition}]" for topic, partition in self.stale)
        super().__init__(f"the ledger moved in {where} since this writer read it")


@dataclass(frozen=True)
class FlushResult:
    flush_seq: int
    messages: int
    counted: int
    duplicates: int
    rejected: int


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


class ClickHouseSink:
    """Writes flushes to one store. Store calls run on one dedicated thread."""

    def __init__(
        self,
        ledger: Ledger,
        dead_letters: DeadLetterPublisher,
        *,
        next_flush_seq: int,
        worker: str,
        retry_max_seconds: float = 30.0,
        fatal_tries: int = DEFAULT_FATAL_TRIES,
        retry_first_seconds: float = 0.2,
        faults: FaultPlan | None = None,
        metrics: Metrics | None = None,
        seen_ids: SeenIdFilter | None = None,
        lock: WritersLock | None = None,
    ) -> None:
        self._ledger = ledger
        self._lock = lock
        self._dead_letters = dead_letters
        self._next_seq = next_flush_seq
        self._worker = worker
        self._run_id = uuid.uuid4().hex[:12]
        self._retry_max = retry_max_seconds
        if fatal_tries < 1:
            raise ValueError(f"fatal_tries must be at least 1, not {fatal_tries}")
        self._fatal_tries = fatal_tries
        self._retry_first = retry_first_seconds
        self._faults = faults or FaultPlan()
        self._metrics = metrics or Metrics()
        self._flushes_started = 0
        # Ids of committed flushes; None looks every id up in the store.
        self._seen_ids = seen_ids
        # The last flush whose ids the filter holds (the filter was loaded up to the
        # last committed flush before this one); later flushes are other writers'.
        self._known_seq = next_flush_seq - 1
        # The chain hash of the last committed flush; read from the ledger at the first
        # flush (after recovery), then carried from commit to commit.
        self._chain_head: str | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    async def run_on_store(self, call: Callable[[], T], *, locked: bool = True) -> T:
        """Run a store call on the sink's thread (serialised with flushes), holding the
        writers' lock unless `locked` is False (a read that may see another writer
        midway, like the idle check's positions)."""
        lock = self._lock
        if lock is None or not locked:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)

        def holding() -> T:
            with lock.holding():
                return call()

        return await asyncio.get_running_loop().run_in_executor(self._thread, holding)

    async def flush(self, batch: ClassifiedBatch) -> FlushResult:
        """Flush one batch (steps 0 to 6); `StaleFlushError` if step 0 refuses it."""
        self._flushes_started += 1
        self._faults.flush_started(self._flushes_started)
        lock = self._lock
        if lock is not None:
            await self._store("take the writers' lock", lock.acquire)
        clean = False
        try:
            result = await self._flush_holding_lock(batch)
            clean = True
            return result
        except StaleFlushError:
            clean = True  # nothing was written
            self._metrics.flushes_refused.inc()
            raise
        finally:
            if lock is not None:
                await asyncio.get_running_loop().run_in_executor(
                    self._thread, lambda: lock.release(clean=clean)
                )

    async def _flush_holding_lock(self, batch: ClassifiedBatch) -> FlushResult:
        # 0. What other writers committed since this one last looked; refuse the flush
        #    if one of them counted in a partition of this batch.
        await self._store("catch up with the ledger", lambda: self._catch_up(batch))
        seq = self._next_seq
        self._next_seq += 1
        now = datetime.now(UTC)
        token = f"flush-{seq}-{self._run_id}"
        clock = asyncio.get_running_loop().time
        started = clock()
        timings: dict[str, float] = {}

        def lap(step: str) -> None:
            timings[step] = round(clock() - started - sum(timings.values()), 4)

        # 1. Which of the batch's event ids were counted before (by any partition)?
        #    The filter clears most ids in memory; the store judges the rest.
        #    (Runs on the store thread, like every step: the event loop stays free to
        #    read and classify the next batch meanwhile.)
        lookup = await self._store("look up counted ids", lambda: self._look_up(batch))
        new = lookup.new
        self._faults.maybe_crash("after_lookup", seq)
        lap("lookup")

        # 2. Stage counted events and rejections, tagged with the flush.
        rejection_rows = [_rejection_row(r, seq, now) for r in batch.rejected]
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

        # 3. Dead-letter copies, acknowledged by the broker before the commit.
        if batch.rejected:
            letters = [dead_letter_for(r, now) for r in batch.rejected]
            await self._retry(
                "publish dead letters",
                lambda: self._dead_letters.publish(letters),
                kind="dead_letters",
            )
        self._faults.maybe_crash("after_dead_letters", seq)
        lap("dead_letters")

        # 4. COMMIT POINT: the ledger rows of every partition, in one insert, each with
        #    the content hash of exactly the rows staged in step 2 and the ranges, and
        #    that hash chained to the last committed flush's (read in step 0).
        if self._chain_head is None:
            self._chain_head = await self._store("read chain head", self._ledger.chain_head)
        ranges = lookup.ranges(batch)
        content = flush_content_sha256(new, batch.rejected, ranges)
        chain = chain_sha256(self._chain_head, content)
        ledger_rows = [
            [
                seq,
                r.topic,
                r.partition,
                r.first_offset,
                r.last_offset,
                r.messages,
                r.counted,
                r.duplicates,
                r.rejected,
                self._worker,
                now,
                content,
                chain,
            ]
            for r in ranges
        ]
        await self._store(
            "commit flush", lambda: self._ledger.commit(ledger_rows, f"{token}-ledger")
        )
        self._chain_head = chain
        self._known_seq = seq
        if self._seen_ids is not None:
            self._seen_ids.add(lookup.new_halves)
        self._faults.maybe_crash("after_commit", seq)
        lap("commit")

        # 5 and 6. Fold the flush into the rollups, then mark it applied.
        await self._store(
            "apply rollups",
            lambda: self._ledger.apply(
                seq, after_each=lambda name: self._faults.maybe_crash(f"after_apply_{name}", seq)
            ),
        )
        self._faults.maybe_crash("after_apply", seq)
        lap("apply")

        result = FlushResult(
            flush_seq=seq,
            messages=batch.messages,
            counted=len(new),
            duplicates=len(batch.valid) - len(new) + len(batch.in_batch_duplicates),
            rejected=len(batch.rejected),
        )
        seconds = clock() - started
        self._metrics.record_flush(result, batch, seconds)
        log.info(
            "flush committed",
            extra={
                "flush_seq": seq,
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

    # -- store access -------------------------------------------------------

    def _catch_up(self, batch: ClassifiedBatch) -> None:
        """Step 0 on the store thread, holding the lock: number this flush after the last
        committed one, chain it to that one, put other writers' ids into the filter,
        and check that every partition's ledger is where the batch was read from."""
        last, head = self._ledger.head()
        if last > self._known_seq:  # other writers committed since this one last looked
            if self._seen_ids is not None:
                self._seen_ids.add(
                    halves_of(self._ledger.committed_id_halves(self._known_seq + 1, last + 1))
                )
            self._known_seq = last
        self._next_seq = max(self._next_seq, last + 1)
        self._chain_head = head
        if not batch.read_from:
            return
        ledger = self._ledger.resume_positions()
        stale = [tp for tp, read_from in batch.read_from.items() if ledger.get(tp) != read_from]
        if stale:
            log.warning(
                "flush refused: another writer counted in its partitions since they were read",
                extra={
                    "partitions": [f"{topic}[{partition}]" for topic, partition in stale],
                    "read_from": [batch.read_from[tp] for tp in stale],
                    "ledger_resumes_at": [ledger.get(tp) for tp in stale],
                },
            )
            raise StaleFlushError(stale, ledger)

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
            except (asyncio.CancelledError, StaleFlushError):
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


def _rejection_row(rejected: Any, seq: int, now: datetime) -> list[Any]:
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
