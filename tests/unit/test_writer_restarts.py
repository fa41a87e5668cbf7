"""The `--processes` supervisor restarting writers a signal ended: the wait doubles while
they keep dying, and a stop signal during the wait starts nothing.

The writers here are tiny real processes that note when they started and SIGKILL
themselves; the supervisor runs in a process of its own, as `metering worker` does."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from metering.worker_processes import restart_delay

_REPO = Path(__file__).resolve().parents[2]

_DIES_AT_ONCE = """
import os, signal, sys, time
with open(sys.argv[1], "a") as starts:
    starts.write(f"{time.monotonic()}\\n")
os.kill(os.getpid(), signal.SIGKILL)
"""

_SUPERVISOR = """
import sys
from metering.settings import Settings
from metering.worker_processes import run_worker_processes
settings = Settings(CLICKHOUSE_URL="http://127.0.0.1:1")
sys.exit(run_worker_processes(settings, 1, ["worker"], command=sys.argv[1:]))
"""


def test_the_wait_doubles_up_to_a_minute_and_starts_over_after_a_long_run() -> None:
    waits = [0.0]
    for _ in range(8):
        waits.append(restart_delay(waits[-1], ran_seconds=0.5))
    assert waits[1:] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert restart_delay(60.0, ran_seconds=59.9) == 60.0
    assert restart_delay(60.0, ran_seconds=60.0) == 1.0
    assert restart_delay(0.0, ran_seconds=3600.0) == 1.0


def _starts(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(line) for line in path.read_text().split()]


def test_a_writer_that_keeps_dying_waits_longer_each_time_and_a_stop_cancels_its_restart(
    tmp_path: Path,
) -> None:
    starts_file = tmp_path / "starts"
    writer = tmp_path / "writer.py"
    writer.write_text(_DIES_AT_ONCE)
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    env.pop("METERING_HEALTH_PORT", None)
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, sys.executable, str(writer), str(starts_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(_starts(starts_file)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        starts = _starts(starts_file)
        assert len(starts) == 4, supervisor.stderr
        # The fourth start died too: the next restart waits 8 s. Stop meanwhile.
        time.sleep(0.5)
        supervisor.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        _, stderr = supervisor.communicate(timeout=10)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode == 0, stderr.decode()
    assert time.monotonic() - stopped < 3, "the stop waited for the pending restart"
    assert len(_starts(starts_file)) == 4, "a restart was started after the stop signal"
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    for gap, wait in zip(gaps, [1.0, 2.0, 4.0], strict=True):
        assert wait <= gap < wait + 1.5, (gaps, stderr.decode())
    deaths = [line for line in stderr.decode().splitlines() if "ended by a signal" in line]
    assert len(deaths) == 4, stderr.decode()
