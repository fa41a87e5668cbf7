"""`python -m bench.oversight`: how long the oversight queries take on a store.

Runs each query of the adoption report (`metering report adoption`) and the contract's
monthly views for one month, several times, and prints the best and median wall time
of each. Point it at a store a benchmark left behind (`bench.pipeline --keep`):

    python -m bench.oversight --store /tmp/bench/pipeline-store --month 2026-11 [--optimize]

`--optimize` first merges every rollup's parts (`OPTIMIZE TABLE ... FINAL`), which is
where background merges bring a store some time after a backfill.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from metering.oversight import adoption
from metering.periods import month as parse_month
from store import connect

__all__ = ["main"]

_ROLLUPS = (
    "agency_daily_rollup",
    "model_daily_rollup",
    "agency_monthly_rollup",
    "model_monthly_rollup",
    "tenant_daily_rollup",
)


def _queries() -> dict[str, str]:
    return {
        "report: per tenant": adoption._TENANTS_SQL,
        "report: per level": adoption._LEVELS_SQL,
        "report: per agency": adoption._AGENCIES_SQL,
        "report: per model": adoption._MODELS_SQL,
        "report: per day": adoption._DAYS_SQL,
        "report: per day, one agency": adoption._AGENCY_DAYS_SQL,
        "view agency_monthly": ("SELECT * FROM metering.agency_monthly WHERE month = {start:Date}"),
        "view monthly_totals": ("SELECT * FROM metering.monthly_totals WHERE month = {start:Date}"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.oversight", description=__doc__)
    p.add_argument("--store", type=Path, required=True, help="an embedded store directory")
    p.add_argument("--month", default="2026-11")
    p.add_argument("--agency", default="", help="the agency of the one-agency query")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--optimize", action="store_true")
    args = p.parse_args(argv)

    client = connect(f"chdb://{args.store.resolve()}")
    if args.optimize:
        for table in _ROLLUPS:
            began = time.perf_counter()
            client.command(f"OPTIMIZE TABLE metering.{table} FINAL")
            print(f"OPTIMIZE {table}: {time.perf_counter() - began:.1f} s")
    sizes = {
        str(name): (int(rows), int(parts))
        for name, rows, parts in client.query(
            "SELECT table, sum(rows), count() FROM system.parts WHERE database = 'metering' "
            "AND active GROUP BY table"
        ).result_rows
    }
    period = parse_month(args.month)
    agency = args.agency or str(
        client.query(
            "SELECT agency_id FROM metering.agency_monthly_rollup "
            "GROUP BY agency_id ORDER BY sum(messages) DESC LIMIT 1"
        ).result_rows[0][0]
    )
    print(f"store {args.store}; month {args.month}; one agency: {agency}")
    print("rollup rows (parts): " + ", ".join(f"{t} {sizes.get(t, (0, 0))[0]:,} "
          f"({sizes.get(t, (0, 0))[1]})" for t in _ROLLUPS))  # fmt: skip
    print()
    print("| query | best ms | median ms | rows |")
    print("|---|---|---|---|")
    for name, sql in _queries().items():
        parameters = {
            "start": period.start,
            "end": period.end,
            "agency": agency if "one agency" in name else "",
        }
        times = []
        rows = 0
        for _ in range(args.runs):
            began = time.perf_counter()
            rows = len(client.query(sql, parameters=parameters).result_rows)
            times.append((time.perf_counter() - began) * 1000)
        print(f"| {name} | {min(times):.0f} | {statistics.median(times):.0f} | {rows} |")
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
