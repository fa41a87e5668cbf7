"""Drive the real `metering` commands as subprocesses against real Kafka and a real
ClickHouse server: each run gets its own local server (`infra/clickhouse/start`, the
engine of the chdb wheel) on free ports, reached over HTTP as in production. Commands
sign in as its writer the way they do for anyone (`store.connection.store_login`: the
run's environment names the server directory, whose writer.password they read); so
does `StoreServer.client`. What no network user may do is done as the data directory's
owner, with the server stopped (`StoreServer.as_owner`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from store.connection import connect

ROOT = Path(__file__).resolve().parents[2]
# Every local server started by a run, so the session can stop what a test left.
STARTED_SERVERS: list[StoreServer] = []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class StoreServer:
    """One local ClickHouse server of `infra/clickhouse/`, driven by its own scripts."""

    env: dict[str, str]

    @classmethod
    def start_in(cls, data_dir: Path) -> StoreServer:
        server = cls(
            {
                "CLICKHOUSE_DATA_DIR": str(data_dir),
                "CLICKHOUSE_HTTP_PORT": str(free_port()),
                "CLICKHOUSE_TCP_PORT": str(free_port()),
            }
        )
        server.start()
        STARTED_SERVERS.append(server)
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['CLICKHOUSE_HTTP_PORT']}"

    @property
    def server_dir(self) -> Path:
        return Path(self.env["CLICKHOUSE_DATA_DIR"] + "-server")

    def _script(self, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "infra/clickhouse" / name)],
            env={**_without_store_secrets(os.environ), **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        result = self._script("start")
        assert result.returncode == 0, result.stdout + result.stderr

    def stop(self) -> None:
        result = self._script("stop")
        assert result.returncode == 0, result.stdout + result.stderr

    def pid(self) -> int | None:
        path = self.server_dir / "clickhouse.pid"
        return int(path.read_text()) if path.exists() else None

    def kill(self) -> None:
        """SIGKILL, as a crash would; `start` brings it back on the same data."""
        pid = self.pid()
        assert pid is not None, "the server is not running"
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            subprocess.run(["sleep", "0.05"], check=False)

    def reporter_password(self) -> str:
        return (self.server_dir / "reporter.password").read_text().strip()

    def writer_password(self) -> str:
        return (self.server_dir / "writer.password").read_text().strip()

    def client(self) -> Client:
        """A client of the writer, signed in the way every command signs in
        (`store.connection.store_login`: the server directory's writer.password)."""
        return connect(self.url, {**_without_store_secrets(os.environ), **self.env})

    def as_owner(self, *statements: str) -> None:
        """Run statements no network user may run (ALTER UPDATE, DROP COLUMN, ...), as
        the owner of the data directory does: the server stopped, the engine opened in
        a process of its own (chdb://, its own session), the server started again."""
        self.stop()
        try:
            self.offline(*statements)
        finally:
            self.start()

    def offline(self, *statements: str) -> list[list[dict[str, Any]]]:
        """Each statement's rows, run by the engine in a process of its own on the data
        directory of this server, which must be stopped (`as_owner`)."""
        script = (
            "import sys, json\n"
            "from store.connection import connect\n"
            "client = connect(sys.argv[1])\n"
            "out = []\n"
            "for statement in sys.argv[2:]:\n"
            "    result = client.query(statement, settings={'mutations_sync': 2})\n"
            "    names = result.column_names\n"
            "    out.append([dict(zip(names, map(str, row))) for row in result.result_rows])\n"
            "client.close()\n"
            "print(json.dumps(out))\n"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                "chdb://" + self.env["CLICKHOUSE_DATA_DIR"],
                *statements,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        rows: list[list[dict[str, Any]]] = json.loads(result.stdout.splitlines()[-1])
        return rows


# Passwords of the shell that runs the tests are not those of the tests' own servers.
_STORE_SECRETS = (
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_WRITER_PASSWORD",
    "CLICKHOUSE_REPORTER_PASSWORD",
)


def _without_store_secrets(env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in _STORE_SECRETS}


CORPUS = ROOT / "tests/replay/corpus.jsonl"
EXPECTED = ROOT / "tests/replay/expected.json"
# Small batches (many flushes) and a short session timeout: the partitions of a killed
# or paused worker move to the others within seconds.
FAST_REBALANCE_ENV = {
    "METERING_BATCH_MAX_EVENTS": "50",
    "METERING_BATCH_MAX_SECONDS": "0.2",
    "METERING_SESSION_TIMEOUT_SECONDS": "6",
}


def expected() -> dict[str, Any]:
    golden: dict[str, Any] = json.loads(EXPECTED.read_text())
    return golden


@dataclass
class MeteringRun:
    """One isolated pipeline: its own topics, consumer group and store."""

    env: dict[str, str]
    workdir: Path
    store: StoreServer
    logs: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, kafka_env: dict[str, str], workdir: Path, partitions: int = 3) -> MeteringRun:
        tag = uuid.uuid4().hex[:10]
        store = StoreServer.start_in(workdir / "clickhouse")
        env = {
            **_without_store_secrets(os.environ),
            **kafka_env,
            "METERING_EVENTS_TOPIC": f"test.{tag}.events",
            "METERING_DLQ_TOPIC": f"test.{tag}.dlq",
            "METERING_CORRECTIONS_TOPIC": f"test.{tag}.corrections",
            "METERING_CONSUMER_GROUP": f"test-{tag}",
            "METERING_TOPIC_PARTITIONS": str(partitions),
            "CLICKHOUSE_URL": store.url,
            **store.env,
            "METERING_BATCH_MAX_SECONDS": "0.3",
            "METERING_HEALTH_PORT": "0",
        }
        env.pop("METERING_FAULT_CRASH", None)
        env.pop("METERING_FAULT_STORE_OUTAGE", None)
        return cls(env, workdir, store)

    def metering(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "metering.cli", *args],
            env={**self.env, **(extra_env or {})},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.logs.append(result.stdout + result.stderr)
        return result

    def replay(self, *paths: Path) -> None:
        result = self.metering("replay", *(str(p) for p in paths))
        assert result.returncode == 0, result.stderr

    def worker(
        self, until_idle: float = 1.0, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.metering("worker", "--until-idle", str(until_idle), extra_env=extra_env)

    def query(self, sql: str) -> list[dict[str, Any]]:
        result = self.metering("query", sql, "--format", "json")
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def views(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "agency_daily": self.query(
                "SELECT * FROM metering.agency_daily ORDER BY day, tenant, agency_id"
            ),
            "agency_monthly": self.query(
                "SELECT * FROM metering.agency_monthly ORDER BY month, tenant, agency_id"
            ),
            "monthly_totals": self.query(
                "SELECT * FROM metering.monthly_totals ORDER BY month, tenant"
            ),
        }

    def rejected_by_reason(self) -> dict[str, int]:
        rows = self.query(
            "SELECT reason, count() AS n FROM metering.rejected_events GROUP BY reason"
        )
        return {row["reason"]: int(row["n"]) for row in rows}

    def dead_letters(self) -> list[bytes]:
        consumer = KafkaConsumer(
            bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"].split(","),
            enable_auto_commit=False,
            consumer_timeout_ms=3000,
        )
        try:
            topic = self.env["METERING_DLQ_TOPIC"]
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            values: list[bytes] = []
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                for records in consumer.poll(timeout_ms=1000).values():
                    values.extend(record.value for record in records)
            return values
        finally:
            consumer.close()
