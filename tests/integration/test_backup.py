"""Backups with ClickHouse's own BACKUP and RESTORE, and a recovery point of zero lost
events: a store restored from last night's backup counts the rest again from Kafka.

Every expectation is computed from the events the test sends (never "greater than
zero"): the contract views of 60,000 simulated events, with a correction applied."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.harness import FAST_REBALANCE_ENV, MeteringRun
from tests.integration.test_transactions import Message, expected_views

pytestmark = pytest.mark.integration


def simulate(run: MeteringRun, name: str, messages: int, start: str, seed: int) -> Path:
    out = run.workdir / f"{name}.jsonl"
    result = run.metering(
        "simulate",
        "--messages",
        str(messages),
        "--start",
        start,
        "--days",
        "1",
        "--seed",
        str(seed),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def lines_of(path: Path) -> list[Message]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        events = [json.loads(line) for line in handle if line.strip()]
    return [Message(None, json.dumps(e).encode(), event=e) for e in events]


def assert_views(run: MeteringRun, messages: list[Message]) -> None:
    want = expected_views(messages)
    got = run.views()
    for view, rows in want.items():
        assert rows, view
        shown = [{key: row[key] for key in rows[0]} for row in got[view]]
        assert shown == rows, f"{view}: {len(shown)} rows, {len(rows)} expected"


def backup_set(run: MeteringRun, name: str = "nightly") -> Path:
    """A set inside the local server's backups directory (CLICKHOUSE_BACKUP_DIR)."""
    return Path(run.store.env["CLICKHOUSE_DATA_DIR"] + "-backups") / name


def take_backup(run: MeteringRun, *extra: str) -> str:
    result = run.metering("backup", "--to", str(backup_set(run)), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def lose_the_store(run: MeteringRun) -> None:
    """The disk is gone: the server stops, its data directory is deleted, an empty
    server starts in its place (same ports and users)."""
    run.store.stop()
    shutil.rmtree(run.store.env["CLICKHOUSE_DATA_DIR"])
    run.store.start()


def assert_evidence(run: MeteringRun) -> None:
    verified = run.metering("verify")
    assert verified.returncode == 0, verified.stdout[-2000:]
    assert verified.stdout.rstrip().endswith("\nverified")
    months = run.query(
        "SELECT DISTINCT toString(toStartOfMonth(occurred_at)) AS m FROM metering.counted_events"
    )
    for row in months:
        certified = run.metering("certify", "--month", str(row["m"])[:7])
        assert certified.returncode == 0, certified.stdout[-2000:]


def test_a_restored_store_counts_the_rest_from_kafka(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path)
    first = simulate(run, "first", 40_000, "2026-11-02", 1)
    later = simulate(run, "later", 20_000, "2026-11-03", 2)
    sent = lines_of(first) + lines_of(later)
    assert len({m.event["event_id"] for m in sent if m.event}) == 60_000  # the reference

    run.replay(first)
    assert run.worker(until_idle=1.0).returncode == 0
    assert_views(run, lines_of(first))
    said = take_backup(run)
    assert "(full)" in said
    run.replay(later)
    assert run.worker(until_idle=1.0).returncode == 0
    assert_views(run, sent)

    lose_the_store(run)
    restored = run.metering("restore", "--from", str(backup_set(run)))
    assert restored.returncode == 0, restored.stderr
    assert "to count again" in restored.stdout  # what Kafka must still hold
    counted = run.query("SELECT sum(counted) AS n FROM metering.flush_ledger")[0]["n"]
    assert int(counted) == 40_000
    again = run.worker(until_idle=1.0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_views(run, sent)
    counted = run.query("SELECT count() AS n FROM metering.counted_events")[0]["n"]
    assert int(counted) == 60_000
    assert_evidence(run)

    # Restoring again into the same, now non-empty store is refused.
    refused = run.metering("restore", "--from", str(backup_set(run)))
    assert refused.returncode == 1
    assert "the store is not empty" in refused.stderr


def test_an_incremental_backup_after_a_correction_restores_it(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path)
    day = simulate(run, "day", 5_000, "2026-11-04", 3)
    sent = lines_of(day)
    run.replay(day)
    assert run.worker(until_idle=1.0).returncode == 0
    assert "(full)" in take_backup(run)
    voided = sent[123].event
    assert voided is not None
    result = run.metering(
        "correct", "void", "--event-id", voided["event_id"], "--reason", "sent in error",
        "--requested-by", "ana.billing", "--approved-by", "ben.cfo",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert run.worker(until_idle=1.0).returncode == 0
    corrected = [m for m in sent if m.event is not voided]
    assert_views(run, corrected)
    said = take_backup(run, "--keep", "2")
    assert "(incremental on " in said

    lose_the_store(run)
    restored = run.metering("restore", "--from", str(backup_set(run)))
    assert restored.returncode == 0, restored.stderr
    applied = run.query("SELECT count() AS n FROM metering.corrections_applied")[0]["n"]
    assert int(applied) == 1
    assert_views(run, corrected)
    assert run.worker(until_idle=1.0).returncode == 0
    assert_views(run, corrected)
    assert_evidence(run)


def test_a_backup_that_does_not_match_its_manifest_is_refused(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path)
    day = simulate(run, "day", 2_000, "2026-11-05", 4)
    run.replay(day)
    assert run.worker(until_idle=1.0).returncode == 0
    take_backup(run)
    (backup,) = [p for p in backup_set(run).iterdir() if p.is_dir()]
    manifest = json.loads((backup / "manifest.json").read_text())
    victim = sorted(manifest["files"])[len(manifest["files"]) // 2]
    path = backup / "clickhouse" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    lose_the_store(run)
    refused = run.metering("restore", "--from", str(backup))
    assert refused.returncode == 1
    assert f"{path}: sha256" in refused.stderr and "is not restored" in refused.stderr
    tables = run.query("SELECT count() AS n FROM system.tables WHERE database = 'metering'")
    assert int(tables[0]["n"]) == 0  # nothing was restored


def test_a_backup_taken_while_a_worker_counts_restores_consistently(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path)
    day = simulate(run, "day", 30_000, "2026-11-06", 5)
    sent = lines_of(day)
    run.replay(day)
    worker = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker", "--until-idle", "2"],
        env={**run.env, **FAST_REBALANCE_ENV, "METERING_BATCH_MAX_EVENTS": "500"},
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    committed = threading.Event()

    def watch() -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            if "flush committed" in line:
                committed.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        assert committed.wait(120), "the worker committed nothing"
        take_backup(run)  # while it counts
        assert worker.wait(timeout=240) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        reader.join(10)
    backed = json.loads(
        next(p for p in backup_set(run).iterdir() if p.is_dir())
        .joinpath("manifest.json")
        .read_text()
    )
    final = int(run.query("SELECT max(commit_seq) AS n FROM metering.flush_ledger")[0]["n"])
    # Taken while it counted: after some commits, before the last one.
    assert 0 < backed["ledger"]["before"]["head"] <= backed["ledger"]["after"]["head"] < final
    lose_the_store(run)
    assert run.metering("restore", "--from", str(backup_set(run))).returncode == 0
    assert run.worker(until_idle=1.0).returncode == 0
    assert_views(run, sent)
    assert_evidence(run)
