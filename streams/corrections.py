"""The corrections applier: reads the corrections topic and applies each correction
exactly once, on the sink's store thread, in numbered steps, holding the store's
corrections lease (`store.writers.leases`: one writer at a time, on any host).

    0. take the corrections lease (wait while a live writer holds it; take it over from
       a writer whose heartbeats stopped, and finish what that writer left: orphan marks
       deleted, committed corrections rebuilt). Read the ledger head H: the correction
       applies to the flushes committed up to H. Fold every flush committed up to H
       that is not folded yet (folds of flushes committed later wait for the lease, so
       none of them can be in a rollup key this correction rebuilds). Already decided
       (its id is in metering.corrections)? skip it.
    a. write the correction's marks (one per event in scope counted up to H, the event's
       state after the correction), tagged with correction_seq = the last committed + 1
    b. COMMIT: one row in metering.corrections (who asked, who approved, why, the
       record's topic, partition and offset, how many events were marked, H)
    c. rebuild every rollup key the marked events touch: delete the rows, insert them
       again from metering.corrected_events of the flushes up to H (a token per attempt)
    d. one row in metering.corrections_applied; then let go of the lease
Every write of steps a to d is conditional on the lease's term (the server checks it),
so a writer that lost the lease while it was paused writes nothing when it resumes.
A correction that cannot apply (the event was never counted or is already voided, no
event of the agency in the range, an invalid record with a readable id) is committed as
refused, with its reason, and its id is never decided again. A record without a
readable id is logged with its place on the topic and skipped. Neither stops the worker.

Where the process dies decides only what the next holder of the lease does
(`finish_corrections`): before b, the marks are orphans and are deleted, and the record
is read again (the topic resumes after the last decided record); after b, c and d are
redone with the H the correction recorded. Serialised with this writer's flushes: every
step of one correction runs in ONE call on the sink's store thread.

Range corrections apply to the events counted when the correction is applied: the
marks fix the list. An event of that agency and range counted later is not covered.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.corrections import CorrectionError, CorrectionRecord, decode_correction
from schemas.errors import ServiceError
from schemas.events import canonical_uuid
from store.corrections import CorrectionStore
from store.corrections.chain import chain_sha256, correction_content_sha256
from store.corrections.sql import SCOPE_EVENT, SCOPE_RANGE
from store.ledger import Ledger
from streams.batch import SourceMessage
from streams.corrections_lease import (
    CorrectionsLease,
    HeldLease,
    LeaseBusyError,
    LeaseLostError,
    finish_corrections,
    fold_up_to,
    rebuild_and_mark,
)
from streams.faults import FaultPlan
from streams.options import CONSUMER_ISOLATION, KafkaClientOptions
from streams.store_failures import classify_store_error

__all__ = [
    "CorrectionApplier",
    "CorrectionFailureError",
    "CorrectionOutcome",
    "CorrectionsReader",
    "unblock_folds",
]

log = logging.getLogger("govmeter.corrections")

T = TypeVar("T")
RunOnStore = Callable[[Callable[[], T]], Awaitable[T]]
Status = Literal["applied", "refused", "already_decided", "unreadable"]

_LEASE_WAIT_FIRST: Final = 0.1
_LEASE_WAIT_MAX: Final = 2.0


class CorrectionFailureError(ServiceError):
    """A correction step failed in a way retrying does not fix; the message says why."""


@dataclass(frozen=True)
class CorrectionOutcome:
    status: Status
    correction_id: str | None
    correction_seq: int | None = None
    events_marked: int = 0
    keys_rebuilt: int = 0
    refused_reason: str = ""


def unblock_folds(
    lease: CorrectionsLease, store: CorrectionStore, ledger: Ledger, faults: FaultPlan | None = None
) -> bool:
    """When the corrections lease is held by a silent writer, take it over, finish what
    that writer left, and let go: folds wait for nothing else. True if it did."""
    if not lease.held_by_a_silent_writer():
        return False
    try:
        held = lease.take()
    except LeaseBusyError:
        return False
    plan = faults or FaultPlan()
    try:
        finish_corrections(
            store,
            ledger,
            held.term,
            after_each=lambda step, rollup: plan.maybe_crash_correction(
                f"after_{step}_{rollup}", 0
            ),
        )
    finally:
        lease.release(held)
    return True


class CorrectionApplier:
    """Applies correction records; every store step runs through `run_on_store`."""

    def __init__(
        self,
        store: CorrectionStore,
        ledger: Ledger,
        lease: CorrectionsLease,
        run_on_store: RunOnStore[Any],
        *,
        worker: str,
        faults: FaultPlan | None = None,
        fatal_tries: int = 3,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._lease = lease
        self._run_on_store = run_on_store
        self._worker = worker
        self._faults = faults or FaultPlan()
        self._fatal_tries = fatal_tries
        self._retry_max = retry_max_seconds
        self._started = 0
        self.applied = 0
        self.refused = 0
        self.skipped = 0

    async def handle(self, message: SourceMessage) -> CorrectionOutcome:
        try:
            record: CorrectionRecord | None = decode_correction(message.value)
            invalid = ""
        except CorrectionError as error:
            record, invalid = None, str(error)
        if record is None:
            readable = _readable_id(message.value)
            if readable is None:
                self.skipped += 1
                log.error(
                    "correction record unreadable; skipped",
                    extra={
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                        "problem": invalid,
                    },
                )
                return CorrectionOutcome("unreadable", None)
            outcome = await self._retry(
                lambda: self._holding_lease(
                    lambda held, head: self._refuse_invalid(readable, invalid, message, held, head)
                )
            )
        else:
            valid = record
            outcome = await self._retry(
                lambda: self._holding_lease(
                    lambda held, head: self._apply(valid, message, held, head)
                )
            )
        if outcome.status == "applied":
            self.applied += 1
        elif outcome.status == "refused":
            self.refused += 1
        log.info(
            "correction " + outcome.status.replace("_", " "),
            extra={
                "correction_id": outcome.correction_id,
                "correction_seq": outcome.correction_seq,
                "events_marked": outcome.events_marked,
                "keys_rebuilt": outcome.keys_rebuilt,
                "refused_reason": outcome.refused_reason,
                "offset": message.offset,
            },
        )
        return outcome

    # -- the steps, on the store thread ------------------------------------------

    def _holding_lease(
        self, step: Callable[[HeldLease, int], CorrectionOutcome]
    ) -> CorrectionOutcome:
        """Step 0, then `step` under the lease with the ledger head it applies to."""
        held = self._lease.take()
        try:
            finish_corrections(self._store, self._ledger, held.term, self._after_step(0))
            head = self._ledger.max_committed_seq()
            fold_up_to(self._ledger, head, held.term)
            outcome = step(held, head)
            if not self._lease.still_held(held):
                raise LeaseLostError("the corrections lease was taken over midway")
        except Exception:
            # A failure lets go at once (the next holder finishes what is committed); a
            # process that dies does not, and its lease is taken over when it is silent.
            self._lease.release(held)
            raise
        self._lease.release(held)
        return outcome

    def _after_step(self, nth: int) -> Callable[[str, str], None]:
        return lambda step, rollup: self._faults.maybe_crash_correction(
            f"after_{step}_{rollup}", nth
        )

    def _decided(self, correction_id: str) -> CorrectionOutcome | None:
        decided = self._store.decided(correction_id)
        if decided is None:
            return None
        return CorrectionOutcome(
            "already_decided",
            correction_id,
            decided.correction_seq,
            refused_reason=decided.refused_reason,
        )

    def _apply(
        self, record: CorrectionRecord, message: SourceMessage, held: HeldLease, head: int
    ) -> CorrectionOutcome:
        decided = self._decided(record.correction_id)
        if decided is not None:
            return decided
        seq = self._store.max_seq() + 1
        self._started += 1
        nth = self._started
        refusal = self._refusal(record)
        if refusal:
            self._commit(record.correction_id, seq, message, record, held, head, refused=refusal)
            return CorrectionOutcome("refused", record.correction_id, seq, refused_reason=refusal)
        scope, parameters = _scope(record, seq)
        self._store.write_marks(
            scope,
            parameters,
            f"correction-{record.correction_id}-marks-{uuid.uuid4().hex[:12]}",
            head=head,
            term=held.term,
        )
        self._faults.maybe_crash_correction("after_marks", nth)
        marked = self._store.marked(seq)
        self._commit(
            record.correction_id,
            seq,
            message,
            record,
            held,
            head,
            marked_events=marked.events,
            first_day=marked.first_day,
            last_day=marked.last_day,
        )
        self._faults.maybe_crash_correction("after_commit", nth)
        keys = rebuild_and_mark(
            self._store,
            seq,
            record.correction_id,
            head=head,
            term=held.term,
            after_each=self._after_step(nth),
        )
        self._faults.maybe_crash_correction("after_applied", nth)
        return CorrectionOutcome("applied", record.correction_id, seq, marked.events, keys)

    def _refuse_invalid(
        self,
        correction_id: str,
        problem: str,
        message: SourceMessage,
        held: HeldLease,
        head: int,
    ) -> CorrectionOutcome:
        decided = self._decided(correction_id)
        if decided is not None:
            return decided
        seq = self._store.max_seq() + 1
        self._started += 1
        reason = f"invalid record: {problem}"
        self._commit(correction_id, seq, message, None, held, head, refused=reason)
        return CorrectionOutcome("refused", correction_id, seq, refused_reason=reason)

    def _refusal(self, record: CorrectionRecord) -> str:
        """Why the correction cannot apply now ('' when it can)."""
        if record.event_id is not None:
            present, counted = self._store.event_state(record.event_id)
            if present:
                return ""
            if counted:
                return f"event {record.event_id} is already voided by an earlier correction"
            return f"event {record.event_id} was never counted (no committed flush holds it)"
        assert record.agency_id and record.range_from and record.range_to
        if self._store.range_count(record.agency_id, record.range_from, record.range_to):
            return ""
        return f"no counted event of {record.scope}"

    def _commit(
        self,
        correction_id: str,
        seq: int,
        message: SourceMessage,
        record: CorrectionRecord | None,
        held: HeldLease,
        head: int,
        *,
        refused: str = "",
        marked_events: int = 0,
        first_day: Any = None,
        last_day: Any = None,
    ) -> None:
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as DateTime64(3)
        row: dict[str, Any] = {
            "correction_id": correction_id,
            "correction_seq": seq,
            "status": "refused" if refused else "applied",
            "refused_reason": refused,
            "action": record.action if record else "",
            "reason": record.reason if record else "",
            "requested_by": record.requested_by if record else "",
            "approved_by": record.approved_by if record else "",
            "requested_at": record.requested_at if record else now,
            "event_id": (record.event_id or "") if record else "",
            "scope_agency_id": (record.agency_id or "") if record else "",
            "scope_from": record.range_from if record else None,
            "scope_to": record.range_to if record else None,
            "amendments": orjson.dumps(record.set.given()).decode()
            if record and record.set
            else "",
            "events_marked": marked_events,
            "first_day": first_day,
            "last_day": last_day,
            "source_topic": message.topic,
            "source_partition": message.partition,
            "source_offset": message.offset,
            "worker": self._worker,
            "committed_at": now,
            "ledger_head": head,
        }
        marks = self._store.marks_of(seq) if not refused else []
        row["content_sha256"] = correction_content_sha256(row, marks)
        row["chain_sha256"] = chain_sha256(self._store.chain_head(), row["content_sha256"])
        self._store.commit(row, f"correction-{correction_id}-commit", term=held.term)
        decided = self._store.decided(correction_id)
        if decided is None or decided.correction_seq != seq:
            raise LeaseLostError(f"correction {correction_id} was not committed under its term")
        # Which agencies read it (their row filters): from the record just committed. A
        # crash before this leaves it to the next holder of the lease (finish_corrections).
        self._store.fill_agencies(term=held.term)

    # -- retries -----------------------------------------------------------------

    async def _retry(self, step: Callable[[], CorrectionOutcome]) -> CorrectionOutcome:
        delay = 0.2
        wait = _LEASE_WAIT_FIRST
        refused = 0
        while True:
            try:
                outcome: CorrectionOutcome = await self._run_on_store(step)
                return outcome
            except asyncio.CancelledError:
                raise
            except (LeaseBusyError, LeaseLostError) as busy:
                log.info("correction waits for the corrections lease", extra={"why": str(busy)})
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LEASE_WAIT_MAX)
                continue
            except Exception as error:
                failure = classify_store_error(error)
                if not failure.transient:
                    refused += 1
                    if refused >= self._fatal_tries:
                        raise CorrectionFailureError(
                            f"applying a correction: the store failed {refused} time(s) with "
                            f"{failure.cause} ({type(error).__name__}: {str(error)[:160]}). "
                            f"What to do: {failure.advice}. After the fix, restart the "
                            "worker: it finishes committed corrections and reads the rest."
                        ) from error
                log.warning(
                    "correction step failed, retrying",
                    extra={
                        "cause": failure.cause,
                        "transient": failure.transient,
                        "retry_in_s": round(delay, 2),
                        "error_message": str(error)[:300],
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)


def _scope(record: CorrectionRecord, seq: int) -> tuple[str, dict[str, Any]]:
    new = record.set.given() if record.set is not None else {}
    parameters: dict[str, Any] = {
        "seq": seq,
        "correction_id": record.correction_id,
        "action": record.action,
        "set_agency": int("agency_id" in new),
        "agency_id_new": new.get("agency_id", ""),
        "set_level": int("agency_level" in new),
        "agency_level_new": new.get("agency_level", ""),
        "set_in": int("tokens_in" in new),
        "tokens_in_new": new.get("tokens_in", 0),
        "set_out": int("tokens_out" in new),
        "tokens_out_new": new.get("tokens_out", 0),
    }
    if record.event_id is not None:
        return SCOPE_EVENT, {**parameters, "event_id": record.event_id}
    return SCOPE_RANGE, {
        **parameters,
        "agency_id": record.agency_id,
        "from": record.range_from,
        "to": record.range_to,
    }


def _readable_id(value: bytes) -> str | None:
    """The canonical correction_id of an invalid record, if it has one."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    candidate = parsed.get("correction_id") if isinstance(parsed, dict) else None
    if not isinstance(candidate, str):
        return None
    try:
        return canonical_uuid(candidate)
    except ValueError:
        return None


class CorrectionsReader:
    """Reads the corrections topic (the partitions given, all of the topic's; no consumer
    group) from where the store says it resumes, and hands each record to the applier
    in offset order."""

    def __init__(
        self,
        kafka: KafkaClientOptions,
        topic: str,
        applier: CorrectionApplier,
        resume: dict[tuple[str, int], int],
        partitions: Sequence[int] = (0,),
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._partitions = sorted(partitions)
        self._applier = applier
        self._next: dict[int, int] = {p: o for (t, p), o in resume.items() if t == topic}
        self.busy = False

    def handled(self) -> dict[int, int]:
        """The next offset to read per partition (what is behind it is decided)."""
        return dict(self._next)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            **self._kafka.aiokafka(),
            group_id=None,
            client_id="govmeter-corrections",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=CONSUMER_ISOLATION,
        )
        await consumer.start()
        try:
            await self._assign(consumer)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=100)
                for tp in sorted(batches, key=lambda t: t.partition):
                    for record in batches[tp]:
                        self.busy = True
                        try:
                            await self._applier.handle(_source(record))
                        finally:
                            self.busy = False
                        self._next[tp.partition] = int(record.offset) + 1
                for tp in consumer.assignment():
                    # Markers and aborted records move the position without a record.
                    position = int(await consumer.position(tp))
                    if position > self._next.get(tp.partition, -1):
                        self._next[tp.partition] = position
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        tps = [TopicPartition(self._topic, p) for p in self._partitions]
        consumer.assign(tps)
        for tp in tps:
            if tp.partition in self._next:
                consumer.seek(tp, self._next[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)


def _source(record: Any) -> SourceMessage:
    return SourceMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=bytes(record.value or b""),
    )
