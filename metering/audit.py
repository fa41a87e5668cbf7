"""`metering audit reads`: who read which agency's data, and when.

The local ClickHouse server logs every query in system.query_log, which its engine
keeps in memory only; a materialized view (`store.local_server.config.READ_AUDIT_DDL`,
created by `infra/clickhouse/start`) copies each finished query of a user other than
the writer to `govmeter_audit.read_audit`, on disk. This command reads that table as the
writer (`default`, the only user with a grant on it) after flushing the log, and lists
the queries that read a metering table or view: agency users read their own agency's
rows (the agency in their name), the reporter reads every agency's ("all").
`--agency ID` lists that agency's own reads and the reads of every agency ("all"),
since those could see its rows too.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any, Final

from metering.query import FORMATS, format_result
from metering.settings import Settings
from store.local_server.config import READ_AUDIT_TABLE, agency_user_name

__all__ = ["ALL_AGENCIES", "add_audit_command", "read_audit_sql", "run_audit"]

ALL_AGENCIES: Final = "all"
_AGENCY_PREFIX: Final = "govmeter_agency_"
_COLUMNS: Final = ("event_time", "user", "agency", "tables", "result_rows", "query_id")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_audit_command(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="who read what (the local server's query log)")
    kinds = audit.add_subparsers(dest="audit_kind", required=True)
    reads = kinds.add_parser("reads", help="reads of metering data by reporters and agencies")
    reads.add_argument("--since", type=_date, required=True, help="first UTC day, YYYY-MM-DD")
    reads.add_argument("--agency", help="that agency's own reads and reads of all agencies")
    reads.add_argument("--format", choices=FORMATS, default="table")
    reads.add_argument(
        "--clickhouse-url",
        dest="clickhouse_url",
        help="the local server, as its writer (env CLICKHOUSE_URL)",
    )


# Reads restored from a backup (`metering restore`): the record of reads as the backup
# held it, beside the server's own record (which only the engine writes).
RESTORED_READ_AUDIT: Final = "metering.read_audit_restored"


def read_audit_sql(*, agency: bool, restored: bool = False) -> str:
    """The reads since `{since:Date}`, oldest first; with `agency`, of `{agency:String}`;
    with `restored`, the restored record's too."""
    metering_tables = "arrayFilter(t -> startsWith(t, 'metering.'), tables)"
    where = f"toDate(event_time) >= {{since:Date}} AND notEmpty({metering_tables})"
    if agency:
        where += f" AND agency IN ({{agency:String}}, '{ALL_AGENCIES}')"
    source = READ_AUDIT_TABLE
    if restored:
        columns = "event_time, user, tables, result_rows, query_id"
        source = (
            f"(SELECT {columns} FROM {READ_AUDIT_TABLE} "
            f"UNION ALL SELECT {columns} FROM {RESTORED_READ_AUDIT})"
        )
    return (
        "SELECT event_time, user, "
        f"if(startsWith(user, '{_AGENCY_PREFIX}'), "
        f"replaceAll(substring(user, {len(_AGENCY_PREFIX) + 1}), '_', '-'), "
        f"'{ALL_AGENCIES}') AS agency, "
        f"{metering_tables} AS tables, result_rows, query_id "
        f"FROM {source} WHERE {where} ORDER BY event_time, query_id"
    )


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    from metering.open_store import open_for_reading

    if args.agency is not None:
        try:
            agency_user_name(args.agency)
        except ValueError as error:
            print(f"metering audit: {error}", file=sys.stderr)
            return 2
    client = open_for_reading(settings, schema=False)
    try:
        exists = client.query(
            "SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
            parameters=dict(zip(("d", "t"), READ_AUDIT_TABLE.split("."), strict=True)),
        ).result_rows[0][0]
        if not exists:
            print(
                f"metering audit: the store has no {READ_AUDIT_TABLE}: reads are recorded by "
                "the local server of infra/clickhouse/start (restart it to set the record "
                "up); the in-process chdb:// store has no users and no query log",
                file=sys.stderr,
            )
            return 1
        client.command("SYSTEM FLUSH LOGS")
        parameters: dict[str, Any] = {"since": args.since}
        if args.agency is not None:
            parameters["agency"] = args.agency
        restored = client.query(
            "SELECT count() FROM system.tables WHERE database = 'metering' "
            "AND name = 'read_audit_restored'"
        ).result_rows[0][0]
        result = client.query(
            read_audit_sql(agency=args.agency is not None, restored=bool(restored)),
            parameters=parameters,
        )
        rows = [tuple(row) for row in result.result_rows]
    finally:
        client.close()
    if args.format != "json":
        rows = [(*row[:3], ", ".join(row[3]), *row[4:]) for row in rows]
    sys.stdout.write(format_result(list(_COLUMNS), rows, args.format) + "\n")
    return 0
