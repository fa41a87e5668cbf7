"""Connecting to the store: one clickhouse-connect client for `http(s)://` or `chdb://PATH`.

The default is the local ClickHouse server of `infra/clickhouse/start` over HTTP, which
any number of processes share. `chdb://PATH` opens the same engine in this process
(the benchmark compares the two, and single-process tools may use it); it can be
opened by one process per path, and a second gets a clear `StoreBusyError`.

A URL without credentials takes the password from CLICKHOUSE_PASSWORD, as
ClickHouse's own client does; it never appears in a message (`without_password`).
"""

from __future__ import annotations

import fcntl
import os
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
    "connect",
    "describe_store",
    "embedded_path",
    "for_a_cluster_writer",
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


def connect(url: str) -> Client:
    """Open the store named by CLICKHOUSE_URL."""
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
    if url.startswith(("http://", "https://")):
        extra: dict[str, Any] = {}
        password = os.environ.get("CLICKHOUSE_PASSWORD")
        if password and urlsplit(url).password is None:
            extra["password"] = password
        try:
            return clickhouse_connect.get_client(dsn=url, settings=_CLIENT_SETTINGS, **extra)
        except Exception as error:
            raise StoreError(
                f"CLICKHOUSE_URL={without_password(url)}: cannot reach the ClickHouse server: "
                f"{_first_line(error)}. Start the local server with infra/clickhouse/start (or "
                "`make demo`), or check the host, port, user and password (CLICKHOUSE_PASSWORD)."
            ) from error
    raise StoreError(
        f"CLICKHOUSE_URL={url}: unsupported scheme; use chdb://PATH or http(s)://host:8123"
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
