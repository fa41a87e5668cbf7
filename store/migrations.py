"""Apply the numbered SQL files in `store/sql/` once each, recording what ran.

Idempotent: safe to run twice and from every command that opens the store. A
migration file that changed after it was applied is an error: add a new file instead.

The files are rendered for the deployment (`store/ddl.py`): unchanged for the
embedded store and a single server, `ON CLUSTER` and Replicated engines for a
one-shard cluster. Checksums are always taken over the file as written, so the
record in `metering.schema_versions` does not depend on the mode it was applied in.

Releases before migration 0012 kept that record in `metering.schema_migrations` and
wrote without the store's arbitration between writers. Such a writer must never run
against a store that other writers share under it: its start-up recovery deleted every
staged row numbered after its own last flush, which would be other writers' flushes in
flight. So the record moves, and `metering.schema_migrations` becomes a view that fails
with a message naming the upgrade: an older release stops at its first read of it, on
start, before it writes anything. The first writer of this release to migrate such a
store also waits until no older writer has committed for `LEGACY_QUIET_SECONDS`, and a
store migrated by a newer release is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Final

from clickhouse_connect.driver.client import Client

from schemas.errors import ServiceError
from store.ddl import DDLError, DeploymentMode, check_cluster, render_statement
from store.ledger import APPLY_ROLLUPS, Ledger, fold_unapplied_flushes

__all__ = [
    "BOOKKEEPING",
    "LEGACY_QUIET_SECONDS",
    "TRIPWIRE",
    "Migration",
    "MigrationError",
    "OlderWritersActiveError",
    "apply_migrations",
    "check_schema_current",
    "load_migrations",
    "refuse_while_older_writers_commit",
    "render_migrations",
    "rendered_statements",
]

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")

# The database and the record of applied files, created before any file runs.
BOOKKEEPING: Final = (
    "CREATE DATABASE IF NOT EXISTS metering",
    "CREATE TABLE IF NOT EXISTS metering.schema_versions "
    "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) "
    "ENGINE = MergeTree ORDER BY version",
)

# What a release before 0012 reads at every start (`SELECT ... FROM
# metering.schema_migrations`): a view that fails with this message.
OLDER_RELEASES_STOP_HERE: Final = (
    "this store is arbitrated between its writers by the store itself (govmeter "
    "migration 0012_store_arbitration): this release of govmeter predates that and "
    "cannot write to it or read it safely; upgrade it to the release that migrated "
    "the store (metering.schema_versions lists what was applied)"
)
TRIPWIRE: Final = (
    "CREATE VIEW IF NOT EXISTS metering.schema_migrations AS "
    "SELECT toUInt32(0) AS version, '' AS name, '' AS checksum, "
    "toDateTime64(0, 3, 'UTC') AS applied_at FROM system.one "
    f"WHERE throwIf(dummy = 0, '{OLDER_RELEASES_STOP_HERE}')"
)

# A writer of an older release that committed this recently may still be running.
LEGACY_QUIET_SECONDS: Final = 30

_LEGACY_WRITERS: Final = """
SELECT worker, max(flush_seq), max(committed_at),
       dateDiff('millisecond', max(committed_at), now64(3))
FROM metering.flush_ledger
WHERE committed_at > now64(3) - toIntervalSecond({quiet:UInt32})
GROUP BY worker
ORDER BY worker
"""

_TABLE_ENGINE: Final = (
    "SELECT engine FROM system.tables WHERE database = 'metering' AND name = {name:String}"
)

_SHARDS: Final = """
SELECT uniqExact(shard_num), count()
FROM system.clusters
WHERE cluster = {cluster:String}
"""


class MigrationError(ServiceError):
    pass


class OlderWritersActiveError(MigrationError):
    """Writers of a release before store arbitration committed to the store lately: it
    is not migrated while they may run. The message names them."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """Statements end with `;` at the end of a line; `--` comments are dropped."""
        lines = [line for line in self.sql.splitlines() if not line.strip().startswith("--")]
        text = "\n".join(lines)
        return [part.strip() for part in re.split(r";\s*(?:\n|$)", text) if part.strip()]

    def rendered(self, mode: DeploymentMode, cluster: str | None = None) -> list[str]:
        """The statements as they run on the given deployment (`store/ddl.py`)."""
        try:
            return [render_statement(s, mode, cluster) for s in self.statements()]
        except DDLError as error:
            raise MigrationError(f"store/sql/{self.file_name}: {error}") from None


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("store").joinpath("sql").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        found.append(
            Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
        )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"store/sql: two migration files share a number: {versions}")
    return found


def _bookkeeping(mode: DeploymentMode, cluster: str | None) -> list[str]:
    try:
        return [render_statement(statement, mode, cluster) for statement in BOOKKEEPING]
    except DDLError as error:
        raise MigrationError(str(error)) from None


def rendered_statements(mode: DeploymentMode = "embedded", cluster: str | None = None) -> list[str]:
    """Every statement `apply_migrations` can run on a fresh store, in order."""
    statements = [*_bookkeeping(mode, cluster), _tripwire(mode, cluster)]
    for migration in load_migrations():
        statements.extend(migration.rendered(mode, cluster))
    return statements


def render_migrations(mode: DeploymentMode = "embedded", cluster: str | None = None) -> str:
    """The full DDL for one deployment, for `clickhouse-client --multiquery`."""
    target = {
        "embedded": "the embedded store (chDB)",
        "server": "a single ClickHouse server",
        "cluster": f"the ClickHouse cluster '{cluster}' (one shard, any number of replicas)",
    }
    command = f"metering ddl --mode {mode}" + (f" --cluster '{cluster}'" if cluster else "")
    blocks = [
        f"-- govmeter schema for {target[mode]}\n"
        f"-- from store/sql/ by `{command}`.\n"
        "-- Every statement is idempotent. `metering migrate` runs the same statements\n"
        "-- and records each file in metering.schema_versions.\n\n"
        "-- bookkeeping (store/migrations.py)\n"
        + "\n\n".join(f"{statement};" for statement in _bookkeeping(mode, cluster))
        + "\n\n-- releases before 0012 stop at their first read of this view\n"
        + f"{_tripwire(mode, cluster)};"
    ]
    for migration in load_migrations():
        statements = migration.rendered(mode, cluster)
        blocks.append(
            f"-- store/sql/{migration.file_name} (sha256 {migration.checksum})\n"
            + "\n\n".join(f"{statement};" for statement in statements)
        )
    return "\n\n".join(blocks) + "\n"


def _check_one_shard(client: Client, cluster: str) -> None:
    """The pipeline needs one shard (store/ddl.py says why): refuse anything else."""
    name = cluster
    if cluster.startswith("{"):
        macro = cluster.strip("{}")
        rows = client.query("SELECT getMacro({macro:String})", parameters={"macro": macro})
        name = str(rows.result_rows[0][0])
    shards, hosts = client.query(_SHARDS, parameters={"cluster": name}).result_rows[0]
    if int(hosts) == 0:
        raise MigrationError(
            f"CLICKHOUSE_CLUSTER={cluster}: no cluster {name!r} in system.clusters on this "
            "server; name a cluster from the servers' remote_servers configuration"
        )
    if int(shards) != 1:
        raise MigrationError(
            f"CLICKHOUSE_CLUSTER={cluster}: cluster {name!r} has {shards} shards; govmeter "
            "needs one shard with any number of replicas (docs/clickhouse-cluster.md)"
        )


def _fold_committed_flushes_first(client: Client) -> None:
    """Before the schema changes, fold every committed flush into the rollups that exist
    (see `store.ledger.fold_unapplied_flushes`: a new rollup is backfilled from them)."""
    tables = {
        str(row[0])
        for row in client.query(
            "SELECT name FROM system.tables WHERE database = 'metering'"
        ).result_rows
    }
    if {"flush_ledger", "flush_applied"} <= tables:
        fold_unapplied_flushes(
            Ledger(client),
            tuple(r for r in APPLY_ROLLUPS if r in tables),
            guarded="store_leases" in tables,
        )


def _tripwire(mode: DeploymentMode, cluster: str | None) -> str:
    try:
        return render_statement(TRIPWIRE, mode, cluster)
    except DDLError as error:
        raise MigrationError(str(error)) from None


def _engine(client: Client, name: str) -> str | None:
    rows = client.query(_TABLE_ENGINE, parameters={"name": name}).result_rows
    return str(rows[0][0]) if rows else None


def refuse_while_older_writers_commit(client: Client) -> None:
    """Refuse (naming them) while writers of a release before 0012 committed lately."""
    if _engine(client, "flush_ledger") is None:
        return
    rows = client.query(_LEGACY_WRITERS, parameters={"quiet": LEGACY_QUIET_SECONDS}).result_rows
    if not rows:
        return
    named = "; ".join(
        f"'{worker}' committed flush {seq} at {str(at)[:23]} UTC, {int(age) / 1000:.1f} s ago"
        for worker, seq, at, age in rows
    )
    raise OlderWritersActiveError(
        f"writers of an older govmeter release are counting into this store ({named}). "
        "They do not take part in the store's arbitration between writers (migration "
        "0012), so the store is not migrated while they may run: stop every writer of "
        f"the older release; this release migrates the store once none has committed "
        f"for {LEGACY_QUIET_SECONDS} s"
    )


def _move_the_record(client: Client, mode: DeploymentMode, cluster: str | None) -> None:
    """Releases before 0012 recorded migrations in metering.schema_migrations: copy the
    record into schema_versions, then replace the table by the view older releases
    stop at. Safe to repeat, and to crash midway."""
    engine = _engine(client, "schema_migrations")
    if engine == "View":
        return
    if engine is not None:
        refuse_while_older_writers_commit(client)
        client.command(
            "INSERT INTO metering.schema_versions "
            "SELECT version, name, checksum, applied_at FROM metering.schema_migrations "
            "WHERE version NOT IN (SELECT version FROM metering.schema_versions)"
        )
        on_cluster = f" ON CLUSTER '{cluster}'" if mode == "cluster" and cluster else ""
        client.command(f"DROP TABLE IF EXISTS metering.schema_migrations{on_cluster} SYNC")
    client.command(_tripwire(mode, cluster))


def apply_migrations(
    client: Client, mode: DeploymentMode = "embedded", cluster: str | None = None
) -> list[Migration]:
    """Apply every migration not yet recorded; return the ones applied now."""
    try:
        check_cluster(mode, cluster)
    except DDLError as error:
        raise MigrationError(str(error)) from None
    if mode == "cluster":
        if cluster is None:  # check_cluster refuses it; kept explicit under python -O
            raise MigrationError("cluster mode needs CLICKHOUSE_CLUSTER, the cluster's name")
        _check_one_shard(client, cluster)
    for statement in _bookkeeping(mode, cluster):
        client.command(statement)
    _move_the_record(client, mode, cluster)
    applied = {
        int(version): str(checksum)
        for version, checksum in client.query(
            "SELECT version, checksum FROM metering.schema_versions"
        ).result_rows
    }
    known = load_migrations()
    _refuse_a_newer_store(max(applied, default=0), known)
    newly_applied: list[Migration] = []
    for migration in known:
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"store/sql/{migration.file_name} changed after it "
                    "was applied to this store; restore it and add a new numbered migration"
                )
            continue
        if not newly_applied:
            _fold_committed_flushes_first(client)
        for statement in migration.rendered(mode, cluster):
            client.command(statement)
        client.insert(
            "metering.schema_versions",
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        newly_applied.append(migration)
    return newly_applied


def _refuse_a_newer_store(version: int, known: list[Migration]) -> None:
    latest = known[-1]
    if version > latest.version:
        raise MigrationError(
            f"the store's schema is at migration {version}, newer than this release knows "
            f"(its last is {latest.file_name}): a newer govmeter release migrated it, and "
            "this one cannot be sure to write it the way that release expects; upgrade "
            "this writer"
        )


def check_schema_current(client: Client) -> None:
    """For read-only commands: the store has every migration of this release, and no DDL
    is run to get there (a reader never changes the schema)."""
    latest = load_migrations()[-1]
    try:
        rows = client.query("SELECT max(version) FROM metering.schema_versions").result_rows
    except Exception as error:
        if "UNKNOWN_DATABASE" in str(error) or "UNKNOWN_TABLE" in str(error):
            raise MigrationError(
                "the store has no metering schema yet: run `metering migrate` (or start "
                "`metering worker`, which migrates), then try again"
            ) from None
        raise
    version = int(rows[0][0] or 0) if rows else 0
    if version < latest.version:
        raise MigrationError(
            f"the store's schema is at migration {version}, this release needs "
            f"{latest.version} ({latest.file_name}): run `metering migrate`, then try again"
        )
