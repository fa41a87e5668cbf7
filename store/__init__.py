"""The store layer: connecting to ClickHouse and the local server on the embedded engine.

connection.py   one clickhouse-connect client for http(s):// or chdb://PATH
local_server/   the local ClickHouse server (infra/clickhouse/start, stop)
"""

from store.connection import (
    StoreBusyError,
    StoreError,
    connect,
    describe_store,
    embedded_path,
    without_password,
)

__all__ = [
    "StoreBusyError",
    "StoreError",
    "connect",
    "describe_store",
    "embedded_path",
    "without_password",
]
