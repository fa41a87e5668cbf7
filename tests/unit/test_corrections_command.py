"""`metering correct`: what the command refuses before anything is published, and the
record's bytes on the topic."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from metering.corrections import record_from_arguments
from metering.corrections.command import add_correct_command
from schemas.corrections import CorrectionError, decode_correction, encode_correction

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
EVENT = "6edd6472-28ef-47a7-8540-b6dede320459"
PEOPLE = ["--reason", "sent twice", "--requested-by", "ana", "--approved-by", "ben"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_correct_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["correct", *argv])


def _refusal(*argv: str) -> str:
    with pytest.raises(CorrectionError) as raised:
        record_from_arguments(_args(*argv), NOW)
    return str(raised.value)


def test_a_void_of_one_event_is_a_record_with_its_own_id() -> None:
    record = record_from_arguments(_args("void", "--event-id", EVENT, *PEOPLE), NOW)
    assert uuid.UUID(record.correction_id).version == 4
    assert orjson.loads(encode_correction(record)) == {
        "kind": "govmeter.correction",
        "schema_version": 1,
        "correction_id": record.correction_id,
        "action": "void",
        "event_id": EVENT,
        "reason": "sent twice",
        "requested_by": "ana",
        "approved_by": "ben",
        "requested_at": "2026-12-01T09:30:00.000Z",
    }
    assert decode_correction(encode_correction(record)) == record


def test_a_range_amend_with_a_given_id_round_trips() -> None:
    given = str(uuid.uuid4())
    record = record_from_arguments(
        _args(
            "amend", "--agency", "fed-gsa", "--from", "2026-10-30", "--to",
            "2026-10-31T12:00:00-05:00", "--agency-id", "fed-va", "--agency-level", "federal",
            "--tokens-in", "0", "--correction-id", given.upper(), *PEOPLE,
        ),
        NOW,
    )  # fmt: skip
    wire = orjson.loads(encode_correction(record))
    assert wire["correction_id"] == given
    assert (wire["agency_id"], wire["from"], wire["to"]) == (
        "fed-gsa",
        "2026-10-30T00:00:00.000Z",
        "2026-10-31T17:00:00.000Z",
    )
    assert wire["set"] == {"agency_id": "fed-va", "agency_level": "federal", "tokens_in": 0}
    assert (
        record.scope == "agency fed-gsa from 2026-10-30T00:00:00.000Z to 2026-10-31T17:00:00.000Z"
    )
    assert encode_correction(decode_correction(encode_correction(record))) == encode_correction(
        record
    )


def test_the_requester_cannot_approve_their_own_correction() -> None:
    problem = _refusal(
        "void", "--event-id", EVENT, "--reason", "r", "--requested-by", "Ana",
        "--approved-by", " ana ",
    )  # fmt: skip
    assert "approved_by: must be a different person from requested_by" in problem


def test_an_event_id_or_a_range_is_required_and_not_both() -> None:
    assert "event_id: required, or else agency_id, from and to" in _refusal("void", *PEOPLE)
    assert "event_id: required" in _refusal("void", "--agency", "fed-gsa", *PEOPLE)
    both = _refusal(
        "void", "--event-id", EVENT, "--agency", "fed-gsa", "--from", "2026-10-01",
        "--to", "2026-11-01", *PEOPLE,
    )  # fmt: skip
    assert "not both" in both
    backwards = _refusal(
        "void", "--agency", "fed-gsa", "--from", "2026-11-01", "--to", "2026-10-01", *PEOPLE
    )
    assert "to: must be later than from" in backwards


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--tokens-in", "1000001"], "set.tokens_in"),
        (["--tokens-out", "-1"], "set.tokens_out"),
        (["--agency-id", "Not An Id"], "set.agency_id"),
        (["--agency-level", "county"], "set.agency_level"),
    ],
)
def test_new_values_follow_the_event_schema_and_name_their_field(
    argv: list[str], field: str
) -> None:
    assert _refusal("amend", "--event-id", EVENT, *argv, *PEOPLE).startswith(f"{field}: ")


def test_bad_ids_times_and_an_empty_amendment_are_refused() -> None:
    assert "event_id: " in _refusal("void", "--event-id", "12", *PEOPLE)
    assert "correction_id: " in _refusal(
        "void", "--event-id", EVENT, "--correction-id", "retry-1", *PEOPLE
    )
    assert "from: must be RFC 3339" in _refusal(
        "void", "--agency", "fed-gsa", "--from", "2026-10-01T00:00", "--to", "2026-11-01", *PEOPLE
    )
    assert "set: an amendment needs at least one new value" in _refusal(
        "amend", "--event-id", EVENT, *PEOPLE
    )


def test_a_record_read_from_the_topic_is_validated_without_echoing_values() -> None:
    with pytest.raises(CorrectionError, match="not JSON"):
        decode_correction(b"{nope")
    with pytest.raises(CorrectionError) as raised:
        decode_correction(orjson.dumps({"correction_id": str(uuid.uuid4()), "reason": "secret"}))
    assert "secret" not in str(raised.value)
    assert "action: Field required" in str(raised.value)
