"""Run one contender process: follow its JSON log lines live, sample its CPU time at each
line, and collect its resource usage when it exits.

CPU time at a line comes from /proc/PID/stat (all threads, 10 ms ticks, summed over the
process and its descendants: a `--processes N` worker's writers) and resident memory from
/proc/PID/statm (its largest process), both read when the line arrives; the totals and
the peak RSS come from `os.wait4` (the child's own rusage, with its reaped children's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

__all__ = ["LogLine", "RunRecord", "Running", "run_process"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class LogLine:
    """One JSON log line of the child: when it was written, and the child's CPU by then."""

    at: float  # wall clock: the line's own "t" or "ts" if it has one, else its arrival
    cpu: float | None  # the child's user+system seconds when the line arrived
    record: dict[str, Any]
    rss_mb: float | None = None  # the child's resident memory when the line arrived

    @property
    def msg(self) -> str:
        return str(self.record.get("msg", ""))


@dataclass
class RunRecord:
    argv: list[str]
    spawned: float
    exited: float = 0.0
    returncode: int | None = None
    cpu_seconds: float = 0.0
    max_rss_mb: float = 0.0
    timed_out: bool = False
    other_cores: float | None = None  # mean CPUs busy with other processes while it ran
    lines: list[LogLine] = field(default_factory=list)
    text_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    def first(self, msg: str) -> LogLine | None:
        return next((line for line in self.lines if line.msg == msg), None)

    def last(self, msg: str) -> LogLine | None:
        return next((line for line in reversed(self.lines) if line.msg == msg), None)

    def failure(self) -> str:
        """A short reason for a failed run: the child's last lines."""
        why = "timed out" if self.timed_out else f"exit code {self.returncode}"
        tail = [line for line in self.text_tail if line.strip()][-3:]
        return why + (": " + " | ".join(t.strip()[:160] for t in tail) if tail else "")


def _tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a `--processes N` worker's writers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return found


def _cpu_of(pid: int) -> float | None:
    """User + system seconds of `pid`, its live descendants and the children it reaped."""
    total = None
    for index, member in enumerate(_tree(pid)):
        try:
            stat = Path(f"/proc/{member}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        if index == 0:
            seconds += (int(fields[13]) + int(fields[14])) / _TICKS  # reaped children
        total = seconds + (total or 0.0)
    return total


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def _rss_of(pid: int) -> float | None:
    """The resident memory of the largest process of `pid`'s tree (the limit is per
    process)."""
    sizes = []
    for member in _tree(pid):
        try:
            sizes.append(int(Path(f"/proc/{member}/statm").read_bytes().split()[1]) * _PAGE_MB)
        except (OSError, IndexError, ValueError):
            continue
    return max(sizes, default=None)


def _machine_busy() -> float | None:
    """Seconds of CPU time all processes used since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _line_time(record: dict[str, Any], arrived: float) -> float:
    t = record.get("t")
    if isinstance(t, float | int):
        return float(t)
    ts = record.get("ts")
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts).timestamp()
        except ValueError:
            pass
    return arrived


def _follow(stream: TextIO, pid: int, record: RunRecord, copy: TextIO | None) -> None:
    for text in stream:
        arrived = time.time()
        cpu = _cpu_of(pid)
        rss = _rss_of(pid)
        if copy is not None:
            copy.write(text)
        parsed: object = None
        if text.startswith("{"):
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                parsed = None
        if isinstance(parsed, dict):
            record.lines.append(LogLine(_line_time(parsed, arrived), cpu, parsed, rss))
        else:
            record.text_tail.append(text)


class Running:
    """A started contender: its live record (lines arrive while it runs) and its process."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path | None = None,
        stdout_path: Path | None = None,
    ) -> None:
        self.record = RunRecord(argv=list(argv), spawned=time.time())
        self._busy_at_start = _machine_busy()
        self._copy = log_path.open("w") if log_path is not None else None
        self._out = stdout_path.open("wb") if stdout_path is not None else None
        self._proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._out if self._out is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(
            target=_follow,
            args=(self._proc.stderr, self._proc.pid, self.record, self._copy),
            daemon=True,
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait_for_line(self, msg: str, timeout: float) -> LogLine | None:
        """The first line with this `msg`, waiting while the process lives."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.record.first(msg)
            if line is not None:
                return line
            if self._proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM); `wait` collects it."""
        if self.record.returncode is None:
            os.kill(self._proc.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> RunRecord:
        """Wait for the exit (killing the process after `timeout`) and measure it."""
        record = self.record
        try:
            status, usage = _wait(self._proc.pid, record, timeout)
            record.exited = time.time()
            self._reader.join(timeout=10)
            self._proc.returncode = record.returncode = os.waitstatus_to_exitcode(status)
            record.cpu_seconds = usage.ru_utime + usage.ru_stime
            record.max_rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
            busy = _machine_busy()
            if busy is not None and self._busy_at_start is not None:
                others = busy - self._busy_at_start - record.cpu_seconds
                record.other_cores = max(0.0, others) / max(record.exited - record.spawned, 1e-9)
        finally:
            for handle in (self._copy, self._out):
                if handle is not None:
                    handle.close()
        return record


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    log_path: Path | None = None,
    stdout_path: Path | None = None,
) -> RunRecord:
    """Run `argv` to completion (killed after `timeout` seconds) and measure it."""
    running = Running(argv, env=env, cwd=cwd, log_path=log_path, stdout_path=stdout_path)
    return running.wait(timeout)


def _wait(pid: int, record: RunRecord, timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.monotonic() > deadline and not record.timed_out:
            record.timed_out = True
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
        elif record.timed_out and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
