"""Migrations on an embedded (chDB) store: idempotent, recorded, and the contract views."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from store import connect
from store.ledger import Ledger
from store.ledger.sql import apply_rollup_sql
from store.migrations import MigrationError, apply_migrations, load_migrations

DAY_COLUMNS = [
    ("tenant", "String"),
    ("agency_id", "String"),
    ("agency_level", "String"),
    ("messages", "UInt64"),
    ("tokens_in", "UInt64"),
    ("tokens_out", "UInt64"),
    ("active_users", "UInt64"),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path}/ch")
    try:
        yield store
    finally:
        store.close()


def columns(client: Client, view: str) -> list[tuple[str, str]]:
    return [
        (str(row[0]), str(row[1])) for row in client.query(f"DESCRIBE TABLE {view}").result_rows
    ]


def test_apply_twice_records_each_file_once_and_creates_the_contract_views(
    client: Client,
) -> None:
    expected = load_migrations()
    first = apply_migrations(client)
    assert [m.version for m in first] == [m.version for m in expected]
    assert apply_migrations(client) == []

    recorded = client.query(
        "SELECT version, name, checksum FROM metering.schema_versions ORDER BY version"
    ).result_rows
    assert [tuple(row) for row in recorded] == [(m.version, m.name, m.checksum) for m in expected]

    assert columns(client, "metering.agency_daily") == [("day", "Date"), *DAY_COLUMNS]
    assert columns(client, "metering.agency_monthly") == [("month", "Date"), *DAY_COLUMNS]
    assert columns(client, "metering.monthly_totals") == [
        ("month", "Date"),
        ("tenant", "String"),
        ("agencies", "UInt64"),
        ("active_users", "UInt64"),
        ("messages", "UInt64"),
        ("tokens_in", "UInt64"),
        ("tokens_out", "UInt64"),
    ]

    rejected = dict(columns(client, "metering.rejected_events"))
    assert rejected["received_at"].startswith("DateTime64(3")
    assert rejected["reason"] in ("String", "LowCardinality(String)")
    assert rejected["event_id"] == "Nullable(String)"
    assert rejected["agency_id"] == "Nullable(String)"

    # Fresh store, nothing counted: the views read as empty.
    for view in ("agency_daily", "agency_monthly", "monthly_totals", "rejected_events"):
        assert client.query(f"SELECT count() FROM metering.{view}").result_rows == [(0,)]


def test_changed_migration_checksum_is_an_error(client: Client) -> None:
    assert len(apply_migrations(client)) == len(load_migrations())
    client.command(
        "ALTER TABLE metering.schema_versions UPDATE checksum = 'x' WHERE version = 1 "
        "SETTINGS mutations_sync=2"
    )
    with pytest.raises(MigrationError, match="0001_"):
        apply_migrations(client)


def test_report_rollups_are_backfilled_once_from_the_daily_rollups(client: Client) -> None:
    # A store from before 0006: daily rollups with data, no report rollups yet.
    apply_migrations(client)
    users = "arrayJoin(['u-1', 'u-2', 'u-3'])"
    client.command(
        "INSERT INTO metering.agency_daily_rollup SELECT day, 'chatgpt-gov', agency, 'state', "
        f"1, 10, 20, uniqExactState(u) FROM (SELECT toDate('2026-10-30') + number AS day, "
        f"if(number % 2 = 0, 'state-a', 'state-b') AS agency, {users} AS u FROM numbers(4)) "
        "GROUP BY day, agency"
    )
    client.command(
        "INSERT INTO metering.model_daily_rollup SELECT day, 'chatgpt-gov', 'o3', 'chat', "
        f"'state-a', 'state', 2, 5, 6, uniqExactState(u) FROM (SELECT toDate('2026-10-31') + "
        f"number AS day, {users} AS u FROM numbers(2)) GROUP BY day"
    )
    for table in ("agency_monthly_rollup", "model_monthly_rollup", "tenant_daily_rollup"):
        client.command(f"TRUNCATE TABLE metering.{table}")
    client.command("DELETE FROM metering.schema_versions WHERE version = 6")

    assert [m.version for m in apply_migrations(client)] == [6]
    report_rollups = next(m for m in load_migrations() if m.version == 6)
    for statement in report_rollups.statements():  # once more: nothing is added twice
        client.command(statement)

    monthly = client.query(
        "SELECT toString(month), agency_id, sum(messages), sum(tokens_in), "
        "uniqExactMerge(users) FROM metering.agency_monthly_rollup GROUP BY ALL ORDER BY ALL"
    ).result_rows
    assert [tuple(r) for r in monthly] == [
        ("2026-10-01", "state-a", 1, 10, 3),
        ("2026-10-01", "state-b", 1, 10, 3),
        ("2026-11-01", "state-a", 1, 10, 3),
        ("2026-11-01", "state-b", 1, 10, 3),
    ]
    models = client.query(
        "SELECT toString(month), model, agency_id, sum(messages), sum(tokens_out), "
        "uniqExactMerge(users) FROM metering.model_monthly_rollup GROUP BY ALL ORDER BY ALL"
    ).result_rows
    assert [tuple(r) for r in models] == [
        ("2026-10-01", "o3", "state-a", 2, 6, 3),
        ("2026-11-01", "o3", "state-a", 2, 6, 3),
    ]
    days = client.query(
        "SELECT toString(day), sum(messages), uniqExactMerge(agencies), uniqExactMerge(users) "
        "FROM metering.tenant_daily_rollup GROUP BY ALL ORDER BY ALL"
    ).result_rows
    assert [tuple(r) for r in days] == [
        ("2026-10-30", 1, 1, 3),
        ("2026-10-31", 1, 1, 3),
        ("2026-11-01", 1, 1, 3),
        ("2026-11-02", 1, 1, 3),
    ]


def test_a_flush_folded_half_before_the_upgrade_is_counted_once_in_the_new_rollups(
    client: Client,
) -> None:
    # A store from before 0006 whose worker died between folding flush 1 into
    # agency_daily_rollup and folding it into model_daily_rollup.
    apply_migrations(client)
    for table in ("agency_monthly_rollup", "model_monthly_rollup", "tenant_daily_rollup"):
        client.command(f"DROP TABLE metering.{table}")
    client.command("DELETE FROM metering.schema_versions WHERE version = 6")
    client.command(
        "INSERT INTO metering.counted_events (event_id, occurred_at, tenant, agency_id, "
        "agency_level, user_id, conversation_id, model, feature, tokens_in, tokens_out, "
        "topic, partition, offset, flush_seq, ingested_at) SELECT generateUUIDv4(number), "
        "toDateTime64('2026-11-02 10:00:00', 3, 'UTC'), 'chatgpt-gov', 'state-a', 'state', "
        "concat('u-', toString(number % 3)), 'c-1', 'o3', 'chat', 10, 20, 'events', 0, number, "
        "1, now64(3) FROM numbers(5)"
    )
    client.command(
        "INSERT INTO metering.flush_ledger (flush_seq, topic, partition, first_offset, "
        "last_offset, messages, counted, duplicates, rejected, worker, writer_no, "
        "committed_at) VALUES (1, 'events', 0, 0, 4, 5, 5, 0, 0, 'old', 1, now())"
    )
    client.command(apply_rollup_sql("agency_daily_rollup", 1), parameters={"flush_seq": 1})

    assert [m.version for m in apply_migrations(client)] == [6]
    assert Ledger(client).unapplied_flushes() == []  # folded before the migration ran

    expected = [("2026-11-01", 5, 50, 100, 3)]
    for table in ("agency_monthly_rollup", "model_monthly_rollup"):
        rows = client.query(
            "SELECT toString(month), sum(messages), sum(tokens_in), sum(tokens_out), "
            f"uniqExactMerge(users) FROM metering.{table} GROUP BY month"
        ).result_rows
        assert [tuple(r) for r in rows] == expected, table
    days = client.query(
        "SELECT toString(day), sum(messages), uniqExactMerge(users) "
        "FROM metering.tenant_daily_rollup GROUP BY day"
    ).result_rows
    assert [tuple(r) for r in days] == [("2026-11-02", 5, 3)]
    models = client.query("SELECT sum(messages) FROM metering.model_daily_rollup").result_rows
    assert models[0][0] == 5
