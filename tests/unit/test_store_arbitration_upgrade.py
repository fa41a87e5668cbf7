"""A store counted by a release before store arbitration (migration 0012), migrated by
this one: older writers are refused from then on, the counts go on exactly, and what
the older release left (committed flushes, staged rows of a crashed flush) is handled.

The older release is reproduced as it wrote the store: its bookkeeping table
`metering.schema_migrations`, migrations 0001 to 0011, and its ledger inserts (no
commit_seq, no writer_no). Also here: a store migrated by a newer release, and a store
whose tables cannot arbitrate (no deduplication window)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from metering.verify import verify_store
from store import connect
from store.ledger import Janitor, Ledger
from store.ledger.chain import chain_sha256
from store.migrations import (
    LEGACY_QUIET_SECONDS,
    MigrationError,
    OlderWritersActiveError,
    apply_migrations,
    load_migrations,
)
from store.writers import FlushNumbers, flush_number, writer_of_flush
from store.writers.checks import ArbitrationUnavailableError, check_arbitration
from streams.sink import ClickHouseSink, counted_events_table, flush_content_sha256
from tests.unit import test_sink_protocol as protocol
from tests.unit.registered import register_writer
from tests.unit.test_sink_several_writers import batch, events, views_of

TOPIC = protocol.TOPIC
LEGACY_BOOKKEEPING = (
    "CREATE DATABASE IF NOT EXISTS metering",
    "CREATE TABLE IF NOT EXISTS metering.schema_migrations "
    "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) "
    "ENGINE = MergeTree ORDER BY version",
)
LEGACY_LEDGER_COLUMNS = (
    "flush_seq, topic, partition, first_offset, last_offset, messages, counted, "
    "duplicates, rejected, worker, committed_at, content_sha256, chain_sha256"
)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path / 'ch'}")
    yield store
    store.close()


def migrate_as_the_older_release(client: Client) -> None:
    for statement in LEGACY_BOOKKEEPING:
        client.command(statement)
    for migration in load_migrations():
        if migration.version >= 12:
            break
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            "metering.schema_migrations",
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )


def flush_as_the_older_release(
    client: Client, seq: int, first: int, numbers: list[int], *, at: str, commit: bool = True
) -> str:
    """One flush of partition 0 as a writer before 0012 made it: staged rows tagged with
    flush_seq `seq`, then (if `commit`) its ledger row, chained; returns the chain."""
    flushed = batch(events(0, first, numbers), {})
    now = datetime.now(UTC)
    client.insert_arrow("metering.counted_events", counted_events_table(flushed.valid, seq, now))
    if not commit:
        return ""
    ranges = [replace(r, counted=len(numbers)) for r in flushed.ranges.values()]
    content = flush_content_sha256(flushed.valid, [], ranges)
    previous = client.query(
        "SELECT chain_sha256 FROM metering.flush_ledger ORDER BY flush_seq DESC LIMIT 1"
    ).result_rows
    chain = chain_sha256(str(previous[0][0]) if previous else "", content)
    last = first + len(numbers) - 1
    client.command(
        f"INSERT INTO metering.flush_ledger ({LEGACY_LEDGER_COLUMNS}) VALUES "
        f"({seq}, '{TOPIC}', 0, {first}, {last}, {len(numbers)}, {len(numbers)}, 0, 0, "
        f"'old-host-123', {at}, '{content}', '{chain}')"
    )
    Ledger(client).apply(seq, corrections_term=None)
    return chain


A_MINUTE_AGO = f"now64(3) - INTERVAL {LEGACY_QUIET_SECONDS + 30} SECOND"


def test_an_older_store_is_migrated_and_older_writers_are_refused_from_then_on(
    client: Client,
) -> None:
    migrate_as_the_older_release(client)
    flush_as_the_older_release(client, 1, 0, [0, 1, 2], at=A_MINUTE_AGO)
    flush_as_the_older_release(client, 2, 3, [3, 4], at=A_MINUTE_AGO)
    # The older release crashed in flush 3, after staging, before its commit.
    flush_as_the_older_release(client, 3, 5, [5, 6], at=A_MINUTE_AGO, commit=False)

    latest = load_migrations()[-1].version  # 0012 and every migration after it
    assert [m.version for m in apply_migrations(client)] == list(range(12, latest + 1))
    versions = client.query("SELECT version FROM metering.schema_versions ORDER BY version")
    assert [int(r[0]) for r in versions.result_rows] == list(range(1, latest + 1))
    engine = client.query(
        "SELECT engine FROM system.tables WHERE database = 'metering' "
        "AND name = 'schema_migrations'"
    ).result_rows
    assert engine == [("View",)]
    check_arbitration(client)

    # An older release stops at its first start: it reads the record it knows.
    with pytest.raises(Exception, match="this release of govmeter predates that"):
        client.query("SELECT version, checksum FROM metering.schema_migrations")
    # One still running is refused at its next commit, named by the constraint.
    with pytest.raises(
        Exception, match="only_registered_writers_commit__upgrade_older_govmeter_writers"
    ):
        client.command(
            f"INSERT INTO metering.flush_ledger ({LEGACY_LEDGER_COLUMNS}) VALUES "
            f"(4, '{TOPIC}', 0, 7, 7, 1, 1, 0, 0, 'old-host-123', now64(3), '', '')"
        )

    # The older commits are commits 1 and 2; a writer of this release goes on at 3,
    # chained to them, and counts offset 5 on (the crashed flush never counted).
    rows = client.query(
        "SELECT flush_seq, commit_seq, writer_no FROM metering.flush_ledger ORDER BY commit_seq"
    ).result_rows
    assert [tuple(r) for r in rows] == [(1, 1, 0), (2, 2, 0)]
    writer = register_writer(client)
    numbers = FlushNumbers(writer, clock_ms=lambda: 5_000)  # 5 s after 2025-01-01
    sink = ClickHouseSink(
        Ledger(client), protocol.Letters(), writer_no=writer, worker="new", flush_numbers=numbers
    )
    result = asyncio.run(sink.flush(batch(events(0, 5, [5, 6, 2]), {(TOPIC, 0): 5})))
    sink.close()
    assert (result.commit_seq, result.counted, result.duplicates) == (3, 2, 1)
    # Its number is of this release's form (the older numbers 1 and 2 move nothing).
    assert result.flush_seq == flush_number(writer, 5_000) == (1 << 62) + (5_000 << 22) + writer
    assert writer_of_flush(result.flush_seq) == writer
    # The older release's staged rows can never commit now: its range is counted.
    assert Janitor(Ledger(client)).delete_orphans() == (3,)
    assert protocol._views(client) == views_of([0, 1, 2, 3, 4, 5, 6])
    verified = verify_store(client)
    assert verified.ok, verified.flush_failures + verified.rollup_failures
    assert (verified.flushes, verified.chained) == (3, 3)
    # Migrating again changes nothing.
    assert apply_migrations(client) == []


def test_the_store_is_not_migrated_while_an_older_writer_commits(client: Client) -> None:
    migrate_as_the_older_release(client)
    flush_as_the_older_release(client, 1, 0, [0, 1], at="now64(3)")
    with pytest.raises(OlderWritersActiveError) as refused:
        apply_migrations(client)
    message = str(refused.value)
    assert "'old-host-123' committed flush 1 at " in message
    assert f"once none has committed for {LEGACY_QUIET_SECONDS} s" in message
    # Nothing changed: the older release still reads its record.
    assert client.query("SELECT count() FROM metering.schema_migrations").result_rows == [(11,)]
    assert "schema_versions" in {
        str(r[0]) for r in client.query("SHOW TABLES FROM metering").result_rows
    }


def test_a_store_migrated_by_a_newer_release_is_refused(client: Client) -> None:
    apply_migrations(client)
    client.insert(
        "metering.schema_versions",
        [[99, "from_the_future", "x", datetime.now(UTC)]],
        column_names=["version", "name", "checksum", "applied_at"],
    )
    with pytest.raises(MigrationError, match="migration 99, newer than this release knows"):
        apply_migrations(client)


def test_a_ledger_that_keeps_no_tokens_cannot_arbitrate(client: Client) -> None:
    apply_migrations(client)
    client.command(
        "ALTER TABLE metering.flush_ledger MODIFY SETTING non_replicated_deduplication_window = 0"
    )
    with pytest.raises(ArbitrationUnavailableError) as refused:
        check_arbitration(client)
    assert str(refused.value) == (
        "this store cannot arbitrate between writers, so this writer writes nothing (two "
        "writers could both believe they committed the same flush number):\n  "
        "metering.flush_ledger keeps no deduplication tokens (non_replicated_deduplication_"
        "window is 0 or unset): run `ALTER TABLE metering.flush_ledger MODIFY SETTING "
        "non_replicated_deduplication_window = 10000`"
    )
