"""One DDL source, three deployments: golden text, each transform, chDB apply and parse.

The golden files are the reviewed rendering of `store/sql/`. After a deliberate
change (a new migration, a new transform) rewrite them with
`GOVMETER_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_ddl_golden.py`, read the
diff, and check them in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from clickhouse_connect.driver.client import Client

from metering.commands_ddl import main as ddl_main
from metering.settings import SettingsError, load_settings
from store import connect
from store.ddl import (
    REPLICA_PATH,
    DDLError,
    DeploymentMode,
    add_on_cluster,
    check_cluster,
    render_statement,
    replicate_dedup_window,
    replicate_engine,
)
from store.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    load_migrations,
    render_migrations,
    rendered_statements,
)

GOLDEN = Path(__file__).parent / "golden"
CLUSTER = "govmeter"
MODES: list[tuple[DeploymentMode, str | None]] = [
    ("embedded", None),
    ("server", None),
    ("cluster", CLUSTER),
]
EXPECTED_OBJECTS = sorted(
    [
        "agency_daily",
        "agency_daily_rollup",
        "agency_monthly",
        "agency_monthly_rollup",
        "billing_claims",
        "billing_lines",
        "billing_runs",
        "certificates",
        "corrected_events",
        "correction_agencies",
        "correction_marks",
        "corrections",
        "corrections_applied",
        "counted_events",
        "expired_offsets",
        "flush_applied",
        "flush_ledger",
        "lost_ranges",
        "model_daily_rollup",
        "model_monthly_rollup",
        "monthly_totals",
        "rejected_events",
        "rejections_log",
        "schema_migrations",
        "schema_versions",
        "store_leases",
        "tenant_daily_rollup",
        "writer_heartbeats",
        "writers",
    ]
)
ON_CLUSTER = re.compile(
    r"(?:CREATE (?:(DATABASE|TABLE|VIEW) IF NOT EXISTS|OR REPLACE VIEW)|ALTER TABLE) [\w.]+ "
    r"ON CLUSTER 'govmeter'(?:[\s(]|\Z)"
)
BACKFILL = re.compile(
    r"INSERT INTO metering\.(?:\w+_rollup\nSELECT |correction_agencies \(correction_seq, )"
)
REPLICATED = (
    "ENGINE = Replicated{}('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}'"
)

# Parse (never run) each statement with ClickHouse's own parser, and list the engines
# and MergeTree settings this chDB knows; a subprocess keeps chDB out of this process.
PARSE = r"""
import json, sys
import chdb
session = chdb.session.Session()
out = {"formatted": [], "engines": [], "settings": []}
for statement in json.loads(sys.stdin.read()):
    quoted = statement.replace("\\", "\\\\").replace("'", "\\'")
    out["formatted"].append(
        session.query(f"SELECT formatQuerySingleLine('{quoted}')", "TSVRaw").data().strip()
    )
out["engines"] = session.query("SELECT name FROM system.table_engines", "TSVRaw").data().split()
out["settings"] = session.query(
    "SELECT name FROM system.merge_tree_settings", "TSVRaw"
).data().split()
print(json.dumps(out))
"""


# -- golden text -------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "cluster"), MODES)
def test_rendering_matches_the_reviewed_golden_text(
    mode: DeploymentMode, cluster: str | None
) -> None:
    path = GOLDEN / f"ddl_{mode}.sql"
    text = render_migrations(mode, cluster)
    if os.environ.get("GOVMETER_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_embedded_and_server_run_the_sql_files_exactly_as_written(mode: DeploymentMode) -> None:
    for migration in load_migrations():
        assert migration.rendered(mode) == migration.statements()


def test_checksums_are_of_the_source_files_whatever_the_mode() -> None:
    for migration in load_migrations():
        assert migration.rendered("cluster", CLUSTER) != migration.statements()
        assert f"(sha256 {migration.checksum})" in render_migrations("cluster", CLUSTER)
        assert f"(sha256 {migration.checksum})" in render_migrations("embedded")


def test_every_cluster_statement_is_on_the_cluster_and_every_table_replicated() -> None:
    statements = rendered_statements("cluster", CLUSTER)
    assert len(statements) == len(rendered_statements("embedded"))
    for statement in statements:
        assert ON_CLUSTER.match(statement) or BACKFILL.match(statement), statement
        assert "non_replicated_deduplication_window" not in statement
        if statement.startswith("CREATE TABLE"):
            assert "ENGINE = Replicated" in statement, statement
    tables = [s for s in statements if s.startswith("CREATE TABLE")]
    assert len(tables) == 23  # schema_versions and the twenty-two tables of the SQL files
    windowed = [s for s in tables if "replicated_deduplication_window = 10000" in s]
    assert [re.search(r"metering\.(\w+)", s)[1] for s in windowed] == [  # type: ignore[index]
        "flush_ledger",
        "counted_events",
        "rejections_log",
        "agency_daily_rollup",
        "model_daily_rollup",
        "agency_monthly_rollup",
        "model_monthly_rollup",
        "tenant_daily_rollup",
        "billing_claims",
        "corrections",
        "correction_marks",
        "writers",
        "store_leases",
    ]
    for statement in windowed:
        assert "replicated_deduplication_window_seconds = 604800" in statement


# -- one transform at a time -------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "CREATE DATABASE IF NOT EXISTS metering",
            "CREATE DATABASE IF NOT EXISTS metering ON CLUSTER 'c'",
        ),
        (
            "CREATE TABLE IF NOT EXISTS metering.t\n(\n    a UInt8\n)\nENGINE = Log",
            "CREATE TABLE IF NOT EXISTS metering.t ON CLUSTER 'c'\n(\n    a UInt8\n)\nENGINE = Log",
        ),
        (
            "CREATE TABLE metering.t (a UInt8) ENGINE = MergeTree ORDER BY a",
            "CREATE TABLE metering.t ON CLUSTER 'c' (a UInt8) ENGINE = MergeTree ORDER BY a",
        ),
        (
            "CREATE VIEW IF NOT EXISTS metering.v AS\nSELECT 1",
            "CREATE VIEW IF NOT EXISTS metering.v ON CLUSTER 'c' AS\nSELECT 1",
        ),
        (
            "create materialized view metering.mv TO metering.t AS SELECT 1",
            "create materialized view metering.mv ON CLUSTER 'c' TO metering.t AS SELECT 1",
        ),
        (
            "ALTER TABLE metering.t ADD COLUMN b UInt8",
            "ALTER TABLE metering.t ON CLUSTER 'c' ADD COLUMN b UInt8",
        ),
        ("DROP VIEW IF EXISTS metering.v", "DROP VIEW IF EXISTS metering.v ON CLUSTER 'c'"),
    ],
)
def test_add_on_cluster_puts_the_clause_after_the_name(statement: str, expected: str) -> None:
    assert add_on_cluster(statement, "c") == expected


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO metering.t VALUES (1)",
        "SELECT 1",
        "CREATE TABLE metering.t ON CLUSTER 'x' (a UInt8) ENGINE = MergeTree ORDER BY a",
        "CREATE USER reader",
    ],
)
def test_add_on_cluster_refuses_what_it_cannot_render(statement: str) -> None:
    with pytest.raises(DDLError):
        add_on_cluster(statement, "c")


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ("ENGINE = MergeTree\nORDER BY a", REPLICATED.format("MergeTree") + ")\nORDER BY a"),
        ("ENGINE = MergeTree()\nORDER BY a", REPLICATED.format("MergeTree") + ")\nORDER BY a"),
        (
            "ENGINE = AggregatingMergeTree\nORDER BY a",
            REPLICATED.format("AggregatingMergeTree") + ")\nORDER BY a",
        ),
        (
            "ENGINE=ReplacingMergeTree(version) ORDER BY a",
            REPLICATED.format("ReplacingMergeTree") + ", version) ORDER BY a",
        ),
    ],
)
def test_replicate_engine_keeps_the_family_and_its_arguments(engine: str, expected: str) -> None:
    head = "CREATE TABLE metering.t (a UInt8, version UInt32)\n"
    assert replicate_engine(head + engine) == head + expected


def test_replicate_engine_leaves_replicated_tables_and_views_alone() -> None:
    done = "CREATE TABLE metering.t (a UInt8) " + REPLICATED.format("MergeTree") + ") ORDER BY a"
    assert replicate_engine(done) == done
    view = "CREATE VIEW metering.v AS SELECT engine FROM system.tables"
    assert replicate_engine(view) == view
    assert REPLICA_PATH == "/clickhouse/tables/{shard}/{database}/{table}"


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE metering.t (a UInt8) ENGINE = Memory",
        "CREATE TABLE metering.t (a UInt8) ENGINE = Log",
        "CREATE TABLE metering.t AS metering.s",
    ],
)
def test_replicate_engine_refuses_tables_that_would_differ_per_replica(statement: str) -> None:
    with pytest.raises(DDLError, match="MergeTree-family engine"):
        replicate_engine(statement)


def test_replicate_dedup_window_carries_the_blocks_and_sets_seven_days() -> None:
    statement = "ENGINE = MergeTree\nORDER BY a\nSETTINGS non_replicated_deduplication_window = 500"
    assert replicate_dedup_window(statement) == (
        "ENGINE = MergeTree\nORDER BY a\nSETTINGS replicated_deduplication_window = 500, "
        "replicated_deduplication_window_seconds = 604800"
    )
    assert replicate_dedup_window("ORDER BY a") == "ORDER BY a"


@pytest.mark.parametrize(
    ("mode", "cluster", "problem"),
    [
        ("cluster", None, "needs the name"),
        ("cluster", "two words", "not a cluster name"),
        ("cluster", "x'; DROP", "not a cluster name"),
        ("server", "govmeter", "only used in cluster mode"),
        ("replicated", None, "unknown deployment mode"),
    ],
)
def test_mode_and_cluster_name_are_checked(mode: str, cluster: str | None, problem: str) -> None:
    with pytest.raises(DDLError, match=problem):
        check_cluster(mode, cluster)


def test_a_macro_names_the_cluster() -> None:
    rendered = render_statement("CREATE DATABASE IF NOT EXISTS metering", "cluster", "{cluster}")
    assert rendered == "CREATE DATABASE IF NOT EXISTS metering ON CLUSTER '{cluster}'"


def test_a_migration_that_cannot_be_rendered_names_its_file() -> None:
    migration = Migration(9, "seed", "OPTIMIZE TABLE metering.t FINAL;\n")
    assert migration.rendered("embedded") == ["OPTIMIZE TABLE metering.t FINAL"]
    with pytest.raises(MigrationError, match=r"0009_seed\.sql"):
        migration.rendered("cluster", CLUSTER)


# -- real chDB: the embedded rendering applied, the cluster rendering parsed -------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path}/ch")
    try:
        yield store
    finally:
        store.close()


def test_the_embedded_rendering_creates_every_table_and_view(client: Client) -> None:
    for statement in rendered_statements("embedded"):
        client.command(statement)
    tables = sorted(str(row[0]) for row in client.query("SHOW TABLES FROM metering").result_rows)
    assert tables == EXPECTED_OBJECTS

    # The files the rendering ran are then recorded once; server mode sees the same record.
    assert [m.version for m in apply_migrations(client)] == [m.version for m in load_migrations()]
    assert apply_migrations(client, mode="server") == []
    recorded = client.query("SELECT checksum FROM metering.schema_versions ORDER BY version")
    assert [row[0] for row in recorded.result_rows] == [m.checksum for m in load_migrations()]


def test_every_cluster_statement_parses_in_clickhouse() -> None:
    statements = rendered_statements("cluster", CLUSTER)
    result = subprocess.run(
        [sys.executable, "-c", PARSE],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = json.loads(result.stdout)
    formatted: list[str] = parsed["formatted"]
    assert len(formatted) == len(statements)
    for line in formatted:
        assert " ON CLUSTER govmeter" in line or line.startswith("INSERT INTO "), line

    engines = set(parsed["engines"])
    settings = set(parsed["settings"])
    for statement in statements:
        for engine in re.findall(r"ENGINE = (\w+)", statement):
            assert engine in engines, engine
        clause = re.search(r"\nSETTINGS (.*)\Z", statement)
        if clause is not None:
            for name in re.findall(r"(\w+) = ", clause[1]):
                assert name in settings, name
    ledger = next(line for line in formatted if "metering.flush_ledger ON CLUSTER" in line)
    assert (
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
        "'{replica}') ORDER BY (topic, partition, first_offset) SETTINGS "
        "replicated_deduplication_window = 10000, "
        "replicated_deduplication_window_seconds = 604800"
    ) in ledger


# -- cluster mode against a stand-in client: the one-shard check and what would run -----


class StandInClient:
    """Answers the few queries `apply_migrations` asks; records every command."""

    def __init__(self, shards: int, hosts: int) -> None:
        self.shards = shards
        self.hosts = hosts
        self.commands: list[str] = []
        self.inserted: list[list[Any]] = []

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        rows: list[tuple[Any, ...]]
        if "system.clusters" in sql:
            assert parameters == {"cluster": "prod"}
            rows = [(self.shards, self.hosts)]
        elif "getMacro" in sql:
            rows = [("prod",)]
        else:
            rows = []
        return type("Result", (), {"result_rows": rows})()

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        assert table == "metering.schema_versions"
        self.inserted.extend(rows)


@pytest.mark.parametrize("cluster", ["prod", "{cluster}"])
def test_cluster_mode_runs_the_cluster_rendering_on_a_one_shard_cluster(cluster: str) -> None:
    stand_in = StandInClient(shards=1, hosts=3)
    applied = apply_migrations(cast(Client, stand_in), mode="cluster", cluster=cluster)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert stand_in.commands == rendered_statements("cluster", cluster)
    assert [row[2] for row in stand_in.inserted] == [m.checksum for m in load_migrations()]


@pytest.mark.parametrize(
    ("shards", "hosts", "problem"),
    [(0, 0, "no cluster 'prod' in system.clusters"), (2, 4, "has 2 shards; govmeter needs one")],
)
def test_cluster_mode_refuses_a_missing_or_sharded_cluster(
    shards: int, hosts: int, problem: str
) -> None:
    stand_in = StandInClient(shards=shards, hosts=hosts)
    with pytest.raises(MigrationError, match=problem):
        apply_migrations(cast(Client, stand_in), mode="cluster", cluster="prod")
    assert stand_in.commands == []


def test_cluster_mode_without_a_name_is_refused_before_anything_runs() -> None:
    stand_in = StandInClient(shards=1, hosts=1)
    with pytest.raises(MigrationError, match="needs the name"):
        apply_migrations(cast(Client, stand_in), mode="cluster")
    assert stand_in.commands == []


# -- `metering ddl` ------------------------------------------------------------------


def test_ddl_command_prints_the_golden_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert ddl_main(["ddl", "--mode", "cluster", "--cluster", CLUSTER], env={}) == 0
    assert capsys.readouterr().out == (GOLDEN / "ddl_cluster.sql").read_text(encoding="utf-8")
    assert ddl_main(["ddl", "--mode", "embedded"], env={}) == 0
    assert capsys.readouterr().out == (GOLDEN / "ddl_embedded.sql").read_text(encoding="utf-8")


def test_ddl_command_takes_the_cluster_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ddl_main(["ddl", "--mode", "cluster"], env={"CLICKHOUSE_CLUSTER": CLUSTER}) == 0
    assert capsys.readouterr().out == (GOLDEN / "ddl_cluster.sql").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "argv",
    [["ddl", "--mode", "cluster"], ["ddl", "--mode", "server", "--cluster", CLUSTER]],
)
def test_ddl_command_reports_a_missing_or_stray_cluster_name(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert ddl_main(argv, env={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("metering ddl: ")


# -- settings: CLICKHOUSE_MODE and CLICKHOUSE_CLUSTER ----------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("CLICKHOUSE_URL", "CLICKHOUSE_MODE", "CLICKHOUSE_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("url", "mode"),
    [("chdb://./var/clickhouse", "embedded"), ("http://u:p@ch:8123", "server")],
)
def test_the_mode_is_inferred_from_the_url(
    environment: pytest.MonkeyPatch, url: str, mode: str
) -> None:
    environment.setenv("CLICKHOUSE_URL", url)
    settings = load_settings()
    assert settings.clickhouse_mode is None
    assert settings.effective_clickhouse_mode == mode
    assert settings.clickhouse_cluster is None


def test_cluster_mode_with_its_cluster(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("CLICKHOUSE_URL", "http://u:p@ch-1:8123")
    environment.setenv("CLICKHOUSE_MODE", "cluster")
    environment.setenv("CLICKHOUSE_CLUSTER", CLUSTER)
    settings = load_settings()
    assert settings.effective_clickhouse_mode == "cluster"
    assert settings.clickhouse_cluster == CLUSTER


@pytest.mark.parametrize(
    ("env", "variable", "names"),
    [
        (
            {"CLICKHOUSE_URL": "http://h:8123", "CLICKHOUSE_MODE": "cluster"},
            "CLICKHOUSE_CLUSTER",
            "CLICKHOUSE_MODE=cluster",
        ),
        (
            {"CLICKHOUSE_URL": "http://h:8123", "CLICKHOUSE_CLUSTER": CLUSTER},
            "CLICKHOUSE_CLUSTER",
            "CLICKHOUSE_MODE=cluster",
        ),
        (
            {"CLICKHOUSE_URL": "http://h:8123", "CLICKHOUSE_MODE": "embedded"},
            "CLICKHOUSE_MODE",
            "CLICKHOUSE_URL=chdb://",
        ),
        (
            {
                "CLICKHOUSE_URL": "chdb://./var/clickhouse",
                "CLICKHOUSE_MODE": "cluster",
                "CLICKHOUSE_CLUSTER": CLUSTER,
            },
            "CLICKHOUSE_MODE",
            "CLICKHOUSE_URL=http",
        ),
        ({"CLICKHOUSE_MODE": "replicated"}, "CLICKHOUSE_MODE", "embedded"),
        (
            {
                "CLICKHOUSE_URL": "http://h:8123",
                "CLICKHOUSE_MODE": "cluster",
                "CLICKHOUSE_CLUSTER": "a b",
            },
            "CLICKHOUSE_CLUSTER",
            "remote_servers",
        ),
    ],
)
def test_mode_and_cluster_problems_name_their_variables(
    environment: pytest.MonkeyPatch, env: dict[str, str], variable: str, names: str
) -> None:
    for name, value in env.items():
        environment.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    [line] = str(raised.value).splitlines()[1:]
    assert line.startswith(f"  {variable}: ")
    assert names in line
