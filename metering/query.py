"""`metering query SQL`: run SQL on the configured store and print the result."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from clickhouse_connect.driver.client import Client

from metering.text_table import text_table

__all__ = ["FORMATS", "format_result", "run_query"]

FORMATS = ("table", "csv", "json")


def run_query(client: Client, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    result = client.query(sql)
    return list(result.column_names), [tuple(row) for row in result.result_rows]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def format_result(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    plain_rows = [[_plain(v) for v in row] for row in rows]
    if fmt == "json":
        return orjson.dumps(
            [dict(zip(columns, row, strict=True)) for row in plain_rows],
            option=orjson.OPT_INDENT_2,
        ).decode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(plain_rows)
        return out.getvalue().rstrip("\n")
    numeric = [
        all(isinstance(r[i], (int, float, Decimal)) for r in plain_rows) and bool(plain_rows)
        for i in range(len(columns))
    ]
    return text_table(
        [str(c) for c in columns],
        [["" if v is None else str(v) for v in r] for r in plain_rows],
        numeric,
    )
