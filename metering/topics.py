"""Create the events, dead-letter and corrections topics explicitly (kafka-python admin)."""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from metering.kafka_config import kafka_python_options
from metering.settings import Settings
from schemas.errors import ServiceError

__all__ = ["KafkaUnavailableError", "ensure_topics", "partitions_of"]

log = logging.getLogger("govmeter.topics")


class KafkaUnavailableError(ServiceError):
    pass


def _admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            **kafka_python_options(settings),
            client_id="govmeter-admin",
            request_timeout_ms=15_000,
        )
    except KafkaError as error:
        raise KafkaUnavailableError(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}: no broker answered "
            f"({type(error).__name__}). Start one with infra/kafka/start, or point the "
            "variable at your cluster."
        ) from None


def ensure_topics(settings: Settings) -> None:
    """Create the events, dead-letter and corrections topics if missing."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        retention = {"retention.ms": str(settings.topic_retention_hours * 3_600_000)}
        if settings.topic_retention_hours < 0:
            retention = {"retention.ms": "-1"}
        replication = settings.topic_replication_factor
        wanted = [
            NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=replication,
                topic_configs=retention,
            )
            for name in (settings.events_topic, settings.dlq_topic)
            if name not in existing
        ]
        # One partition: corrections apply in the order they were published (the latest
        # one of an event wins).
        if settings.corrections_topic not in existing:
            wanted.append(
                NewTopic(
                    settings.corrections_topic,
                    num_partitions=1,
                    replication_factor=replication,
                    topic_configs=retention,
                )
            )
        if wanted:
            try:
                admin.create_topics(wanted)
                log.info("created topics", extra={"topics": [t.name for t in wanted]})
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def partitions_of(settings: Settings, topic: str) -> list[int]:
    admin = _admin(settings)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    for entry in described:
        if entry.get("topic") == topic:
            return sorted(int(p["partition"]) for p in entry.get("partitions", []))
    return []
