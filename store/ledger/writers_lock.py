"""The writers' lock: several writer processes of one store take turns at the ledger.

Each writer (a `metering worker` process) reads, classifies and builds its flushes on
its own; the part of a flush that must see every earlier flush, from the dedupe lookup
to the fold into the rollups, runs while the writer holds this lock. Holding it makes
three things true that a single writer had for free:

  - flush numbers and the tamper chain stay one total order (the holder numbers its
    flush after the last committed one and chains to it);
  - the dedupe lookup sees every committed flush, whichever writer and partition it
    came from, so an `event_id` counts once across writers;
  - a writer never deletes another live writer's staged rows: staged rows without a
    ledger row exist only while their writer holds the lock, or after it died holding
    it.

The lock is an exclusive `flock` on a file named after the store's identity (the UUID
of its `metering` database), so every process on this machine that writes that store
shares it, however it spells the store's address. The kernel releases it when its
holder dies, even by SIGKILL. The file also says whether its last holder let go
cleanly: a holder marks it `dirty` on taking it and `clean` on letting go; a holder
that finds it dirty runs the store's recovery first (orphans of a flush that never
committed are deleted, committed flushes and corrections are finished).

A writer paused while it holds the lock (SIGSTOP, a long stall) keeps the others
waiting until it resumes; it cannot commit anything stale, because the sink checks
under the lock that the ledger of every partition it covers is where the writer read
it from (`streams.sink`). Writers on different machines do not share a lock: run the
writers of one store on one machine (docs/several-writers.md has the design for more).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from clickhouse_connect.driver.client import Client

__all__ = ["WritersLock", "lock_path_for", "store_identity"]

log = logging.getLogger("govmeter.writers_lock")

_CLEAN: Final = b"clean\n"
_STORE_IDENTITY: Final = "SELECT toString(uuid) FROM system.databases WHERE name = 'metering'"
_NO_UUID: Final = "00000000-0000-0000-0000-000000000000"


def store_identity(client: Client, fallback: str) -> str:
    """The UUID of the store's `metering` database; `fallback` (e.g. the store's URL)
    hashed when the engine gives the database none."""
    rows = client.query(_STORE_IDENTITY).result_rows
    identity = str(rows[0][0]) if rows else ""
    if identity and identity != _NO_UUID:
        return identity
    return hashlib.sha256(fallback.encode()).hexdigest()[:32]


def lock_path_for(identity: str, directory: str | None = None) -> Path:
    """The lock file of one store: in METERING_LOCK_DIR, else the system's temp dir."""
    base = Path(directory or os.environ.get("METERING_LOCK_DIR") or tempfile.gettempdir())
    return base / f"govmeter-writers-{identity}.lock"


class WritersLock:
    """An exclusive, re-entrant lock of one process over one store's ledger.

    `on_dirty` runs (while the lock is held) when the previous holder did not let go
    cleanly. Re-entrant within the process: calls nested inside a hold (a correction
    between two steps of a flush, on the same store thread) do not wait for themselves.
    """

    def __init__(self, path: Path, on_dirty: Callable[[], None]) -> None:
        self.path = path
        self._on_dirty = on_dirty
        self._guard = threading.Lock()
        self._depth = 0
        self._fd: int | None = None
        self._failed_inside = False
        self.recoveries = 0

    def acquire(self) -> None:
        with self._guard:
            if self._depth:
                self._depth += 1
                return
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            state = os.pread(fd, 64, 0)
            if state and state != _CLEAN:
                log.warning(
                    "the previous holder of the writers' lock stopped mid-flush; recovering",
                    extra={"lock": str(self.path), "state": state.decode(errors="replace")[:40]},
                )
                self._on_dirty()
                self.recoveries += 1
            _write(fd, f"dirty {os.getpid()}\n".encode())
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise
        with self._guard:
            self._depth = 1

    def release(self, *, clean: bool = True) -> None:
        """Let go; `clean=False` (here or in a nested hold) leaves the file dirty, so the
        next holder recovers."""
        with self._guard:
            if self._depth == 0:
                raise RuntimeError("the writers' lock is not held")
            self._depth -= 1
            if not clean:
                self._failed_inside = True
            if self._depth:
                return
            clean = not self._failed_inside
            self._failed_inside = False
        fd = self._open()
        if clean:
            _write(fd, _CLEAN)
        fcntl.flock(fd, fcntl.LOCK_UN)

    @property
    def held(self) -> bool:
        return self._depth > 0

    @contextmanager
    def holding(self) -> Iterator[None]:
        self.acquire()
        clean = False
        try:
            yield
            clean = True
        finally:
            self.release(clean=clean)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd


def _write(fd: int, state: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, state, 0)
