"""build_app(options, pipeline) -> faust.App: no import-time global app.

The agent is wiring only: take a batch of events, hand it to the pipeline, and let
faust acknowledge them after the pipeline returned (so Kafka's committed offsets
never pass what the ledger holds).

Faust's consumer reads `read_committed` like every other consumer of the project.
Faust itself sets that isolation only with its exactly-once processing guarantee,
which would also make its producer transactional; so the app gets a transport whose
consumer thread builds faust's usual aiokafka consumer and sets the isolation on it
before it starts (aiokafka reads it when it creates its fetcher, at start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.batch import SourceMessage
from streams.dead_letter import DeadLetter
from streams.options import CONSUMER_ISOLATION, StreamOptions

log = logging.getLogger("govmeter.app")

__all__ = [
    "BatchHandler",
    "FaustDeadLetterPublisher",
    "attach_pipeline",
    "broker_urls",
    "build_app",
    "send_acknowledged",
]


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [
        f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()
    ]


def build_app(options: StreamOptions, group: str | None = None) -> faust.App:
    app = faust.App(
        group or options.consumer_group,
        broker=broker_urls(",".join(options.kafka.bootstrap_servers)),
        **options.kafka.faust(),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=options.topic_partitions,
        topic_allow_declare=False,
        producer_acks=-1,
        broker_commit_every=10_000,
        # A worker killed with SIGKILL holds its partitions until its session times
        # out; a short session lets a restarted worker (or a peer) take over quickly.
        broker_session_timeout=options.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, options.session_timeout_seconds / 4),
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, options.batch.max_events),
        stream_wait_empty=False,
        broker_max_poll_records=max(500, options.batch.max_events // 4),
        consumer_max_fetch_size=8 * 1024 * 1024,
        producer_max_request_size=4 * 1024 * 1024,
        logging_config=None,
        loghandlers=[],
    )
    app.transport = _ReadCommittedTransport(app.conf.broker_consumer, app)
    return app


def _read_committed(consumer: Any) -> Any:
    """Set the consumer's isolation before it starts; refuse a client that changed."""
    if getattr(consumer, "_isolation_level", None) not in ("read_uncommitted", "read_committed"):
        raise RuntimeError(
            "this aiokafka consumer keeps its isolation level elsewhere; "
            "faust's consumer cannot be made to read committed records only"
        )
    consumer._isolation_level = CONSUMER_ISOLATION
    return consumer


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        return _read_committed(super()._create_worker_consumer(transport))

    def _create_client_consumer(self, transport: Any) -> Any:
        return _read_committed(super()._create_client_consumer(transport))


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ReadCommittedConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class BatchHandler(Protocol):
    async def handle(self, messages: Sequence[SourceMessage]) -> object: ...


def attach_pipeline(app: faust.App, options: StreamOptions, pipeline: BatchHandler) -> None:
    """Subscribe one agent to the events topic feeding the pipeline.

    Faust acknowledges a batch only after `handle` returned. If `handle` raises, the
    process exits at once with status 70: letting faust unwind would acknowledge
    messages nobody persisted (its batching acknowledges on the way out).
    """
    topic = app.topic(
        options.events_topic,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )

    async def meter(stream: Any) -> None:
        async for events in stream.take_events(
            options.batch.max_events, within=options.batch.max_seconds
        ):
            try:
                await pipeline.handle([_source_message(event.message) for event in events])
            except Exception as error:
                log.critical(
                    "pipeline failed; exiting without acknowledging the batch",
                    extra={"error": type(error).__name__, "error_message": str(error)[:500]},
                )
                logging.shutdown()
                os._exit(70)

    app.agent(topic, name="govmeter.meter", concurrency=1)(meter)


def _source_message(message: Any) -> SourceMessage:
    value = message.value
    if value is None:
        value = b""
    return SourceMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=bytes(value),
    )


async def send_acknowledged(
    app: faust.App, topic: str, messages: Sequence[tuple[bytes | None, bytes]]
) -> None:
    """Send every (key, value) with the app's producer; return once all are acknowledged."""
    producer = app.producer
    pending = [await producer.send(topic, key, value, None, None, None) for key, value in messages]
    await producer.flush()
    for delivery in pending:
        await delivery


class FaustDeadLetterPublisher:
    """Publishes dead letters with the app's producer and waits for every ack."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self._app = app
        self._topic = topic

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        await send_acknowledged(
            self._app, self._topic, [(letter.key, letter.value) for letter in letters]
        )
