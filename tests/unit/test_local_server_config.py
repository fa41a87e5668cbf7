"""The local server's configuration files: well-formed, users as documented, no secrets."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from store.local_server.config import (
    AGENCY_FILTERED,
    QUERY_LOG_TTL_DAYS,
    READ_AUDIT_DDL,
    READ_AUDIT_TABLE,
    REPORTER_READS,
    ServerLayout,
    agency_user_name,
    agency_user_xml,
    password_sha256,
    render_config_xml,
    render_users_xml,
)
from store.local_server.control import ServerOptions, local_server_at

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


def test_default_is_loopback_only_and_reporter_reads_every_view() -> None:
    root = ET.fromstring(
        render_users_xml(default_password_sha256=DIGEST, reporter_password_sha256=DIGEST)
    )
    default = root.find("users/default")
    assert default is not None
    assert [ip.text for ip in default.findall("networks/ip")] == ["127.0.0.1", "::1"]
    assert default.findtext("password_sha256_hex") == DIGEST
    reporter = root.find("users/reporter")
    assert reporter is not None
    assert reporter.findtext("profile") == "readonly"
    assert root.findtext("profiles/readonly/readonly") == "1"
    grants = [q.text for q in reporter.findall("grants/query")]
    assert grants == [f"GRANT SELECT ON {name}" for name in REPORTER_READS]
    for view in ("agency_daily", "agency_monthly", "monthly_totals", "rejected_events"):
        assert f"GRANT SELECT ON metering.{view}" in grants


def test_no_password_means_an_empty_password_not_a_missing_one() -> None:
    root = ET.fromstring(
        render_users_xml(default_password_sha256=None, reporter_password_sha256=DIGEST)
    )
    assert root.find("users/default/password") is not None
    assert not root.findtext("users/default/password")


def test_an_agency_user_filters_every_agency_table_and_reads_nothing_else() -> None:
    root = ET.fromstring(agency_user_xml("fed-gsa", DIGEST))
    user = root.find("users/govmeter_agency_fed_gsa")
    assert user is not None
    assert user.findtext("profile") == "readonly"
    filters = {
        f"metering.{table.tag}": table.findtext("filter")
        for table in user.findall("databases/metering/*")
    }
    assert filters == {
        name: "agency_id = 'fed-gsa'"
        for name in AGENCY_FILTERED
        if name != "metering.monthly_totals"
    }
    grants = [q.text for q in user.findall("grants/query")]
    assert grants == [f"GRANT SELECT ON {name}" for name in AGENCY_FILTERED]
    assert not any("counted_events" in str(g) or "flush_ledger" in str(g) for g in grants)


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
    from store.local_server.control import LocalServer, LocalServerError

    options = ServerOptions.from_environment(
        {"CLICKHOUSE_DATA_DIR": str(tmp_path / "ch"), "CLICKHOUSE_PASSWORD": "s3cret"}
    )
    with pytest.raises(LocalServerError, match="CLICKHOUSE_PASSWORD is set"):
        LocalServer(options).start()
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
    create_database, create_table, view = READ_AUDIT_DDL
    assert create_database == f"CREATE DATABASE IF NOT EXISTS {database}"
    assert database != "metering" and database != "system"
    assert create_table.startswith(f"CREATE TABLE IF NOT EXISTS {READ_AUDIT_TABLE} (")
    assert "ENGINE = MergeTree" in create_table and "INTERVAL 400 DAY" in create_table
    assert f"TO {READ_AUDIT_TABLE} AS SELECT" in view
    assert "FROM system.query_log" in view
    assert "type = 'QueryFinish'" in view
    # The writer and the engine's own session (an empty user) are not readers.
    assert "user NOT IN ('default', '')" in view


def test_no_reader_may_read_the_read_audit() -> None:
    database = READ_AUDIT_TABLE.split(".")[0]
    users = render_users_xml(default_password_sha256=None, reporter_password_sha256=DIGEST)
    assert database not in users
    assert database not in agency_user_xml("fed-gsa", DIGEST)
    assert all(not name.startswith(database + ".") for name in REPORTER_READS + AGENCY_FILTERED)
