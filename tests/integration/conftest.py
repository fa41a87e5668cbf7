"""Real services for integration tests: one local Kafka broker per test session.

The broker is started with the project's own `infra/kafka/start` on free ports, in a
temporary data directory, and stopped at the end. Set GOVMETER_TEST_KAFKA=host:port
to use a broker that is already running instead. Every test gets its own topics,
consumer group and embedded store (see `MeteringRun`).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, MeteringRun


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    existing = os.environ.get("GOVMETER_TEST_KAFKA")
    if existing:
        yield {"KAFKA_BOOTSTRAP_SERVERS": existing}
        return
    port, controller = _free_port(), _free_port()
    data_dir = tmp_path_factory.mktemp("kafka")
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_DATA_DIR": str(data_dir),
    }
    subprocess.run([str(ROOT / "infra/kafka/start")], env=env, check=True, timeout=600)
    try:
        yield {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_DATA_DIR": str(data_dir),
        }
    finally:
        subprocess.run([str(ROOT / "infra/kafka/stop")], env=env, check=False, timeout=120)


@pytest.fixture
def run(kafka_env: dict[str, str], tmp_path: Path) -> MeteringRun:
    return MeteringRun.fresh(kafka_env, tmp_path)
