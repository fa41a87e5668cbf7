"""How each row of the table is run: its command, its environment, its read-back, its check.

Every contender reads the same topic from the beginning with its own consumer group and
writes to its own store path under the run's work directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from bench.contenders.markers import DONE, FIRST
from bench.reference import Reference, Verdict, verify_count, verify_rows
from bench.runner import RunRecord, run_process
from bench.table import Measurement, ServerFigures, measure_window, not_run
from bench.worklog import WorkerTimeline, worker_timeline

__all__ = [
    "ROWS",
    "BenchRun",
    "free_server_ports",
    "probe_quix",
    "run_faust",
    "run_floor",
    "run_floor_aiokafka",
    "run_pipeline",
    "run_pipeline_server",
    "run_quix",
]

# row key -> (short id used by --only, name in the table)
ROWS: dict[str, tuple[str, str]] = {
    "1": ("floor", "kafka-python + orjson (floor)"),
    "1b": ("aiokafka", "aiokafka + orjson (faust's client)"),
    "2": ("pipeline", "metering worker --until-idle"),
    "2s": ("pipeline-server", "metering worker, local server over HTTP"),
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
    # messages the worker's flushes hold (duplicates and rejections included); None: the
    # reference's count (a corpus without faults)
    flushed_messages: int | None = None
    before_worker: Callable[[], None] | None = None  # called just before it is spawned
    floor_args: tuple[str, ...] = ()  # extra arguments of the floor rows
    hosts: int = 1  # >1: the worker runs as that many writers on "hosts" (bench.hosts)

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

    def read_back(
        self,
        store: Path,
        source: str,
        *,
        url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Verdict:
        """Read the contender's rows in a separate process and compare them: from the
        embedded store at `store`, or over HTTP from the server at `url` (then `store`
        only names the output file; `env` names the local server, whose writer signs
        in)."""
        out = self.work / f"{store.name}.rows.json"
        target = ["--url", url] if url is not None else ["--store", str(store)]
        done = subprocess.run(
            [self.python, "-m", "bench.readback", *target, "--source", source,
             "--out", str(out)],
            env=self.env(**(env or {})),
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
    argv = [bench.python, "-m", module, *bench.consumer_args(ROWS[key][0]), *bench.floor_args]
    run = bench.run(ROWS[key][0], argv, bench.env())
    done = run.last(DONE)
    read = int(done.record.get("messages", 0)) if done is not None else None
    return _markers(key, bench, run, verify_count(bench.reference, read))


def run_floor(bench: BenchRun) -> Measurement:
    return _floor("1", "bench.contenders.floor", bench)


def run_floor_aiokafka(bench: BenchRun) -> Measurement:
    return _floor("1b", "bench.contenders.floor_aiokafka", bench)


def _worker_env(bench: BenchRun, row: str, url: str) -> dict[str, str]:
    return bench.env(
        KAFKA_BOOTSTRAP_SERVERS=bench.bootstrap,
        METERING_EVENTS_TOPIC=bench.topic,
        METERING_DLQ_TOPIC=f"{bench.topic}.dlq",
        CLICKHOUSE_URL=url,
        METERING_CONSUMER_GROUP=bench.group(row),
        METERING_TOPIC_PARTITIONS=str(bench.partitions),
        **bench.worker_env,
    )


def _worker_argv(bench: BenchRun) -> list[str]:
    worker = [bench.python, "-m", "metering.cli", "worker", "--until-idle", str(bench.idle_seconds)]
    if bench.hosts > 1:
        return [bench.python, "-m", "bench.hosts", str(bench.hosts), "--", *worker]
    return worker


def _measure_worker(
    key: str, bench: BenchRun, run: RunRecord, timeline: WorkerTimeline, verdict: Verdict
) -> Measurement:
    sent = bench.reference.messages if bench.flushed_messages is None else bench.flushed_messages
    if verdict.ok and timeline.messages != sent:
        verdict = Verdict(False, f"flushes hold {timeline.messages} messages, {sent} sent")
    return measure_window(
        key,
        ROWS[key][1],
        run,
        verdict,
        messages=timeline.messages,
        first=run.first("flush committed"),
        first_count=timeline.flushes[0].messages,
        done=run.last("flush committed"),
    )


def run_pipeline(bench: BenchRun) -> tuple[Measurement, WorkerTimeline | None]:
    """Row 2: `metering worker --until-idle` on its own embedded store."""
    key, (row, name) = "2", ROWS["2"]
    store = bench.work / "pipeline-store"
    run = bench.run(row, _worker_argv(bench), _worker_env(bench, row, f"chdb://{store}"))
    timeline = worker_timeline(run)
    if run.returncode != 0 or not timeline.flushes:
        reason = run.failure() if run.returncode != 0 else "no flush committed"
        return not_run(key, name, "FAILED", reason), timeline
    return _measure_worker(key, bench, run, timeline, bench.read_back(store, "pipeline")), timeline


_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_server_ports() -> tuple[int, int]:
    """Two different free loopback ports: a local server's HTTP and native TCP."""
    http_port, tcp_port = _free_port(), _free_port()
    while tcp_port == http_port:
        tcp_port = _free_port()
    return http_port, tcp_port


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of every thread of `pid`, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_mb(pid: int, field_name: str) -> float | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _ServerSampler:
    """Samples the server process's CPU seconds and resident memory every `period` s
    while the worker runs, so its CPU inside the worker's processing window can be read
    off and its peak memory is known even if VmHWM could not be reset."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, float, float]] = []  # (wall clock, CPU s, RSS MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="server-sampler", daemon=True)

    def _loop(self) -> None:
        while True:
            cpu, rss = _cpu_seconds(self.pid), _status_mb(self.pid, "VmRSS")
            if cpu is not None and rss is not None:
                self.samples.append((time.time(), cpu, rss))
            if self._stop.wait(self.period):
                return

    def __enter__(self) -> _ServerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cpu_at(self, at: float) -> float | None:
        """The CPU seconds of the last sample at or before `at`."""
        before = [cpu for t, cpu, _ in self.samples if t <= at]
        return before[-1] if before else None

    @property
    def peak_rss_mb(self) -> float | None:
        return max((rss for _, _, rss in self.samples), default=None)


def _server_step(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run infra/clickhouse/start or stop: (seconds it took, its last output line)."""
    began = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - began
    said = (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or ["no output"]
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed (exit {done.returncode}): {said[0]}")
    return seconds, said[0]


def run_pipeline_server(
    bench: BenchRun,
) -> tuple[Measurement, WorkerTimeline | None, ServerFigures | None]:
    """Row 2s: the same worker against a local ClickHouse server (infra/clickhouse/start)
    of its own, on free ports in the work directory, over HTTP; the server is stopped at
    the end. Besides the worker's figures: the server process's start time, its memory
    at rest and at peak, and its CPU while the worker ran."""
    key, (row, name) = "2s", ROWS["2s"]
    data_dir = bench.work / "server-store"
    http_port, tcp_port = free_server_ports()
    server_env = bench.env(
        CLICKHOUSE_DATA_DIR=str(data_dir),
        CLICKHOUSE_HTTP_PORT=str(http_port),
        CLICKHOUSE_TCP_PORT=str(tcp_port),
    )
    server_env.pop("CLICKHOUSE_SERVER_DIR", None)  # the default: next to the data
    infra = bench.repo / "infra" / "clickhouse"
    url = f"http://127.0.0.1:{http_port}"
    # Commands find the local server's writer password from its directory, named so.
    login_env = {"CLICKHOUSE_DATA_DIR": str(data_dir), "CLICKHOUSE_HTTP_PORT": str(http_port)}
    try:
        start_s, _ = _server_step([str(infra / "start")], server_env, bench.work)
    except RuntimeError as error:
        return not_run(key, name, "FAILED", f"local server: {error}"), None, None
    try:
        pid = int(Path(f"{data_dir}-server/clickhouse.pid").read_text().strip())
        rest_rss = _status_mb(pid, "VmRSS")
        try:  # "5" resets VmHWM to the current RSS (Linux 4.0+): the peak of this run only
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            hwm_reset = True
        except OSError:
            hwm_reset = False
        cpu_before = _cpu_seconds(pid)
        with _ServerSampler(pid) as sampler:
            if bench.before_worker is not None:
                bench.before_worker()
            run = bench.run(row, _worker_argv(bench), {**_worker_env(bench, row, url), **login_env})
            cpu_after = _cpu_seconds(pid)
            hwm = _status_mb(pid, "VmHWM") if hwm_reset else None
        timeline = worker_timeline(run)
        during = None
        if cpu_after is not None and cpu_before is not None:
            during = cpu_after - cpu_before
        if during is not None and run.other_cores is not None:
            # the server's CPU is this row's own work, not other load on the machine
            busy_s = max(run.exited - run.spawned, 1e-9)
            run.other_cores = max(0.0, run.other_cores - during / busy_s)
        first, done = run.first("flush committed"), run.last("flush committed")
        window_cpu = None
        if first is not None and done is not None:
            at_first, at_done = sampler.cpu_at(first.at), sampler.cpu_at(done.at)
            if at_first is not None and at_done is not None:
                window_cpu = at_done - at_first
        peaks = [mb for mb in (hwm, sampler.peak_rss_mb) if mb is not None]
        server = ServerFigures(
            start_s=start_s,
            rest_rss_mb=rest_rss,
            peak_rss_mb=max(peaks) if peaks else None,
            cpu_during_run_s=during,
            window_cpu_s=window_cpu,
        )
        if run.returncode != 0 or not timeline.flushes:
            reason = run.failure() if run.returncode != 0 else "no flush committed"
            return not_run(key, name, "FAILED", reason), timeline, server
        verdict = bench.read_back(data_dir, "pipeline", url=url, env=login_env)
        measured = _measure_worker(key, bench, run, timeline, verdict)
        inside = measured.messages - timeline.flushes[0].messages
        if window_cpu is not None and inside > 0:
            server = replace(server, window_cpu_per_m=window_cpu / inside * 1e6)
        return measured, timeline, server
    finally:
        try:
            _server_step([str(infra / "stop")], server_env, bench.work)
        except RuntimeError as error:
            print(f"[bench] row {key}: {error}", file=sys.stderr, flush=True)


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
