"""`python -m bench.durable_inserts`: what fsyncing the tables the ledger vouches for costs.

Migration 0015 sets `fsync_after_insert` and `fsync_part_directory` on the tables a
committed flush's ledger row vouches for. This bench measures the price on the store a
worker writes to: a local ClickHouse server of its own (the default set-up), in a data
directory on the disk `--work-dir` names (default: the repository's `var/`, where
`make demo` keeps its store).

One flush's durable inserts are repeated `--flushes` times into two copies of those
tables, one synced and one not, taking turns so that drift in the machine's load falls
on both alike:

  * `counted_events`: `--events` rows (a full flush: 20,000)
  * `rejections_log`: 2% of them (the month's corpus rejects about 3%)
  * `flush_ledger`: one row per partition (`--partitions`)
  * `flush_applied`: one row

Rows come from the server's `generateRandom` with the tables' own column types, so
every insert writes fresh parts of the real shape; block deduplication is off for the
bench's inserts. It prints the median and p90 of one flush's four inserts, per table
and in all, and the difference per million events.

    python -m bench.durable_inserts [--flushes 40] [--events 20000] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from clickhouse_connect.driver.client import Client

from bench.rows import free_server_ports
from store.connection import connect
from store.local_server.config import ServerLayout
from store.local_server.control import LocalServer, ServerOptions
from store.migrations import apply_migrations

__all__ = ["main"]

_REPO: Final = Path(__file__).resolve().parent.parent
TABLES: Final = ("counted_events", "rejections_log", "flush_ledger", "flush_applied")
_NO_DEDUPLICATION: Final = {"insert_deduplicate": 0}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.durable_inserts", description=__doc__)
    parser.add_argument("--flushes", type=int, default=40, help="flushes per variant")
    parser.add_argument("--events", type=int, default=20_000, help="counted events per flush")
    parser.add_argument("--partitions", type=int, default=6, help="ledger rows per flush")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=_REPO / "var",
        help="the bench's store is made in a temporary directory here (default: var/)",
    )
    return parser


def _structure(client: Client, table: str) -> str:
    rows = client.query(
        "SELECT name, type FROM system.columns WHERE database = 'metering' AND table = {t:String}"
        " ORDER BY position",
        parameters={"t": table},
    ).result_rows
    structure = ", ".join(f"`{name}` {kind}" for name, kind in rows)
    return structure.replace("\\", "\\\\").replace("'", "\\'")  # a string literal's body


def _copies(client: Client) -> dict[str, dict[str, str]]:
    """Two copies of each table: `synced` (as migration 0015 leaves them) and `plain`."""
    copies: dict[str, dict[str, str]] = {"synced": {}, "plain": {}}
    for variant, flag in (("synced", 1), ("plain", 0)):
        for table in TABLES:
            name = f"metering.bench_{variant}_{table}"
            client.command(f"CREATE TABLE {name} AS metering.{table}")
            client.command(
                f"ALTER TABLE {name} MODIFY SETTING "
                f"fsync_after_insert = {flag}, fsync_part_directory = {flag}"
            )
            copies[variant][table] = name
    return copies


def _one_flush(
    client: Client, tables: dict[str, str], rows: dict[str, int], structures: dict[str, str],
    seed: int,
) -> dict[str, float]:  # fmt: skip
    took: dict[str, float] = {}
    for table in TABLES:
        started = time.perf_counter()
        client.command(
            f"INSERT INTO {tables[table]} SELECT * FROM "
            f"generateRandom('{structures[table]}', {seed}, 16, 4) LIMIT {rows[table]}",
            settings=_NO_DEDUPLICATION,
        )
        took[table] = time.perf_counter() - started
    took["all"] = sum(took.values())
    return took


def _ms(values: list[float]) -> str:
    """`median / p90` in milliseconds (the median the summary line subtracts, too)."""
    p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
    return f"{statistics.median(values) * 1000:.1f} / {p90 * 1000:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="govmeter-durable-", dir=args.work_dir))
    http_port, tcp_port = free_server_ports()
    options = ServerOptions(
        layout=ServerLayout.for_data_dir(work / "store", None),
        http_port=http_port,
        tcp_port=tcp_port,
    )
    server = LocalServer(options)
    env = {
        **os.environ,
        "CLICKHOUSE_DATA_DIR": str(work / "store"),
        "CLICKHOUSE_HTTP_PORT": str(http_port),
    }
    try:
        print(f"local ClickHouse server: {server.start()}", file=sys.stderr)
        client = connect(options.http_url, env)
        apply_migrations(client, "server")
        copies = _copies(client)
        structures = {table: _structure(client, table) for table in TABLES}
        rows = {
            "counted_events": args.events,
            "rejections_log": max(1, args.events // 50),
            "flush_ledger": args.partitions,
            "flush_applied": 1,
        }
        timings: dict[str, dict[str, list[float]]] = {
            variant: {name: [] for name in (*TABLES, "all")} for variant in copies
        }
        for flush in range(args.flushes):
            for variant in ("synced", "plain") if flush % 2 == 0 else ("plain", "synced"):
                took = _one_flush(client, copies[variant], rows, structures, seed=flush + 1)
                for name, seconds in took.items():
                    timings[variant][name].append(seconds)
        client.close()
    finally:
        print(server.stop(), file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.flushes} flushes per variant, {args.events:,} counted events each, "
        f"data directory under {args.work_dir}"
    )
    print("| insert | rows | synced median / p90 ms | plain median / p90 ms |")
    print("|---|---|---|---|")
    for name in (*TABLES, "all"):
        synced, plain = timings["synced"][name], timings["plain"][name]
        count = rows.get(name, sum(rows.values()))
        print(f"| {name} | {count:,} | {_ms(synced)} | {_ms(plain)} |")
    extra = statistics.median(timings["synced"]["all"]) - statistics.median(timings["plain"]["all"])
    per_million = extra * 1_000_000 / args.events
    print(
        f"fsync adds {extra * 1000:.1f} ms per flush (medians), "
        f"{per_million:.2f} s of wall time per million events"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
