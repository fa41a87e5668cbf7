"""The ClickHouse side shared by the baselines and the read-back: one table, one query each.

Baselines write final (or, for quixstreams, latest-so-far) rows per agency-day into
`bench.agency_daily`, a ReplacingMergeTree keyed like the contract view, so a later row
of the same key replaces an earlier one; reading with FINAL gives one row per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import clickhouse_connect

__all__ = [
    "BENCH_COLUMNS",
    "READ_QUERIES",
    "ensure_bench_table",
    "insert_rows",
    "open_server",
    "open_store",
]

BENCH_COLUMNS: Final = (
    "day",
    "tenant",
    "agency_id",
    "agency_level",
    "messages",
    "tokens_in",
    "tokens_out",
    "active_users",
    "version",
)

_DDL: Final = (
    "CREATE DATABASE IF NOT EXISTS bench",
    """
    CREATE TABLE IF NOT EXISTS bench.agency_daily
    (
        day           Date,
        tenant        String,
        agency_id     String,
        agency_level  String,
        messages      UInt64,
        tokens_in     UInt64,
        tokens_out    UInt64,
        active_users  UInt64,
        version       UInt64
    )
    ENGINE = ReplacingMergeTree(version)
    ORDER BY (day, tenant, agency_id, agency_level)
    """,
)

_ROW: Final = (
    "toString(day), tenant, agency_id, agency_level, messages, tokens_in, tokens_out, active_users"
)

# source name -> query returning (day, tenant, agency_id, agency_level, messages, tokens_in,
# tokens_out, active_users), one row per agency-day
READ_QUERIES: Final = {
    "pipeline": f"SELECT {_ROW} FROM metering.agency_daily",
    "bench": f"SELECT {_ROW} FROM bench.agency_daily FINAL",
}


def open_store(path: Path) -> Any:
    """A clickhouse-connect client on an embedded chDB store (synchronous inserts)."""
    path.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(
        dsn=f"chdb://{path.resolve()}", settings={"async_insert": 0}
    )


def open_server(url: str) -> Any:
    """A clickhouse-connect client on a ClickHouse server (`http(s)://...`), opened as
    the project opens it (`store.connection.connect`: its settings, CLICKHOUSE_PASSWORD
    for a URL without one)."""
    from store.connection import connect

    return connect(url)


def ensure_bench_table(client: Any) -> None:
    for statement in _DDL:
        client.command(statement)


def insert_rows(client: Any, rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows shaped like `BENCH_COLUMNS` (day as a `date`)."""
    if rows:
        client.insert("bench.agency_daily", list(rows), column_names=list(BENCH_COLUMNS))
