"""The bench topic: created fresh with P partitions, filled once, deleted afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from metering.replay import publish_lines
from metering.settings import load_settings

__all__ = [
    "Published",
    "count_lines",
    "create_topic",
    "delete_topics_containing",
    "publish",
    "topic_messages",
]


@dataclass(frozen=True)
class Published:
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def _admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="govmeter-bench-admin",
        request_timeout_ms=30_000,
    )


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = _admin(bootstrap)
    try:
        admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            timeout_ms=30_000,
        )
    finally:
        admin.close()


def publish(bootstrap: str, topic: str, lines: Iterable[bytes]) -> Published:
    """Publish with the project's replay producer (keyed by agency_id, acks=all)."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap, events_topic=topic)
    began = time.perf_counter()
    sent = publish_lines(settings, lines)
    return Published(sent, time.perf_counter() - began)


def delete_topics_containing(bootstrap: str, marker: str) -> list[str]:
    """Delete every topic whose name contains `marker` (the run id); return their names."""
    admin = _admin(bootstrap)
    try:
        names = sorted(name for name in admin.list_topics() if marker in name)
        if names:
            admin.delete_topics(names, timeout_ms=30_000)
        return names
    finally:
        admin.close()


def topic_messages(bootstrap: str, topic: str) -> int | None:
    """Messages the topic holds (end minus beginning offsets), or None when it does not exist."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), client_id="govmeter-bench")
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        return sum(int(ends[tp]) - int(begins[tp]) for tp in tps)
    finally:
        consumer.close()


def count_lines(lines: Iterable[bytes]) -> Published:
    """Run through `lines` without publishing them (the topic already holds them)."""
    began = time.perf_counter()
    count = sum(1 for _ in lines)
    return Published(count, time.perf_counter() - began)
