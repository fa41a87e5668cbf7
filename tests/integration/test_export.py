"""`metering export`: the golden corpus's October as Parquet and CSV, read back and held
against the golden views and the recorded statement, with a manifest that describes
each file exactly."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.integration.harness import CORPUS, MeteringRun, expected

pytestmark = pytest.mark.integration

OCTOBER = "2026-10"


@pytest.fixture(scope="module")
def billed(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> MeteringRun:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("export"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    result = run.metering("bill", "--month", OCTOBER, "--format", "json")
    assert result.returncode == 0, result.stderr
    return run


def _golden(view: str, key: str) -> list[dict[str, Any]]:
    return [row for row in expected()[view] if str(row[key]).startswith(OCTOBER)]


def _manifest(out: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["name"]
        assert entry["bytes"] == len(data)
    return manifest


def _as_golden(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Dates as ISO text and integers as int, the shape of expected.json."""
    return [
        {k: (v.isoformat() if isinstance(v, date) else v) for k, v in row.items()} for row in rows
    ]


def test_parquet_export_equals_the_views_and_the_statement(
    billed: MeteringRun, tmp_path: Path
) -> None:
    out = tmp_path / "parquet"
    result = billed.metering("export", "--month", OCTOBER, "--format", "parquet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = _manifest(out)
    assert manifest["period"] == {
        "label": OCTOBER,
        "kind": "month",
        "start": "2026-10-01",
        "end_exclusive": "2026-11-01",
    }
    by_name = {entry["name"]: entry for entry in manifest["files"]}
    assert list(by_name) == [
        "agency_daily",
        "agency_monthly",
        "monthly_totals",
        "statement_lines",
        "rejection_counts",
    ]

    for view, key in (("agency_daily", "day"), ("agency_monthly", "month")):
        table = pq.read_table(out / f"{view}.parquet")
        assert table.num_rows == by_name[view]["rows"]
        assert [c["name"] for c in by_name[view]["columns"]] == table.column_names
        golden = sorted(
            _golden(view, key),
            key=lambda r: (r[key], r["tenant"], r["agency_id"], r["agency_level"]),
        )
        assert _as_golden(table.to_pylist(), key) == [
            {c: row[c] for c in table.column_names} for row in golden
        ], view
    totals = pq.read_table(out / "monthly_totals.parquet").to_pylist()
    golden_totals = sorted(_golden("monthly_totals", "month"), key=lambda r: r["tenant"])
    assert _as_golden(totals, "month") == [{c: row[c] for c in totals[0]} for row in golden_totals]

    lines = pq.read_table(out / "statement_lines.parquet").to_pylist()
    recorded = billed.query(
        "SELECT tenant, agency_id, messages, toString(charge_usd) AS charge FROM "
        "metering.billing_lines ORDER BY tenant, agency_id"
    )
    assert [
        {
            "tenant": line["tenant"],
            "agency_id": line["agency_id"],
            "messages": line["messages"],
            "charge": Decimal(line["charge_usd"]),
        }
        for line in lines
    ] == [{**row, "charge": Decimal(row["charge"])} for row in recorded]
    assert len(lines) == len(_golden("agency_monthly", "month"))

    rejections = pq.read_table(out / "rejection_counts.parquet").to_pylist()
    in_view = billed.query(
        "SELECT toDate(received_at) AS day, reason, count() AS rejected "
        "FROM metering.rejected_events WHERE toDate(received_at) >= '2026-10-01' "
        "AND toDate(received_at) < '2026-11-01' GROUP BY day, reason ORDER BY day, reason"
    )
    assert [
        {"day": r["day"].isoformat(), "reason": r["reason"], "rejected": r["rejected"]}
        for r in rejections
    ] == in_view


def test_csv_export_holds_the_same_rows(billed: MeteringRun, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    result = billed.metering("export", "--month", OCTOBER, "--format", "csv", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = _manifest(out)
    with (out / "agency_daily.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    entry = next(e for e in manifest["files"] if e["name"] == "agency_daily")
    assert entry["rows"] == len(rows) == len(_golden("agency_daily", "day"))
    assert sum(int(r["messages"]) for r in rows) == sum(
        r["messages"] for r in _golden("agency_daily", "day")
    )


def test_an_agency_export_holds_only_that_agency(billed: MeteringRun, tmp_path: Path) -> None:
    agency = _golden("agency_monthly", "month")[0]["agency_id"]
    out = tmp_path / "agency"
    result = billed.metering(
        "export", "--month", OCTOBER, "--out", str(out), "--agency", str(agency)
    )
    assert result.returncode == 0, result.stderr
    manifest = _manifest(out)
    assert [e["name"] for e in manifest["files"]] == [
        "agency_daily",
        "agency_monthly",
        "statement_lines",
    ]
    daily = pq.read_table(out / "agency_daily.parquet").to_pylist()
    assert {row["agency_id"] for row in daily} == {agency}
    assert len(daily) == len(
        [r for r in _golden("agency_daily", "day") if r["agency_id"] == agency]
    )
