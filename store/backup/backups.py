"""Backups of the store with ClickHouse's own BACKUP and RESTORE, into a set directory.

    backup(client, set_dir)    full, or incremental on top of the newest backup in the
                               set (`base_backup`), while writers count: BACKUP takes
                               each table's parts as they are, and the manifest says
                               what the ledger covered when it started and finished
    restore(client, backup)    into an empty store only, after every file's sha256
                               matched the manifest (the bases' too)

The databases are `metering` (ledger, counted events, rollups, bills, corrections,
certificates, writers) and `govmeter_audit` (who read what) when the store has it. The
server writes the backup's files, to its backups disk (`Disk('backups', ...)`, the one
disk `backups.allowed_disk` allows; the local server's is CLICKHOUSE_BACKUP_DIR): the
set directory must be inside that disk's directory, and this process reads the files
back for the manifest, so it runs where the server's files are.

BACKUP is consistent per table, not across tables, and writers keep committing while it
runs: a flush committed between the ledger's snapshot and another table's is in the
other table only (harmless: its rows are orphans the writers delete), and one the
ledger has while a later snapshot lacks a fold is what a writer's start-up repairs
(`streams.ledger_repair`, `rebuild_rollups_if_short`). So a restored store is made
consistent by the first writer that starts on it, and then counts from the ledger's own
positions whatever Kafka still holds.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from store.backup.manifest import (
    DATA,
    MANIFEST,
    BackupError,
    Manifest,
    file_hashes,
    read_manifest,
    verify_files,
    write_manifest,
)
from store.conditional_insert import sql_string

__all__ = [
    "BACKUP_DISK",
    "CHAIN_LIMIT",
    "DATABASES",
    "BackupDisk",
    "BackupError",
    "Restored",
    "backup",
    "backups_in",
    "chain_of",
    "latest",
    "prune",
    "restore",
]

DATABASES: Final = ("metering", "govmeter_audit")
BACKUP_DISK: Final = "backups"


@dataclass(frozen=True)
class BackupDisk:
    """The server's disk for backups: its name and its directory as this process sees it."""

    root: Path
    name: str = BACKUP_DISK

    def place(self, path: Path) -> str:
        """`Disk(...)` of a directory inside the disk's root."""
        root = self.root.resolve()
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            raise BackupError(
                f"{path} is not inside {root}, the directory of the server's backups disk "
                f"'{self.name}' (CLICKHOUSE_BACKUP_DIR): put the backup set there"
            ) from None
        return f"Disk({sql_string(self.name)}, {sql_string(relative.as_posix())})"


# An incremental backup restores with every base before it: at most this many
# increments after a full one, then the next is full again.
CHAIN_LIMIT: Final = 6

_HEAD: Final = """
SELECT max(commit_seq), argMax(chain_sha256, commit_seq), count()
FROM metering.flush_ledger
"""
_POSITIONS: Final = """
SELECT topic, partition, max(last_offset) + 1 FROM metering.flush_ledger
GROUP BY topic, partition ORDER BY topic, partition
"""
_CORRECTIONS: Final = """
SELECT max(correction_seq), argMax(chain_sha256, correction_seq), count()
FROM metering.corrections
"""


def _ledger(client: Client) -> dict[str, Any]:
    head, chain, rows = client.query(_HEAD).result_rows[0]
    positions = {
        f"{topic}[{partition}]": int(next_offset)
        for topic, partition, next_offset in client.query(_POSITIONS).result_rows
    }
    return {
        "head": int(head or 0),
        "chain": str(chain or ""),
        "rows": int(rows),
        "resume": positions,
    }


def _corrections(client: Client) -> dict[str, Any]:
    head, chain, rows = client.query(_CORRECTIONS).result_rows[0]
    return {"head": int(head or 0), "chain": str(chain or ""), "rows": int(rows)}


def backups_in(set_dir: Path) -> list[Manifest]:
    """The finished backups of a set, oldest first (a directory without a manifest is an
    unfinished or foreign one, and is not a base)."""
    if not set_dir.is_dir():
        return []
    found = []
    for child in sorted(set_dir.iterdir()):
        if (child / MANIFEST).is_file():
            found.append(read_manifest(child))
    return sorted(found, key=lambda m: m.name)


def latest(set_dir: Path) -> Manifest | None:
    found = backups_in(set_dir)
    return found[-1] if found else None


def chain_of(set_dir: Path, manifest: Manifest) -> list[Manifest]:
    """The backup and every base it restores with, newest first."""
    chain = [manifest]
    while chain[-1].base is not None:
        base_dir = set_dir / str(chain[-1].base)
        if not (base_dir / MANIFEST).is_file():
            raise BackupError(
                f"backup {set_dir / chain[-1].name} is incremental on {base_dir}, which is "
                "missing: it cannot be restored (restore a full backup, or put the base back)"
            )
        chain.append(read_manifest(base_dir))
    return chain


def backup(
    client: Client,
    set_dir: Path,
    disk: BackupDisk,
    *,
    full: bool = False,
    release: str = "",
    now: datetime | None = None,
) -> Manifest:
    set_dir = set_dir.resolve()
    set_dir.mkdir(parents=True, exist_ok=True)
    began = now or datetime.now(UTC)
    base = None if full else latest(set_dir)
    if base is not None and len(chain_of(set_dir, base)) > CHAIN_LIMIT:
        base = None
    kind = "full" if base is None else "incremental"
    name = f"{began:%Y%m%dT%H%M%S}Z-{kind}"
    target = set_dir / name
    if target.exists():
        raise BackupError(f"{target} exists already: wait a second and take it again")
    target.mkdir()
    databases = [
        str(row[0])
        for row in client.query(
            "SELECT name FROM system.databases WHERE name IN {names:Array(String)} ORDER BY name",
            parameters={"names": list(DATABASES)},
        ).result_rows
    ]
    if "metering" not in databases:
        shutil.rmtree(target, ignore_errors=True)
        raise BackupError("the store has no metering database: nothing to back up")
    ledger_before = _ledger(client)
    corrections_before = _corrections(client)
    what = ", ".join(f"DATABASE {name}" for name in sorted(databases, key=DATABASES.index))
    statement = f"BACKUP {what} TO {disk.place(target / DATA)}"
    if base is not None:
        statement += f" SETTINGS base_backup = {disk.place(set_dir / base.name / DATA)}"
    try:
        client.command(statement)
    except Exception as error:
        shutil.rmtree(target, ignore_errors=True)
        raise BackupError(_explain_backup_error(error, set_dir)) from error
    if not (target / DATA).is_dir():
        raise BackupError(
            f"the server wrote the backup to {target / DATA}, which this machine cannot read: "
            "run `metering backup` on the server's host (the manifest needs its files)"
        )
    ledger_after = _ledger(client)
    files, size = file_hashes(target / DATA)
    manifest = Manifest(
        name=name,
        kind=kind,
        base=None if base is None else base.name,
        created_at=began.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
        release=release,
        server_version=str(client.query("SELECT version()").result_rows[0][0]),
        databases=databases,
        ledger={"before": ledger_before, "after": ledger_after},
        corrections=corrections_before,
        files=files,
        bytes=size,
    )
    write_manifest(target, manifest)
    return manifest


def _explain_backup_error(error: Exception, set_dir: Path) -> str:
    text = str(error)
    if "allowed_disk" in text or "INVALID_CONFIG_PARAMETER" in text or "not allowed" in text:
        return (
            f"the server may not write backups to {set_dir}: it needs a disk '{BACKUP_DISK}' "
            "in its storage configuration, allowed by `backups.allowed_disk` (the local "
            "server has it, at CLICKHOUSE_BACKUP_DIR, ${CLICKHOUSE_DATA_DIR}-backups by "
            f"default): {text.splitlines()[0][:300]}"
        )
    return f"BACKUP failed: {text.splitlines()[0][:400] if text else type(error).__name__}"


def prune(set_dir: Path, keep: int) -> list[str]:
    """Delete the backups that neither are among the newest `keep` nor are a base of one
    of them; returns their names."""
    if keep < 1:
        raise BackupError(f"--keep {keep}: keep at least 1 backup")
    found = backups_in(set_dir)
    needed: set[str] = set()
    for manifest in found[-keep:]:
        needed.update(m.name for m in chain_of(set_dir, manifest))
    removed = []
    for manifest in found:
        if manifest.name not in needed:
            shutil.rmtree(set_dir / manifest.name)
            removed.append(manifest.name)
    return removed


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    chain: Sequence[str]
    ledger: dict[str, Any]


def restore(client: Client, backup_dir: Path, disk: BackupDisk) -> Restored:
    """Restore a verified backup (with its bases) into an empty store."""
    backup_dir = backup_dir.resolve()
    manifest = read_manifest(backup_dir)
    set_dir = backup_dir.parent
    chain = chain_of(set_dir, manifest)
    for member in chain:
        verify_files(set_dir / member.name, member)
    tables = client.query(
        "SELECT count() FROM system.tables WHERE database = 'metering'"
    ).result_rows[0][0]
    if int(tables):
        raise BackupError(
            f"the store is not empty (database metering has {tables} tables): a backup is "
            "restored into an empty store only, so nothing counted is overwritten; start an "
            "empty server (a new CLICKHOUSE_DATA_DIR) and restore there"
        )
    source = disk.place(backup_dir / DATA)
    client.command(f"RESTORE DATABASE metering FROM {source}")
    if "govmeter_audit" in manifest.databases:
        # The record of reads as the backup held it, beside the server's own (which
        # only the engine writes): `metering audit reads` reads both.
        client.command(
            f"RESTORE TABLE govmeter_audit.read_audit AS metering.read_audit_restored FROM {source}"
        )
    return Restored(manifest, [m.name for m in chain], _ledger(client))
