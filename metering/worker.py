"""`metering worker`: recover the store, then run the faust stream processors.

With `until_idle`, return once every message on the events topic is in the ledger
(counted, duplicate or rejected, and flushed) and nothing arrived for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.metadata
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from clickhouse_connect.driver.client import Client
from faust.types import TP
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from metering.config_check import ephemeral_store_problem
from metering.health import WorkerHealth, start_health_server
from metering.kafka_config import CONSUMER_ISOLATION, kafka_python_options, stream_options
from metering.kafka_retention import ExpiryRecorder, warn_if_retention_short, watching_expiry
from metering.open_store import open_for_writing
from metering.settings import Settings, SettingsError
from metering.topics import ensure_topics, partitions_of
from metering.worker_progress import show_worker_progress
from schemas.errors import ServiceError
from store import describe_store
from store.connection import connect, for_a_cluster_writer
from store.corrections import CorrectionStore
from store.ledger import Janitor, Ledger
from store.migrations import OlderWritersActiveError
from store.retention import apply_retention
from store.writers import CORRECTIONS_LEASE, Leases, Registry, WriterIdentity
from store.writers.checks import check_arbitration
from streams.app import FaustDeadLetterPublisher, attach_pipeline, build_app
from streams.corrections import CorrectionApplier, CorrectionsReader, unblock_folds
from streams.corrections_lease import CorrectionsLease, LeaseBusyError, rebuild_rollups_if_short
from streams.dead_letter import DeadLetterPublisher
from streams.faults import FaultPlan
from streams.heartbeat import Heartbeat
from streams.intake import BatchIntake, CommittedReadProbe, known_earliest
from streams.ledger_repair import RangeReader, RepairReport, repair_the_ledger
from streams.metrics import Metrics
from streams.options import StreamOptions
from streams.pipeline import MeteringPipeline
from streams.positions import Positions
from streams.seen_ids import load_from_store
from streams.sink import ClickHouseSink
from streams.store_failures import classify_store_error

__all__ = ["IntakeError", "WorkerSummary", "run_worker"]

log = logging.getLogger("govmeter.worker")


class IntakeError(ServiceError):
    """The source topic could not be read; the message says why."""


@dataclass(frozen=True)
class WorkerSummary:
    seconds: float
    metrics: dict[str, object]


def run_worker(settings: Settings, until_idle: float | None = None) -> WorkerSummary:
    ephemeral = ephemeral_store_problem(
        settings.clickhouse_url, allowed=settings.allow_ephemeral_store
    )
    if ephemeral is not None:
        raise SettingsError(f"invalid configuration:\n  CLICKHOUSE_URL: {ephemeral}")
    return asyncio.run(_run(settings, until_idle))


async def _run(settings: Settings, until_idle: float | None) -> WorkerSummary:
    # Everything opened is closed through the stack, in the reverse order, whatever
    # step fails: the sink's thread, then the heartbeat (its last beat says
    # "stopped"), then the store client.
    async with contextlib.AsyncExitStack() as stack:
        return await _run_in(stack, settings, until_idle)


async def _run_in(
    stack: contextlib.AsyncExitStack, settings: Settings, until_idle: float | None
) -> WorkerSummary:
    started = time.monotonic()
    ensure_topics(settings)
    warn_if_retention_short(settings)
    metrics = Metrics()
    health = WorkerHealth(metrics, retry_max_seconds=settings.store_retry_max_seconds)
    health_watch = asyncio.create_task(health.watch())
    worker_name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    group = settings.consumer_group
    options = stream_options(settings)
    intake = (
        BatchIntake(options, settings.events_topic, group) if settings.intake == "batch" else None
    )
    # With the batch intake the faust app does not consume the source topic; it gets a
    # group of its own (faust's assignor protocol differs from a plain consumer's).
    app = build_app(options, group=group if intake is None else f"{group}-app")
    # Confirms gaps the pipeline cannot judge from positions (see streams.pipeline).
    gap_probe = CommittedReadProbe(options.kafka)

    async def seek(topic: str, partition: int, offset: int) -> None:
        if intake is not None:
            await intake.seek(topic, partition, offset)
        else:
            await app.consumer.seek(TP(topic, partition), offset)

    async def earliest_offset(topic: str, partition: int) -> int:
        if intake is not None:
            return await intake.earliest_offset(topic, partition)
        tp = TP(topic, partition)
        offsets = await app.consumer.earliest_offsets(tp)
        return known_earliest(offsets, tp)

    writer = await _open_writer(
        settings,
        worker_name,
        metrics,
        FaustDeadLetterPublisher(app, settings.dlq_topic),
        options,
        stack,
    )
    client, ledger, sink, corrections = (
        writer.client,
        writer.ledger,
        writer.sink,
        writer.corrections,
    )
    resume = await sink.run_on_store(ledger.resume_positions)
    positions = Positions(resume)
    expiry = ExpiryRecorder(metrics, client, sink.run_on_store, worker_name)
    await expiry.check_at_start(settings, resume)
    pipeline = MeteringPipeline(
        sink,
        positions,
        metrics,
        seek=seek,
        earliest_offset=watching_expiry(earliest_offset, positions.next_offset, expiry.report),
        first_readable=gap_probe.first_readable,
    )
    if intake is not None:
        writer.held = intake.held
        intake.handler = pipeline
        intake.resume_offset = pipeline.positions.next_offset
        intake.on_assigned = pipeline.partitions_assigned
    else:
        attach_pipeline(app, options, pipeline)
    health_server = await _start_health(
        settings, metrics, health, intake.lag if intake is not None else None
    )

    progress = (
        asyncio.create_task(show_worker_progress(metrics, intake.lag))
        if until_idle is not None and intake is not None
        else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    _tune_garbage_collector()
    await app.start()
    intake_task = asyncio.create_task(intake.run(stop)) if intake is not None else None
    if intake_task is not None:
        intake_task.add_done_callback(lambda _: stop.set())
    corrections_task = asyncio.create_task(corrections.run(stop))
    janitor_task = asyncio.create_task(writer.tend_the_store(stop))
    janitor_task.add_done_callback(lambda _: stop.set())
    corrections_task.add_done_callback(lambda _: stop.set())
    log.info(
        "worker consuming",
        extra={"topic": settings.events_topic, "group": group, "intake": settings.intake},
    )
    watcher = None
    if until_idle is not None:
        watcher = asyncio.create_task(
            _stop_when_idle(
                settings, pipeline, sink, writer.janitor, writer, corrections, until_idle, stop
            )
        )
    await stop.wait()
    while pipeline.busy or corrections.busy:
        await asyncio.sleep(0.05)
    corrections_error: BaseException | None = None
    if corrections_task.done() and not corrections_task.cancelled():
        corrections_error = corrections_task.exception()
    corrections_task.cancel()
    await asyncio.gather(corrections_task, return_exceptions=True)
    janitor_task.cancel()
    janitor_error: BaseException | None = None
    with contextlib.suppress(asyncio.CancelledError):
        janitor_error = (await asyncio.gather(janitor_task, return_exceptions=True))[0]
    intake_error: BaseException | None = None
    if intake_task is not None:
        if intake_task.done() and not intake_task.cancelled():
            intake_error = intake_task.exception()
        intake_task.cancel()
        await asyncio.gather(intake_task, return_exceptions=True)
    await app.stop()
    if watcher is not None:
        watcher.cancel()
    if progress is not None:
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
    health_watch.cancel()
    if health_server is not None:
        await health_server.cleanup()
    pipeline.close()
    await gap_probe.close()
    if corrections_error is not None:
        if isinstance(corrections_error, ServiceError):
            raise corrections_error
        raise IntakeError(
            f"reading {settings.corrections_topic} failed: "
            f"{type(corrections_error).__name__}: {corrections_error}"
        ) from corrections_error
    if isinstance(janitor_error, ServiceError):
        raise janitor_error
    if intake_error is not None:
        raise IntakeError(
            f"reading {settings.events_topic} failed: {type(intake_error).__name__}: {intake_error}"
        ) from intake_error
    summary = WorkerSummary(time.monotonic() - started, metrics.summary())
    log.info("worker stopped", extra={"seconds": round(summary.seconds, 3), **summary.metrics})
    return summary


@dataclass
class _Writer:
    """This process as a writer of the store: registered, beating, with its sink."""

    settings: Settings
    client: Client
    ledger: Ledger
    registry: Registry
    writer_no: int
    sink: ClickHouseSink
    corrections: CorrectionsReader
    lease: CorrectionsLease
    correction_store: CorrectionStore
    janitor: Janitor
    faults: FaultPlan
    held: Callable[[], list[tuple[str, int]]] = list

    def held_partitions(self) -> list[str]:
        return [f"{topic}[{partition}]" for topic, partition in self.held()]

    def unblock_folds(self) -> bool:
        """On the store thread: a corrections lease held by a silent writer is taken over
        and finished, so folds do not wait for it."""
        return unblock_folds(self.lease, self.correction_store, self.ledger, self.faults)

    def corrections_settled(self) -> bool:
        """On the store thread: every committed correction is rebuilt and nobody holds
        the corrections lease (one a gone writer holds is taken over and finished)."""
        self.unblock_folds()
        state = Leases(self.client).state(CORRECTIONS_LEASE)
        return (state is None or state.released) and not self.correction_store.unapplied()

    async def tend_the_store(self, stop: asyncio.Event) -> None:
        """Now and then, on the store thread: fold flushes another writer committed but
        did not fold, delete staged rows that can never commit, free a lease a silent
        writer holds (`store.ledger.recovery`)."""
        sweep_every = max(_ORPHAN_SWEEP_SECONDS, self.settings.writer_timeout_seconds)
        last_sweep = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _JANITOR_SECONDS)
            if stop.is_set():
                return
            try:
                await self.sink.run_on_store(self.janitor.fold_stuck)
                await self.sink.run_on_store(self.unblock_folds)
                if time.monotonic() - last_sweep >= sweep_every:
                    last_sweep = time.monotonic()
                    await self.sink.run_on_store(self.janitor.delete_orphans)
            except Exception as error:  # the next round tries again; flushes go on
                log.warning(
                    "store upkeep failed; trying again",
                    extra={"error": type(error).__name__, "error_message": str(error)[:300]},
                )


_JANITOR_SECONDS: Final = 5.0
_ORPHAN_SWEEP_SECONDS: Final = 60.0
_OLDER_WRITERS_WAIT_SECONDS: Final = 5.0


def _migrated_store(settings: Settings) -> Client:
    """The store, migrated; while writers of a release before store arbitration still
    commit to it, wait (saying which) instead of migrating under them."""
    said = ""
    while True:
        try:
            return open_for_writing(settings)
        except OlderWritersActiveError as waiting:
            if str(waiting) != said:
                log.warning("waiting to migrate the store", extra={"why": str(waiting)})
                said = str(waiting)
            time.sleep(_OLDER_WRITERS_WAIT_SECONDS)


async def _open_writer(
    settings: Settings,
    worker_name: str,
    metrics: Metrics,
    dead_letters: DeadLetterPublisher,
    options: StreamOptions,
    stack: contextlib.AsyncExitStack,
) -> _Writer:
    """Open the store as a writer: migrated, able to arbitrate, this writer registered
    and beating, the work of writers that stopped midway done, the sink ready."""
    loop = asyncio.get_running_loop()
    client = await loop.run_in_executor(None, _migrated_store, settings)
    stack.callback(client.close)
    on_cluster = settings.effective_clickhouse_mode == "cluster"
    if on_cluster:
        for_a_cluster_writer(client)
    apply_retention(
        client,
        settings.raw_retention_days,
        settings.clickhouse_cluster if settings.effective_clickhouse_mode == "cluster" else None,
    )
    check_arbitration(client)
    registry = Registry(client)
    writer_no = registry.register(
        WriterIdentity(
            name=worker_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            release=_release(),
            consumer_group=settings.consumer_group,
        )
    )
    ledger = Ledger(client)
    faults = FaultPlan.from_environment()
    correction_store = CorrectionStore(client)
    lease = CorrectionsLease(Leases(client), registry, writer_no, settings.writer_timeout_seconds)
    janitor = Janitor(ledger)
    # At start every committed flush not folded yet is folded at once, whoever wrote it
    # (the same tokens and conditions as its writer's own fold: harmless if it still
    # folds); a corrections lease of a silent writer is finished.
    report = janitor.run(fold_after=0)
    unblock_folds(lease, correction_store, ledger, faults)
    # The ledger must not be ahead of its data (a power loss can drop the newest parts
    # of a table): damaged flushes are read again from Kafka or recorded as lost, and
    # the rollups are checked against the counted events, and rebuilt if they differ.
    reader = RangeReader(options.kafka)
    repaired = RepairReport()
    try:
        repaired = await repair_the_ledger(
            ledger, reader, lambda call: loop.run_in_executor(None, call), worker=worker_name
        )
    except Exception as error:  # the flushes meet the same store and stop with the cause
        failure = classify_store_error(error)
        log.error(
            "the ledger was not checked against its data at start",
            extra={
                "cause": failure.cause,
                "what_to_do": failure.advice,
                "error_message": str(error)[:300],
            },
        )
    finally:
        await reader.close()
    try:
        await loop.run_in_executor(
            None,
            functools.partial(
                rebuild_rollups_if_short,
                correction_store,
                ledger,
                lease,
                rebuild=repaired.changed,
            ),
        )
    except LeaseBusyError as busy:
        log.info(
            "rollups not checked at start: a correction is being applied", extra={"why": str(busy)}
        )
    except Exception as error:  # the flushes meet the same store and stop with the cause
        failure = classify_store_error(error)
        log.error(
            "rollups not checked at start: the store refused the check",
            extra={
                "cause": failure.cause,
                "what_to_do": failure.advice,
                "error_message": str(error)[:300],
            },
        )
    filter_known = ledger.max_committed_seq()
    seen_ids = None
    if settings.dedupe_filter_mb:
        began = time.monotonic()
        seen_ids = load_from_store(ledger, settings.dedupe_filter_mb)
        log.info(
            "dedupe filter loaded",
            extra={
                "ids": seen_ids.ids_added,
                "size_mib": settings.dedupe_filter_mb,
                "seconds": round(time.monotonic() - began, 3),
            },
        )
    writer: _Writer | None = None

    async def when_folds_wait() -> None:
        if writer is not None:
            await writer.sink.run_on_store(writer.unblock_folds)

    sink = ClickHouseSink(
        ledger,
        dead_letters,
        writer_no=writer_no,
        worker=worker_name,
        filter_caught_up_to=filter_known,
        retry_max_seconds=settings.store_retry_max_seconds,
        fatal_tries=settings.store_fatal_tries,
        faults=faults,
        metrics=metrics,
        seen_ids=seen_ids,
        registry=registry,
        when_folds_wait=when_folds_wait,
    )
    # Every writer reads the corrections topic; the corrections lease makes one at a
    # time apply one, on its sink's store thread, never between a flush's steps.
    corrections = CorrectionsReader(
        options.kafka,
        settings.corrections_topic,
        CorrectionApplier(
            correction_store,
            ledger,
            lease,
            sink.run_on_store,
            worker=worker_name,
            faults=faults,
            fatal_tries=settings.store_fatal_tries,
            retry_max_seconds=settings.store_retry_max_seconds,
        ),
        correction_store.resume_positions(),
        partitions_of(settings, settings.corrections_topic) or [0],
    )
    writer = _Writer(
        settings,
        client,
        ledger,
        registry,
        writer_no,
        sink,
        corrections,
        lease,
        correction_store,
        janitor,
        faults,
    )
    heartbeat = Heartbeat(
        lambda: (
            for_a_cluster_writer(connect(settings.clickhouse_url))
            if on_cluster
            else connect(settings.clickhouse_url)
        ),
        writer_no,
        every=settings.heartbeat_seconds,
        partitions=writer.held_partitions,
        flushes=lambda: metrics.flushes.value,
    )
    heartbeat.start()
    stack.callback(heartbeat.stop)
    stack.callback(sink.close)
    log.info(
        "store ready",
        extra={
            "store": describe_store(settings.clickhouse_url),
            "writer": registry.describe(writer_no),
            "writer_no": writer_no,
            "flushes_folded_for_others": len(report.folded),
            "orphan_flushes_deleted": len(report.orphan_flushes_deleted),
        },
    )
    return writer


def _release() -> str:
    try:
        return importlib.metadata.version("govmeter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _tune_garbage_collector() -> None:
    """Collect cycles less often: a batch allocates a few objects per event that all
    live until its flush, and the default thresholds (700 allocations) made the cyclic
    collector rescan them over and over, about 30% of classification time. What was
    allocated at startup (modules, faust, pydantic) is frozen out of every scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)


async def _start_health(
    settings: Settings,
    metrics: Metrics,
    health: WorkerHealth,
    lag: Callable[[], Awaitable[dict[tuple[str, int], int]]] | None,
) -> web.AppRunner | None:
    """/healthz and /metrics; port 0 turns them off. A busy port is logged, not fatal."""
    if settings.health_port == 0:
        return None
    try:
        runner = await start_health_server(
            settings.health_host, settings.health_port, metrics, health.state, lag=lag
        )
    except OSError as error:
        log.warning(
            "health endpoint not started",
            extra={"port": settings.health_port, "error_message": str(error)},
        )
        return None
    log.info(
        "health endpoint listening",
        extra={"host": settings.health_host, "port": settings.health_port},
    )
    return runner


class _OffsetProbe:
    """Broker offsets for the idle check; survives broker restarts by reconnecting.

    It reads like the intake (`read_committed`): a partition's end is its last stable
    offset, and a partition is behind only while a committed record lies between what
    was handled and that end. Transaction markers and aborted records occupy offsets
    that no reader receives, so they cannot keep the worker from being idle (with the
    agent intake the ledger ends at the last record, before any trailing marker).
    """

    def __init__(self, settings: Settings) -> None:
        self._options = kafka_python_options(settings)
        self._consumer: KafkaConsumer | None = None

    def behind(self, topic: str, handled: Mapping[int, int]) -> dict[int, tuple[int, int]]:
        """(handled, end) of each partition with a committed record left to handle;
        a partition missing from `handled` has handled nothing."""
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                **self._options,
                enable_auto_commit=False,
                isolation_level=CONSUMER_ISOLATION,
                client_id="govmeter-idle-probe",
                request_timeout_ms=10_000,
            )
        left: dict[int, tuple[int, int]] = {}
        for partition, (earliest, end) in _end_offsets(self._consumer, topic).items():
            start = max(handled.get(partition, earliest), earliest)
            if start < end and _has_records(
                self._consumer, TopicPartition(topic, partition), start, end
            ):
                left[partition] = (start, end)
        return left

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):  # closing a client that already broke
                self._consumer.close()
        self._consumer = None


async def _probe(probe: _OffsetProbe, call: Any, *args: Any) -> Any:
    """Run a blocking probe call with a deadline; None (and a fresh probe) on failure."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, call, *args), timeout=20)
    except Exception as error:
        log.warning(
            "idle check could not read broker offsets; retrying",
            extra={"error": type(error).__name__},
        )
        probe.close()
        return None


async def _stop_when_idle(
    settings: Settings,
    pipeline: Any,
    sink: ClickHouseSink,
    janitor: Janitor,
    writer: _Writer,
    corrections: CorrectionsReader | None,
    idle_seconds: float,
    stop: asyncio.Event,
) -> None:
    """Set `stop` once the ledger covers the whole topic, every record of the corrections
    topic is decided, and nothing arrived lately."""
    probe = _OffsetProbe(settings)
    try:
        while True:
            await asyncio.sleep(min(0.5, idle_seconds / 2 or 0.1))
            quiet_for = time.monotonic() - pipeline.last_activity
            if pipeline.busy or quiet_for < idle_seconds:
                continue
            positions = await sink.run_on_store(sink.ledger.resume_positions)
            if await sink.run_on_store(sink.ledger.unapplied_flushes):
                continue  # committed but not folded yet (its writer or the upkeep folds it)
            if not await sink.run_on_store(writer.corrections_settled):
                continue  # a correction is being applied, or was left by a writer that died
            ledger = {
                partition: offset
                for (topic, partition), offset in positions.items()
                if topic == settings.events_topic
            }
            behind = await _probe(probe, probe.behind, settings.events_topic, ledger)
            if behind == {} and corrections is not None:
                if corrections.busy:
                    continue
                behind = await _probe(
                    probe, probe.behind, settings.corrections_topic, corrections.handled()
                )
            if behind == {} and not pipeline.busy:
                # Before it goes: the upkeep once more (staged rows of flushes that can
                # never commit, flushes a stopped writer did not fold).
                await sink.run_on_store(janitor.run)
                log.info("idle and fully flushed; stopping", extra={"idle_seconds": idle_seconds})
                stop.set()
                return
    finally:
        probe.close()


def _end_offsets(probe: KafkaConsumer, topic: str) -> dict[int, tuple[int, int]]:
    partitions = probe.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return {}
    earliest = probe.beginning_offsets(tps)
    latest = probe.end_offsets(tps)
    return {tp.partition: (int(earliest[tp]), int(latest[tp])) for tp in tps}


def _has_records(probe: KafkaConsumer, tp: TopicPartition, start: int, end: int) -> bool:
    """Does a read_committed read from `start` return a record before `end`?"""
    probe.assign([tp])
    probe.seek(tp, start)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for records in probe.poll(timeout_ms=500, max_records=1).values():
            return any(record.offset < end for record in records)
        if probe.position(tp) >= end:
            return False
    raise TimeoutError(f"{tp.topic}[{tp.partition}]: no answer reading from offset {start}")
