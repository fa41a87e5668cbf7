"""Retention of raw records, apart from the rollups kept for billing.

`counted_events` (one row per counted event: the deduplication index and the raw
record reconciliation reads) and `rejections_log` expire after
METERING_RAW_RETENTION_DAYS (default 400). The rollups have no TTL: billed numbers
stay. The setting cannot go below 35 days because the same table is the memory of
which event ids were counted: a duplicate arriving after its original expired would
be counted again, and billing peers accept backdating of up to 35 days.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

__all__ = ["RAW_TABLES", "apply_retention", "retention_clause"]

RAW_TABLES = {
    "metering.counted_events": "ingested_at",
    "metering.rejections_log": "received_at",
}


def retention_clause(column: str, days: int) -> str:
    return f"toDateTime({column}) + toIntervalDay({int(days)})"


def apply_retention(client: Client, days: int, cluster: str | None = None) -> None:
    """Set (or change) the TTL of the raw tables; idempotent."""
    on_cluster = f" ON CLUSTER '{cluster}'" if cluster else ""
    for table, column in RAW_TABLES.items():
        client.command(
            f"ALTER TABLE {table}{on_cluster} MODIFY TTL {retention_clause(column, days)}",
            settings={"materialize_ttl_after_modify": 0},
        )
