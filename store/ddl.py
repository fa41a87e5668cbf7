"""Render the migrations in `store/sql/` for one of three ClickHouse deployments.

The SQL files are the one source of the schema. They are written for a single
ClickHouse (plain MergeTree engines, no cluster clause); this module rewrites each
parsed statement for the deployment it will run on, as text, one function per
transform:

- `embedded` (chDB) and `server` (one ClickHouse server): the statement unchanged.
- `cluster` (a cluster named in the servers' `remote_servers`, ONE shard, any number of
  replicas, with ClickHouse Keeper and the `{shard}` and `{replica}` macros defined):
    1. `add_on_cluster`: `CREATE [OR REPLACE] DATABASE|TABLE|VIEW ...`, `ALTER TABLE ...`
       and `DROP ...` get `ON CLUSTER '<name>'`, so one statement runs on every host
       (`INSERT INTO` backfills run once, on the connected replica, and replicate);
    2. `replicate_engine`: `ENGINE = <X>MergeTree[(args)]` becomes
       `ENGINE = Replicated<X>MergeTree('/clickhouse/tables/{shard}/{database}/{table}',
       '{replica}'[, args])`; a table on any other engine is refused, because every
       replica would hold its own, different copy;
    3. `replicate_dedup_window`: the setting `non_replicated_deduplication_window = N`
       becomes `replicated_deduplication_window = N,
       replicated_deduplication_window_seconds = 604800`.

The deduplication window. A committed flush that was not yet folded into the rollups
is folded again on restart with the same `insert_deduplication_token`, and ClickHouse
drops the repeat only while the token's hash is still inside the table's window. On
plain MergeTree that is `non_replicated_deduplication_window` (0, i.e. off, by
default; the SQL files set 10000 blocks, no time limit). On Replicated tables the
hashes live in Keeper and a hash is kept while it is among the last
`replicated_deduplication_window` blocks AND younger than
`replicated_deduplication_window_seconds` (measured from the table's newest block,
not the wall clock). The defaults differ between versions (ClickHouse 26.9, the
engine of the chDB used here, ships 10000 blocks and 3600 seconds; older releases
kept fewer blocks), so the rendering sets both explicitly: the file's block count
(10000, the same as the embedded store) and 7 days. Tables without the setting in
the source keep the server's default (on for Replicated tables); nothing in the
pipeline inserts an identical block twice on purpose.

Why one shard, and no `Distributed` tables. With one shard every table is one
replica set, and the pipeline works unchanged: an insert lands on the replica the
worker is connected to and Keeper replicates it as a unit; `ALTER TABLE ... DELETE`
(the recovery's orphan clean-up) issued on one replica is a Keeper-coordinated
mutation that every replica of the table executes (`mutations_sync = 2` waits for
all of them). Several shards would break the sink's protocol, not just its DDL:

- the commit point is ONE insert of a flush's ledger rows, atomic because it is one
  part of one table. Through a `Distributed` table the block is split by sharding
  key into one insert per shard, which succeed or fail independently (and are sent
  in the background by default), so "the flush's ledger rows exist" would no longer
  be all-or-nothing; the same holds for staging `counted_events` and for the
  per-flush `insert_deduplication_token`, which then deduplicates per shard;
- the rollup fold `INSERT ... SELECT ... FROM counted_events WHERE flush_seq = N`
  must read every row of the flush, and a re-applied fold must rebuild identical
  blocks on every shard for the token to drop it;
- recovery's `ALTER TABLE ... DELETE WHERE flush_seq > N` mutates one replica set;
  across shards it needs `ON CLUSTER` and can finish on some shards and not others;
- the duplicate lookup, `max(flush_seq)` and the resume positions must see all
  shards, and reads through `Distributed` tables are not read-your-writes.

One shard is enough for the volumes involved (a year of rollups is about 1.3 million
rows; `counted_events`, the only large table, is ordered by `event_id` for the one
lookup per flush), and replicas scale the readers. `metering migrate` in cluster mode
checks `system.clusters` and refuses a cluster with more than one shard.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

from schemas.errors import InputError

__all__ = [
    "CLUSTER_NAME",
    "MODES",
    "REPLICATED_DEDUP_WINDOW_SECONDS",
    "REPLICA_NAME",
    "REPLICA_PATH",
    "DDLError",
    "DeploymentMode",
    "add_on_cluster",
    "check_cluster",
    "render_statement",
    "replicate_dedup_window",
    "replicate_engine",
]

DeploymentMode = Literal["embedded", "server", "cluster"]
MODES: Final[tuple[DeploymentMode, ...]] = get_args(DeploymentMode)

# Keeper path and replica name of every replicated table: the server substitutes the
# macros ({shard} and {replica} from its <macros> config; {database} and {table}
# from the statement) when the table is created.
REPLICA_PATH: Final = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME: Final = "{replica}"

# How long a replicated table keeps an insert's deduplication hash: 7 days, far longer
# than any restart takes (the block count is carried over from the SQL file).
REPLICATED_DEDUP_WINDOW_SECONDS: Final = 7 * 24 * 3600

# A cluster name as in `remote_servers`, or one macro such as `{cluster}`.
CLUSTER_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*|\{[A-Za-z_][A-Za-z0-9_]*\}")

# The statements that can run ON CLUSTER: the verb, the object kind, the optional
# IF [NOT] EXISTS, then the object's (database-qualified) name. `rest` starts right
# after the name: the cluster clause goes between the two.
_DDL_HEAD: Final = re.compile(
    r"\A(?P<head>"
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?P<create>DATABASE|TABLE|(?:MATERIALIZED\s+)?VIEW)\s+"
    r"(?:IF\s+NOT\s+EXISTS\s+)?"
    r"|ALTER\s+TABLE\s+"
    r"|DROP\s+(?:DATABASE|TABLE|VIEW)\s+(?:IF\s+EXISTS\s+)?"
    r")(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)(?P<rest>(?=[\s(]|\Z).*)\Z",
    re.IGNORECASE | re.DOTALL,
)
_DATA_STATEMENT: Final = re.compile(r"\A\s*INSERT\s+INTO\s", re.IGNORECASE)
_ON_CLUSTER: Final = re.compile(r"\s+ON\s+CLUSTER\b", re.IGNORECASE)

# `ENGINE = MergeTree`, `ENGINE = AggregatingMergeTree()`, `ENGINE = ReplacingMergeTree(v)`:
# the MergeTree family (engine names are case-sensitive) and its arguments, if any.
_ENGINE: Final = re.compile(r"\bENGINE\s*=\s*(?P<engine>\w+)", re.IGNORECASE)
_MERGE_TREE_ENGINE: Final = re.compile(
    r"\b(?i:ENGINE)\s*=\s*"
    r"(?P<family>(?:Replacing|Summing|Aggregating|Collapsing|VersionedCollapsing|Graphite)?"
    r"MergeTree)\b"
    r"(?:[ \t]*\((?P<args>[^()]*)\))?"
)

_NON_REPLICATED_WINDOW: Final = re.compile(
    r"\bnon_replicated_deduplication_window\s*=\s*(?P<blocks>\d+)", re.IGNORECASE
)


class DDLError(InputError):
    """A statement or deployment this module cannot render; the message says why."""


def check_cluster(mode: str, cluster: str | None) -> None:
    """A cluster name is required for `cluster` and refused for the other modes."""
    if mode not in MODES:
        raise DDLError(f"unknown deployment mode {mode!r}: use one of {', '.join(MODES)}")
    if mode != "cluster":
        if cluster is not None:
            raise DDLError(f"a cluster name ({cluster!r}) is only used in cluster mode")
        return
    if cluster is None:
        raise DDLError("cluster mode needs the name of the cluster (as in remote_servers)")
    if CLUSTER_NAME.fullmatch(cluster) is None:
        raise DDLError(
            f"{cluster!r} is not a cluster name: use letters, digits, '_', '.', '-', "
            "or one macro such as {cluster}"
        )


def add_on_cluster(statement: str, cluster: str) -> str:
    """Insert `ON CLUSTER '<cluster>'` right after the name of the object created or changed."""
    match = _DDL_HEAD.match(statement)
    if match is None:
        raise DDLError(
            "cannot run on a cluster (only CREATE DATABASE|TABLE|VIEW, ALTER TABLE and DROP "
            f"are rendered): {_first_line(statement)}"
        )
    if _ON_CLUSTER.match(match["rest"]):
        raise DDLError(f"the SQL files must not name a cluster: {_first_line(statement)}")
    return f"{match['head']}{match['name']} ON CLUSTER '{cluster}'{match['rest']}"


def replicate_engine(statement: str) -> str:
    """Replace each MergeTree-family engine by its Replicated twin; refuse other tables.

    A table already on a Replicated engine is left as it is, so rendering is idempotent.
    """
    head = _DDL_HEAD.match(statement)
    creates_table = head is not None and (head["create"] or "").upper() == "TABLE"
    if creates_table:
        engines = _ENGINE.findall(statement)
        if len(engines) != 1 or not engines[0].endswith("MergeTree"):
            raise DDLError(
                "a table on a cluster needs one MergeTree-family engine, or each replica "
                f"keeps its own copy (found {engines or 'none'}): {_first_line(statement)}"
            )

    def replicated(match: re.Match[str]) -> str:
        arguments = [f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'"]
        if match["args"] is not None and match["args"].strip():
            arguments.append(match["args"].strip())
        return f"ENGINE = Replicated{match['family']}({', '.join(arguments)})"

    return _MERGE_TREE_ENGINE.sub(replicated, statement)


def replicate_dedup_window(statement: str) -> str:
    """`non_replicated_deduplication_window = N` to the replicated window: N blocks, 7 days."""

    def replicated(match: re.Match[str]) -> str:
        return (
            f"replicated_deduplication_window = {match['blocks']}, "
            f"replicated_deduplication_window_seconds = {REPLICATED_DEDUP_WINDOW_SECONDS}"
        )

    return _NON_REPLICATED_WINDOW.sub(replicated, statement)


def render_statement(statement: str, mode: DeploymentMode, cluster: str | None = None) -> str:
    """One statement of a SQL file, as it runs on the given deployment."""
    check_cluster(mode, cluster)
    if mode != "cluster":
        return statement
    if cluster is None:  # check_cluster refuses it; kept explicit under python -O
        raise DDLError("cluster mode needs the name of the cluster (as in remote_servers)")
    if _DATA_STATEMENT.match(statement):
        # A one-time backfill: it runs on the replica the migration is connected to, and
        # the replicated table hands the inserted parts to every other replica.
        return statement
    rendered = add_on_cluster(statement, cluster)
    rendered = replicate_engine(rendered)
    return replicate_dedup_window(rendered)


def _first_line(statement: str) -> str:
    return statement.strip().splitlines()[0] if statement.strip() else "(empty statement)"
