"""`metering worker`: recover the store, then run the faust stream processors.

With `until_idle`, return once every message on the events topic is in the ledger
(counted, duplicate or rejected, and flushed) and nothing arrived for that long.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

from faust.types import TP
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from metering.migrations import apply_migrations
from metering.settings import Settings
from metering.store import connect, describe_store
from metering.topics import ensure_topics
from streams import ledger_sql
from streams.app import FaustDeadLetterPublisher, attach_pipeline, build_app
from streams.faults import FaultPlan
from streams.metrics import Metrics
from streams.pipeline import MeteringPipeline
from streams.positions import Positions
from streams.recovery import recover
from streams.sink import ClickHouseSink

__all__ = ["WorkerSummary", "run_worker"]

log = logging.getLogger("govmeter.worker")


@dataclass(frozen=True)
class WorkerSummary:
    seconds: float
    metrics: dict[str, object]


def run_worker(settings: Settings, until_idle: float | None = None) -> WorkerSummary:
    return asyncio.run(_run(settings, until_idle))


async def _run(settings: Settings, until_idle: float | None) -> WorkerSummary:
    started = time.monotonic()
    client = connect(settings.clickhouse_url)
    apply_migrations(client)
    state = recover(client)
    log.info(
        "store ready",
        extra={
            "store": describe_store(settings.clickhouse_url),
            "next_flush_seq": state.next_flush_seq,
            "orphan_rows_deleted": state.orphan_rows_deleted,
            "flushes_reapplied": state.flushes_reapplied,
        },
    )
    ensure_topics(settings)

    metrics = Metrics()
    app = build_app(settings)
    worker_name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    sink = ClickHouseSink(
        client,
        FaustDeadLetterPublisher(app, settings.dlq_topic),
        next_flush_seq=state.next_flush_seq,
        worker=worker_name,
        retry_max_seconds=settings.store_retry_max_seconds,
        faults=FaultPlan.from_environment(),
        metrics=metrics,
    )

    async def seek(topic: str, partition: int, offset: int) -> None:
        await app.consumer.seek(TP(topic, partition), offset)

    async def earliest_offset(topic: str, partition: int) -> int:
        tp = TP(topic, partition)
        offsets = await app.consumer.earliest_offsets(tp)
        return int(offsets.get(tp, 0))

    pipeline = MeteringPipeline(
        sink,
        Positions(state.resume_offsets),
        metrics,
        seek=seek,
        earliest_offset=earliest_offset,
    )
    attach_pipeline(app, settings, pipeline)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    await app.start()
    log.info(
        "worker consuming",
        extra={"topic": settings.events_topic, "group": settings.consumer_group},
    )
    watcher = None
    if until_idle is not None:
        watcher = asyncio.create_task(_stop_when_idle(settings, pipeline, sink, until_idle, stop))
    await stop.wait()
    while pipeline.busy:
        await asyncio.sleep(0.05)
    await app.stop()
    if watcher is not None:
        watcher.cancel()
    sink.close()
    client.close()
    summary = WorkerSummary(time.monotonic() - started, metrics.summary())
    log.info("worker stopped", extra={"seconds": round(summary.seconds, 3), **summary.metrics})
    return summary


async def _stop_when_idle(
    settings: Settings,
    pipeline: MeteringPipeline,
    sink: ClickHouseSink,
    idle_seconds: float,
    stop: asyncio.Event,
) -> None:
    """Set `stop` once the ledger covers the whole topic and nothing arrived lately."""
    loop = asyncio.get_running_loop()
    probe = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        client_id="govmeter-idle-probe",
    )
    try:
        while True:
            await asyncio.sleep(min(0.5, idle_seconds / 2 or 0.1))
            quiet_for = time.monotonic() - pipeline.last_activity
            if pipeline.busy or quiet_for < idle_seconds:
                continue
            ends = await loop.run_in_executor(None, _end_offsets, probe, settings.events_topic)
            ledger = await sink.run_on_store(
                lambda: {
                    (str(t), int(p)): int(n)
                    for t, p, n in sink.client.query(ledger_sql.RESUME_POSITIONS).result_rows
                }
            )
            behind = {
                partition: (ledger.get((settings.events_topic, partition)), end)
                for partition, (earliest, end) in ends.items()
                if end > earliest and ledger.get((settings.events_topic, partition), earliest) < end
            }
            if not behind and not pipeline.busy:
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
