"""Several workers on one events topic: processors relay, one store owner writes.

Three processor processes share a six-partition topic; one is SIGKILLed mid-stream;
its partitions move to the others. The store owner's views must equal the golden
expectation exactly.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import pytest

from tests.integration.harness import CORPUS, MeteringRun
from tests.integration.test_exactly_once import assert_exact

pytestmark = pytest.mark.integration

RELAY_ENV = {
    "METERING_BATCH_MAX_EVENTS": "50",
    "METERING_BATCH_MAX_SECONDS": "0.2",
    "METERING_SESSION_TIMEOUT_SECONDS": "6",
}


def start_role(run: MeteringRun, role: str, until_idle: float | None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "metering.cli", "worker", "--role", role]
    if until_idle is not None:
        args += ["--until-idle", str(until_idle)]
    return subprocess.Popen(
        args,
        env={
            **run.env,
            **RELAY_ENV,
            "METERING_RELAY_TOPIC": run.env["METERING_EVENTS_TOPIC"] + ".relay",
        },
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _first_to_log(
    processes: list[subprocess.Popen[str]], needle: str, timeout: float = 120
) -> subprocess.Popen[str]:
    """The first process whose output contains `needle` (outputs are read in threads)."""
    found: queue.Queue[subprocess.Popen[str]] = queue.Queue()

    def watch(process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        announced = False
        for line in process.stdout:
            if needle in line and not announced:
                announced = True
                found.put(process)

    for process in processes:
        threading.Thread(target=watch, args=(process,), daemon=True).start()
    return found.get(timeout=timeout)


def test_three_processors_one_killed_and_one_store_owner_are_exact(
    kafka_env: dict[str, str], tmp_path: object
) -> None:
    from pathlib import Path

    run = MeteringRun.fresh(kafka_env, Path(str(tmp_path)), partitions=6)
    run.replay(CORPUS)
    processors = [start_role(run, "processor", until_idle=None) for _ in range(3)]
    owner = start_role(run, "store-owner", until_idle=4.0)
    try:
        victim = _first_to_log(processors, "batch relayed")
        victim.send_signal(signal.SIGKILL)
        output, _ = owner.communicate(timeout=240)
        assert owner.returncode == 0, output[-3000:]
    finally:
        for process in processors:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processors:
            process.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert_exact(run)
