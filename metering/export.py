"""`metering export`: one period's numbers in open formats, with a manifest.

An agency, an inspector general or a successor system takes the contract views, the
statement lines and the rejection counts of a period elsewhere, as Parquet or CSV
files written by ClickHouse's own output formats (the bytes the server sends are the
file; nothing is re-encoded here), and a `manifest.json` naming, per file, the query
it came from, its columns and ClickHouse types, its row count and its sha256.

Row counts are read from the written file itself (Parquet metadata, CSV lines), so the
manifest describes the file, even when a worker commits new late events meanwhile.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final, Literal

from clickhouse_connect.driver.client import Client

from metering.periods import Period

__all__ = ["EXPORTS", "ExportFormat", "ExportedFile", "export_period"]

ExportFormat = Literal["parquet", "csv"]

_CLICKHOUSE_FORMAT: Final = {"parquet": "Parquet", "csv": "CSVWithNames"}

# name -> SELECT over the period; {start} and {end} are bound as Date parameters. Each
# is ordered by its key, so the same store gives the same bytes.
EXPORTS: Final[dict[str, str]] = {
    "agency_daily": """
SELECT day, tenant, agency_id, agency_level, messages, tokens_in, tokens_out, active_users
FROM metering.agency_daily
WHERE day >= {start:Date} AND day < {end:Date} {agency_clause}
ORDER BY day, tenant, agency_id, agency_level
""",
    "agency_monthly": """
SELECT month, tenant, agency_id, agency_level, messages, tokens_in, tokens_out, active_users
FROM metering.agency_monthly
WHERE month >= {start:Date} AND month < {end:Date} {agency_clause}
ORDER BY month, tenant, agency_id, agency_level
""",
    "monthly_totals": """
SELECT month, tenant, agencies, active_users, messages, tokens_in, tokens_out
FROM metering.monthly_totals
WHERE month >= {start:Date} AND month < {end:Date}
ORDER BY month, tenant
""",
    # The lines of the period's latest recorded billing run (none: no file rows).
    "statement_lines": """
SELECT run_id, period, tenant, agency_id, agency_level, messages, tokens_in, tokens_out,
       active_users, plan, billable_units, charge_usd, list_value_usd,
       models, model_tokens_in, model_tokens_out
FROM metering.billing_lines
WHERE run_id = (
    SELECT argMax(run_id, version) FROM metering.billing_runs WHERE period = {label:String}
) {agency_clause}
ORDER BY tenant, agency_id, agency_level
""",
    "rejection_counts": """
SELECT toDate(received_at) AS day, reason, count() AS rejected
FROM metering.rejected_events
WHERE toDate(received_at) >= {start:Date} AND toDate(received_at) < {end:Date}
GROUP BY day, reason
ORDER BY day, reason
""",
}

# Rejections carry no trustworthy agency (the message was rejected); monthly totals
# are tenant wide. An agency export leaves both out.
_AGENCY_EXPORTS: Final = ("agency_daily", "agency_monthly", "statement_lines")


@dataclass(frozen=True)
class ExportedFile:
    name: str
    file: str
    rows: int
    sha256: str
    bytes: int
    columns: list[dict[str, str]]
    query: str


def export_period(
    client: Client,
    period: Period,
    out: Path,
    fmt: ExportFormat,
    agency: str | None = None,
    now: datetime | None = None,
) -> Path:
    """Write every export of the period into `out`; return the manifest's path."""
    out.mkdir(parents=True, exist_ok=True)
    names = _AGENCY_EXPORTS if agency is not None else tuple(EXPORTS)
    parameters: dict[str, object] = {
        "start": period.start,
        "end": period.end,
        "label": period.label,
    }
    if agency is not None:
        parameters["agency"] = agency
    files = [
        _export_one(client, name, _query(name, agency), parameters, out, fmt) for name in names
    ]
    manifest = {
        "period": {
            "label": period.label,
            "kind": period.kind,
            "start": period.start.isoformat(),
            "end_exclusive": period.end.isoformat(),
        },
        "agency": agency,
        "format": fmt,
        "clickhouse_format": _CLICKHOUSE_FORMAT[fmt],
        "created_at": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "windows": "UTC",
        "files": [asdict(f) for f in files],
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return path


def _query(name: str, agency: str | None) -> str:
    clause = "AND agency_id = {agency:String}" if agency is not None else ""
    return EXPORTS[name].replace("{agency_clause}", clause).strip()


def _export_one(
    client: Client,
    name: str,
    sql: str,
    parameters: dict[str, object],
    out: Path,
    fmt: ExportFormat,
) -> ExportedFile:
    path = out / f"{name}.{fmt}"
    digest = hashlib.sha256()
    size = 0
    stream = client.raw_stream(sql, parameters=parameters, fmt=_CLICKHOUSE_FORMAT[fmt])
    if not isinstance(stream, io.IOBase):  # the HTTP client returns the response body
        raise TypeError(f"{type(client).__name__}: raw_stream gave no byte stream")
    with stream, path.open("wb") as handle:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            handle.write(chunk)
    described = client.query(f"DESCRIBE ({sql})", parameters=parameters).result_rows
    columns = [{"name": str(row[0]), "type": str(row[1])} for row in described]
    return ExportedFile(
        name=name,
        file=path.name,
        rows=_rows_in(path, fmt),
        sha256=digest.hexdigest(),
        bytes=size,
        columns=columns,
        query=sql,
    )


def _rows_in(path: Path, fmt: ExportFormat) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if path.stat().st_size == 0:  # no rows: ClickHouse may send no file at all
            return 0
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.reader(handle))  # quoted newlines stay inside a row
    return max(0, rows - 1)  # the header line (CSVWithNames)


def _json_default(value: object) -> str:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"not serialisable: {type(value).__name__}")
