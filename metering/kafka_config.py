"""Kafka connection settings (bootstrap, TLS, SASL/SCRAM) for each client library.

One place turns the validated settings into the keyword arguments of kafka-python
(producers, admin, the idle probe), aiokafka (the batch intake) and faust (the app's
own producer and consumer), so every client connects the same way.

Every consumer reads with `CONSUMER_ISOLATION` (`read_committed`): a message of an
aborted transaction was never sent, so no consumer may receive it, and the end of a
partition for the idle check is its last stable offset, not the high watermark.
"""

from __future__ import annotations

import ssl
from typing import Any

from metering.settings import Settings

__all__ = [
    "CONSUMER_ISOLATION",
    "aiokafka_options",
    "bootstrap_servers",
    "faust_options",
    "kafka_python_options",
]

CONSUMER_ISOLATION = "read_committed"


def bootstrap_servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def _sasl(settings: Settings) -> dict[str, Any]:
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return {}
    password = settings.kafka_sasl_password
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": password.get_secret_value() if password is not None else None,
    }


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.kafka_security_protocol,
        **_sasl(settings),
    }
    context = _ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    # aiokafka takes the same names as kafka-python for these.
    return kafka_python_options(settings)


def faust_options(settings: Settings) -> dict[str, Any]:
    """`broker_credentials` for faust.App (None for plaintext)."""
    import faust

    context = _ssl_context(settings)
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        return {
            "broker_credentials": faust.SASLCredentials(
                username=settings.kafka_sasl_username,
                password=password.get_secret_value() if password is not None else None,
                mechanism=settings.kafka_sasl_mechanism,
                ssl_context=context,
            )
        }
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}
