"""Field rules of the usage event, wire format v1 (CONTRACT section 1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.events import UsageEvent, parse_rfc3339
from schemas.rejections import Reason, Rejection, classify

EVENT_ID = "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10"

BASE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": EVENT_ID,
    "occurred_at": "2026-11-02T14:03:12.345Z",
    "tenant": "chatgpt-gov",
    "agency_id": "dept-of-energy",
    "agency_level": "federal",
    "user_id": "u-1",
    "conversation_id": "c-1",
    "model": "gpt-4o",
    "tokens_in": 120,
    "tokens_out": 480,
}

CONTRACT_FIELDS = {
    "schema_version",
    "event_id",
    "occurred_at",
    "tenant",
    "agency_id",
    "agency_level",
    "user_id",
    "conversation_id",
    "model",
    "tokens_in",
    "tokens_out",
    "feature",
}

_MISSING = object()


def raw_event(**changes: Any) -> bytes:
    document = dict(BASE)
    for name, value in changes.items():
        if value is _MISSING:
            document.pop(name, None)
        else:
            document[name] = value
    return json.dumps(document).encode()


def accepted(**changes: Any) -> UsageEvent:
    outcome = classify(raw_event(**changes))
    assert isinstance(outcome, UsageEvent), outcome
    return outcome


def rejected(**changes: Any) -> Rejection:
    outcome = classify(raw_event(**changes))
    assert isinstance(outcome, Rejection), outcome
    return outcome


def assert_violation(field: str, **changes: Any) -> None:
    outcome = rejected(**changes)
    assert outcome.reason is Reason.SCHEMA_VIOLATION
    assert outcome.detail.startswith(f"{field}: ")


def test_base_event_is_valid_with_every_field_as_sent() -> None:
    event = accepted()
    assert event.model_dump() == {
        "schema_version": 1,
        "event_id": EVENT_ID,
        "occurred_at": datetime(2026, 11, 2, 14, 3, 12, 345000, tzinfo=UTC),
        "tenant": "chatgpt-gov",
        "agency_id": "dept-of-energy",
        "agency_level": "federal",
        "user_id": "u-1",
        "conversation_id": "c-1",
        "model": "gpt-4o",
        "tokens_in": 120,
        "tokens_out": 480,
        "feature": "chat",
    }


# --- tokens_in / tokens_out -------------------------------------------------------


@pytest.mark.parametrize("field", ["tokens_in", "tokens_out"])
@pytest.mark.parametrize("value", [0, 1_000_000])
def test_token_counts_at_the_bounds_are_accepted(field: str, value: int) -> None:
    assert getattr(accepted(**{field: value}), field) == value


@pytest.mark.parametrize("field", ["tokens_in", "tokens_out"])
@pytest.mark.parametrize("value", [-1, 1_000_001, 10**30])
def test_token_counts_out_of_range_are_schema_violations(field: str, value: int) -> None:
    assert_violation(field, **{field: value})


@pytest.mark.parametrize("field", ["tokens_in", "tokens_out"])
@pytest.mark.parametrize("value", ["12", True, False, 12.0, 12.5, None, [12]])
def test_token_counts_must_be_json_integers(field: str, value: Any) -> None:
    assert_violation(field, **{field: value})


# --- tenant -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "a" * 64, "chatgpt-gov", "0-9", "-"])
def test_tenant_accepts_lower_case_digits_and_hyphens_up_to_64(value: str) -> None:
    assert accepted(tenant=value).tenant == value


@pytest.mark.parametrize(
    "value", ["", "a" * 65, "ChatGPT-Gov", "chatgpt_gov", "chatgpt gov", "gov\n"]
)
def test_tenant_outside_its_pattern_is_a_schema_violation(value: str) -> None:
    assert_violation("tenant", tenant=value)


# --- agency_id --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "7", "0-dept", "dept-", "d" * 64])
def test_agency_id_accepts_alnum_first_then_hyphens_up_to_64(value: str) -> None:
    assert accepted(agency_id=value).agency_id == value


@pytest.mark.parametrize("value", ["", "-dept", "Dept", "dept_1", "d" * 65, "dépt"])
def test_agency_id_outside_its_pattern_is_a_schema_violation(value: str) -> None:
    assert_violation("agency_id", agency_id=value)


# --- agency_level -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["federal", "state", "local"])
def test_agency_level_accepts_the_three_levels(value: str) -> None:
    assert accepted(agency_level=value).agency_level == value


@pytest.mark.parametrize("value", ["Federal", "county", "", 1, None])
def test_agency_level_anything_else_is_a_schema_violation(value: Any) -> None:
    assert_violation("agency_level", agency_level=value)


# --- user_id / conversation_id / model ---------------------------------------------


@pytest.mark.parametrize(
    ("field", "longest"), [("user_id", 128), ("conversation_id", 128), ("model", 64)]
)
def test_string_ids_accept_one_to_max_characters(field: str, longest: int) -> None:
    assert getattr(accepted(**{field: "x"}), field) == "x"
    assert getattr(accepted(**{field: "x" * longest}), field) == "x" * longest
    # Characters, not bytes: a multi-byte character counts once.
    assert getattr(accepted(**{field: "é" * longest}), field) == "é" * longest


@pytest.mark.parametrize(
    ("field", "longest"), [("user_id", 128), ("conversation_id", 128), ("model", 64)]
)
def test_string_ids_empty_or_too_long_are_schema_violations(field: str, longest: int) -> None:
    assert_violation(field, **{field: ""})
    assert_violation(field, **{field: "x" * (longest + 1)})


@pytest.mark.parametrize("field", ["user_id", "conversation_id", "model", "tenant", "agency_id"])
@pytest.mark.parametrize("value", [12, None, True, ["x"]])
def test_string_fields_must_be_json_strings(field: str, value: Any) -> None:
    assert_violation(field, **{field: value})


# --- required fields, feature, extra fields ----------------------------------------


@pytest.mark.parametrize("field", sorted(CONTRACT_FIELDS - {"feature", "schema_version"}))
def test_every_required_field_missing_is_a_schema_violation(field: str) -> None:
    outcome = rejected(**{field: _MISSING})
    assert outcome.reason is Reason.SCHEMA_VIOLATION
    assert outcome.detail == f"{field}: Field required"


def test_feature_defaults_to_chat_and_keeps_a_given_value() -> None:
    assert accepted().feature == "chat"
    assert accepted(feature="canvas").feature == "canvas"


@pytest.mark.parametrize("value", [None, 1, True])
def test_feature_present_but_not_a_string_is_a_schema_violation(value: Any) -> None:
    assert_violation("feature", feature=value)


def test_unknown_extra_fields_are_ignored_and_not_kept() -> None:
    event = accepted(region="us-east", future_field={"nested": [1, 2]}, tokens_cached=5)
    assert set(event.model_dump()) == CONTRACT_FIELDS
    assert not hasattr(event, "region")
    assert event.model_extra in (None, {})


# --- event_id ---------------------------------------------------------------------


def test_event_id_is_canonicalised_to_lower_case_hyphenated() -> None:
    assert accepted(event_id=EVENT_ID.upper()).event_id == EVENT_ID
    assert accepted(event_id=EVENT_ID.replace("-", "")).event_id == EVENT_ID


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "",
        EVENT_ID[:-1],
        EVENT_ID + "0",
        "{" + EVENT_ID + "}",
        "urn:uuid:" + EVENT_ID,
        EVENT_ID.replace("d", "g", 1),
        12,
        None,
    ],
)
def test_event_id_that_is_not_a_uuid_is_a_schema_violation(value: Any) -> None:
    assert_violation("event_id", event_id=value)


# --- occurred_at ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "utc"),
    [
        ("2026-11-02T14:03:12.345Z", datetime(2026, 11, 2, 14, 3, 12, 345000, tzinfo=UTC)),
        ("2026-11-02T14:03:12Z", datetime(2026, 11, 2, 14, 3, 12, tzinfo=UTC)),
        ("2026-11-02T14:03:12+00:00", datetime(2026, 11, 2, 14, 3, 12, tzinfo=UTC)),
        ("2026-10-31T20:30:00-05:00", datetime(2026, 11, 1, 1, 30, tzinfo=UTC)),
        ("2026-11-01T01:30:00+02:00", datetime(2026, 10, 31, 23, 30, tzinfo=UTC)),
        ("2026-12-31T23:30:00-01:00", datetime(2027, 1, 1, 0, 30, tzinfo=UTC)),
        ("2026-03-01T05:15:00+05:45", datetime(2026, 2, 28, 23, 30, tzinfo=UTC)),
    ],
)
def test_occurred_at_offsets_are_converted_to_utc(wire: str, utc: datetime) -> None:
    occurred_at = accepted(occurred_at=wire).occurred_at
    assert occurred_at == utc
    assert occurred_at.utcoffset() is not None
    assert occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("wire", "utc"),
    [
        ("2026-10-31T23:59:59.9999Z", datetime(2026, 10, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("2026-10-31T23:59:59.999999999Z", datetime(2026, 10, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("2026-10-31T18:59:59.99951-05:00", datetime(2026, 10, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("2026-11-02T14:03:12.1Z", datetime(2026, 11, 2, 14, 3, 12, 100000, tzinfo=UTC)),
        ("2026-11-02T14:03:12.123456Z", datetime(2026, 11, 2, 14, 3, 12, 123000, tzinfo=UTC)),
    ],
)
def test_occurred_at_sub_millisecond_digits_are_truncated_not_rounded(
    wire: str, utc: datetime
) -> None:
    assert accepted(occurred_at=wire).occurred_at == utc


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-02T14:03:12",  # no offset
        "2026-11-02T14:03:12.345",  # no offset
        "2026-11-02",  # date only
        "2026-11-02T14:03Z",  # no seconds
        "2026-11-02T14:03:12+0500",  # offset without colon
        "2026-11-02T14:03:12+05",  # offset without minutes
        "2026-11-02T14:03:12+24:00",  # offset out of range
        "2026-02-30T14:03:12Z",  # no such day
        "2026-11-02T25:03:12Z",  # no such hour
        "1700000000",
        "",
        1_700_000_000,
        None,
    ],
)
def test_occurred_at_without_explicit_offset_or_malformed_is_a_schema_violation(
    value: Any,
) -> None:
    assert_violation("occurred_at", occurred_at=value)


def test_parse_rfc3339_returns_utc_at_millisecond_precision() -> None:
    parsed = parse_rfc3339("2026-10-31T20:30:00.123987-05:00")
    assert parsed == datetime(2026, 11, 1, 1, 30, 0, 123000, tzinfo=UTC)
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "\u0662\u0660\u0662\u0666-11-02T14:03:12Z",  # Arabic-Indic digits for the year
        "\uff12\uff10\uff12\uff16-11-02T14:03:12Z",  # full-width digits for the year
        "2026-11-02T14:03:12.\u0663Z",  # Arabic-Indic fraction digit
    ],
)
def test_occurred_at_with_non_ascii_digits_is_a_schema_violation(value: str) -> None:
    assert_violation("occurred_at", occurred_at=value)


# --- schema_version ---------------------------------------------------------------


def test_schema_version_1_is_accepted() -> None:
    assert accepted(schema_version=1).schema_version == 1


def test_missing_schema_version_is_a_schema_violation() -> None:
    outcome = rejected(schema_version=_MISSING)
    assert outcome.reason is Reason.SCHEMA_VIOLATION
    assert outcome.detail == "schema_version: Field required"


@pytest.mark.parametrize("value", [2, 0, -1, "1", True, 1.5, 1.0, None])
def test_schema_version_present_and_not_1_is_unsupported(value: Any) -> None:
    assert rejected(schema_version=value).reason is Reason.UNSUPPORTED_SCHEMA_VERSION


def test_model_is_strict_when_validated_directly() -> None:
    document = dict(BASE, tokens_in="12")
    with pytest.raises(ValueError, match="tokens_in"):
        UsageEvent.model_validate(document)
