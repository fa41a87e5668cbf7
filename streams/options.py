"""What the stream processors need to know, as small typed values (no global settings).

`metering.kafka_config.stream_options` builds them from the validated `Settings`; tests
build them directly. Every Kafka client of the processors connects from one
`KafkaClientOptions`, so every client connects the same way (bootstrap, TLS, SASL).

Every consumer reads with `CONSUMER_ISOLATION` (`read_committed`): a message of an
aborted transaction was never sent, so no consumer may receive it, and the end of a
partition for the idle check is its last stable offset, not the high watermark.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CONSUMER_ISOLATION", "BatchPolicy", "KafkaClientOptions", "StreamOptions"]

CONSUMER_ISOLATION: Final = "read_committed"


@dataclass(frozen=True)
class KafkaClientOptions:
    bootstrap_servers: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's clients (and aiokafka's: the same names)."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    def aiokafka(self) -> dict[str, Any]:
        return self.kafka_python()

    def faust(self) -> dict[str, Any]:
        """`broker_credentials` for faust.App (nothing for plaintext)."""
        import faust

        context = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            return {
                "broker_credentials": faust.SASLCredentials(
                    username=self.sasl_username,
                    password=self.sasl_password,
                    mechanism=self.sasl_mechanism,
                    ssl_context=context,
                )
            }
        if context is not None:
            return {"broker_credentials": faust.SSLCredentials(context)}
        return {}


@dataclass(frozen=True)
class BatchPolicy:
    """One flush per batch: at most `max_events`, read for at most `max_seconds`; a batch
    that is not full waits `min_seconds` for more (fewer, larger flushes at low rates)."""

    max_events: int = 20_000
    max_seconds: float = 1.0
    min_seconds: float = 0.25


@dataclass(frozen=True)
class StreamOptions:
    kafka: KafkaClientOptions
    batch: BatchPolicy
    consumer_group: str
    events_topic: str
    topic_partitions: int = 6
    session_timeout_seconds: float = 10.0
