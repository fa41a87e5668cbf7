"""The retention guard: Kafka must keep events as long as the deployment promises lateness.

The contract counts a valid event "however late" it arrives; Kafka deletes messages
after the events topic's retention. Two checks, both on what the broker says:

  * `retention_warnings`: the topic's retention.ms against METERING_MAX_LATENESS_DAYS
    (and retention.bytes or compaction, which delete whatever the time), at worker
    start and in `metering config --check`. A warning names both numbers.
  * `expired_gaps`: a partition whose earliest offset on the broker lies beyond the
    ledger's resume point lost messages nobody counted. The worker records each gap
    (metrics, `metering.expired_offsets`) before it resumes past it; `metering
    reconcile` shows the recorded gaps and the ones a worker has not reached yet.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from clickhouse_connect.driver.client import Client

from metering.kafka_config import kafka_python_options
from metering.settings import Settings
from store.expired_offsets import Gap, read_expired, record_expired
from streams.metrics import Metrics

__all__ = [
    "DAY_MS",
    "ExpiryRecorder",
    "Gap",
    "broker_earliest_offsets",
    "expired_gaps",
    "read_expired",
    "read_topic_configs",
    "record_expired",
    "retention_warnings",
    "warn_if_retention_short",
    "watching_expiry",
]

log = logging.getLogger("govmeter.retention")

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000
_TIMEOUTS: Final = {"bootstrap_timeout_ms": 5_000, "request_timeout_ms": 10_000}


def _days(ms: int) -> str:
    return f"{ms / DAY_MS:g} days"


def retention_warnings(settings: Settings, configs: Mapping[str, str] | None) -> list[str]:
    """Why Kafka may delete events before the lateness the deployment promises.

    `configs` is the events topic's effective configuration, or None when the topic
    does not exist yet (the worker then creates it with METERING_TOPIC_RETENTION_HOURS).
    """
    topic = settings.events_topic
    promised_ms = settings.max_lateness_days * DAY_MS
    promise = f"METERING_MAX_LATENESS_DAYS={settings.max_lateness_days} ({promised_ms} ms)"
    if configs is None:
        hours = settings.topic_retention_hours
        if 0 <= hours * HOUR_MS < promised_ms:
            return [
                f"METERING_TOPIC_RETENTION_HOURS={hours} ({_days(hours * HOUR_MS)}) is shorter "
                f"than {promise}: the events topic {topic} does not exist yet and would be "
                "created keeping events for less time than they may arrive late; raise "
                "METERING_TOPIC_RETENTION_HOURS to at least "
                f"{math.ceil(promised_ms / HOUR_MS)}"
            ]
        return []
    warnings = []
    retention = configs.get("retention.ms")
    if retention is not None and 0 <= int(retention) < promised_ms:
        warnings.append(
            f"METERING_EVENTS_TOPIC={topic}: retention.ms={retention} ({_days(int(retention))}) "
            f"is shorter than {promise}: Kafka deletes events before a late one can be "
            "counted, or while a worker is down for that long; raise the topic's retention.ms "
            f"to at least {promised_ms} (kafka-configs.sh --alter --entity-type topics "
            f"--entity-name {topic} --add-config retention.ms={promised_ms}), or set "
            "METERING_MAX_LATENESS_DAYS to the lateness the deployment really promises"
        )
    size = configs.get("retention.bytes")
    if size is not None and int(size) >= 0:
        warnings.append(
            f"METERING_EVENTS_TOPIC={topic}: retention.bytes={size} deletes events by size, "
            f"whatever their age, so {promise} is not guaranteed; set retention.bytes=-1 "
            "and size the disks for the retention"
        )
    if "compact" in configs.get("cleanup.policy", "delete"):
        warnings.append(
            f"METERING_EVENTS_TOPIC={topic}: cleanup.policy={configs['cleanup.policy']} keeps "
            "only the latest event per key (agency): every other event is deleted uncounted; "
            "set cleanup.policy=delete"
        )
    return warnings


def read_topic_configs(settings: Settings, topic: str) -> dict[str, str] | None:
    """The topic's effective configuration (defaults included), None if it does not exist."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(
        **kafka_python_options(settings), client_id="govmeter-retention-check", **_TIMEOUTS
    )
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
    finally:
        admin.close()
    entries = described.get("topic", {}).get(topic) or {}
    if not entries:
        return None
    return {
        str(name): str(entry.get("value"))
        for name, entry in entries.items()
        if entry.get("value") is not None
    }


def broker_earliest_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's earliest offset on the broker (what retention has not deleted)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(
        **kafka_python_options(settings),
        enable_auto_commit=False,
        client_id="govmeter-retention-check",
        **_TIMEOUTS,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        earliest = consumer.beginning_offsets(tps) if tps else {}
        return {tp.partition: int(offset) for tp, offset in earliest.items()}
    finally:
        consumer.close()


def expired_gaps(
    resume: Mapping[tuple[str, int], int], topic: str, earliest: Mapping[int, int]
) -> list[Gap]:
    """Partitions of `topic` whose earliest offset lies beyond the ledger's resume point.

    A partition the ledger has no row for has no resume point: a new store starts at
    the earliest offset, which is not a loss it could know of.
    """
    return [
        Gap(topic, partition, resume[(topic, partition)], offset)
        for partition, offset in sorted(earliest.items())
        if (topic, partition) in resume and offset > resume[(topic, partition)]
    ]


EarliestOffset = Callable[[str, int], Awaitable[int]]
ReportGap = Callable[[Gap], Awaitable[None]]


def watching_expiry(
    earliest_offset: EarliestOffset,
    next_offset: Callable[[str, int], int | None],
    report: ReportGap,
) -> EarliestOffset:
    """`earliest_offset` that reports a gap whenever the broker's earliest offset lies
    beyond the partition's next offset to count (the pipeline asks exactly then, before
    it resumes past the gap)."""

    async def earliest(topic: str, partition: int) -> int:
        offset = await earliest_offset(topic, partition)
        expected = next_offset(topic, partition)
        if expected is not None and offset > expected:
            await report(Gap(topic, partition, expected, offset))
        return offset

    return earliest


class ExpiryRecorder:
    """Counts each gap in the worker's metrics and records it in the store, once.

    `run_on_store` runs a call on the sink's store thread; a gap is recorded before the
    pipeline resumes past it. A failure to record is logged, not fatal: the gap is in
    the metrics and the log, and the next start finds it on the broker again.
    """

    def __init__(
        self,
        metrics: Metrics,
        client: Client,
        run_on_store: Callable[[Callable[[], None]], Awaitable[None]],
        worker: str,
    ) -> None:
        self._metrics = metrics
        self._client = client
        self._run_on_store = run_on_store
        self._worker = worker

    async def report(self, gap: Gap) -> None:
        if not self._metrics.record_expired(
            gap.topic, gap.partition, gap.first_missing, gap.resume_at
        ):
            return
        log.error(
            "expired offsets counted and recorded: the broker deleted them uncounted",
            extra={
                "topic": gap.topic,
                "partition": gap.partition,
                "first_missing": gap.first_missing,
                "resume_at": gap.resume_at,
                "messages": gap.messages,
            },
        )
        try:
            await self._run_on_store(lambda: record_expired(self._client, [gap], self._worker))
        except Exception as error:
            log.error(
                "could not record expired offsets in metering.expired_offsets",
                extra={"error": type(error).__name__, "error_message": str(error)[:300]},
            )

    async def check_at_start(
        self, settings: Settings, resume: Mapping[tuple[str, int], int]
    ) -> list[Gap]:
        """Gaps between the ledger's resume points and the broker's earliest offsets."""
        loop = asyncio.get_running_loop()
        try:
            earliest = await loop.run_in_executor(
                None, broker_earliest_offsets, settings, settings.events_topic
            )
        except Exception as error:
            log.warning(
                "could not read the events topic's earliest offsets; expired offsets are "
                "checked when the worker reads each partition",
                extra={"error": type(error).__name__},
            )
            return []
        gaps = expired_gaps(resume, settings.events_topic, earliest)
        for gap in gaps:
            await self.report(gap)
        return gaps


def warn_if_retention_short(settings: Settings) -> list[str]:
    """Log (and return) the retention warnings for the events topic at worker start."""
    try:
        configs = read_topic_configs(settings, settings.events_topic)
    except Exception as error:
        log.warning(
            "could not read the events topic's retention; not compared with "
            "METERING_MAX_LATENESS_DAYS",
            extra={"topic": settings.events_topic, "error": type(error).__name__},
        )
        return []
    warnings = retention_warnings(settings, configs)
    for warning in warnings:
        log.warning(
            "the events topic may delete events before they are counted",
            extra={
                "topic": settings.events_topic,
                "retention_ms": None if configs is None else configs.get("retention.ms"),
                "max_lateness_days": settings.max_lateness_days,
                "warning": warning,
            },
        )
    return warnings
