"""`metering correct void|amend`: validate a correction, publish it, wait for the ack.

The command never writes the store: it publishes ONE record on the corrections topic
(METERING_CORRECTIONS_TOPIC) and prints the correction's id once the broker has
acknowledged it. The worker that owns the store applies it exactly once
(streams/corrections.py). A retry with the same `--correction-id` is applied once.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, date, datetime
from typing import Any, Final

from kafka import KafkaProducer
from kafka.errors import KafkaError

from metering.kafka_config import kafka_python_options
from metering.settings import Settings
from metering.topics import KafkaUnavailableError, ensure_topics
from schemas.corrections import CorrectionRecord, encode_correction, validate_correction

__all__ = [
    "add_correct_command",
    "publish_correction",
    "record_from_arguments",
    "run_correct",
]

_SCOPE_HELP: Final = (
    "one event (--event-id) or an agency's events in [--from, --to) (--agency): a range "
    "covers the events counted when the worker applies the correction; an event of "
    "that range counted later is not covered"
)

_AMEND_FLAGS: Final = ("agency_id", "agency_level", "tokens_in", "tokens_out")


def add_correct_command(commands: Any) -> None:
    correct = commands.add_parser(
        "correct", help="void or amend counted events (published, applied by the worker)"
    )
    actions = correct.add_subparsers(dest="correct_action", required=True)
    void = actions.add_parser("void", help="void events: they stop counting anywhere")
    amend = actions.add_parser(
        "amend", help="amend events' agency, level or token counts (validated like an event)"
    )
    for parser in (void, amend):
        parser.add_argument(
            "--bootstrap-servers",
            dest="kafka_bootstrap_servers",
            help="env KAFKA_BOOTSTRAP_SERVERS",
        )
        parser.add_argument(
            "--corrections-topic",
            dest="corrections_topic",
            help="env METERING_CORRECTIONS_TOPIC (default usage.corrections)",
        )
        scope = parser.add_argument_group("scope", _SCOPE_HELP)
        scope.add_argument("--event-id", help="the event_id of one counted event")
        scope.add_argument("--agency", help="an agency_id, with --from and --to")
        scope.add_argument(
            "--from", dest="range_from", help="RFC 3339 or YYYY-MM-DD (UTC), inclusive"
        )
        scope.add_argument("--to", dest="range_to", help="RFC 3339 or YYYY-MM-DD (UTC), exclusive")
        parser.add_argument("--reason", required=True, help="why (shown to auditors)")
        parser.add_argument("--requested-by", required=True, help="who asked for it")
        parser.add_argument("--approved-by", required=True, help="who approved it: another person")
        parser.add_argument(
            "--correction-id",
            help="a UUID to retry with (the same id is applied once); default: a new one",
        )
    amend.add_argument("--agency-id", help="the new agency_id")
    amend.add_argument("--agency-level", help="the new agency_level: federal, state or local")
    amend.add_argument("--tokens-in", type=int, help="the new tokens_in (0 to 1,000,000)")
    amend.add_argument("--tokens-out", type=int, help="the new tokens_out (0 to 1,000,000)")


def _moment(value: str | None) -> str | None:
    """A date alone is midnight UTC; anything else must be RFC 3339 (checked later)."""
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return value
    if len(value) != 10:
        return value
    return f"{day.isoformat()}T00:00:00.000Z"


def record_from_arguments(args: argparse.Namespace, now: datetime) -> CorrectionRecord:
    """The record the flags describe, validated; CorrectionError names every field."""
    wire: dict[str, Any] = {
        "kind": "govmeter.correction",
        "schema_version": 1,
        "correction_id": args.correction_id or str(uuid.uuid4()),
        "action": args.correct_action,
        "reason": args.reason,
        "requested_by": args.requested_by,
        "approved_by": args.approved_by,
        "requested_at": now.astimezone(UTC).isoformat(timespec="milliseconds"),
    }
    for name, value in (
        ("event_id", args.event_id),
        ("agency_id", args.agency),
        ("from", _moment(args.range_from)),
        ("to", _moment(args.range_to)),
    ):
        if value is not None:
            wire[name] = value
    if args.correct_action == "amend":
        wire["set"] = {
            name: getattr(args, name) for name in _AMEND_FLAGS if getattr(args, name) is not None
        }
    return validate_correction(wire)


def publish_correction(settings: Settings, record: CorrectionRecord) -> None:
    """Publish the record (key: its id) and return once the broker acknowledged it."""
    ensure_topics(settings)
    try:
        producer = KafkaProducer(
            **kafka_python_options(settings),
            acks="all",
            client_id="govmeter-correct",
            request_timeout_ms=15_000,
        )
    except KafkaError as error:
        raise KafkaUnavailableError(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}: no broker answered "
            f"({type(error).__name__}); the correction was not published"
        ) from None
    try:
        producer.send(
            settings.corrections_topic,
            value=encode_correction(record),
            key=record.correction_id.encode(),
        ).get(timeout=30)
    except KafkaError as error:
        raise KafkaUnavailableError(
            f"{settings.corrections_topic}: the broker did not acknowledge correction "
            f"{record.correction_id} ({type(error).__name__}); publish it again with "
            f"--correction-id {record.correction_id} (it is applied once)"
        ) from None
    finally:
        producer.close(timeout=10)


def run_correct(args: argparse.Namespace, settings: Settings) -> int:
    record = record_from_arguments(args, datetime.now(UTC))
    publish_correction(settings, record)
    print(record.correction_id)
    return 0
