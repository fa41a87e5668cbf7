"""Exactly once under crashes, restarts, store outages and broker restarts.

Every test ends by comparing all contract views with the golden expectation and the
rejection counts exactly; a single event lost or counted twice fails it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from tests.integration.harness import CORPUS, ROOT, MeteringRun, expected

pytestmark = pytest.mark.integration

SMALL_BATCHES = {
    "METERING_BATCH_MAX_EVENTS": "600",
    "METERING_BATCH_MAX_SECONDS": "0.2",
    "METERING_SESSION_TIMEOUT_SECONDS": "6",
}


def assert_exact(run: MeteringRun) -> None:
    golden = expected()
    views = run.views()
    for view in ("agency_daily", "agency_monthly", "monthly_totals"):
        got = [{k: row[k] for k in golden[view][0]} for row in views[view]]
        assert got == golden[view], view
    assert run.rejected_by_reason() == golden["rejected"]
    ledger = run.query("SELECT sum(messages) AS m FROM metering.flush_ledger")[0]["m"]
    assert ledger == golden["lines"]
    counted = run.query(
        "SELECT count() AS n, uniqExact(event_id) AS u FROM metering.counted_events"
    )
    assert counted == [{"n": golden["valid_counted"], "u": golden["valid_counted"]}]


def start_worker(run: MeteringRun, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker", "--until-idle", "1.0"],
        env={**run.env, **extra_env},
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_log(process: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"worker never logged {needle!r}:\n{''.join(lines)[-3000:]}")


@pytest.mark.parametrize(
    "step",
    [
        "after_lookup",
        "after_stage",
        "after_dead_letters",
        "after_commit",
        "after_apply_agency_daily_rollup",
        "after_apply",
    ],
)
def test_sigkill_at_each_step_boundary_then_restart_is_exact(run: MeteringRun, step: str) -> None:
    run.replay(CORPUS)
    crashed = run.worker(extra_env={**SMALL_BATCHES, "METERING_FAULT_CRASH": f"{step}@2"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    finished = run.worker(extra_env=SMALL_BATCHES)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_exact(run)


def test_random_sigkills_then_restart_is_exact(run: MeteringRun) -> None:
    rng = random.Random(20261129)
    run.replay(CORPUS)
    for _ in range(3):
        process = start_worker(run, SMALL_BATCHES)
        wait_for_log(process, "worker consuming")
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finished = run.worker(extra_env=SMALL_BATCHES)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_exact(run)


def test_store_outage_is_retried_and_exact(run: MeteringRun) -> None:
    run.replay(CORPUS)
    result = run.worker(
        extra_env={**SMALL_BATCHES, "METERING_FAULT_STORE_OUTAGE": "2:2.5"}, until_idle=1.0
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "store step failed, retrying" in result.stderr
    assert "InjectedStoreOutage" in result.stderr
    assert_exact(run)


def test_a_new_store_counts_from_the_earliest_offset_whatever_the_group_committed(
    run: MeteringRun, tmp_path: Path
) -> None:
    """The store says what was counted: an empty one starts at the beginning of the topic,
    even when the consumer group's committed offsets already point at its end."""
    run.replay(CORPUS)
    first = run.worker()
    assert first.returncode == 0, first.stderr[-2000:]
    assert_exact(run)

    run.env["CLICKHOUSE_URL"] = f"chdb://{tmp_path / 'replacement-store'}"
    second = run.worker()
    assert second.returncode == 0, second.stderr[-2000:]
    assert_exact(run)


def test_no_offset_is_committed_past_what_the_store_holds(run: MeteringRun) -> None:
    """Kill the worker during a long store outage: Kafka's offsets must trail the ledger."""
    run.replay(CORPUS)
    process = start_worker(run, {**SMALL_BATCHES, "METERING_FAULT_STORE_OUTAGE": "3:60"})
    wait_for_log(process, "store step failed, retrying")
    time.sleep(3.0)  # several of faust's commit intervals pass during the outage
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)

    admin = KafkaAdminClient(bootstrap_servers=run.env["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    try:
        group = run.env["METERING_CONSUMER_GROUP"]
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    topic = run.env["METERING_EVENTS_TOPIC"]
    kafka_next = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic}
    ledger_next = {
        int(row["partition"]): int(row["next"])
        for row in run.query(
            "SELECT partition, max(last_offset) + 1 AS next FROM metering.flush_ledger "
            f"WHERE topic = '{topic}' GROUP BY partition"
        )
    }
    assert ledger_next, "two flushes were committed before the outage"
    for partition, offset in kafka_next.items():
        assert offset <= ledger_next.get(partition, 0), (partition, offset, ledger_next)

    finished = run.worker(extra_env=SMALL_BATCHES)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_exact(run)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker of this test's own, so restarting it disturbs no other test."""
    from tests.integration.harness import free_port as _free_port

    port, controller = _free_port(), _free_port()
    env = {
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
    }
    subprocess.run([str(ROOT / "infra/kafka/start")], env={**run_env(), **env}, check=True)
    yield env
    subprocess.run([str(ROOT / "infra/kafka/stop")], env={**run_env(), **env}, check=False)


def run_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_broker_restart_mid_stream_is_exact(own_broker: dict[str, str], tmp_path: Path) -> None:
    run = MeteringRun.fresh(own_broker, tmp_path)
    run.replay(CORPUS)
    process = start_worker(run, SMALL_BATCHES)
    wait_for_log(process, "flush committed")
    broker_env = {**run_env(), **own_broker}
    subprocess.run([str(ROOT / "infra/kafka/stop")], env=broker_env, check=True)
    time.sleep(2.0)
    subprocess.run([str(ROOT / "infra/kafka/start")], env=broker_env, check=True)
    process.communicate(timeout=240)
    if process.returncode != 0:
        # A supervisor restarts a worker that gave up on the broker; nothing may be lost.
        again = run.worker(extra_env=SMALL_BATCHES)
        assert again.returncode == 0, again.stderr[-2000:]
    assert_exact(run)
