"""The local ClickHouse server's configuration files, rendered from a few settings. Pure.

The server (`store.local_server.process`) is clickhouse-local from the chdb wheel with
ClickHouse's own HTTP and native listeners started. clickhouse-local reads
`config.xml` from its working directory, so the server runs inside its own directory
(`<data dir>-server/` by default) holding:

    config.xml    ports, listen host, keep-alive, log file, where users.xml is
    users.xml     the built-in users (below), rewritten on every start
    users.d/      one file per agency user (`metering access agency-user --apply`);
                  ClickHouse merges them into users.xml, read at start only
    clickhouse.log, clickhouse.pid, reporter.password

Users, in the manner of ClickHouse's own packages:
  * `default`: the writer (workers, billing, migrations). Loopback networks only, and
    no password: the engine signs its own session in as `default` without one, so a
    password would stop the server from starting (`control.py` refuses
    CLICKHOUSE_PASSWORD for that reason).
  * `reporter`: readonly = 1, SELECT on every metering view and the tables behind
    them, nothing else; password from CLICKHOUSE_REPORTER_PASSWORD or generated once
    into `reporter.password` (mode 0600).
  * `govmeter_agency_<id>`: readonly = 1, SELECT on the agency-row views and tables only, each
    with the row filter `agency_id = '<id>'`.

Passwords never appear in these files or in logs: only their sha256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

from schemas.events import AGENCY_ID

__all__ = [
    "AGENCY_FILTERED",
    "QUERY_LOG_TTL_DAYS",
    "READ_AUDIT_DAYS",
    "READ_AUDIT_DDL",
    "READ_AUDIT_TABLE",
    "REPORTER_READS",
    "ServerLayout",
    "agency_user_name",
    "agency_user_xml",
    "password_sha256",
    "render_config_xml",
    "render_server_reporter_xml",
    "render_users_xml",
]


# What the reporter may read: the contract views and every table a report reads.
REPORTER_READS: Final = (
    "metering.agency_daily",
    "metering.agency_monthly",
    "metering.monthly_totals",
    "metering.rejected_events",
    "metering.agency_daily_rollup",
    "metering.model_daily_rollup",
    "metering.agency_monthly_rollup",
    "metering.model_monthly_rollup",
    "metering.tenant_daily_rollup",
    "metering.rejections_log",
    "metering.flush_ledger",
    "metering.flush_applied",
    "metering.billing_runs",
    "metering.billing_lines",
    "metering.billing_claims",
    "metering.expired_offsets",
    "metering.certificates",
    # Corrections (migration 0010): who asked, who approved, why, and which events each
    # marked (event ids, no user ids). Not corrected_events: it reads counted_events.
    "metering.corrections",
    "metering.correction_marks",
    "metering.corrections_applied",
    "metering.schema_versions",
)

# What an agency user may read, each with its row filter: every view and table that
# holds agency rows. `monthly_totals` reads agency_monthly_rollup, so through the
# filter it totals the agency's own rows only. Left out on purpose: `rejected_events`
# (it reads the flush ledger, which is not per agency), tenant_daily_rollup (tenant
# wide), counted_events (raw records of single users) and the ledger tables.
AGENCY_FILTERED: Final = (
    "metering.agency_daily",
    "metering.agency_monthly",
    "metering.monthly_totals",
    "metering.agency_daily_rollup",
    "metering.model_daily_rollup",
    "metering.agency_monthly_rollup",
    "metering.model_monthly_rollup",
    "metering.billing_lines",
)
# Views without an agency_id column of their own: the filter applies in the tables
# they read (views run with the reader's rights), so they get the grant only.
_NO_AGENCY_COLUMN: Final = frozenset({"metering.monthly_totals"})

LOOPBACK: Final = ("127.0.0.1", "::1")

# Who read what. The server's system.query_log holds every query with its user, but
# clickhouse-local keeps its `system` database in memory: the table is created anew at
# each start and the previous run's parts are deleted (measured with chdb's 26.9).
# A materialized view in a database on disk copies each finished query of a user other
# than the writer as the log is flushed (every second, and at a clean stop), so the
# record outlives restarts. Its own database: not the metering schema (the in-process
# chdb:// store has no query log), and no reader has a grant on it.
QUERY_LOG_TTL_DAYS: Final = 100
READ_AUDIT_DAYS: Final = 400
READ_AUDIT_TABLE: Final = "govmeter_audit.read_audit"
READ_AUDIT_DDL: Final = (
    "CREATE DATABASE IF NOT EXISTS govmeter_audit",
    f"CREATE TABLE IF NOT EXISTS {READ_AUDIT_TABLE} ("
    "event_time DateTime64(6), query_id String, user String, tables Array(String), "
    "query String, result_rows UInt64, address String"
    ") ENGINE = MergeTree PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, query_id) "
    f"TTL toDateTime(event_time) + INTERVAL {READ_AUDIT_DAYS} DAY",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS govmeter_audit.read_audit_from_query_log "
    f"TO {READ_AUDIT_TABLE} AS SELECT event_time_microseconds AS event_time, query_id, "
    "user, tables, query, result_rows, toString(address) AS address FROM system.query_log "
    "WHERE type = 'QueryFinish' AND user NOT IN ('default', '')",
)


@dataclass(frozen=True)
class ServerLayout:
    """Where one local server keeps its data and its own files."""

    data_dir: Path
    server_dir: Path

    @classmethod
    def for_data_dir(cls, data_dir: Path, server_dir: Path | None = None) -> ServerLayout:
        data = data_dir.expanduser().resolve()
        return cls(data, (server_dir or data.with_name(data.name + "-server")).resolve())

    @property
    def config_xml(self) -> Path:
        return self.server_dir / "config.xml"

    @property
    def users_xml(self) -> Path:
        return self.server_dir / "users.xml"

    @property
    def users_d(self) -> Path:
        return self.server_dir / "users.d"

    @property
    def log_file(self) -> Path:
        return self.server_dir / "clickhouse.log"

    @property
    def pid_file(self) -> Path:
        return self.server_dir / "clickhouse.pid"

    @property
    def reporter_password_file(self) -> Path:
        return self.server_dir / "reporter.password"


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def render_config_xml(
    layout: ServerLayout, *, http_port: int, tcp_port: int, listen_host: str = "127.0.0.1"
) -> str:
    """Ports and host of the listeners; a short keep-alive lets the server stop at once
    (an idle keep-alive connection held a stopping server about 5 s); the query log,
    flushed every second, which `READ_AUDIT_DDL` copies to disk."""
    return f"""\
<clickhouse>
    <!-- Rendered by infra/clickhouse/start (store/local_server/config.py). -->
    <listen_host>{escape(listen_host)}</listen_host>
    <http_port>{int(http_port)}</http_port>
    <tcp_port>{int(tcp_port)}</tcp_port>
    <keep_alive_timeout>2</keep_alive_timeout>
    <max_connections>1024</max_connections>
    <users_config>{escape(str(layout.users_xml))}</users_config>
    <logger>
        <level>information</level>
        <log>{escape(str(layout.log_file))}</log>
        <errorlog>{escape(str(layout.log_file))}</errorlog>
        <console>0</console>
    </logger>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>1000</flush_interval_milliseconds>
        <ttl>event_date + INTERVAL {QUERY_LOG_TTL_DAYS} DAY</ttl>
    </query_log>
</clickhouse>
"""


def _password_element(sha256_hex: str | None) -> str:
    if sha256_hex is None:
        return "<password></password>"
    return f"<password_sha256_hex>{sha256_hex}</password_sha256_hex>"


def _networks(hosts: tuple[str, ...]) -> str:
    return "".join(f"<ip>{escape(host)}</ip>" for host in hosts)


def _grants(tables: tuple[str, ...]) -> str:
    return "".join(f"\n                <query>GRANT SELECT ON {name}</query>" for name in tables)


# Shared by the local server's users.xml and the compose server's reporter file: the
# profile every reader runs in and the hourly quota of agency users.
_READONLY_PROFILE: Final = """\
        <readonly>
            <readonly>1</readonly>
            <max_execution_time>300</max_execution_time>
            <max_memory_usage>10000000000</max_memory_usage>
        </readonly>
"""
_AGENCY_QUOTA: Final = """\
        <agency>
            <interval>
                <duration>3600</duration>
                <queries>1000</queries>
                <result_rows>100000000</result_rows>
                <read_rows>10000000000</read_rows>
                <execution_time>3600</execution_time>
            </interval>
        </agency>
"""


def render_users_xml(
    *,
    default_password_sha256: str | None,
    reporter_password_sha256: str,
    reader_networks: tuple[str, ...] = LOOPBACK,
) -> str:
    """The built-in users; agency users live in users.d/ (`agency_user_xml`)."""
    return f"""\
<clickhouse>
    <!-- Rendered by infra/clickhouse/start (store/local_server/config.py); rewritten on
         every start. Agency users are in users.d/. No password is stored here, only
         sha256 digests. -->
    <profiles>
        <default>
            <!-- Synchronous inserts: durable and deduplicated when they return. -->
            <async_insert>0</async_insert>
            <max_query_size>268435456</max_query_size>
        </default>
{_READONLY_PROFILE}    </profiles>
    <quotas>
        <default></default>
{_AGENCY_QUOTA}    </quotas>
    <users>
        <default>
            {_password_element(default_password_sha256)}
            <networks>{_networks(LOOPBACK)}</networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>0</access_management>
        </default>
{_reporter_user(_password_element(reporter_password_sha256), reader_networks)}
    </users>
</clickhouse>
"""


def _reporter_user(password: str, networks: tuple[str, ...]) -> str:
    return f"""\
        <reporter>
            {password}
            <networks>{_networks(networks)}</networks>
            <profile>readonly</profile>
            <quota>default</quota>
            <grants>{_grants(REPORTER_READS)}
            </grants>
        </reporter>"""


def render_server_reporter_xml() -> str:
    """The reporter for a ClickHouse server's users.d (docker-compose.yml mounts it):
    its password comes from the server's CLICKHOUSE_REPORTER_PASSWORD environment, and
    any network may reach it (the port is published on the host's loopback only)."""
    return f"""\
<clickhouse>
    <!-- The read-only reporter, the profile and quota agency users use, as on the local
         server (store/local_server/config.py). Agency users go beside this file:
         metering access agency-user (users-dir). Regenerate this one with:
         python -m store.local_server reporter-xml -->
    <profiles>
{_READONLY_PROFILE}    </profiles>
    <quotas>
{_AGENCY_QUOTA}    </quotas>
    <users>
{_reporter_user('<password from_env="CLICKHOUSE_REPORTER_PASSWORD"/>', ("::/0",))}
    </users>
</clickhouse>
"""


def agency_user_name(agency_id: str) -> str:
    """`fed-gsa` -> `govmeter_agency_fed_gsa` (agency ids never contain `_`: one-to-one),
    the same name `metering access agency-user` gives a server's SQL user."""
    if AGENCY_ID.fullmatch(agency_id) is None:
        raise ValueError(
            f"{agency_id!r} is not an agency id: 1 to 64 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return "govmeter_agency_" + agency_id.replace("-", "_")


def agency_user_xml(
    agency_id: str, password_sha256_hex: str, networks: tuple[str, ...] = LOOPBACK
) -> str:
    """One agency's read-only user: SELECT on its rows of every agency view and table."""
    user = agency_user_name(agency_id)
    if re.fullmatch(r"[0-9a-f]{64}", password_sha256_hex) is None:
        raise ValueError("the password hash must be 64 lower-case hex digits (sha256)")
    by_database: dict[str, list[str]] = {}
    for name in AGENCY_FILTERED:
        if name in _NO_AGENCY_COLUMN:
            continue
        database, table = name.split(".")
        by_database.setdefault(database, []).append(
            f"<{table}><filter>agency_id = '{agency_id}'</filter></{table}>"
        )
    filters = "".join(
        f"<{database}>{''.join(tables)}</{database}>" for database, tables in by_database.items()
    )
    return f"""\
<clickhouse>
    <!-- Agency {agency_id}: written by metering access agency-user (apply). -->
    <users>
        <{user}>
            {_password_element(password_sha256_hex)}
            <networks>{_networks(networks)}</networks>
            <profile>readonly</profile>
            <quota>agency</quota>
            <databases>{filters}</databases>
            <grants>{_grants(AGENCY_FILTERED)}
            </grants>
        </{user}>
    </users>
</clickhouse>
"""
