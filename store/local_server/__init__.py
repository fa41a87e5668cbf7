"""The local ClickHouse server: the real engine of the chdb wheel behind ClickHouse's
own HTTP and native protocols, so every command, billing job and reporter shares one
store as it would a production server. `infra/clickhouse/start` and `stop` run it."""

from store.local_server.config import ServerLayout, agency_user_name, agency_user_xml
from store.local_server.control import (
    LocalServer,
    LocalServerError,
    ServerOptions,
    local_server_at,
)

__all__ = [
    "LocalServer",
    "LocalServerError",
    "ServerLayout",
    "ServerOptions",
    "agency_user_name",
    "agency_user_xml",
    "local_server_at",
]
