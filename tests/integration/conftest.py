"""Real services for integration tests: one local Kafka broker per test session.

The broker is started with the project's own `infra/kafka/start` on free ports, in a
temporary data directory, and stopped at the end. Set GOVMETER_TEST_KAFKA=host:port
to use a broker that is already running instead. Every test gets its own topics,
consumer group and its own local ClickHouse server (see `MeteringRun`), stopped
when the test ends (a module's shared run: when the session ends).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, STARTED_SERVERS, MeteringRun, StoreServer
from tests.integration.harness import free_port as _free_port


def _stop_all(servers: list[StoreServer]) -> None:
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_store_servers_at_the_end() -> Iterator[None]:
    yield
    _stop_all(STARTED_SERVERS)


@pytest.fixture(autouse=True)
def _stop_the_tests_own_store_servers() -> Iterator[None]:
    before = len(STARTED_SERVERS)
    yield
    _stop_all(STARTED_SERVERS[before:])
    del STARTED_SERVERS[before:]


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
