"""Backups of the store: ClickHouse's BACKUP and RESTORE into a set directory
(`backups.py`), each with a manifest of what it holds and the sha256 of every file
(`manifest.py`)."""

from store.backup.backups import (
    BACKUP_DISK,
    CHAIN_LIMIT,
    DATABASES,
    BackupDisk,
    Restored,
    backup,
    backups_in,
    chain_of,
    latest,
    prune,
    restore,
)
from store.backup.manifest import BackupError, Manifest, read_manifest, verify_files

__all__ = [
    "BACKUP_DISK",
    "CHAIN_LIMIT",
    "DATABASES",
    "BackupDisk",
    "BackupError",
    "Manifest",
    "Restored",
    "backup",
    "backups_in",
    "chain_of",
    "latest",
    "prune",
    "read_manifest",
    "restore",
    "verify_files",
]
