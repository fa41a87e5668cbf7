"""`metering writers`: who writes this store, from the store itself.

Every `metering worker` registers when it starts and beats every few seconds
(`store.writers`), wherever it runs. This lists them with the server's clock: live (a
beat within METERING_WRITER_TIMEOUT_SECONDS), silent (no beat for longer: killed,
paused, cut off; a lease it holds may be taken over) or stopped (it said so when it
exited). Stopped writers are listed with --all.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from metering.open_store import open_for_reading
from metering.settings import Settings
from metering.text_table import text_table
from store.writers import CORRECTIONS_LEASE, Leases, Registry, WriterInfo

__all__ = ["add_writers_command", "describe_writers", "run_writers"]


def add_writers_command(commands: Any) -> None:
    writers = commands.add_parser(
        "writers", help="the writers of the store: live, silent or stopped, and their heartbeats"
    )
    writers.add_argument(
        "--clickhouse-url",
        dest="clickhouse_url",
        help="chdb://PATH or http(s)://user:pass@host:8123 (env CLICKHOUSE_URL)",
    )
    writers.add_argument(
        "--all", action="store_true", help="also the writers that stopped (every registration)"
    )
    writers.add_argument("--format", choices=("table", "json"), default="table")


def _row(info: WriterInfo, timeout: float, holds_lease: bool) -> dict[str, Any]:
    return {
        "writer": info.writer_no,
        "name": info.name,
        "host": info.host,
        "pid": info.pid,
        "release": info.release,
        "consumer_group": info.consumer_group,
        "started_at": info.started_at.isoformat(),
        "last_heartbeat_seconds_ago": round(info.last_beat_age, 1),
        "status": info.status(timeout),
        "partitions": list(info.partitions),
        "flushes": info.flushes,
        "holds_corrections_lease": holds_lease,
    }


def describe_writers(
    writers: list[WriterInfo], timeout: float, lease_holder: int | None, *, everyone: bool
) -> list[dict[str, Any]]:
    """The writers as rows (live and silent first-to-last; with `everyone`, stopped too)."""
    return [
        _row(info, timeout, info.writer_no == lease_holder)
        for info in writers
        if everyone or info.status(timeout) != "stopped"
    ]


def run_writers(args: argparse.Namespace, settings: Settings) -> int:
    client = open_for_reading(settings)
    try:
        writers = Registry(client).writers()
        lease = Leases(client).state(CORRECTIONS_LEASE)
    finally:
        client.close()
    holder = lease.writer_no if lease is not None and not lease.released else None
    rows = describe_writers(
        writers, settings.writer_timeout_seconds, holder, everyone=bool(args.all)
    )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no writer is registered" + ("" if args.all else " and not stopped (try --all)"))
        return 0
    headers = ["writer", "name", "host", "pid", "status", "heartbeat", "started (UTC)", "flushes"]
    headers.append("partitions")
    table = [
        [
            str(r["writer"]) + (" *" if r["holds_corrections_lease"] else ""),
            r["name"],
            r["host"],
            str(r["pid"]),
            r["status"],
            f"{r['last_heartbeat_seconds_ago']:.1f} s ago",
            r["started_at"][:19].replace("T", " "),
            str(r["flushes"]),
            ", ".join(r["partitions"]) or "-",
        ]
        for r in rows
    ]
    print(text_table(headers, table, [True, False, False, True, False, True, False, True, False]))
    live = sum(1 for r in rows if r["status"] == "live")
    note = f"{live} live of {len(rows)} listed (silent: no heartbeat for "
    note += f"{settings.writer_timeout_seconds:g} s, METERING_WRITER_TIMEOUT_SECONDS)"
    if holder is not None:
        note += "; * holds the corrections lease"
    print(note)
    return 0
