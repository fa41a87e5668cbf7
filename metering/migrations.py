"""Apply the numbered SQL files in `schemas/sql/` once each, recording what ran.

Idempotent: safe to run twice and from every command that opens the store. A
migration file that changed after it was applied is an error: add a new file instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from clickhouse_connect.driver.client import Client

__all__ = ["Migration", "MigrationError", "apply_migrations", "load_migrations"]

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """Statements end with `;` at the end of a line; `--` comments are dropped."""
        lines = [line for line in self.sql.splitlines() if not line.strip().startswith("--")]
        text = "\n".join(lines)
        return [part.strip() for part in re.split(r";\s*(?:\n|$)", text) if part.strip()]


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("schemas").joinpath("sql").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        found.append(
            Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
        )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"schemas/sql: two migration files share a number: {versions}")
    return found


def apply_migrations(client: Client) -> list[Migration]:
    """Apply every migration not yet recorded; return the ones applied now."""
    client.command("CREATE DATABASE IF NOT EXISTS metering")
    client.command(
        "CREATE TABLE IF NOT EXISTS metering.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version"
    )
    applied = {
        int(version): str(checksum)
        for version, checksum in client.query(
            "SELECT version, checksum FROM metering.schema_migrations"
        ).result_rows
    }
    newly_applied = []
    for migration in load_migrations():
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"schemas/sql/{migration.version:04d}_{migration.name}.sql changed after it "
                    "was applied to this store; restore it and add a new numbered migration"
                )
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            "metering.schema_migrations",
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        newly_applied.append(migration)
    return newly_applied
