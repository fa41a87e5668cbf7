"""`metering query` output formats for a small fixed result."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from metering.query import FORMATS, format_result

COLUMNS = ["day", "agency_id", "messages", "note"]
ROWS = [
    (date(2026, 11, 1), "dept-1", 12, None),
    (date(2026, 11, 2), "a,b", 3, 'say "hi"'),
]


def test_formats() -> None:
    assert FORMATS == ("table", "csv", "json")


def test_csv() -> None:
    assert format_result(COLUMNS, ROWS, "csv") == (
        'day,agency_id,messages,note\n2026-11-01,dept-1,12,\n2026-11-02,"a,b",3,"say ""hi"""'
    )


def test_json() -> None:
    text = format_result(COLUMNS, ROWS, "json")
    assert json.loads(text) == [
        {"day": "2026-11-01", "agency_id": "dept-1", "messages": 12, "note": None},
        {"day": "2026-11-02", "agency_id": "a,b", "messages": 3, "note": 'say "hi"'},
    ]
    assert text.startswith('[\n  {\n    "day": "2026-11-01",\n')


def test_table_left_aligns_text_and_right_aligns_numbers() -> None:
    assert format_result(COLUMNS, ROWS, "table") == (
        "day         agency_id  messages  note\n"
        "----------  ---------  --------  --------\n"
        "2026-11-01  dept-1           12\n"
        '2026-11-02  a,b               3  say "hi"'
    )


def test_table_of_no_rows_is_header_and_rule() -> None:
    assert format_result(["agency_id", "messages"], [], "table") == (
        "agency_id  messages\n---------  --------"
    )


def test_empty_csv_and_json() -> None:
    assert format_result(["agency_id"], [], "csv") == "agency_id"
    assert format_result(["agency_id"], [], "json") == "[]"


def test_json_plain_values() -> None:
    columns = ["received_at", "event_id", "amount", "raw"]
    rows = [
        (
            datetime(2026, 11, 1, 1, 30, 0, 123456, tzinfo=UTC),
            UUID("7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10"),
            Decimal("1.50"),
            b"dept-\xff",
        )
    ]
    assert json.loads(format_result(columns, rows, "json")) == [
        {
            "received_at": "2026-11-01T01:30:00.123+00:00",
            "event_id": "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10",
            "amount": "1.50",
            "raw": "dept-\ufffd",
        }
    ]
    assert format_result(columns, rows, "csv") == (
        "received_at,event_id,amount,raw\n"
        "2026-11-01T01:30:00.123+00:00,7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10,1.50,dept-\ufffd"
    )
