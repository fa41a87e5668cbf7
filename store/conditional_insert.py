"""The store's compare-and-set: an insert that happens only if a condition on the store
holds when the server runs it, and at most once per token.

ClickHouse has no transactions on MergeTree, but it has two things that together serve
as one:

  - `INSERT ... SELECT ... WHERE <condition>`: the server evaluates the condition (a
    scalar subquery on the target table, say "no row has commit_seq n or later") when
    it runs the statement, so a client paused between its decision and its insert
    cannot slip a stale row in: the paused client's statement is judged when it
    arrives;
  - `insert_deduplication_token`: of two statements that pass the condition at the
    same moment, only the first one stored keeps its block; ClickHouse checks and
    records the token under the table's lock (on a cluster: as a block id in Keeper,
    atomically with the part). Both statements must carry the same token, which is
    why tokens name the thing claimed ("commit-17"), never the claimant.

Neither says who won: the caller reads the claimed row back. The rows travel as
JSONEachRow in one query parameter (`format()` parses them server-side), so values are
never spliced into SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Final

import orjson
from clickhouse_connect.driver.client import Client

__all__ = ["Column", "insert_if", "sql_string"]

Column = tuple[str, str]  # (name, ClickHouse type)

_TOKEN: Final = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")


def sql_string(text: str) -> str:
    """A ClickHouse string literal of `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} to the store")


def insert_if(
    client: Client,
    table: str,
    columns: Sequence[Column],
    rows: Sequence[Mapping[str, Any]],
    *,
    token: str,
    condition: str,
    parameters: Mapping[str, Any] | None = None,
    computed: Mapping[str, str] | None = None,
) -> None:
    """Insert `rows` into `table` if `condition` (SQL, may use `parameters`) holds when the
    server runs the statement, deduplicated by `token`.

    `computed` gives a SQL expression for a column instead of a value from the rows
    (e.g. `now64(3)`: the server's clock, one clock for every writer).
    """
    if _TOKEN.fullmatch(token) is None:
        raise ValueError(f"not a deduplication token: {token[:60]!r}")
    if _NAME.fullmatch(table) is None:
        raise ValueError(f"not a table name: {table!r}")
    computed = dict(computed or {})
    sent = [(name, kind) for name, kind in columns if name not in computed]
    for name, _ in columns:
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"not a column name: {name!r}")
    structure = ", ".join(f"{name} {kind}" for name, kind in sent)
    data = b"\n".join(
        orjson.dumps({name: row[name] for name, _ in sent}, default=_default) for row in rows
    ).decode()
    names = ", ".join(name for name, _ in columns)
    select = ", ".join(computed.get(name, name) for name, _ in columns)
    statement = (
        f"INSERT INTO {table} ({names})\n"
        "SETTINGS insert_deduplicate = 1, "
        f"insert_deduplication_token = {sql_string(token)}, "
        "date_time_input_format = 'best_effort'\n"
        f"SELECT {select}\n"
        f"FROM format(JSONEachRow, {sql_string(structure)}, {{rows_json:String}})\n"
        f"WHERE {condition}"
    )
    client.command(statement, parameters={**(parameters or {}), "rows_json": data})
