"""`metering audit reads`: its arguments and its SQL (no services)."""

from __future__ import annotations

import pytest

from metering.audit import ALL_AGENCIES, read_audit_sql
from metering.cli import _parser
from store.local_server.config import READ_AUDIT_TABLE


def test_reads_of_metering_data_oldest_first_with_the_agency_named() -> None:
    sql = read_audit_sql(agency=False)
    assert f"FROM {READ_AUDIT_TABLE} " in sql
    assert "{since:Date}" in sql and "{agency:String}" not in sql
    assert "startsWith(t, 'metering.')" in sql
    assert "replaceAll(substring(user, 17), '_', '-')" in sql  # govmeter_agency_fed_gsa
    assert sql.endswith("ORDER BY event_time, query_id")


def test_an_agency_sees_its_own_reads_and_the_reads_of_every_agency() -> None:
    sql = read_audit_sql(agency=True)
    assert f"agency IN ({{agency:String}}, '{ALL_AGENCIES}')" in sql


def test_the_command_line() -> None:
    args = _parser().parse_args(
        ["audit", "reads", "--since", "2026-12-01", "--agency", "fed-gsa", "--format", "csv"]
    )
    assert (args.command, args.audit_kind, str(args.since)) == ("audit", "reads", "2026-12-01")
    assert (args.agency, args.format) == ("fed-gsa", "csv")
    with pytest.raises(SystemExit):
        _parser().parse_args(["audit", "reads", "--since", "yesterday"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["audit", "reads"])
