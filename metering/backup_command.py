"""`metering backup` and `metering restore`: the store's backups, and getting it back.

    metering backup --to DIR [--full] [--keep N]    a backup into the set DIR
    metering backup --to DIR --status               the newest backup's age, for alerts
    metering restore --from DIR[/NAME]               into an empty store, verified first

A restored store holds what the ledger covered when the backup was taken; `metering
worker` then counts the rest again from Kafka, from the ledger's own positions, so
nothing is lost while Kafka still holds it (42 days by default). What it no longer
holds is recorded as expired, and `metering certify` fails naming it. The restore says
which applies to each partition. docs/operations.md has a schedule and how to check a
backup.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metering.kafka_config import kafka_python_options
from metering.settings import Settings
from store import connect
from store.backup import BackupDisk, BackupError, backup, latest, prune, restore
from store.backup.manifest import MANIFEST
from store.local_server.config import ServerLayout

__all__ = ["add_backup_commands", "run_backup", "run_restore"]


def add_backup_commands(commands: Any) -> None:
    taken = commands.add_parser(
        "backup", help="back up the store (ClickHouse BACKUP), or say how old the last is"
    )
    taken.add_argument("--to", type=Path, required=True, help="the backup set's directory")
    taken.add_argument("--full", action="store_true", help="a full backup, not incremental")
    taken.add_argument("--keep", type=int, help="then keep the newest N backups (and their bases)")
    taken.add_argument(
        "--status", action="store_true", help="only print the newest backup and its age"
    )
    taken.add_argument("--clickhouse-url", dest="clickhouse_url", help="env CLICKHOUSE_URL")
    back = commands.add_parser("restore", help="restore a backup into an empty store")
    back.add_argument(
        "--from", dest="source", type=Path, required=True, help="a backup, or a set (its newest)"
    )
    back.add_argument("--clickhouse-url", dest="clickhouse_url", help="env CLICKHOUSE_URL")


def backups_disk(env: dict[str, str] | None = None) -> BackupDisk:
    """The server's backups disk as this process sees it: CLICKHOUSE_BACKUP_DIR, else the
    local server's default, next to its data (${CLICKHOUSE_DATA_DIR}-backups)."""
    env = dict(os.environ if env is None else env)
    given = env.get("CLICKHOUSE_BACKUP_DIR")
    layout = ServerLayout.for_data_dir(
        Path(env.get("CLICKHOUSE_DATA_DIR") or "./var/clickhouse"),
        backups_dir=Path(given) if given else None,
    )
    return BackupDisk(layout.backups)


def _release() -> str:
    try:
        return importlib.metadata.version("govmeter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_backup(args: argparse.Namespace, settings: Settings) -> int:
    if settings.clickhouse_url.startswith("chdb://"):
        raise BackupError(
            "CLICKHOUSE_URL is an embedded store (chdb://): back it up by copying its "
            "directory while no process has it open, or run the local server "
            "(infra/clickhouse/start) and back that up"
        )
    set_dir: Path = args.to
    if args.status:
        return _status(set_dir)
    client = connect(settings.clickhouse_url)
    try:
        began = datetime.now(UTC)
        manifest = backup(
            client, set_dir, backups_disk(), full=args.full, release=_release(), now=began
        )
    finally:
        client.close()
    seconds = (datetime.now(UTC) - began).total_seconds()
    before, after = manifest.ledger["before"], manifest.ledger["after"]
    on = f" on {manifest.base}" if manifest.base else ""
    print(
        f"backup {set_dir.resolve() / manifest.name} ({manifest.kind}{on}): "
        f"{len(manifest.files)} files, {manifest.bytes / 1e6:.1f} MB, in {seconds:.1f} s; "
        f"the ledger at commit {before['head']} when it started, {after['head']} when it "
        "finished"
    )
    if args.keep is not None:
        removed = prune(set_dir, args.keep)
        if removed:
            print(f"removed {len(removed)} older backup(s): {', '.join(removed)}")
    return 0


def _status(set_dir: Path) -> int:
    newest = latest(set_dir)
    if newest is None:
        print(f"no finished backup in {set_dir}")
        print(f'govmeter_backups{{set="{set_dir}"}} 0')
        return 1
    finished = datetime.fromisoformat(newest.finished_at)
    age = (datetime.now(UTC) - finished).total_seconds()
    print(f"newest backup {newest.name} ({newest.kind}), finished {newest.finished_at}")
    print(f'govmeter_last_backup_age_seconds{{set="{set_dir}"}} {age:.0f}')
    return 0


def _backup_dir(source: Path) -> Path:
    if (source / MANIFEST).is_file():
        return source
    newest = latest(source)
    if newest is None:
        raise BackupError(f"--from {source}: no finished backup there (no {MANIFEST})")
    return source / newest.name


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    directory = _backup_dir(args.source)
    client = connect(settings.clickhouse_url)
    try:
        restored = restore(client, directory, backups_disk())
    finally:
        client.close()
    ledger = restored.ledger
    print(
        f"restored {directory} ({' on '.join(restored.chain)}): the ledger covers commits up "
        f"to {ledger['head']} ({ledger['rows']} ranges)"
    )
    for line in _kafka_reach(settings, ledger["resume"]):
        print(line)
    print("start `metering worker`: it makes the store consistent and counts the rest from Kafka")
    return 0


def _kafka_reach(settings: Settings, resume: dict[str, int]) -> list[str]:
    """Per partition of the events topic: where the ledger resumes against what the
    broker still holds."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    topic = settings.events_topic
    try:
        consumer = KafkaConsumer(**kafka_python_options(settings), enable_auto_commit=False)
    except Exception as error:
        return [
            f"Kafka not reached ({type(error).__name__}): check what it still holds before counting"
        ]
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or set())
        tps = [TopicPartition(topic, p) for p in partitions]
        earliest = consumer.beginning_offsets(tps) if tps else {}
        end = consumer.end_offsets(tps) if tps else {}
    finally:
        consumer.close()
    lines = []
    for tp in tps:
        at = resume.get(f"{topic}[{tp.partition}]", 0)
        first, last = int(earliest[tp]), int(end[tp])
        where = f"{topic}[{tp.partition}]"
        if at >= last:
            lines.append(
                f"{where}: the ledger resumes at {at}, the broker ends at {last}: nothing to count"
            )
        elif first <= at:
            lines.append(
                f"{where}: the ledger resumes at {at}; the broker holds {first}..{last - 1}: "
                f"{last - at} message(s) to count again"
            )
        else:
            lines.append(
                f"{where}: the ledger resumes at {at}, but the broker holds only "
                f"{first}..{last - 1}: offsets {at}..{first - 1} are gone (retention); the "
                "worker records them as expired and `metering certify` names them"
            )
    return lines
