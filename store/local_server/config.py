"""The local ClickHouse server's configuration files, rendered from a few settings. Pure.

The server (`store.local_server.process`) is clickhouse-local from the chdb wheel with
ClickHouse's own HTTP and native listeners started. clickhouse-local reads
`config.xml` from its working directory, so the server runs inside its own directory
(`<data dir>-server/` by default) holding:

    config.xml    ports, listen host, keep-alive, log file, where users.xml is
    config.d/     the engine's login authenticator (written by the server process at
                  each start: its port and a secret path, `engine_login_xml`)
    users.xml     the built-in users (below), rewritten on every start
    users.d/      one file per agency user (`metering access agency-user --apply`);
                  ClickHouse merges them into users.xml, read at start only
    clickhouse.log, clickhouse.pid, reporter.password, writer.password

Users, in the manner of ClickHouse's own packages:
  * `default`: the engine's own in-process session only. The engine signs that session
    in as `default` without a password from 127.0.0.1, like any loopback client, so no
    password or network rule can tell them apart. `default` is therefore checked by the
    server process's own authenticator (`http_authentication`), which accepts exactly
    one sign-in, the engine's, made before any listener is open: every network login as
    `default` (HTTP or native, with any password or none) is refused.
  * `govmeter_server`: the server process itself (it stops the engine with KILL QUERY);
    its password lives in that process's memory only, checked by the same authenticator.
  * `govmeter_writer`: workers, migrations, billing, audit. Loopback networks only; the
    grants of `WRITER_GRANTS`, each for a statement the commands run, and no more;
    password from CLICKHOUSE_WRITER_PASSWORD or generated once into `writer.password`.
  * `reporter`: readonly = 1, SELECT on every metering view and the tables behind
    them, nothing else; password from CLICKHOUSE_REPORTER_PASSWORD or generated once
    into `reporter.password` (mode 0600).
  * `govmeter_agency_<id>`: readonly = 1, SELECT on the agency-row views and tables only,
    each with a row filter to the agency's own rows (`agency_filters`).

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
    "ENGINE_LOGIN_SERVER",
    "ENGINE_USER",
    "QUERY_LOG_TTL_DAYS",
    "READ_AUDIT_DAYS",
    "READ_AUDIT_DDL",
    "READ_AUDIT_TABLE",
    "REPORTER_READS",
    "SERVER_USER",
    "WRITER_GRANTS",
    "WRITER_USER",
    "ServerLayout",
    "agency_filters",
    "agency_user_name",
    "agency_user_xml",
    "engine_login_xml",
    "password_sha256",
    "render_config_xml",
    "render_server_reporter_xml",
    "render_users_xml",
]

ENGINE_USER: Final = "default"  # the engine's in-process session: no network login
SERVER_USER: Final = "govmeter_server"  # the server process (KILL QUERY at its stop)
WRITER_USER: Final = "govmeter_writer"
# The http_authentication server of `default` and `govmeter_server`: the server
# process's own authenticator (`store.local_server.process`).
ENGINE_LOGIN_SERVER: Final = "govmeter_engine_login"


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
    "metering.correction_agencies",
    "metering.schema_versions",
)

# What an agency user may read, each with its row filter (`agency_filters`): every view
# and table that holds agency rows, and the corrections of its own events.
# `monthly_totals` reads agency_monthly_rollup, so through the filter it totals the
# agency's own rows only. Left out on purpose: `rejected_events` (it reads the flush
# ledger, which is not per agency), tenant_daily_rollup (tenant wide), counted_events
# (raw records of single users), corrected_events (the same) and the ledger tables.
AGENCY_FILTERED: Final = (
    "metering.agency_daily",
    "metering.agency_monthly",
    "metering.monthly_totals",
    "metering.agency_daily_rollup",
    "metering.model_daily_rollup",
    "metering.agency_monthly_rollup",
    "metering.model_monthly_rollup",
    "metering.billing_lines",
    "metering.corrections",
    "metering.correction_marks",
    "metering.corrections_applied",
    "metering.correction_agencies",
)
# Views without an agency_id column of their own: the filter applies in the tables
# they read (views run with the reader's rights), so they get the grant only.
_NO_AGENCY_COLUMN: Final = frozenset({"metering.monthly_totals"})

# Which agency sees which correction (migration 0014, `metering.correction_agencies`:
# every agency an event a correction dealt with was in before it, after it, or when it
# was first counted; store/corrections/sql.py fills it from the committed record). A
# row filter may hold a subquery: ClickHouse runs it with the reader's rights and its
# own row filters, so each subquery below also reads the agency's own rows only.
_CORRECTION_FILTERS: Final = {
    # a range correction of the agency, or one that dealt with an event of the agency
    "metering.corrections": (
        "scope_agency_id = '{agency}' OR correction_seq IN (SELECT correction_seq "
        "FROM metering.correction_agencies WHERE agency_id = '{agency}')"
    ),
    # the marks of events of the agency (before, after, or as first counted)
    "metering.correction_marks": (
        "(correction_seq, event_id) IN (SELECT correction_seq, event_id "
        "FROM metering.correction_agencies WHERE agency_id = '{agency}')"
    ),
    # the rows of the corrections above
    "metering.corrections_applied": (
        "correction_seq IN (SELECT correction_seq FROM metering.corrections "
        "WHERE scope_agency_id = '{agency}') OR correction_seq IN (SELECT correction_seq "
        "FROM metering.correction_agencies WHERE agency_id = '{agency}')"
    ),
}

# Everything the writer does, and no more. Each grant names the statements that need
# it (the SQL is in store/sql/, store/migrations.py, store/ledger/sql.py,
# store/corrections/sql.py, store/writers/, store/retention.py, metering/billing/runs.py,
# metering/audit.py). Not granted, so refused: ALTER UPDATE (rewriting a counted value),
# DROP of any table, view or database but the one below, TRUNCATE, DELETE from the
# ledger and the record of corrections, changing a view (CREATE OR REPLACE), users,
# roles, row policies, quotas and settings profiles, KILL QUERY, SYSTEM but FLUSH LOGS,
# and every other database. ClickHouse lets any user read the system tables it needs
# (system.tables, system.clusters, system.one), listing only what it has a grant on.
WRITER_GRANTS: Final = (
    # Every command reads the store; writers append to it: the ledger and staged rows
    # (worker), rollup folds and correction rebuilds (INSERT ... SELECT), the writers'
    # registry, heartbeats and leases, expired offsets, corrections, billing runs, lines
    # and claims, certificates, the migrations' record and one-time backfills.
    "GRANT SELECT, INSERT ON metering.*",
    # `metering migrate` (every writer migrates first): CREATE DATABASE IF NOT EXISTS
    # metering, the numbered CREATE TABLE / CREATE VIEW statements, and the additive
    # ALTERs of the migrations (0008, 0010, 0011 and 0012 ADD COLUMN; 0012 ADD INDEX,
    # MATERIALIZE INDEX and ADD CONSTRAINT; 0015 MODIFY SETTING, fsync of inserts).
    # None of them removes or changes a stored value.
    "GRANT CREATE DATABASE ON metering.*",
    "GRANT CREATE TABLE, CREATE VIEW ON metering.*",
    # ... on the engines the SQL files name (ClickHouse 26.9 asks for a grant per engine).
    "GRANT TABLE ENGINE ON MergeTree",
    "GRANT TABLE ENGINE ON AggregatingMergeTree",
    "GRANT TABLE ENGINE ON ReplacingMergeTree",
    "GRANT ALTER ADD COLUMN, ALTER ADD INDEX, ALTER MATERIALIZE INDEX, "
    "ALTER ADD CONSTRAINT, ALTER MODIFY SETTING ON metering.*",
    # Migration 0006 replaces the two monthly contract views (CREATE OR REPLACE VIEW
    # needs DROP VIEW on the view replaced): these two only.
    "GRANT DROP VIEW ON metering.agency_monthly",
    "GRANT DROP VIEW ON metering.monthly_totals",
    # The upgrade from before 0012 swaps the old record of migrations for the view
    # older releases stop at (store/migrations.py): DROP TABLE on that table only.
    "GRANT DROP TABLE ON metering.schema_migrations",
    # The raw tables' retention (store/retention.py, at each worker start).
    "GRANT ALTER MODIFY TTL ON metering.counted_events",
    "GRANT ALTER MODIFY TTL ON metering.rejections_log",
    # Lightweight DELETEs: staged rows of a flush that never committed
    # (store/ledger/sql.py), billing lines of a run that never committed
    # (metering/billing/runs.py), marks of a correction that never committed, and the
    # rollup keys a correction rebuilds (store/corrections/sql.py).
    "GRANT ALTER DELETE ON metering.counted_events",
    "GRANT ALTER DELETE ON metering.rejections_log",
    "GRANT ALTER DELETE ON metering.billing_lines",
    "GRANT ALTER DELETE ON metering.correction_marks",
    "GRANT ALTER DELETE ON metering.agency_daily_rollup",
    "GRANT ALTER DELETE ON metering.model_daily_rollup",
    "GRANT ALTER DELETE ON metering.agency_monthly_rollup",
    "GRANT ALTER DELETE ON metering.model_monthly_rollup",
    "GRANT ALTER DELETE ON metering.tenant_daily_rollup",
    # `metering audit reads`: flush the query log, then read the record of reads.
    "GRANT SYSTEM FLUSH LOGS ON *.*",
    "GRANT SELECT ON govmeter_audit.read_audit",
    # Backups of the store and of the record of reads (`metering backup`).
    "GRANT BACKUP ON metering.*",
    "GRANT BACKUP ON govmeter_audit.*",
    # BACKUP TO / RESTORE FROM Disk('backups', ...): the one disk the server allows for
    # backups (backups.allowed_disk), a local disk at CLICKHOUSE_BACKUP_DIR. Not FILE:
    # on this engine (clickhouse-local) the file() function writes any path the server
    # process may, its users files included (tests/integration/test_local_server.py).
    "GRANT READ, WRITE ON DISK",
)

LOOPBACK: Final = ("127.0.0.1", "::1")

# Who read what. The server's system.query_log holds every query with its user, but
# clickhouse-local keeps its `system` database in memory: the table is created anew at
# each start and the previous run's parts are deleted (measured with chdb's 26.9).
# A materialized view in a database on disk copies each finished query of a reader (a
# user other than the writer, the server process and the engine's own session) as the
# log is flushed (every second, and at a clean stop), so the record outlives restarts.
# Its own database: not the metering schema (the in-process chdb:// store has no query
# log), and no reader has a grant on it. The engine's own session runs these at each
# start, before the listeners open (`store.local_server.process`); the view is made
# anew each time, so a start also brings an older view's filter up to date.
QUERY_LOG_TTL_DAYS: Final = 100
READ_AUDIT_DAYS: Final = 400
READ_AUDIT_TABLE: Final = "govmeter_audit.read_audit"
_NOT_READERS: Final = ", ".join(f"'{user}'" for user in (ENGINE_USER, "", WRITER_USER, SERVER_USER))
READ_AUDIT_DDL: Final = (
    "CREATE DATABASE IF NOT EXISTS govmeter_audit",
    f"CREATE TABLE IF NOT EXISTS {READ_AUDIT_TABLE} ("
    "event_time DateTime64(6), query_id String, user String, tables Array(String), "
    "query String, result_rows UInt64, address String"
    ") ENGINE = MergeTree PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, query_id) "
    f"TTL toDateTime(event_time) + INTERVAL {READ_AUDIT_DAYS} DAY",
    "DROP VIEW IF EXISTS govmeter_audit.read_audit_from_query_log",
    "CREATE MATERIALIZED VIEW govmeter_audit.read_audit_from_query_log "
    f"TO {READ_AUDIT_TABLE} AS SELECT event_time_microseconds AS event_time, query_id, "
    "user, tables, query, result_rows, toString(address) AS address FROM system.query_log "
    f"WHERE type = 'QueryFinish' AND user NOT IN ({_NOT_READERS})",
)


@dataclass(frozen=True)
class ServerLayout:
    """Where one local server keeps its data and its own files."""

    data_dir: Path
    server_dir: Path
    # Where the server may write backups (`metering backup --to` a set inside it):
    # CLICKHOUSE_BACKUP_DIR, else next to the data (another disk is better).
    backups_dir: Path | None = None

    @classmethod
    def for_data_dir(
        cls, data_dir: Path, server_dir: Path | None = None, backups_dir: Path | None = None
    ) -> ServerLayout:
        data = data_dir.expanduser().resolve()
        backups = (backups_dir or data.with_name(data.name + "-backups")).expanduser().resolve()
        return cls(data, (server_dir or data.with_name(data.name + "-server")).resolve(), backups)

    @property
    def user_files(self) -> Path:
        """What the file() table function may touch: an empty directory of its own."""
        return self.server_dir / "user_files"

    @property
    def backups(self) -> Path:
        if self.backups_dir is not None:
            return self.backups_dir
        return self.data_dir.with_name(self.data_dir.name + "-backups")

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

    @property
    def writer_password_file(self) -> Path:
        return self.server_dir / "writer.password"

    @property
    def engine_login_xml(self) -> Path:
        """The engine's login authenticator (config.d/, merged into config.xml)."""
        return self.server_dir / "config.d" / "engine-login.xml"


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
    <storage_configuration>
        <disks>
            <backups>
                <type>local</type>
                <path>{escape(str(layout.backups))}/</path>
            </backups>
        </disks>
    </storage_configuration>
    <backups>
        <allowed_disk>backups</allowed_disk>
        <allowed_path>{escape(str(layout.backups))}/</allowed_path>
    </backups>
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


def engine_login_xml(port: int, secret_path: str) -> str:
    """config.d/ for one run of the server: where the engine asks whether a login as
    `default` or `govmeter_server` may pass (the server process's authenticator, on
    loopback, at a path only this file and that process know)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{16,}", secret_path) is None:
        raise ValueError("the authenticator's path must be 16 or more URL-safe characters")
    return f"""\
<clickhouse>
    <!-- Written by the local server process at each start (store/local_server/process.py):
         its own authenticator of the engine's session, on loopback. -->
    <http_authentication_servers>
        <{ENGINE_LOGIN_SERVER}>
            <uri>http://127.0.0.1:{int(port)}/{secret_path}</uri>
            <connection_timeout_ms>2000</connection_timeout_ms>
            <receive_timeout_ms>5000</receive_timeout_ms>
            <send_timeout_ms>5000</send_timeout_ms>
            <max_tries>1</max_tries>
        </{ENGINE_LOGIN_SERVER}>
    </http_authentication_servers>
</clickhouse>
"""


def _password_element(sha256_hex: str | None) -> str:
    if sha256_hex is None:
        return "<password></password>"
    return f"<password_sha256_hex>{sha256_hex}</password_sha256_hex>"


def _engine_login() -> str:
    return (
        f"<http_authentication><server>{ENGINE_LOGIN_SERVER}</server>"
        "<scheme>basic</scheme></http_authentication>"
    )


def _networks(hosts: tuple[str, ...]) -> str:
    return "".join(f"<ip>{escape(host)}</ip>" for host in hosts)


def _grants(tables: tuple[str, ...]) -> str:
    return _grant_queries(tuple(f"GRANT SELECT ON {name}" for name in tables))


def _grant_queries(grants: tuple[str, ...]) -> str:
    return "".join(f"\n                <query>{escape(grant)}</query>" for grant in grants)


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
    writer_password_sha256: str,
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
        <!-- The engine's own in-process session, which signs in as default without a
             password from 127.0.0.1. The server process's authenticator lets exactly
             one sign-in pass, the engine's, before any listener opens: no network
             login as default, over HTTP or the native protocol, with any password. -->
        <{ENGINE_USER}>
            {_engine_login()}
            <networks>{_networks(LOOPBACK)}</networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>0</access_management>
        </{ENGINE_USER}>
        <!-- The server process: it ends the engine's keeper statement when it stops. Its
             password is in that process's memory only. -->
        <{SERVER_USER}>
            {_engine_login()}
            <networks>{_networks(LOOPBACK)}</networks>
            <profile>default</profile>
            <quota>default</quota>
            <grants>
                <query>GRANT KILL QUERY ON *.*</query>
                <query>GRANT SELECT ON system.processes</query>
            </grants>
        </{SERVER_USER}>
        <!-- Workers, migrations, billing, audit: WRITER_GRANTS in
             store/local_server/config.py says which statement needs each grant. -->
        <{WRITER_USER}>
            {_password_element(writer_password_sha256)}
            <networks>{_networks(LOOPBACK)}</networks>
            <profile>default</profile>
            <quota>default</quota>
            <grants>{_grant_queries(WRITER_GRANTS)}
            </grants>
        </{WRITER_USER}>
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


def agency_filters(agency_id: str) -> dict[str, str]:
    """The row filter of each table an agency user reads (views get none of their own:
    the filters of the tables they read apply)."""
    agency_user_name(agency_id)  # validates the id: it is quoted into SQL below
    filters: dict[str, str] = {}
    for name in AGENCY_FILTERED:
        if name in _NO_AGENCY_COLUMN:
            continue
        template = _CORRECTION_FILTERS.get(name, "agency_id = '{agency}'")
        filters[name] = template.format(agency=agency_id)
    return filters


def agency_user_xml(
    agency_id: str, password_sha256_hex: str, networks: tuple[str, ...] = LOOPBACK
) -> str:
    """One agency's read-only user: SELECT on its rows of every agency view and table."""
    user = agency_user_name(agency_id)
    if re.fullmatch(r"[0-9a-f]{64}", password_sha256_hex) is None:
        raise ValueError("the password hash must be 64 lower-case hex digits (sha256)")
    by_database: dict[str, list[str]] = {}
    for name, condition in agency_filters(agency_id).items():
        database, table = name.split(".")
        by_database.setdefault(database, []).append(
            f"<{table}><filter>{escape(condition)}</filter></{table}>"
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
