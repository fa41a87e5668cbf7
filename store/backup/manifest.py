"""The manifest of one backup: when, of what, on top of which base, what the ledger
covered, and the sha256 of every file, so a restore can refuse anything altered.

    <set>/<name>/manifest.json      this file
    <set>/<name>/clickhouse/        what ClickHouse's BACKUP wrote

`name` is the UTC time the backup started and its kind: 20261207T031500Z-full or
20261208T031500Z-incremental (on top of `base`, which restores with it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from schemas.errors import ServiceError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "BackupError",
    "Manifest",
    "file_hashes",
    "read_manifest",
    "verify_files",
    "write_manifest",
]

FORMAT: Final = "govmeter backup v1"
MANIFEST: Final = "manifest.json"
DATA: Final = "clickhouse"
_CHUNK: Final = 1 << 20


class BackupError(ServiceError):
    """A backup cannot be taken or restored; the message says which file or setting."""


@dataclass
class Manifest:
    name: str
    kind: str  # full or incremental
    base: str | None
    created_at: str  # ISO, UTC: when the backup started
    finished_at: str
    release: str
    server_version: str
    databases: list[str]
    # The ledger when the backup started and when it finished: the backup holds every
    # commit up to `head_before` and none after `head_after`.
    ledger: dict[str, Any] = field(default_factory=dict)
    corrections: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # path under clickhouse/ -> sha256
    bytes: int = 0
    format: str = FORMAT

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def file_hashes(root: Path) -> tuple[dict[str, str], int]:
    """sha256 of every file under `root` (relative POSIX paths), and their total size."""
    hashes: dict[str, str] = {}
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        hashes[path.relative_to(root).as_posix()] = digest.hexdigest()
        total += path.stat().st_size
    return hashes, total


def write_manifest(directory: Path, manifest: Manifest) -> None:
    path = directory / MANIFEST
    temporary = path.with_suffix(".tmp")
    temporary.write_text(manifest.as_json(), encoding="utf-8")
    temporary.replace(path)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupError(f"{path}: no manifest; {directory} is not a finished govmeter backup")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackupError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BackupError(f"{path}: not a manifest of format {FORMAT!r}")
    try:
        return Manifest(**raw)
    except TypeError as error:
        raise BackupError(f"{path}: unexpected fields ({error})") from None


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Every file the manifest lists is there with its sha256, and no other file."""
    found, _ = file_hashes(directory / DATA)
    missing = sorted(set(manifest.files) - set(found))
    extra = sorted(set(found) - set(manifest.files))
    changed = sorted(p for p in set(found) & set(manifest.files) if found[p] != manifest.files[p])
    problems = [f"missing {directory / DATA / p}" for p in missing[:5]]
    problems += [f"not in the manifest: {directory / DATA / p}" for p in extra[:5]]
    problems += [
        f"{directory / DATA / p}: sha256 {found[p][:16]}... differs from the manifest's "
        f"{manifest.files[p][:16]}..."
        for p in changed[:5]
    ]
    if problems:
        more = len(missing) + len(extra) + len(changed) - len(problems)
        raise BackupError(
            f"backup {directory} does not match its manifest, so it is not restored: "
            + "; ".join(problems)
            + (f"; and {more} more" if more > 0 else "")
        )
