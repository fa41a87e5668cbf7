"""Before a writer writes anything: can this store arbitrate between writers?

The protocol needs three tables (the ledger, the writers, the leases) to keep their
inserts' deduplication tokens, and the ledger to refuse rows of writers that do not
take part. A store whose tables were created by hand, or changed since, may not: then
two writers could both believe they committed the same number. The writer refuses to
start, naming the table, the setting and the statement that fixes it.
"""

from __future__ import annotations

import re
from typing import Final

from clickhouse_connect.driver.client import Client

from schemas.errors import ServiceError

__all__ = ["ARBITRATING_TABLES", "ArbitrationUnavailableError", "check_arbitration"]

ARBITRATING_TABLES: Final = ("flush_ledger", "writers", "store_leases")
LEDGER_CONSTRAINT: Final = "only_registered_writers_commit__upgrade_older_govmeter_writers"

_TABLES: Final = """
SELECT name, engine, engine_full, create_table_query
FROM system.tables
WHERE database = 'metering' AND name IN {names:Array(String)}
"""
_WINDOW: Final = re.compile(r"\b(non_replicated|replicated)_deduplication_window\s*=\s*(\d+)")


class ArbitrationUnavailableError(ServiceError):
    """The store cannot arbitrate between writers; nothing was written."""


def check_arbitration(client: Client) -> None:
    rows = client.query(_TABLES, parameters={"names": list(ARBITRATING_TABLES)}).result_rows
    found = {
        str(name): (str(engine), str(full), str(create)) for name, engine, full, create in rows
    }
    problems: list[str] = []
    for table in ARBITRATING_TABLES:
        if table not in found:
            problems.append(
                f"metering.{table} is missing: run `metering migrate` with this release"
            )
            continue
        engine, full, create = found[table]
        windows = {kind: int(n) for kind, n in _WINDOW.findall(full)}
        if engine.startswith("Replicated"):
            if windows.get("replicated", 1) == 0:
                problems.append(
                    f"metering.{table} keeps no deduplication tokens "
                    "(replicated_deduplication_window = 0): run `ALTER TABLE "
                    f"metering.{table} ON CLUSTER ... MODIFY SETTING "
                    "replicated_deduplication_window = 10000`"
                )
        elif engine == "MergeTree":
            if windows.get("non_replicated", 0) == 0:
                problems.append(
                    f"metering.{table} keeps no deduplication tokens "
                    "(non_replicated_deduplication_window is 0 or unset): run `ALTER TABLE "
                    f"metering.{table} MODIFY SETTING non_replicated_deduplication_window = 10000`"
                )
        else:
            problems.append(
                f"metering.{table} is a {engine} table; the arbitration needs MergeTree or "
                "ReplicatedMergeTree (recreate it with `metering ddl`)"
            )
        if table == "flush_ledger" and LEDGER_CONSTRAINT not in create:
            problems.append(
                "metering.flush_ledger lacks the constraint that refuses writers of older "
                f"releases ({LEDGER_CONSTRAINT}): run `metering migrate` with this release"
            )
    if problems:
        raise ArbitrationUnavailableError(
            "this store cannot arbitrate between writers, so this writer writes nothing "
            "(two writers could both believe they committed the same flush number):\n  "
            + "\n  ".join(problems)
        )
