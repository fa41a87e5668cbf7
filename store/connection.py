"""Connecting to the store: one clickhouse-connect client for `http(s)://` or `chdb://PATH`.

The default is the local ClickHouse server of `infra/clickhouse/start` over HTTP, which
any number of processes share. `chdb://PATH` opens the same engine in this process
(the benchmark compares the two, and single-process tools may use it); it can be
opened by one process per path, and a second gets a clear `StoreBusyError`.

Who signs in (`store_login`), without anyone typing a password:
  * a URL with credentials (`http://user:pass@host:8123`) signs in as it says;
  * the local server of `infra/clickhouse/start` (a loopback URL on the HTTP port of the
    server directory that CLICKHOUSE_DATA_DIR / CLICKHOUSE_HTTP_PORT name, as `metering
    serve` finds its reporter) as its writer `govmeter_writer`, with the password of
    CLICKHOUSE_WRITER_PASSWORD, else the one in that server's `writer.password`;
  * any other server as its `default` user, with CLICKHOUSE_PASSWORD if set, as
    ClickHouse's own client does.
A password never appears in a message (`without_password`, `StoreLogin.source`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from schemas.errors import ServiceError

__all__ = [
    "CLUSTER_WRITER_SETTINGS",
    "StoreBusyError",
    "StoreError",
    "StoreLogin",
    "connect",
    "describe_store",
    "embedded_path",
    "for_a_cluster_writer",
    "store_login",
    "without_password",
]

# Inserts are synchronous (chDB defaults to async_insert=1, which is neither durable
# on return nor deduplicated), and large IN lists of event ids fit in one query.
_CLIENT_SETTINGS: Final[dict[str, Any]] = {
    "async_insert": 0,
    "max_query_size": 256 * 1024 * 1024,
}


# A writer on a cluster (one shard, several replicas) must see every commit any writer
# made on any replica before its own conditional commit, fold and lookup: inserts wait
# for a quorum of replicas, in order, and reads see every quorum insert
# (docs/clickhouse-cluster.md, "Several writers on a cluster").
CLUSTER_WRITER_SETTINGS: Final[dict[str, Any]] = {
    "insert_quorum": "auto",
    "insert_quorum_parallel": 0,
    "select_sequential_consistency": 1,
}


def for_a_cluster_writer(client: Client) -> Client:
    """`client` with `CLUSTER_WRITER_SETTINGS` on every query it sends."""
    for name, value in CLUSTER_WRITER_SETTINGS.items():
        client.set_client_setting(name, value)
    return client


class StoreError(ServiceError):
    """The store cannot be opened or used; the message says what to do."""


class StoreBusyError(StoreError):
    """The embedded store is owned by another running process."""


def embedded_path(url: str) -> Path | None:
    """The directory of a `chdb://PATH` URL (absolute), or None for a server URL."""
    if not url.startswith("chdb://"):
        return None
    rest = url.removeprefix("chdb://")
    if rest in ("", "memory", ":memory:"):
        return None
    return Path(rest).expanduser().resolve()


def describe_store(url: str) -> str:
    path = embedded_path(url)
    if path is not None:
        return f"embedded ClickHouse at {path}"
    if url.startswith("chdb://"):
        return "embedded ClickHouse in memory"
    return "ClickHouse server at " + without_password(url)


@dataclass(frozen=True)
class StoreLogin:
    """Who signs in to a server, and where the password comes from (never the secret
    itself in `source`). `user` None: the URL's own user, or ClickHouse's `default`."""

    user: str | None
    password: str | None
    source: str
    problem: str | None = None  # why no password was found, when one is needed

    def describe(self) -> str:
        return self.source if self.problem is None else f"{self.source}: {self.problem}"


def store_login(url: str, env: Mapping[str, str] | None = None) -> StoreLogin | None:
    """The login of a server URL (None for `chdb://`: the engine in this process has no
    users). `env` is the environment that names the local server (os.environ)."""
    if not url.startswith(("http://", "https://")):
        return None
    environment = os.environ if env is None else env
    parts = urlsplit(url)
    shared = environment.get("CLICKHOUSE_PASSWORD") or None
    if parts.username:
        if parts.password is not None or shared is None:
            return StoreLogin(None, None, f"CLICKHOUSE_URL (user {parts.username})")
        return StoreLogin(
            None, shared, f"CLICKHOUSE_URL (user {parts.username}), password CLICKHOUSE_PASSWORD"
        )
    from store.local_server import local_server_at
    from store.local_server.config import WRITER_USER

    local = local_server_at(url, dict(environment))
    if local is not None:
        given = environment.get("CLICKHOUSE_WRITER_PASSWORD") or None
        if given is not None:
            return StoreLogin(
                WRITER_USER,
                given,
                f"the local server's writer {WRITER_USER}, password CLICKHOUSE_WRITER_PASSWORD",
            )
        path = local.layout.writer_password_file
        source = f"the local server's writer {WRITER_USER}, password from {path}"
        password = local.existing_writer_password()
        if password is None:
            return StoreLogin(
                WRITER_USER,
                None,
                source,
                problem=(
                    "that file does not exist: start the server with infra/clickhouse/start "
                    "(restart it if an older release started it), or set "
                    "CLICKHOUSE_WRITER_PASSWORD to the password it was started with"
                ),
            )
        return StoreLogin(WRITER_USER, password, source)
    if shared is not None:
        return StoreLogin(None, shared, "user default, password CLICKHOUSE_PASSWORD")
    return StoreLogin(None, None, "user default without a password (CLICKHOUSE_URL has none)")


def connect(url: str, env: Mapping[str, str] | None = None) -> Client:
    """Open the store named by CLICKHOUSE_URL (signing in as `store_login` says)."""
    if url.startswith("chdb://"):
        path = embedded_path(url)
        if path is None:
            dsn = "chdb://:memory:"
        else:
            path.mkdir(parents=True, exist_ok=True)
            dsn = f"chdb://{path}"
        try:
            client = clickhouse_connect.get_client(dsn=dsn, settings=_CLIENT_SETTINGS)
        except Exception as error:
            if path is not None and _locked_by_another_process(path):
                raise StoreBusyError(
                    f"CLICKHOUSE_URL={url}: the embedded store at {path} is owned by another "
                    "running process (usually `metering worker`). Stop that process first, or "
                    "run the worker against a ClickHouse server (CLICKHOUSE_URL=http://...) so "
                    "that several processes can share it."
                ) from None
            raise StoreError(
                f"CLICKHOUSE_URL={url}: cannot open the embedded store: {error}"
            ) from error
        return client
    login = store_login(url, env)
    if login is not None:
        if login.problem is not None:
            raise StoreError(
                f"CLICKHOUSE_URL={without_password(url)}: no password to sign in with, as "
                f"{login.describe()}"
            )
        extra: dict[str, Any] = {}
        if login.user is not None:
            extra["username"] = login.user
        if login.password is not None:
            extra["password"] = login.password
        try:
            return clickhouse_connect.get_client(dsn=url, settings=_CLIENT_SETTINGS, **extra)
        except Exception as error:
            text = _first_line(error)
            if any(code in str(error) for code in _LOGIN_REFUSED):
                raise StoreError(
                    f"CLICKHOUSE_URL={without_password(url)}: the ClickHouse server refused the "
                    f"login ({login.source}): {text}. For the local server, restart it "
                    "(infra/clickhouse/stop && infra/clickhouse/start) if an older release "
                    "started it, and run commands with the CLICKHOUSE_DATA_DIR and "
                    "CLICKHOUSE_HTTP_PORT it was started with (or from the directory that "
                    "holds var/clickhouse); for another server, give its user and password in "
                    "CLICKHOUSE_URL."
                ) from error
            raise StoreError(
                f"CLICKHOUSE_URL={without_password(url)}: cannot reach the ClickHouse server: "
                f"{text}. Start the local server with infra/clickhouse/start (or "
                "`make demo`), or check the host, port, user and password (CLICKHOUSE_PASSWORD)."
            ) from error
    raise StoreError(
        f"CLICKHOUSE_URL={url}: unsupported scheme; use chdb://PATH or http(s)://host:8123"
    )


# ClickHouse's codes for a login it does not accept.
_LOGIN_REFUSED: Final = (
    "AUTHENTICATION_FAILED",
    "REQUIRED_PASSWORD",
    "UNKNOWN_USER",
    "IP_ADDRESS_NOT_ALLOWED",
)


def _locked_by_another_process(path: Path) -> bool:
    """ClickHouse holds an exclusive flock on PATH/status while it owns the directory."""
    status = path / "status"
    if not status.exists():
        return False
    with status.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
