"""The local ClickHouse server process: the engine of the chdb wheel, serving only.

clickhouse-local (inside chdb) starts ClickHouse's own HTTP and native listeners with
`SYSTEM START LISTEN HTTP` / `TCP`, but only through the one-shot entry point
`chdb._chdb.query` (`chdb.connect` lacks the callback that starts servers), and only
for as long as that call runs. So the server is one such call: set up the record of
reads, start both listeners, then run a statement that never ends (the keeper). Facts
this rests on, each kept by a test in tests/integration/test_local_server.py so a chdb
upgrade that breaks one fails loudly:

  * the output format of that call becomes the HTTP default format: TSV, since CSV
    breaks clickhouse-connect's version probe;
  * ports, listen host and the users file come from `config.xml` in the working
    directory (and `config.d/` beside it), so the process runs inside its server
    directory;
  * the listeners start once per process, and the in-process API cannot be used
    while they run: this process only serves, every client (the worker too) connects
    over HTTP;
  * the call signs its session in ONCE, as `default` with an empty password from
    127.0.0.1, before its first statement (so before the listeners open); a loopback
    client looks the same to every network rule and password check. `default` is
    therefore checked by `EngineLogin` below, an authenticator ClickHouse asks over
    loopback HTTP (`http_authentication`), which lets exactly one sign-in as `default`
    pass: the engine's own. Every later login as `default` is refused, so no network
    client, over HTTP or the native protocol, signs in as `default`;
  * importing chdb signs an in-memory session in too, as `default`, reading config.xml
    of the working directory: the import happens in an empty directory, where that
    session reads no configuration and asks no authenticator;
  * stopping: SIGTERM here kills the keeper with `KILL QUERY` over HTTP, as
    `govmeter_server`, whose password is in this process's memory only (the same
    authenticator checks it); the call returns and the engine shuts down cleanly; a
    SIGKILL loses nothing committed (MergeTree parts are on disk when an INSERT returns).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import signal
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Final

from store.local_server.config import (
    ENGINE_USER,
    READ_AUDIT_DDL,
    SERVER_USER,
    ServerLayout,
    engine_login_xml,
)

__all__ = ["KEEPER_TAG", "EngineLogin", "keeper_sql", "serve"]

# Marks the keeper statement in system.processes, so `KILL QUERY` finds it.
KEEPER_TAG: Final = "govmeter-local-server-keeper"


def keeper_sql() -> str:
    """The engine's one call: the record of reads (created before any reader can sign
    in), both listeners, then one row a second for a very long time (about 30,000
    years)."""
    setup = "; ".join(("SYSTEM FLUSH LOGS", *READ_AUDIT_DDL))
    return (
        f"{setup}; SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
        f"SELECT /* {KEEPER_TAG} */ sleepEachRow(1) FROM numbers(1000000000000) "
        "SETTINGS max_block_size = 1, max_execution_time = 0"
    )


class EngineLogin:
    """The authenticator of `default` and `govmeter_server` (ClickHouse's
    http_authentication with the basic scheme: a GET with the login's credentials,
    200 lets it in). It answers on loopback at a secret path, and lets `default` in
    once: the engine's own sign-in, which comes before any listener opens. The server
    process's own login, `govmeter_server`, passes with a password it alone knows."""

    def __init__(self) -> None:
        self.path = secrets.token_urlsafe(24)
        self.server_password = secrets.token_urlsafe(24)
        self._engine_signed_in = False
        self._lock = threading.Lock()
        login = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                allowed = self.path == "/" + login.path and login.allows(
                    self.headers.get("Authorization", "")
                )
                self.send_response(200 if allowed else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per login would flood the server's log

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="engine-login", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def allows(self, authorization: str) -> bool:
        user, password = _basic(authorization)
        with self._lock:
            if user == ENGINE_USER and password == "" and not self._engine_signed_in:
                self._engine_signed_in = True  # the engine's own, and the last
                print(
                    f"clickhouse: the engine signed in as {ENGINE_USER}; no other login as "
                    f"{ENGINE_USER} is accepted",
                    file=sys.stderr,
                    flush=True,
                )
                return True
            return user == SERVER_USER and secrets.compare_digest(password, self.server_password)


def _basic(authorization: str) -> tuple[str, str]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        return "", "\0"  # no user, and a password nobody has
    try:
        user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", "\0"
    return user, password


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _import_engine() -> object:
    """chdb, imported in an empty directory (its import-time session reads the
    config.xml of the working directory, and would ask for a login as `default`)."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="govmeter-engine-") as empty:
        os.chdir(empty)
        try:
            from chdb import _chdb  # the undocumented entry point; chdb is pinned in pyproject
        finally:
            os.chdir(here)
    return _chdb


def serve(data_dir: Path, server_dir: Path, http_host: str, http_port: int) -> int:
    """Serve `data_dir` until SIGTERM or SIGINT, from the server directory (config.xml)."""
    login = EngineLogin()
    login.start()
    layout = ServerLayout(data_dir, server_dir)
    _write_private(layout.engine_login_xml, engine_login_xml(login.port, login.path))
    engine = _import_engine()
    os.chdir(server_dir)

    failure: list[BaseException] = []

    def keep_listening() -> None:
        try:
            result = engine.query(keeper_sql(), "TSV", path=str(data_dir))  # type: ignore[attr-defined]
            if result.has_error():
                failure.append(RuntimeError(result.error_message()))
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
        login.stop()
        return 1
    print("clickhouse: stopping (SIGTERM)", file=sys.stderr, flush=True)
    _kill_keeper(http_host, http_port, login.server_password)
    listener.join(timeout=30)
    login.stop()
    if listener.is_alive():
        print("clickhouse: the engine did not stop within 30 s; exiting", file=sys.stderr)
        return 1
    print("clickhouse: stopped", file=sys.stderr, flush=True)
    return 0


def _kill_keeper(host: str, port: int, password: str) -> None:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a wildcard host: reach it on loopback)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    sql = f"KILL QUERY WHERE query LIKE '%{KEEPER_TAG}%' AND query NOT LIKE '%KILL QUERY%' SYNC"
    token = base64.b64encode(f"{SERVER_USER}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{host}:{port}/",
        data=sql.encode(),
        headers={"Authorization": f"Basic {token}"},
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
