"""How each row of the table is run: its command, its environment, its read-back, its check.

Every contender reads the same topic from the beginning with its own consumer group and
writes to its own store path under the run's work directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from bench.contenders.markers import DONE, FIRST
from bench.reference import Reference, Verdict, verify_count, verify_rows
from bench.runner import RunRecord, run_process
from bench.table import Measurement, measure_window, not_run
from bench.worklog import WorkerTimeline, worker_timeline

__all__ = [
    "ROWS",
    "BenchRun",
    "probe_quix",
    "run_faust",
    "run_floor",
    "run_floor_aiokafka",
    "run_pipeline",
    "run_quix",
]

# row key -> (short id used by --only, name in the table)
ROWS: dict[str, tuple[str, str]] = {
    "1": ("floor", "kafka-python + orjson (floor)"),
    "1b": ("aiokafka", "aiokafka + orjson (faust's client)"),
    "2": ("pipeline", "metering worker --until-idle"),
    "3": ("faust", "faust textbook (agent, Tables)"),
    "4": ("quix", "quixstreams (1-day windows)"),
}


@dataclass
class BenchRun:
    """One bench run: the topic every contender reads and where they keep their stores."""

    bootstrap: str
    topic: str
    partitions: int
    work: Path
    repo: Path
    reference: Reference
    python: str = sys.executable
    quix_python: str = sys.executable
    idle_seconds: float = 3.0
    timeout: float = 3600.0
    worker_env: dict[str, str] = field(default_factory=dict)

    def group(self, row: str) -> str:
        return f"{self.topic}-{row}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("METERING_FAULT_") and k not in ("CLICKHOUSE_URL",)
        }
        path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = str(self.repo) + (os.pathsep + path if path else "")
        env.update(extra)
        return env

    def run(self, row: str, argv: list[str], env: dict[str, str]) -> RunRecord:
        return run_process(
            argv,
            env=env,
            cwd=self.repo,
            timeout=self.timeout,
            log_path=self.work / f"{row}.stderr.log",
            stdout_path=self.work / f"{row}.stdout.log",
        )

    def consumer_args(self, row: str) -> list[str]:
        return [
            "--bootstrap",
            self.bootstrap,
            "--topic",
            self.topic,
            "--group",
            self.group(row),
            "--expect",
            str(self.reference.messages),
        ]

    def read_back(self, store: Path, source: str) -> Verdict:
        """Read the contender's rows in a separate process and compare them."""
        out = self.work / f"{store.name}.rows.json"
        done = subprocess.run(
            [self.python, "-m", "bench.readback", "--store", str(store), "--source", source,
             "--out", str(out)],
            env=self.env(),
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            return Verdict(False, f"read-back failed: {tail[0][:200]}")
        return verify_rows(self.reference, orjson.loads(out.read_bytes()))


def _markers(key: str, bench: BenchRun, run: RunRecord, verdict: Verdict) -> Measurement:
    done = run.last(DONE)
    messages = int(done.record.get("messages", 0)) if done is not None else 0
    return measure_window(
        key,
        ROWS[key][1],
        run,
        verdict,
        messages=messages,
        first=run.first(FIRST),
        first_count=1,
        done=done,
    )


def _floor(key: str, module: str, bench: BenchRun) -> Measurement:
    argv = [bench.python, "-m", module, *bench.consumer_args(ROWS[key][0])]
    run = bench.run(ROWS[key][0], argv, bench.env())
    done = run.last(DONE)
    read = int(done.record.get("messages", 0)) if done is not None else None
    return _markers(key, bench, run, verify_count(bench.reference, read))


def run_floor(bench: BenchRun) -> Measurement:
    return _floor("1", "bench.contenders.floor", bench)


def run_floor_aiokafka(bench: BenchRun) -> Measurement:
    return _floor("1b", "bench.contenders.floor_aiokafka", bench)


def run_pipeline(bench: BenchRun) -> tuple[Measurement, WorkerTimeline | None]:
    """Row 2: `metering worker --until-idle` on its own embedded store."""
    key, (row, name) = "2", ROWS["2"]
    store = bench.work / "pipeline-store"
    env = bench.env(
        KAFKA_BOOTSTRAP_SERVERS=bench.bootstrap,
        METERING_EVENTS_TOPIC=bench.topic,
        METERING_DLQ_TOPIC=f"{bench.topic}.dlq",
        METERING_RELAY_TOPIC=f"{bench.topic}.flushes",
        CLICKHOUSE_URL=f"chdb://{store}",
        METERING_CONSUMER_GROUP=bench.group(row),
        METERING_TOPIC_PARTITIONS=str(bench.partitions),
        **bench.worker_env,
    )
    argv = [bench.python, "-m", "metering.cli", "worker", "--until-idle", str(bench.idle_seconds)]
    run = bench.run(row, argv, env)
    timeline = worker_timeline(run)
    if run.returncode != 0 or not timeline.flushes:
        reason = run.failure() if run.returncode != 0 else "no flush committed"
        return not_run(key, name, "FAILED", reason), timeline
    verdict = bench.read_back(store, "pipeline")
    if verdict.ok and timeline.messages != bench.reference.messages:
        verdict = Verdict(
            False, f"flushes hold {timeline.messages} messages, {bench.reference.messages} sent"
        )
    measured = measure_window(
        key,
        name,
        run,
        verdict,
        messages=timeline.messages,
        first=run.first("flush committed"),
        first_count=timeline.flushes[0].messages,
        done=run.last("flush committed"),
    )
    return measured, timeline


def run_faust(bench: BenchRun) -> Measurement:
    key, (row, _) = "3", ROWS["3"]
    store = bench.work / "faust-store"
    argv = [
        bench.python,
        "-m",
        "bench.contenders.faust_textbook",
        *bench.consumer_args(row),
        "--partitions",
        str(bench.partitions),
        "--store",
        str(store),
    ]
    run = bench.run(row, argv, bench.env())
    verdict = bench.read_back(store, "bench") if run.returncode == 0 else Verdict(False, "")
    return _markers(key, bench, run, verdict)


def probe_quix(python: str) -> tuple[str | None, str]:
    """(quixstreams version, "") if `python` can run row 4, else (None, why not)."""
    code = (
        "import chdb, clickhouse_connect, orjson, pydantic, quixstreams;"
        "print(quixstreams.__version__)"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{python}: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, (
            f"{python} cannot import it ({last[:120]}); install bench/requirements.txt into "
            "a separate venv and pass --quix-python (see bench/README.md)"
        )
    return done.stdout.strip(), ""


def run_quix(bench: BenchRun) -> Measurement:
    key, (row, name) = "4", ROWS["4"]
    version, why = probe_quix(bench.quix_python)
    if version is None:
        return not_run(key, name, "NOT RUN", why)
    store = bench.work / "quix-store"
    argv = [
        bench.quix_python,
        "-m",
        "bench.contenders.quix_windows",
        *bench.consumer_args(row),
        "--store",
        str(store),
        "--state-dir",
        str(bench.work / "quix-state"),
    ]
    run = bench.run(row, argv, bench.env())
    verdict = bench.read_back(store, "bench") if run.returncode == 0 else Verdict(False, "")
    measured = _markers(key, bench, run, verdict)
    return replace(measured, name=f"quixstreams {version} (1-day windows)")
