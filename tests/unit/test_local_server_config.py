"""The local server's configuration files: well-formed, users as documented, no secrets."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

import pytest

from store.connection import store_login
from store.local_server.config import (
    AGENCY_FILTERED,
    ENGINE_LOGIN_SERVER,
    QUERY_LOG_TTL_DAYS,
    READ_AUDIT_DDL,
    READ_AUDIT_TABLE,
    REPORTER_READS,
    WRITER_GRANTS,
    ServerLayout,
    agency_filters,
    agency_user_name,
    agency_user_xml,
    engine_login_xml,
    password_sha256,
    render_config_xml,
    render_users_xml,
)
from store.local_server.control import LocalServer, ServerOptions, local_server_at
from store.migrations import rendered_statements

DIGEST = password_sha256("s3cret")


def _layout(tmp_path: Path) -> ServerLayout:
    return ServerLayout.for_data_dir(tmp_path / "clickhouse")


def test_the_server_directory_sits_beside_the_data(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert layout.server_dir == (tmp_path / "clickhouse-server").resolve()
    assert layout.log_file.parent == layout.server_dir


def test_config_names_ports_host_users_file_and_log(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    root = ET.fromstring(render_config_xml(layout, http_port=18123, tcp_port=19000))
    assert root.findtext("http_port") == "18123"
    assert root.findtext("tcp_port") == "19000"
    assert root.findtext("listen_host") == "127.0.0.1"
    assert root.findtext("users_config") == str(layout.users_xml)
    assert root.findtext("logger/log") == str(layout.log_file)
    assert int(root.findtext("keep_alive_timeout") or "0") <= 2


def _users() -> ET.Element:
    return ET.fromstring(
        render_users_xml(writer_password_sha256=DIGEST, reporter_password_sha256=DIGEST)
    )


def test_default_signs_in_only_through_the_engine_login_and_has_no_password() -> None:
    root = _users()
    default = root.find("users/default")
    assert default is not None
    assert default.findtext("http_authentication/server") == ENGINE_LOGIN_SERVER
    assert default.findtext("http_authentication/scheme") == "basic"
    for element in ("password", "password_sha256_hex", "no_password"):
        assert default.find(element) is None, element
    assert [ip.text for ip in default.findall("networks/ip")] == ["127.0.0.1", "::1"]
    server = root.find("users/govmeter_server")
    assert server is not None
    assert server.findtext("http_authentication/server") == ENGINE_LOGIN_SERVER
    assert [q.text for q in server.findall("grants/query")] == [
        "GRANT KILL QUERY ON *.*",
        "GRANT SELECT ON system.processes",
    ]
    # No user of the file signs in with an empty or a plain-text password.
    assert root.find(".//password") is None and root.find(".//no_password") is None


def test_the_writer_is_loopback_only_with_its_grants_and_the_reporter_reads_every_view() -> None:
    root = _users()
    writer = root.find("users/govmeter_writer")
    assert writer is not None
    assert writer.findtext("password_sha256_hex") == DIGEST
    assert [ip.text for ip in writer.findall("networks/ip")] == ["127.0.0.1", "::1"]
    assert writer.findtext("profile") == "default"
    assert [q.text for q in writer.findall("grants/query")] == list(WRITER_GRANTS)
    reporter = root.find("users/reporter")
    assert reporter is not None
    assert reporter.findtext("profile") == "readonly"
    assert root.findtext("profiles/readonly/readonly") == "1"
    grants = [q.text for q in reporter.findall("grants/query")]
    assert grants == [f"GRANT SELECT ON {name}" for name in REPORTER_READS]
    for view in ("agency_daily", "agency_monthly", "monthly_totals", "rejected_events"):
        assert f"GRANT SELECT ON metering.{view}" in grants


def test_the_writer_may_not_rewrite_drop_or_manage_access() -> None:
    granted = " ".join(WRITER_GRANTS)
    for refused in (
        "ALTER UPDATE",
        "ALTER TABLE",
        " ALL",
        "DROP DATABASE",
        "TRUNCATE",
        "ACCESS MANAGEMENT",
        "CREATE USER",
        "ROW POLICY",
        "KILL",
        "ON FILE",
        "WRITE ON URL",
        "WRITE ON S3",
        "SYSTEM SHUTDOWN",
    ):
        assert refused not in granted, refused
    # The backups disk only (backups.allowed_disk); no FILE, which file() would use to
    # write any path (tests/integration/test_local_server.py tries).
    assert [g for g in WRITER_GRANTS if " ON DISK" in g] == ["GRANT READ, WRITE ON DISK"]
    drops = [g for g in WRITER_GRANTS if "DROP" in g]
    assert drops == [
        "GRANT DROP VIEW ON metering.agency_monthly",
        "GRANT DROP VIEW ON metering.monthly_totals",
        "GRANT DROP TABLE ON metering.schema_migrations",
    ]
    for grant in WRITER_GRANTS:
        target = grant.rsplit(" ON ", 1)[1]
        assert target.startswith(("metering.", "govmeter_audit.", "*.*")) or target.endswith(
            ("MergeTree", "DISK")
        ), grant
        if target == "*.*":
            assert grant == "GRANT SYSTEM FLUSH LOGS ON *.*", grant


def _granted(privilege: str, table: str) -> bool:
    for grant in WRITER_GRANTS:
        privileges, target = grant.removeprefix("GRANT ").rsplit(" ON ", 1)
        if privilege in [p.strip() for p in privileges.split(",")] and target in (
            table,
            table.split(".")[0] + ".*",
        ):
            return True
    return False


_CREATE: Final = re.compile(
    r"CREATE (OR REPLACE )?(DATABASE|TABLE|VIEW) (?:IF NOT EXISTS )?([\w.]+)"
)
_ALTER: Final = re.compile(r"ALTER TABLE (\S+)\s+(.*)", re.DOTALL)
_ALTER_KINDS: Final = {
    "ADD COLUMN": "ALTER ADD COLUMN",
    "ADD INDEX": "ALTER ADD INDEX",
    "MATERIALIZE INDEX": "ALTER MATERIALIZE INDEX",
    "ADD CONSTRAINT": "ALTER ADD CONSTRAINT",
    "MODIFY SETTING": "ALTER MODIFY SETTING",
}


def test_every_statement_of_the_migrations_is_granted_to_the_writer() -> None:
    """A new migration that needs a grant the writer lacks fails here, not on the
    local server at its first `metering migrate`."""
    for statement in rendered_statements("server"):
        head = " ".join(statement.split()[:4])
        if statement.startswith("INSERT INTO"):
            table = statement.split()[2]
            assert _granted("INSERT", table) and _granted("SELECT", table), head
        elif create := _CREATE.match(statement):
            replace, kind, name = bool(create[1]), create[2], create[3]
            if kind == "DATABASE":
                assert _granted("CREATE DATABASE", name + ".*"), head
            elif kind == "TABLE":
                assert _granted("CREATE TABLE", name), head
                engine = re.search(r"ENGINE = (\w+)", statement)
                assert engine and f"GRANT TABLE ENGINE ON {engine[1]}" in WRITER_GRANTS, head
            else:
                assert _granted("CREATE VIEW", name), head
                assert not replace or _granted("DROP VIEW", name), head
        elif statement.startswith("ALTER TABLE"):
            match = _ALTER.match(statement)
            assert match, head
            table, rest = match[1], match[2]
            kinds = [grant for kind, grant in _ALTER_KINDS.items() if kind in rest]
            assert kinds, f"an ALTER the writer has no grant for: {head}"
            assert all(_granted(kind, table) for kind in kinds), head
        else:
            raise AssertionError(f"a statement of a kind this test does not know: {head}")


def test_an_agency_user_filters_every_agency_table_and_reads_nothing_else() -> None:
    root = ET.fromstring(agency_user_xml("fed-gsa", DIGEST))
    user = root.find("users/govmeter_agency_fed_gsa")
    assert user is not None
    assert user.findtext("profile") == "readonly"
    filters = {
        f"metering.{table.tag}": table.findtext("filter")
        for table in user.findall("databases/metering/*")
    }
    assert filters == agency_filters("fed-gsa")
    assert set(filters) == set(AGENCY_FILTERED) - {"metering.monthly_totals"}
    for name, condition in filters.items():
        if name.startswith(("metering.corrections", "metering.correction_marks")):
            assert "metering.correction_agencies WHERE agency_id = 'fed-gsa'" in str(condition)
        else:
            assert condition == "agency_id = 'fed-gsa'", name
    grants = [q.text for q in user.findall("grants/query")]
    assert grants == [f"GRANT SELECT ON {name}" for name in AGENCY_FILTERED]
    assert not any("counted_events" in str(g) or "flush_ledger" in str(g) for g in grants)
    assert not any("corrected_events" in str(g) for g in grants)


@pytest.mark.parametrize("bad", ["", "Fed", "fed_gsa", "-x", "a'b", "x" * 65])
def test_a_bad_agency_id_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an agency id"):
        agency_user_name(bad)


def test_a_bad_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        agency_user_xml("fed-gsa", "s3cret")


def test_the_url_names_the_local_server_only_on_its_port_and_loopback(tmp_path: Path) -> None:
    env = {"CLICKHOUSE_DATA_DIR": str(tmp_path / "ch"), "CLICKHOUSE_HTTP_PORT": "18123"}
    layout = ServerOptions.from_environment(env).layout
    assert local_server_at("http://127.0.0.1:18123", env) is None  # not configured yet
    layout.server_dir.mkdir(parents=True)
    layout.config_xml.write_text("<clickhouse/>")
    assert local_server_at("http://127.0.0.1:18123", env) is not None
    assert local_server_at("http://localhost:18123", env) is not None
    assert local_server_at("http://127.0.0.1:8123", env) is None
    assert local_server_at("http://clickhouse:18123", env) is None
    assert local_server_at("https://127.0.0.1:18123", env) is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CLICKHOUSE_HTTP_PORT", "http", "must be a TCP port"),
        ("CLICKHOUSE_TCP_PORT", "70000", "must be a TCP port"),
        ("CLICKHOUSE_START_TIMEOUT", "soon", "must be a number of seconds"),
        ("CLICKHOUSE_STOP_TIMEOUT", "0", "more than 0"),
    ],
)
def test_bad_settings_are_named(name: str, value: str, message: str) -> None:
    from store.local_server.control import LocalServerError

    with pytest.raises(LocalServerError, match=f"{name}=.*{message}"):
        ServerOptions.from_environment({name: value})


def test_a_password_for_default_is_refused_not_ignored(tmp_path: Path) -> None:
    from store.local_server.control import LocalServerError

    options = ServerOptions.from_environment(
        {"CLICKHOUSE_DATA_DIR": str(tmp_path / "ch"), "CLICKHOUSE_PASSWORD": "s3cret"}
    )
    with pytest.raises(LocalServerError, match="CLICKHOUSE_PASSWORD is set") as refused:
        LocalServer(options).start()
    assert "accepts no network login" in str(refused.value)
    assert "CLICKHOUSE_WRITER_PASSWORD" in str(refused.value)
    assert not (tmp_path / "ch-server" / "clickhouse.pid").exists()


def test_config_keeps_the_query_log_for_at_least_ninety_days(tmp_path: Path) -> None:
    root = ET.fromstring(render_config_xml(_layout(tmp_path), http_port=18123, tcp_port=19000))
    log = root.find("query_log")
    assert log is not None
    assert log.findtext("database") == "system"
    assert log.findtext("table") == "query_log"
    assert log.findtext("flush_interval_milliseconds") == "1000"
    assert log.findtext("ttl") == f"event_date + INTERVAL {QUERY_LOG_TTL_DAYS} DAY"
    assert QUERY_LOG_TTL_DAYS >= 90


def test_the_read_audit_copies_every_finished_query_of_a_reader_to_disk() -> None:
    database = READ_AUDIT_TABLE.split(".")[0]
    create_database, create_table, drop_view, view = READ_AUDIT_DDL
    assert create_database == f"CREATE DATABASE IF NOT EXISTS {database}"
    assert database != "metering" and database != "system"
    assert create_table.startswith(f"CREATE TABLE IF NOT EXISTS {READ_AUDIT_TABLE} (")
    assert "ENGINE = MergeTree" in create_table and "INTERVAL 400 DAY" in create_table
    # Made anew at each start: an older view's filter is brought up to date.
    assert drop_view == "DROP VIEW IF EXISTS govmeter_audit.read_audit_from_query_log"
    assert f"TO {READ_AUDIT_TABLE} AS SELECT" in view
    assert "FROM system.query_log" in view
    assert "type = 'QueryFinish'" in view
    # The engine's own session (default, or an empty user), the writer and the server
    # process are not readers.
    assert "user NOT IN ('default', '', 'govmeter_writer', 'govmeter_server')" in view


def test_no_reader_may_read_the_read_audit() -> None:
    database = READ_AUDIT_TABLE.split(".")[0]
    root = _users()
    reporter = root.find("users/reporter")
    assert reporter is not None
    assert database not in ET.tostring(reporter, encoding="unicode")
    assert database not in agency_user_xml("fed-gsa", DIGEST)
    assert all(not name.startswith(database + ".") for name in REPORTER_READS + AGENCY_FILTERED)
    # The writer reads it (`metering audit reads`) and may back it up, nothing more.
    assert [g for g in WRITER_GRANTS if database in g] == [
        f"GRANT SELECT ON {READ_AUDIT_TABLE}",
        f"GRANT BACKUP ON {database}.*",
    ]


def test_the_engine_login_asks_the_server_process_on_loopback_at_its_secret_path() -> None:
    root = ET.fromstring(engine_login_xml(40123, "a" * 32))
    assert root.findtext(f"http_authentication_servers/{ENGINE_LOGIN_SERVER}/uri") == (
        "http://127.0.0.1:40123/" + "a" * 32
    )
    with pytest.raises(ValueError, match="16 or more"):
        engine_login_xml(40123, "short")


def _local(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"CLICKHOUSE_DATA_DIR": str(tmp_path / "ch"), "CLICKHOUSE_HTTP_PORT": "18123", **extra}
    layout = ServerOptions.from_environment(env).layout
    layout.server_dir.mkdir(parents=True, exist_ok=True)
    layout.config_xml.write_text("<clickhouse/>")
    return env


def test_commands_sign_in_to_the_local_server_as_its_writer(tmp_path: Path) -> None:
    url = "http://127.0.0.1:18123"
    env = _local(tmp_path)
    missing = store_login(url, env)
    assert missing is not None and missing.user == "govmeter_writer"
    assert missing.password is None and "does not exist" in str(missing.problem)
    generated = LocalServer(ServerOptions.from_environment(env)).writer_password()
    path = tmp_path / "ch-server" / "writer.password"
    assert path.stat().st_mode & 0o777 == 0o600
    login = store_login(url, env)
    assert login is not None and (login.user, login.password) == ("govmeter_writer", generated)
    assert login.source.endswith(f"password from {path}") and generated not in login.describe()
    given = store_login(url, {**env, "CLICKHOUSE_WRITER_PASSWORD": "chosen"})
    assert given is not None and (given.user, given.password) == ("govmeter_writer", "chosen")
    assert given.source.endswith("password CLICKHOUSE_WRITER_PASSWORD")
    # A URL with credentials overrides; another server signs in as its default user.
    own = store_login("http://reporter:r@127.0.0.1:18123", env)
    assert own is not None and (own.user, own.password) == (None, None)
    other = store_login("http://clickhouse:8123", {**env, "CLICKHOUSE_PASSWORD": "p"})
    assert other is not None and (other.user, other.password) == (None, "p")
    assert store_login("chdb://./var/clickhouse", env) is None


def test_a_writer_password_given_at_start_removes_the_generated_one(tmp_path: Path) -> None:
    env = _local(tmp_path)
    LocalServer(ServerOptions.from_environment(env)).writer_password()
    chosen = ServerOptions.from_environment({**env, "CLICKHOUSE_WRITER_PASSWORD": "chosen"})
    assert LocalServer(chosen).writer_password() == "chosen"
    assert not (tmp_path / "ch-server" / "writer.password").exists()
    assert LocalServer(ServerOptions.from_environment(env)).existing_writer_password() is None
