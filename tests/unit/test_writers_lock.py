"""The writers' lock (`store.ledger.writers_lock`): exactly what it does to its file,
how it nests, and what another process sees of it (a live holder blocks it, a holder
that died holding it leaves it dirty for the next one to recover)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from clickhouse_connect.driver.client import Client

from store.ledger.writers_lock import WritersLock, lock_path_for, store_identity
from tests.unit import test_sink_protocol as protocol

REPO = Path(__file__).resolve().parents[2]
CLEAN = "clean\n"
WAIT = 20.0  # the most a line from a holder process may take (it starts Python)
IDENTITY_SQL = "SELECT toString(uuid) FROM system.databases WHERE name = 'metering'"
BLOCKED_FOR = 0.3  # how long a contender must stay blocked while the holder holds

# A holder in another process: takes the lock, says so, then waits for a command on
# stdin: "die" SIGKILLs itself still holding it, anything else lets go cleanly.
HOLDER = """
import os, signal, sys, time
from pathlib import Path
from store.ledger.writers_lock import WritersLock

lock = WritersLock(Path(sys.argv[1]), on_dirty=lambda: print("recovered", flush=True))
lock.acquire()
print("held", os.getpid(), flush=True)
command = sys.stdin.readline().strip()
if command == "die":
    os.kill(os.getpid(), signal.SIGKILL)
released_at = time.monotonic()
lock.release()
print("released", repr(released_at), flush=True)
"""

client = protocol.client  # the migrated in-process store fixture


class Holder:
    """A process running HOLDER on one lock file, its output read on a thread."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def line(self) -> str:
        try:
            return self._lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"the holder (pid {self.process.pid}) said nothing for {WAIT} s")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    started = Holder(tmp_path / "writers.lock")
    yield started
    started.stop()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "writers.lock"


class Recoveries:
    """An on_dirty that counts its calls and checks the lock is held while it runs."""

    def __init__(self, path: Path, fail_times: int = 0) -> None:
        self.path = path
        self.calls = 0
        self.held_while_running: list[bool] = []
        self._fail_times = fail_times

    def __call__(self) -> None:
        self.calls += 1
        self.held_while_running.append(locked_elsewhere(self.path))
        if self.calls <= self._fail_times:
            raise RuntimeError(f"recovery {self.calls} failed")


def text(path: Path) -> str:
    return path.read_text()


def locked_elsewhere(path: Path) -> bool:
    """Whether some open file description holds the flock (tried from a new one)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the description also drops a lock taken just now
    return False


def dirty_by(pid: int) -> str:
    return f"dirty {pid}\n"


# -- one process ------------------------------------------------------------------


def test_a_fresh_file_is_not_recovered_and_says_dirty_only_while_held(path: Path) -> None:
    recoveries = Recoveries(path)
    lock = WritersLock(path, recoveries)
    assert not path.exists()
    lock.acquire()
    try:
        assert lock.held
        assert text(path) == dirty_by(os.getpid())
        assert locked_elsewhere(path)
    finally:
        lock.release()
    assert not lock.held
    assert text(path) == CLEAN
    assert not locked_elsewhere(path)
    assert (recoveries.calls, lock.recoveries) == (0, 0)
    # Taking it again after a clean release recovers nothing either.
    with lock.holding():
        assert text(path) == dirty_by(os.getpid())
    assert text(path) == CLEAN
    assert (recoveries.calls, lock.recoveries) == (0, 0)
    lock.close()


def test_the_file_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "writers.lock"
    lock = WritersLock(path, Recoveries(path))
    with lock.holding():
        assert text(path) == dirty_by(os.getpid())
    assert text(path) == CLEAN
    lock.close()


def test_nested_holds_do_not_wait_and_only_the_outermost_release_writes(path: Path) -> None:
    recoveries = Recoveries(path)
    lock = WritersLock(path, recoveries)
    lock.acquire()
    lock.acquire()  # would never return if the lock waited for itself
    with lock.holding():
        assert text(path) == dirty_by(os.getpid())
    lock.release()
    # Two releases done, one hold left: still held, still dirty.
    assert lock.held
    assert text(path) == dirty_by(os.getpid())
    assert locked_elsewhere(path)
    lock.release()
    assert not lock.held
    assert text(path) == CLEAN
    assert not locked_elsewhere(path)
    assert recoveries.calls == 0
    lock.close()


def test_a_nested_unclean_release_leaves_the_file_dirty(path: Path) -> None:
    recoveries = Recoveries(path)
    lock = WritersLock(path, recoveries)
    lock.acquire()
    lock.acquire()
    lock.release(clean=False)
    lock.release()  # clean itself, but a nested hold was not
    assert not lock.held
    assert text(path) == dirty_by(os.getpid())
    assert not locked_elsewhere(path)
    # The next holder (here the same object) recovers, once; afterwards all is clean.
    lock.acquire()
    assert (recoveries.calls, lock.recoveries) == (1, 1)
    assert recoveries.held_while_running == [True]
    lock.release()
    assert text(path) == CLEAN
    with lock.holding():
        pass
    assert text(path) == CLEAN
    assert (recoveries.calls, lock.recoveries) == (1, 1)
    lock.close()


def test_an_exception_inside_holding_leaves_the_file_dirty(path: Path) -> None:
    recoveries = Recoveries(path)
    lock = WritersLock(path, recoveries)
    with pytest.raises(ValueError, match="mid-flush"), lock.holding():
        raise ValueError("mid-flush")
    assert not lock.held
    assert text(path) == dirty_by(os.getpid())
    assert not locked_elsewhere(path)
    other = WritersLock(path, recoveries)
    with other.holding():
        assert recoveries.calls == 1
    assert text(path) == CLEAN
    lock.close()
    other.close()


def test_a_failing_recovery_lets_go_and_leaves_the_file_dirty(path: Path) -> None:
    died = WritersLock(path, Recoveries(path))
    died.acquire()
    died.release(clean=False)
    died.close()
    assert text(path) == dirty_by(os.getpid())

    recoveries = Recoveries(path, fail_times=1)
    lock = WritersLock(path, recoveries)
    with pytest.raises(RuntimeError, match=r"^recovery 1 failed$"):
        lock.acquire()
    assert not lock.held
    assert not locked_elsewhere(path)
    assert text(path) == dirty_by(os.getpid())
    assert (recoveries.calls, lock.recoveries) == (1, 0)
    with pytest.raises(RuntimeError, match="is not held"):
        lock.release()

    # The next acquire recovers again, and this time it works.
    lock.acquire()
    assert (recoveries.calls, lock.recoveries) == (2, 1)
    assert recoveries.held_while_running == [True, True]
    assert text(path) == dirty_by(os.getpid())
    lock.release()
    assert text(path) == CLEAN
    lock.close()


def test_release_without_acquire_raises(path: Path) -> None:
    lock = WritersLock(path, Recoveries(path))
    with pytest.raises(RuntimeError, match=r"^the writers' lock is not held$"):
        lock.release()
    assert not path.exists()
    with lock.holding():
        pass
    with pytest.raises(RuntimeError, match=r"^the writers' lock is not held$"):
        lock.release()
    with pytest.raises(RuntimeError, match=r"^the writers' lock is not held$"):
        lock.release(clean=False)
    assert text(path) == CLEAN
    lock.close()


# -- two processes ------------------------------------------------------------------


def test_a_holder_killed_holding_the_lock_is_recovered_once(holder: Holder, path: Path) -> None:
    assert holder.line() == f"held {holder.process.pid}"
    assert text(path) == dirty_by(holder.process.pid)
    assert locked_elsewhere(path)

    holder.send("die")
    assert holder.process.wait(timeout=WAIT) == -signal.SIGKILL
    # The kernel let go of the dead holder's flock; its file still says dirty.
    assert not locked_elsewhere(path)
    assert text(path) == dirty_by(holder.process.pid)

    recoveries = Recoveries(path)
    lock = WritersLock(path, recoveries)
    lock.acquire()
    assert (recoveries.calls, lock.recoveries) == (1, 1)
    assert recoveries.held_while_running == [True]
    assert text(path) == dirty_by(os.getpid())
    lock.release()
    assert text(path) == CLEAN
    with lock.holding():
        pass
    assert (recoveries.calls, lock.recoveries) == (1, 1)
    lock.close()


def test_a_second_process_waits_until_the_holder_lets_go(holder: Holder, path: Path) -> None:
    assert holder.line() == f"held {holder.process.pid}"
    recoveries = Recoveries(path)
    lock = WritersLock(path, recoveries)
    times: dict[str, float] = {}
    acquired = threading.Event()
    failed: list[BaseException] = []

    def contend() -> None:
        times["waiting"] = time.monotonic()
        try:
            lock.acquire()
        except BaseException as error:  # shown by the assertion below
            failed.append(error)
            raise
        times["acquired"] = time.monotonic()
        acquired.set()

    contender = threading.Thread(target=contend, daemon=True)
    contender.start()
    assert not acquired.wait(BLOCKED_FOR)
    assert not lock.held
    assert text(path) == dirty_by(holder.process.pid)

    holder.send("release")
    said, released_at = holder.line().split()
    assert said == "released"
    assert acquired.wait(WAIT), failed
    contender.join(WAIT)
    assert holder.process.wait(timeout=WAIT) == 0
    # time.monotonic is CLOCK_MONOTONIC: one clock for every process of the machine.
    assert times["waiting"] < float(released_at) <= times["acquired"]
    assert lock.held
    assert text(path) == dirty_by(os.getpid())
    assert recoveries.calls == 0  # the holder let go cleanly
    lock.release()
    assert text(path) == CLEAN
    lock.close()


# -- where the lock lives -------------------------------------------------------------


def test_lock_path_for_honours_the_directory_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "govmeter-writers-abc.lock"
    monkeypatch.delenv("METERING_LOCK_DIR", raising=False)
    assert lock_path_for("abc") == Path(tempfile.gettempdir()) / name
    assert lock_path_for("abc", str(tmp_path / "given")) == tmp_path / "given" / name

    monkeypatch.setenv("METERING_LOCK_DIR", str(tmp_path / "env"))
    assert lock_path_for("abc") == tmp_path / "env" / name
    assert lock_path_for("abc", None) == tmp_path / "env" / name
    assert lock_path_for("abc", str(tmp_path / "given")) == tmp_path / "given" / name
    assert lock_path_for("def") == tmp_path / "env" / "govmeter-writers-def.lock"

    monkeypatch.setenv("METERING_LOCK_DIR", "")
    assert lock_path_for("abc") == Path(tempfile.gettempdir()) / name


def test_store_identity_is_the_metering_database_uuid(client: Client) -> None:
    rows = client.query(IDENTITY_SQL).result_rows
    assert len(rows) == 1
    uuid = str(rows[0][0])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    assert uuid != "00000000-0000-0000-0000-000000000000"
    assert store_identity(client, "chdb://one") == uuid
    assert store_identity(client, "chdb://two") == uuid  # stable, whatever the spelling


class _Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class FakeClient:
    """Answers the identity query with fixed rows, and records what it was asked."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.queries: list[str] = []

    def query(self, sql: str) -> _Result:
        self.queries.append(sql)
        return _Result(self.rows)


@pytest.mark.parametrize(
    "rows",
    [[], [("",)], [("00000000-0000-0000-0000-000000000000",)]],
    ids=["no-database", "empty", "nil-uuid"],
)
def test_store_identity_falls_back_to_a_hash_of_the_address(rows: list[tuple[Any, ...]]) -> None:
    fake = FakeClient(rows)
    identity = store_identity(cast(Client, fake), "http://store:8123")
    assert identity == hashlib.sha256(b"http://store:8123").hexdigest()[:32]
    assert len(identity) == 32
    assert store_identity(cast(Client, fake), "http://store:8123") == identity
    other = hashlib.sha256(b"http://other:8123").hexdigest()[:32]
    assert store_identity(cast(Client, fake), "http://other:8123") == other
    assert fake.queries == [IDENTITY_SQL] * 3


def test_store_identity_of_a_fake_uuid_is_that_uuid() -> None:
    fake = FakeClient([("2f1c5a0e-0000-4000-8000-000000000001",)])
    identity = store_identity(cast(Client, fake), "http://store:8123")
    assert identity == "2f1c5a0e-0000-4000-8000-000000000001"
    assert lock_path_for(identity, "/locks") == Path(
        "/locks/govmeter-writers-2f1c5a0e-0000-4000-8000-000000000001.lock"
    )
