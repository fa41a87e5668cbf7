"""The local ClickHouse server process: the engine of the chdb wheel, serving only.

clickhouse-local (inside chdb) starts ClickHouse's own HTTP and native listeners with
`SYSTEM START LISTEN HTTP` / `TCP`, but only through the one-shot entry point
`chdb._chdb.query` (`chdb.connect` lacks the callback that starts servers), and only
for as long as that call runs. So the server is one such call: start both listeners,
then run a statement that never ends (the keeper). Facts this rests on, each kept
by a test in tests/integration/test_local_server.py so a chdb upgrade that breaks one
fails loudly:

  * the output format of that call becomes the HTTP default format: TSV, since CSV
    breaks clickhouse-connect's version probe;
  * ports, listen host and the users file come from `config.xml` in the working
    directory, so the process runs inside its server directory;
  * the listeners start once per process, and the in-process API cannot be used
    while they run: this process only serves, every client (the worker too) connects
    over HTTP;
  * stopping: SIGTERM here kills the keeper with `KILL QUERY` over HTTP, the call
    returns and the engine shuts down cleanly; a SIGKILL loses nothing committed
    (MergeTree parts are on disk when an INSERT returns).
"""

from __future__ import annotations

import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Final

__all__ = ["KEEPER_TAG", "serve"]

# Marks the keeper statement in system.processes, so `KILL QUERY` finds it.
KEEPER_TAG: Final = "govmeter-local-server-keeper"

# Both listeners, then one row a second for a very long time (about 30,000 years).
_KEEPER_SQL: Final = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    f"SELECT /* {KEEPER_TAG} */ sleepEachRow(1) FROM numbers(1000000000000) "
    "SETTINGS max_block_size = 1, max_execution_time = 0"
)


def serve(data_dir: Path, http_host: str, http_port: int, password: str | None) -> int:
    """Serve `data_dir` until SIGTERM or SIGINT; the working directory holds config.xml."""
    from chdb import _chdb  # the undocumented entry point; chdb is pinned in pyproject

    failure: list[BaseException] = []

    def keep_listening() -> None:
        try:
            _chdb.query(_KEEPER_SQL, "TSV", path=str(data_dir))  # type: ignore[attr-defined]
        except BaseException as error:  # reported by the main thread
            failure.append(error)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listener = threading.Thread(target=keep_listening, name="clickhouse", daemon=True)
    listener.start()
    while listener.is_alive() and not stop.wait(0.5):
        pass
    if not stop.is_set():
        print(f"clickhouse: the server stopped by itself: {_describe(failure)}", file=sys.stderr)
        return 1
    print("clickhouse: stopping (SIGTERM)", file=sys.stderr, flush=True)
    _kill_keeper(http_host, http_port, password)
    listener.join(timeout=30)
    if listener.is_alive():
        print("clickhouse: the engine did not stop within 30 s; exiting", file=sys.stderr)
        return 1
    print("clickhouse: stopped", file=sys.stderr, flush=True)
    return 0


def _kill_keeper(host: str, port: int, password: str | None) -> None:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a wildcard host: reach it on loopback)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    sql = f"KILL QUERY WHERE query LIKE '%{KEEPER_TAG}%' AND query NOT LIKE '%KILL QUERY%' SYNC"
    request = urllib.request.Request(
        f"http://{host}:{port}/?" + urllib.parse.urlencode({"user": "default"}),
        data=sql.encode(),
        headers={"X-ClickHouse-Key": password or ""},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()
    except (urllib.error.URLError, OSError) as error:
        print(f"clickhouse: could not stop the keeper over HTTP: {error}", file=sys.stderr)


def _describe(failure: list[BaseException]) -> str:
    if not failure:
        return "no error reported"
    error = failure[0]
    return f"{type(error).__name__}: {str(error)[:500]}"
