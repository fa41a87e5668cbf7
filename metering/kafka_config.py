"""Kafka connection settings (bootstrap, TLS, SASL/SCRAM) for each client library.

One place turns the validated settings into the keyword arguments of kafka-python
(producers, admin, the idle probe), aiokafka (the batch intake) and faust (the app's
own producer and consumer), so every client connects the same way.

The logic lives in `streams.options` (the stream processors take those values, not
the settings); this module turns the settings into them for every other client.
"""

from __future__ import annotations

from typing import Any

from metering.settings import Settings
from streams.options import CONSUMER_ISOLATION, BatchPolicy, KafkaClientOptions, StreamOptions

__all__ = [
    "CONSUMER_ISOLATION",
    "aiokafka_options",
    "bootstrap_servers",
    "faust_options",
    "kafka_client_options",
    "kafka_python_options",
    "stream_options",
]


def bootstrap_servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]


def kafka_client_options(settings: Settings) -> KafkaClientOptions:
    password = settings.kafka_sasl_password
    return KafkaClientOptions(
        bootstrap_servers=tuple(bootstrap_servers(settings)),
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=password.get_secret_value() if password is not None else None,
        ssl_cafile=settings.kafka_ssl_cafile,
        ssl_certfile=settings.kafka_ssl_certfile,
        ssl_keyfile=settings.kafka_ssl_keyfile,
    )


def stream_options(settings: Settings) -> StreamOptions:
    """What the stream processors take instead of the settings."""
    return StreamOptions(
        kafka=kafka_client_options(settings),
        batch=BatchPolicy(
            max_events=settings.batch_max_events,
            max_seconds=settings.batch_max_seconds,
            min_seconds=settings.batch_min_seconds,
        ),
        consumer_group=settings.consumer_group,
        events_topic=settings.events_topic,
        topic_partitions=settings.topic_partitions,
        session_timeout_seconds=settings.session_timeout_seconds,
    )


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    return kafka_client_options(settings).kafka_python()


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    return kafka_client_options(settings).aiokafka()


def faust_options(settings: Settings) -> dict[str, Any]:
    """`broker_credentials` for faust.App (None for plaintext)."""
    return kafka_client_options(settings).faust()
