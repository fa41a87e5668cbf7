"""A first start is quiet: on a broker that has just started, `metering replay` and
`metering worker` log no warning or error for the broker's start-up transients (its
coordinators' topics created and loaded on first use), while the same transients are
reported once they last (`METERING_LOG_TRANSIENT_SECONDS`, here 0). On a terminal the
worker's bar shows its flushes instead of one line each; the JSON logs keep the lines.

Each fresh-broker test starts a broker of its own (`infra/kafka/start` on free ports,
its own data directory), even when GOVMETER_TEST_KAFKA names one: the transients
happen only on a broker's first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import CORPUS, ROOT, MeteringRun, free_port

pytestmark = pytest.mark.integration

# The kinds of metering.logs.TRANSIENTS, as the `transient` field names them.
KNOWN_TRANSIENTS = {
    "group coordinator not available",
    "idempotent producer id not available",
}
LEADER_TOPIC = "faust leader topic not created yet: "


@pytest.fixture
def fresh_kafka(tmp_path: Path) -> Iterator[dict[str, str]]:
    port, controller = free_port(), free_port()
    data_dir = tmp_path / "kafka"
    env = {
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_DATA_DIR": str(data_dir),
    }
    script_env = {**os.environ, **env}
    subprocess.run([str(ROOT / "infra/kafka/start")], env=script_env, check=True, timeout=600)
    try:
        yield {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", **env}
    finally:
        subprocess.run([str(ROOT / "infra/kafka/stop")], env=script_env, check=False, timeout=120)


def _entries(stderr: str) -> list[dict[str, Any]]:
    """Every JSON line; the only other lines are `Progress`'s plain ones."""
    entries = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
        else:
            assert re.fullmatch(r"(replay|worker): [\d,]+ \w+, [\d,]+/s, [\d,.]+s.*", line), line
    return entries


def _start_fresh(run: MeteringRun, extra_env: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    """replay then worker, at once on the fresh broker: (their JSON lines, worker's stdout)."""
    env = {"METERING_LOG_FORMAT": "json", **extra_env}
    replay = run.metering("replay", str(CORPUS), extra_env=env)
    assert replay.returncode == 0, replay.stderr[-3000:]
    worker = run.metering("worker", "--until-idle", "1", extra_env=env)
    assert worker.returncode == 0, worker.stderr[-3000:]
    return _entries(replay.stderr) + _entries(worker.stderr), worker.stdout


def _flushes(summary: str) -> int:
    found = re.search(r"flushes (\d+)", summary)
    assert found, summary
    return int(found.group(1))


def test_a_first_start_on_a_fresh_broker_logs_no_warning(
    fresh_kafka: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(fresh_kafka, tmp_path)
    entries, summary = _start_fresh(run, {})
    # The exact set of levels: info only (debug is not written at the default level).
    loud = [(e["level"], e["logger"], e["msg"]) for e in entries if e["level"] != "info"]
    assert loud == []
    assert not [e for e in entries if "transient" in e]
    # The JSON logs keep one `flush committed` line per flush.
    flush_lines = [e for e in entries if e["msg"] == "flush committed"]
    assert len(flush_lines) == _flushes(summary) >= 1
    for info in ("created topics", "store ready", "worker consuming", "worker stopped"):
        assert any(e["msg"] == info for e in entries), info


def test_the_same_transients_are_reported_once_they_last(
    fresh_kafka: dict[str, str], tmp_path: Path
) -> None:
    """With METERING_LOG_TRANSIENT_SECONDS=0 every transient has lasted long enough: the
    fresh broker's transients are reported at their own level, each named; nothing
    else is."""
    run = MeteringRun.fresh(fresh_kafka, tmp_path)
    entries, _ = _start_fresh(run, {"METERING_LOG_TRANSIENT_SECONDS": "0"})
    loud = [e for e in entries if e["level"] != "info"]
    assert loud, "a fresh broker had no start-up transient"
    for entry in loud:
        assert entry["level"] in ("warning", "error"), entry
        kind = entry["transient"]
        assert kind in KNOWN_TRANSIENTS or kind.startswith(LEADER_TOPIC), entry
        assert entry["lasting_seconds"] >= 0 and entry["held_back"] == 0
    kinds = {e["transient"] for e in loud}
    # The broker creates __consumer_offsets on the first group coordinator lookup and
    # answers "not available" meanwhile: the worker's first lookup always sees it.
    assert "group coordinator not available" in kinds
    coordinator = next(e for e in loud if e["transient"] == "group coordinator not available")
    assert coordinator["level"] == "error"
    assert coordinator["logger"].startswith("aiokafka")


def _on_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal of 120 columns: (status, terminal, stdout)."""
    main, side = os.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=side
    )
    os.close(side)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO once the process closed its side
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        reader.join(timeout=10)
        os.close(main)
    return process.returncode, b"".join(chunks).decode(errors="replace"), stdout.decode()


def test_on_a_terminal_the_bar_shows_the_flushes_instead_of_lines(run: MeteringRun) -> None:
    run.replay(CORPUS)
    env = {**run.env, "METERING_LOG_FORMAT": "auto"}
    status, terminal, summary = _on_a_terminal(
        [sys.executable, "-m", "metering.cli", "worker", "--until-idle", "1"], env, run.workdir
    )
    assert status == 0, terminal[-3000:]
    flushes = _flushes(summary)
    assert flushes >= 1
    assert "flush committed" not in terminal
    assert re.search(rf"flushes={flushes} counted=\S+ dup=\S+ rejected=\S+ last=[\d.]+s", terminal)
    # Readable lines (auto on a terminal), and the worker's other info lines stay.
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} info +worker +worker consuming", terminal)
    assert re.search(r"info +worker +worker stopped", terminal)
    assert '"level"' not in terminal
