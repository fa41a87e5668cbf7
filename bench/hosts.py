"""`python -m bench.hosts N -- COMMAND...`: run COMMAND as N writers on N "hosts".

Each copy gets what a host of its own has: a temporary directory and a lock directory
of its own, its own writer name (`host-<i>`), and, where the machine lets a process
create a UTS namespace (`unshare --uts`, as root), its own host name. They share the
broker and the store and nothing else, as two containers or two machines would. Their
output is passed through line by line; the exit status is the first non-zero one (0
when every copy exits 0). The benches measure this process's tree: all N writers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["main", "named_hosts_available"]


def named_hosts_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "--uts", "sh", "-c", "hostname bench-probe && hostname"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "bench-probe"


def _pass_through(stream: IO[bytes], out: IO[bytes], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(line)
            out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or "--" not in args or not args[0].isdigit():
        print("usage: python -m bench.hosts N -- COMMAND...", file=sys.stderr)
        return 2
    count = int(args[0])
    command = args[args.index("--") + 1 :]
    named = named_hosts_available()
    base = Path(tempfile.mkdtemp(prefix="govmeter-hosts-"))
    processes = []
    lock = threading.Lock()
    readers = []
    for number in range(1, count + 1):
        host = f"host-{number}"
        home = base / host
        (home / "tmp").mkdir(parents=True)
        env = {
            **os.environ,
            "TMPDIR": str(home / "tmp"),
            "METERING_LOCK_DIR": str(home / "locks"),
            "METERING_WORKER_NAME": host,
        }
        wrapped = (
            ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "--", *command]
            if named
            else command
        )
        process = subprocess.Popen(wrapped, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        processes.append(process)
        for stream, out in (
            (process.stdout, sys.stdout.buffer),
            (process.stderr, sys.stderr.buffer),
        ):
            assert stream is not None
            reader = threading.Thread(target=_pass_through, args=(stream, out, lock), daemon=True)
            reader.start()
            readers.append(reader)
    codes = [process.wait() for process in processes]
    for reader in readers:
        reader.join(timeout=10)
    shutil.rmtree(base, ignore_errors=True)
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
