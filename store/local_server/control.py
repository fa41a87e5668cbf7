"""Start, stop and probe the local ClickHouse server (`infra/clickhouse/start`, `stop`).

Start is idempotent: a server already running on the same data answers and nothing
is done. Otherwise the configuration is rendered (`config.py`), the server process
(`process.py`) is started in a session of its own, and start returns once a query
answers over HTTP, asked as the writer (`govmeter_writer`: no network client signs in
as `default`). Stop ends only the server whose pid file is in this server
directory, and only if that pid still runs this server: SIGTERM, then SIGKILL after
the stop timeout.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from schemas.errors import ServiceError
from store.local_server.config import (
    WRITER_USER,
    ServerLayout,
    agency_user_name,
    agency_user_xml,
    password_sha256,
    render_config_xml,
    render_users_xml,
)

__all__ = ["LocalServer", "LocalServerError", "ServerOptions", "local_server_at"]

_PROCESS_MODULE: Final = "store.local_server"


class LocalServerError(ServiceError):
    """The local server could not be started or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServerOptions:
    """Every setting of the local server, each from its environment variable."""

    layout: ServerLayout
    http_port: int = 8123
    tcp_port: int = 9000
    listen_host: str = "127.0.0.1"
    password: str | None = None  # CLICKHOUSE_PASSWORD: refused, see `start`
    writer_password: str | None = None  # CLICKHOUSE_WRITER_PASSWORD
    reporter_password: str | None = None  # CLICKHOUSE_REPORTER_PASSWORD
    start_timeout: float = 60.0
    stop_timeout: float = 30.0

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> ServerOptions:
        env = dict(os.environ if env is None else env)
        server_dir = env.get("CLICKHOUSE_SERVER_DIR")
        backups_dir = env.get("CLICKHOUSE_BACKUP_DIR")
        layout = ServerLayout.for_data_dir(
            Path(env.get("CLICKHOUSE_DATA_DIR") or "./var/clickhouse"),
            Path(server_dir) if server_dir else None,
            Path(backups_dir) if backups_dir else None,
        )
        return cls(
            layout=layout,
            http_port=_port(env, "CLICKHOUSE_HTTP_PORT", 8123),
            tcp_port=_port(env, "CLICKHOUSE_TCP_PORT", 9000),
            listen_host=env.get("CLICKHOUSE_LISTEN_HOST") or "127.0.0.1",
            password=env.get("CLICKHOUSE_PASSWORD") or None,
            writer_password=env.get("CLICKHOUSE_WRITER_PASSWORD") or None,
            reporter_password=env.get("CLICKHOUSE_REPORTER_PASSWORD") or None,
            start_timeout=_seconds(env, "CLICKHOUSE_START_TIMEOUT", 60.0),
            stop_timeout=_seconds(env, "CLICKHOUSE_STOP_TIMEOUT", 30.0),
        )

    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.listen_host in ("0.0.0.0", "::") else self.listen_host  # noqa: S104

    @property
    def http_url(self) -> str:
        return f"http://{self.probe_host}:{self.http_port}"


def _port(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LocalServerError(f"{name}={raw!r}: must be a TCP port number, 1 to 65535")
    return int(raw)


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LocalServerError(f"{name}={raw!r}: must be a number of seconds") from None
    if value <= 0:
        raise LocalServerError(f"{name}={raw!r}: must be more than 0 seconds")
    return value


class LocalServer:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.layout = options.layout

    # -- probes ---------------------------------------------------------------

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process still runs this server."""
        try:
            pid = int(self.layout.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _runs_this_server(pid, self.layout.server_dir) else None

    def answers(self, timeout: float = 2.0) -> bool:
        """Does `SELECT 1` answer over HTTP, asked as the writer?"""
        return self._probe(timeout) == "answers"

    def _probe(self, timeout: float) -> str:
        """`answers`, `refuses` (it answered, but not to the writer's login: a server
        started with other users, or another password) or `down`."""
        password = self.existing_writer_password()
        request = urllib.request.Request(  # noqa: S310 (our own loopback server)
            self.options.http_url + "/?query=SELECT%201",
            headers=_auth_headers(WRITER_USER, password or ""),
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return "answers" if response.read().strip() == b"1" else "down"
        except urllib.error.HTTPError as error:
            return "refuses" if error.code in (401, 403, 516) else "down"
        except (urllib.error.URLError, OSError):
            return "down"

    # -- start ----------------------------------------------------------------

    def start(self) -> str:
        """Start the server unless it runs; return one line saying what happened."""
        options, layout = self.options, self.layout
        if options.password:
            raise LocalServerError(
                "clickhouse: CLICKHOUSE_PASSWORD is set, but the local server has no user it "
                "could be the password of: `default` is its engine's own in-process session "
                "and accepts no network login at all (the engine signs itself in without a "
                "password, so `default` cannot have one), and the writer is "
                f"{WRITER_USER}, whose password is CLICKHOUSE_WRITER_PASSWORD (else "
                f"generated once into {self.layout.writer_password_file}). Unset "
                "CLICKHOUSE_PASSWORD for the local server, and set CLICKHOUSE_WRITER_PASSWORD "
                "to choose the writer's password."
            )
        pid = self.running_pid()
        if pid is not None:
            if self._wait_until_answering(pid, options.start_timeout):
                return f"clickhouse: already running on {options.http_url} (pid {pid})"
            if self._probe(2.0) == "refuses":
                raise LocalServerError(
                    f"clickhouse: pid {pid} runs the server of {layout.server_dir}, but it "
                    f"refuses the login of {WRITER_USER}: it was started by an older release "
                    "or with another CLICKHOUSE_WRITER_PASSWORD. Restart it so that it reads "
                    "the current users: infra/clickhouse/stop && infra/clickhouse/start"
                )
            raise LocalServerError(
                f"clickhouse: pid {pid} runs the server of {layout.server_dir} but it does not "
                f"answer on {options.http_url}; see {layout.log_file}, or stop it with "
                "infra/clickhouse/stop"
            )
        for name, port in (
            ("CLICKHOUSE_HTTP_PORT", options.http_port),
            ("CLICKHOUSE_TCP_PORT", options.tcp_port),
        ):
            if _port_in_use(options.probe_host, port):
                raise LocalServerError(
                    f"clickhouse: {name}={port} is in use by another process on "
                    f"{options.probe_host}; stop it or choose another port with {name}"
                )
        began = time.monotonic()
        self._write_configuration()
        pid = self._spawn()
        if not self._wait_until_answering(pid, options.start_timeout):
            tail = _tail(layout.log_file)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise LocalServerError(
                f"clickhouse: the server did not answer on {options.http_url} within "
                f"{options.start_timeout:.0f} s (CLICKHOUSE_START_TIMEOUT) or stopped; from "
                f"{layout.log_file}:\n{tail}"
            )
        return (
            f"clickhouse: ready on {options.http_url} (native TCP {options.tcp_port}, pid {pid}, "
            f"started in {time.monotonic() - began:.1f}s, data {layout.data_dir}, "
            f"log {layout.log_file})"
        )

    def _write_configuration(self) -> None:
        options, layout = self.options, self.layout
        layout.data_dir.mkdir(parents=True, exist_ok=True)
        layout.users_d.mkdir(parents=True, exist_ok=True)
        layout.backups.mkdir(parents=True, exist_ok=True)
        layout.user_files.mkdir(parents=True, exist_ok=True)
        layout.server_dir.chmod(0o700)
        layout.config_xml.write_text(
            render_config_xml(
                layout,
                http_port=options.http_port,
                tcp_port=options.tcp_port,
                listen_host=options.listen_host,
            )
        )
        _write_private(
            layout.users_xml,
            render_users_xml(
                writer_password_sha256=password_sha256(self.writer_password()),
                reporter_password_sha256=password_sha256(self.reporter_password()),
            ),
        )

    def writer_password(self) -> str:
        """CLICKHOUSE_WRITER_PASSWORD, else the one generated at the first start. Given
        in the environment, a generated file left from before is removed: it no longer
        signs in, and commands must not take it."""
        path = self.layout.writer_password_file
        if self.options.writer_password:
            path.unlink(missing_ok=True)
            return self.options.writer_password
        if path.exists():
            return path.read_text().strip()
        self.layout.server_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        _write_private(path, password + "\n")
        return password

    def existing_writer_password(self) -> str | None:
        """The writer's password as a command finds it (never generated here):
        CLICKHOUSE_WRITER_PASSWORD, else writer.password, else None."""
        if self.options.writer_password:
            return self.options.writer_password
        try:
            return self.layout.writer_password_file.read_text().strip() or None
        except OSError:
            return None

    def reporter_password(self) -> str:
        """CLICKHOUSE_REPORTER_PASSWORD, else the one generated at the first start."""
        if self.options.reporter_password:
            return self.options.reporter_password
        path = self.layout.reporter_password_file
        if path.exists():
            return path.read_text().strip()
        self.layout.server_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        _write_private(path, password + "\n")
        return password

    def _spawn(self) -> int:
        options, layout = self.options, self.layout
        if layout.log_file.exists():
            layout.log_file.replace(layout.log_file.with_suffix(".log.prev"))
        env = dict(os.environ)
        for secret in (
            "CLICKHOUSE_PASSWORD",
            "CLICKHOUSE_WRITER_PASSWORD",
            "CLICKHOUSE_REPORTER_PASSWORD",
        ):
            env.pop(secret, None)  # the server process needs none of them
        with layout.log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    _PROCESS_MODULE,
                    "serve",
                    "--data-dir",
                    str(layout.data_dir),
                    "--server-dir",
                    str(layout.server_dir),
                    "--http-host",
                    options.probe_host,
                    "--http-port",
                    str(options.http_port),
                ],
                cwd=layout.server_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        layout.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def _wait_until_answering(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers(timeout=1.0):
                return True
            if not _alive(pid):
                return False
            time.sleep(0.1)
        return False

    # -- users ----------------------------------------------------------------

    def write_agency_user(self, agency_id: str, password_sha256_hex: str) -> Path:
        """users.d/<user>.xml for one agency; the server reads it at its next start."""
        self.layout.users_d.mkdir(parents=True, exist_ok=True)
        path = self.layout.users_d / f"{agency_user_name(agency_id)}.xml"
        _write_private(path, agency_user_xml(agency_id, password_sha256_hex))
        return path

    # -- stop -----------------------------------------------------------------

    def stop(self) -> str:
        layout = self.layout
        pid = self.running_pid()
        if pid is None:
            layout.pid_file.unlink(missing_ok=True)
            return f"clickhouse: not running (server directory {layout.server_dir})"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.options.stop_timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        how = "stopped"
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
            how = f"killed after {self.options.stop_timeout:.0f} s (CLICKHOUSE_STOP_TIMEOUT)"
        layout.pid_file.unlink(missing_ok=True)
        return f"clickhouse: {how} (pid {pid})"


def local_server_at(url: str, env: dict[str, str] | None = None) -> LocalServer | None:
    """The local server that CLICKHOUSE_URL names, if it is one: a loopback URL on the
    HTTP port of the server directory the environment points at (CLICKHOUSE_DATA_DIR,
    CLICKHOUSE_HTTP_PORT, as infra/clickhouse/start reads them)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    options = ServerOptions.from_environment(env)
    if (parts.port or 80) != options.http_port or not options.layout.config_xml.exists():
        return None
    return LocalServer(options)


def _auth_headers(user: str, password: str | None) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (digests and generated passwords)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a child we started and nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _runs_this_server(pid: int, server_dir: Path) -> bool:
    if not _alive(pid):
        return False
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _PROCESS_MODULE.encode() in arguments and str(server_dir).encode() in arguments


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    """The first error the server logged (the cause; the stack trace after it is noise),
    else the last lines of its log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text if "<Error>" in line or "Exception:" in line]
    if errors:
        return errors[0][:1000]
    return "\n".join(text[-lines:])
