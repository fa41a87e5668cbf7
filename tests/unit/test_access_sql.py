"""`metering access agency-user`: the SQL for an agency's read-only user, as golden text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metering.oversight.access import (
    CORRECTION_TABLES,
    PASSWORD_PLACEHOLDER,
    AccessError,
    agency_user_name,
    agency_user_sql,
    sql_statements,
)

GOLDEN = Path(__file__).parent / "golden"
HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"  # sha256("password")

# Parse (not run) statements with ClickHouse's own parser. chDB has no access control,
# but formatQuery() parses any statement; a subprocess keeps chDB out of this process.
PARSE = r"""
import json, sys
import chdb
session = chdb.session.Session()
for statement in json.loads(sys.stdin.read()):
    quoted = statement.replace("\\", "\\\\").replace("'", "\\'")
    print(session.query(f"SELECT formatQuerySingleLine('{quoted}')", "TSVRaw").data().strip())
"""


def test_the_sql_for_fed_gsa_matches_the_reviewed_golden_text() -> None:
    expected = (GOLDEN / "agency_user_fed-gsa.sql").read_text(encoding="utf-8")
    assert agency_user_sql("fed-gsa") == expected


def test_every_statement_parses_in_clickhouse() -> None:
    statements = sql_statements(agency_user_sql("fed-gsa", HASH))
    result = subprocess.run(
        [sys.executable, "-c", PARSE],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    formatted = result.stdout.splitlines()
    assert len(formatted) == len(statements) == 24
    assert (
        "CREATE ROW POLICY IF NOT EXISTS govmeter_agency_fed_gsa ON metering.agency_daily_rollup, "
        "metering.model_daily_rollup, metering.agency_monthly_rollup, "
        "metering.model_monthly_rollup, metering.counted_events AS RESTRICTIVE FOR SELECT USING "
        "agency_id = 'fed-gsa' TO govmeter_agency_fed_gsa"
    ) in formatted
    assert any("SETTINGS readonly = 1" in line for line in formatted)
    assert any(
        line.startswith("CREATE QUOTA IF NOT EXISTS govmeter_agency_fed_gsa") for line in formatted
    )


def test_the_policies_cover_the_base_tables_and_only_this_agency() -> None:
    sql = agency_user_sql("state-ca-dmv", HASH)
    statements = sql_statements(sql)
    policies = [s for s in statements if s.startswith("CREATE ROW POLICY")]
    assert len(policies) == 7
    [restrictive] = [p for p in policies if "USING agency_id = 'state-ca-dmv' TO" in p]
    for table in (
        "agency_daily_rollup",
        "model_daily_rollup",
        "agency_monthly_rollup",
        "model_monthly_rollup",
        "counted_events",
    ):
        assert f"metering.{table}" in restrictive
    assert "AS RESTRICTIVE FOR SELECT USING agency_id = 'state-ca-dmv'" in restrictive
    assert restrictive.endswith("TO govmeter_agency_state_ca_dmv")
    assert f"BY '{HASH}'" in sql and PASSWORD_PLACEHOLDER not in sql
    grants = [s for s in statements if s.startswith("GRANT SELECT")]
    assert all(" ON metering." in g for g in grants) and len(grants) == 12
    assert not any(
        "flush_ledger" in s or "rejections" in s or "billing" in s or "tenant_daily" in s
        for s in statements
    )


def test_the_corrections_of_the_agency_are_filtered_like_the_local_server() -> None:
    from store.local_server.config import agency_filters

    statements = sql_statements(agency_user_sql("state-ca-dmv", HASH))
    filters = agency_filters("state-ca-dmv")
    for table in CORRECTION_TABLES:
        permissive = [
            s for s in statements if s.startswith("CREATE ROW POLICY IF NOT EXISTS govmeter_all")
        ]
        assert any(table in s and s.endswith("USING 1 TO ALL") for s in permissive), table
        assert (
            f"CREATE ROW POLICY IF NOT EXISTS govmeter_agency_state_ca_dmv\n    ON {table}\n"
            f"    AS RESTRICTIVE FOR SELECT USING ({filters[table]}) "
            "TO govmeter_agency_state_ca_dmv"
        ) in statements, table
        assert f"GRANT SELECT ON {table} TO govmeter_agency_reader" in statements


def test_user_names_are_one_to_one_with_agency_ids() -> None:
    assert agency_user_name("fed-gsa") == "govmeter_agency_fed_gsa"
    assert agency_user_name("7") == "govmeter_agency_7"


@pytest.mark.parametrize(
    "agency", ["", "Fed-GSA", "fed_gsa", "fed'; DROP TABLE x; --", "-fed", "a" * 65]
)
def test_an_invalid_agency_id_is_refused_before_any_sql_is_written(agency: str) -> None:
    with pytest.raises(AccessError, match="is not an agency id"):
        agency_user_sql(agency)


def test_a_malformed_password_hash_is_refused() -> None:
    with pytest.raises(AccessError, match="64 lower-case hex"):
        agency_user_sql("fed-gsa", "' OR 1 --")


def test_apply_on_the_embedded_store_says_there_is_no_access_control(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metering.cli",
            "access",
            "agency-user",
            "--agency",
            "fed-gsa",
            "--apply",
            "--clickhouse-url",
            f"chdb://{tmp_path}/ch",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "has no access control" in result.stderr
    assert "nothing applied" in result.stderr
    assert not (tmp_path / "ch").exists()
