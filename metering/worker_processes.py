"""`metering worker --processes N`: N writer processes of one store, supervised.

Each child is a whole `metering worker` (`--processes 1`) in the same consumer group:
Kafka assigns each some partitions of the events topic, each reads, classifies and
flushes its own, and they take turns at the ledger through the writers' lock
(`store.ledger.writers_lock`). One interpreter per process, so classification, Arrow
building and Kafka unpacking of different partitions run on different cores.

The supervisor:
  - names the children `<METERING_WORKER_NAME or host-pid>-<i>` (the ledger's `worker`
    column and every log line's `writer`) and, when METERING_HEALTH_PORT is set, gives
    child i the port plus i and serves the port itself: /healthz of all the writers,
    /metrics of each with a `writer` label (`metering.writers_health`);
  - forwards SIGTERM and SIGINT to every child and waits for them;
  - starts a child again when a signal it did not send ended it (SIGKILL, the OOM
    killer): its partitions went to the others meanwhile, and the new one resumes
    from the ledger like any writer. The wait before a restart doubles from 1 s to
    at most 60 s while the child keeps dying within a minute of its start, and is
    1 s again once one ran longer (`restart_delay`); a stop signal during the wait
    cancels the restart;
  - stops the others and exits with a child's status when one exits with an error
    (the child's message says what to do);
  - with `--until-idle`, returns once every child has stopped idle;
  - dies with its children: each is SIGKILLed by the kernel when the supervisor dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

from metering.settings import Settings, SettingsError
from metering.writers_health import Writer, WritersHealthServer

__all__ = ["child_arguments", "restart_delay", "run_worker_processes"]

log = logging.getLogger("govmeter.worker_processes")

_FIRST_RESTART_DELAY: Final = 1.0
_LONGEST_RESTART_DELAY: Final = 60.0
_STABLE_RUN: Final = 60.0  # a child that ran this long is restarted after the first delay
_POLL: Final = 0.2
_STOP_GRACE: Final = 60.0
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class _Child:
    index: int
    name: str
    process: subprocess.Popen[bytes]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    delay: float = 0.0  # the wait before its last restart (0: never restarted)
    restart_at: float | None = None  # a restart pending after a signal ended it


def restart_delay(previous: float, ran_seconds: float) -> float:
    """The wait before starting again a child that a signal ended after `ran_seconds`,
    given the wait before its previous restart (0 for none): 1 s, doubling to at most
    60 s while it keeps dying within a minute of its start."""
    if previous <= 0 or ran_seconds >= _STABLE_RUN:
        return _FIRST_RESTART_DELAY
    return min(_LONGEST_RESTART_DELAY, previous * 2)


def child_arguments(argv: Sequence[str]) -> list[str]:
    """The worker's own arguments with `--processes` set to 1 (its value dropped)."""
    out: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument == "--processes":
            skip = True
            continue
        if argument.startswith("--processes="):
            continue
        out.append(argument)
    return [*out, "--processes", "1"]


def run_worker_processes(
    settings: Settings,
    processes: int,
    argv: Sequence[str],
    *,
    command: Sequence[str] | None = None,
) -> int:
    """Run `processes` writers (`argv`: the `worker` command line after the program)
    until they stop; the exit status is the first error a child reported, else 0.
    `command` replaces the writers' whole command line (tests of the supervision)."""
    if settings.clickhouse_url.startswith("chdb://"):
        raise SettingsError(
            "invalid configuration:\n  --processes: CLICKHOUSE_URL "
            f"{settings.clickhouse_url} is an embedded store, which one process opens at "
            "a time; use --processes 1, or the local server (infra/clickhouse/start)"
        )
    if settings.health_port and settings.health_port + processes > 65535:
        raise SettingsError(
            "invalid configuration:\n  METERING_HEALTH_PORT: writer i of --processes "
            f"{processes} serves port {settings.health_port} plus i, past 65535; set a "
            "lower port, or 0 to serve none"
        )
    base = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    arguments = (
        list(command)
        if command is not None
        else [sys.executable, "-m", "metering.cli", *child_arguments(argv)]
    )
    stopping = False

    def start(index: int) -> subprocess.Popen[bytes]:
        name = f"{base}-{index}"
        env = {**os.environ, "METERING_WORKER_NAME": name, "METERING_LOG_WRITER": name}
        if settings.health_port:
            env["METERING_HEALTH_PORT"] = str(settings.health_port + index)
        return subprocess.Popen(arguments, env=env, preexec_fn=_die_with_parent)

    children = [_Child(i, f"{base}-{i}", start(i)) for i in range(1, processes + 1)]
    log.info(
        "writer processes started",
        extra={"processes": processes, "workers": [c.name for c in children]},
    )
    health = _serve_writers_health(settings, children)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signum)

    previous = {
        signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    status = 0
    try:
        running = list(children)
        while running:
            time.sleep(_POLL)
            for child in list(running):
                if child.restart_at is not None:
                    if stopping:
                        child.restart_at = None  # stopped while it waited: not started
                        running.remove(child)
                    elif time.monotonic() >= child.restart_at:
                        child.restart_at = None
                        child.process = start(child.index)
                        child.restarts += 1
                        child.started = time.monotonic()
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                if code < 0 and not stopping:
                    child.delay = restart_delay(child.delay, time.monotonic() - child.started)
                    child.restart_at = time.monotonic() + child.delay
                    log.warning(
                        "writer process ended by a signal; starting it again",
                        extra={
                            "worker": child.name,
                            "signal": -code,
                            "restart_in_s": child.delay,
                            "restarts": child.restarts,
                        },
                    )
                    continue
                running.remove(child)
                if code > 0 and status == 0:
                    status = code
                    log.error(
                        "writer process failed; stopping the others",
                        extra={"worker": child.name, "exit_status": code},
                    )
                    stopping = True
                    _terminate(running)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _terminate([c for c in children if c.process.poll() is None])
        if health is not None:
            health.stop()
    return status


def _serve_writers_health(
    settings: Settings, children: Sequence[_Child]
) -> WritersHealthServer | None:
    """The supervisor's own /healthz and /metrics on METERING_HEALTH_PORT (0: none). A
    busy port is logged, not fatal, as for a single worker."""
    if not settings.health_port:
        return None
    host = settings.health_host
    # Writers bound to every interface are asked on the loopback one.
    everywhere = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104
    ask = everywhere.get(host, host)
    ask = f"[{ask}]" if ":" in ask else ask
    writers = [
        Writer(child.name, f"http://{ask}:{settings.health_port + child.index}")
        for child in children
    ]
    try:
        server = WritersHealthServer(host, settings.health_port, writers)
    except OSError as error:
        log.warning(
            "health endpoint not started",
            extra={"port": settings.health_port, "error_message": str(error)},
        )
        return None
    server.start()
    log.info(
        "health endpoint listening",
        extra={"host": host, "port": settings.health_port, "writers": len(writers)},
    )
    return server


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervisor dies (even by SIGKILL), so
    no writer outlives it unsupervised. Linux only; elsewhere nothing happens."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def _terminate(children: Sequence[_Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + _STOP_GRACE
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
