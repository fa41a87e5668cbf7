"""The ledger is never ahead of its data: a store that lost its newest parts, as a power
loss leaves it (the server stopped, the parts' directories gone from disk), is repaired
from Kafka by the next worker, or the loss is recorded and certify fails naming it.

Expectations are the golden file of the standard corpus, exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition

from tests.integration.harness import CORPUS, MeteringRun, expected
from tests.integration.test_codecs import bootstrap
from tests.integration.test_transactions import end_offsets

pytestmark = pytest.mark.integration


def golden_views() -> dict[str, list[dict[str, Any]]]:
    golden = expected()
    return {view: golden[view] for view in ("agency_daily", "agency_monthly", "monthly_totals")}


def views_match(run: MeteringRun) -> list[str]:
    problems = []
    for view, rows in golden_views().items():
        got = run.views()[view]
        got = [{key: row[key] for key in rows[0]} for row in got] if rows else got
        if got != rows:
            problems.append(f"{view}: {len(got)} rows, expected {len(rows)}")
    return problems


def newest_part(run: MeteringRun, table: str) -> tuple[str, Path, int]:
    """(name, directory, rows) of the table's newest active part, read with the server
    stopped (no network user reads system.parts) by the engine itself, merges stopped."""
    _, rows = run.store.offline(
        f"SYSTEM STOP MERGES metering.{table}",
        "SELECT name, path, rows FROM system.parts WHERE database = 'metering' "
        f"AND table = '{table}' AND active ORDER BY modification_time DESC, name DESC LIMIT 1",
    )
    assert rows, f"metering.{table} has no part"
    return str(rows[0]["name"]), Path(str(rows[0]["path"])), int(rows[0]["rows"])


def lose_newest_parts(run: MeteringRun, *tables: str) -> dict[str, int]:
    """What a power loss does to parts written since the last sync: the server goes
    down, and their directories are not on disk when it comes back."""
    run.store.stop()
    parts = {table: newest_part(run, table) for table in tables}
    for _, path, _ in parts.values():
        shutil.rmtree(path)
    run.store.start()
    return {table: rows for table, (_, _, rows) in parts.items()}


def months(run: MeteringRun) -> list[str]:
    rows = run.query(
        "SELECT DISTINCT toString(toStartOfMonth(occurred_at)) AS month "
        "FROM metering.counted_events ORDER BY month"
    )
    return [str(row["month"])[:7] for row in rows]


def counted_run(kafka_env: dict[str, str], tmp_path: Path) -> MeteringRun:
    run = MeteringRun.fresh(kafka_env, tmp_path)
    run.replay(CORPUS)
    first = run.worker(until_idle=1.0)
    assert first.returncode == 0, first.stderr[-3000:]
    assert views_match(run) == []
    return run


def test_parts_lost_by_a_power_loss_are_read_again_from_kafka(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = counted_run(kafka_env, tmp_path)
    golden = expected()
    lost = lose_newest_parts(run, "counted_events", "agency_daily_rollup")
    assert lost["counted_events"] > 0 and lost["agency_daily_rollup"] > 0
    counted = run.query("SELECT count() AS n FROM metering.counted_events")[0]["n"]
    assert int(counted) == golden["valid_counted"] - lost["counted_events"]

    verified = run.metering("verify")
    assert verified.returncode == 1, verified.stdout
    assert "rows of a committed flush are missing: start `metering worker`" in verified.stdout
    assert verified.stdout.rstrip().endswith("NOT VERIFIED")

    again = run.worker(until_idle=1.0)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "repaired a flush from Kafka" in output
    assert "the rollups differ from the counted events; rebuilding them" in output
    assert views_match(run) == []
    counted = run.query("SELECT count() AS n FROM metering.counted_events")[0]["n"]
    assert int(counted) == golden["valid_counted"]
    assert int(run.query("SELECT count() AS n FROM metering.lost_ranges")[0]["n"]) == 0
    verified = run.metering("verify")
    assert verified.returncode == 0, verified.stdout[-2000:]
    assert verified.stdout.rstrip().endswith("\nverified")
    for month in months(run):
        certified = run.metering("certify", "--month", month)
        assert certified.returncode == 0, certified.stdout[-2000:]
        assert json.loads(certified.stdout)["complete"] is True

    # A start on a whole store repairs nothing.
    quiet = run.worker(until_idle=1.0)
    assert quiet.returncode == 0
    assert "repaired a flush" not in quiet.stdout + quiet.stderr


def test_a_lost_range_kafka_no_longer_holds_is_recorded_and_fails_certify(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = counted_run(kafka_env, tmp_path)
    topic = run.env["METERING_EVENTS_TOPIC"]
    ends = end_offsets(run, topic, "read_uncommitted")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(run))
    try:
        admin.delete_records({TopicPartition(topic, p): end for p, end in ends.items() if end})
    finally:
        admin.close()
    lose_newest_parts(run, "counted_events")

    again = run.worker(until_idle=1.0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "a damaged range is lost" in again.stdout + again.stderr
    lost = run.query(
        "SELECT topic, partition, first_offset, last_offset, events_lost, reason "
        "FROM metering.lost_ranges ORDER BY partition, first_offset"
    )
    assert lost, "no lost range recorded"
    assert all(str(row["topic"]) == topic for row in lost)
    assert all(
        str(row["reason"]).startswith("not read again: the broker no longer holds") for row in lost
    )
    missing = run.query(
        "SELECT (SELECT sum(counted) FROM metering.flush_ledger) - "
        "(SELECT count() FROM metering.counted_events) AS n"
    )[0]["n"]
    assert sum(int(row["events_lost"]) for row in lost) == int(missing) > 0
    for month in months(run):
        certified = run.metering("certify", "--month", month)
        assert certified.returncode == 1
        inequalities = json.loads(certified.stdout)["inequalities"]
        named = [i for i in inequalities if i.startswith(f"store: lost {topic}[")]
        assert len(named) == len(lost), inequalities
