"""The `metering` console script. Each flag has an environment twin (see settings.py)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

from metering.settings import Settings, SettingsError, load_settings

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        dest="kafka_bootstrap_servers",
        help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--events-topic", dest="events_topic", help="events topic (env METERING_EVENTS_TOPIC)"
    )
    parser.add_argument(
        "--dlq-topic", dest="dlq_topic", help="dead-letter topic (env METERING_DLQ_TOPIC)"
    )
    parser.add_argument(
        "--clickhouse-url",
        dest="clickhouse_url",
        help="chdb://PATH or http(s)://user:pass@host:8123 (env CLICKHOUSE_URL)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metering", description="Usage metering: Kafka events to exact ClickHouse rollups."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("replay", help="publish JSONL(.gz) lines to the events topic")
    _common(replay)
    replay.add_argument("paths", nargs="+", type=Path)
    replay.add_argument(
        "--compression",
        dest="replay_compression",
        choices=("none", "gzip", "snappy", "lz4", "zstd"),
        help="Kafka codec of the published batches (env METERING_REPLAY_COMPRESSION, default none)",
    )

    worker = commands.add_parser("worker", help="run the stream processors")
    _common(worker)
    worker.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="exit 0 once everything is flushed and nothing arrived for SECONDS",
    )
    worker.add_argument(
        "--processes",
        metavar="N",
        help="writer processes, each owning some partitions (env METERING_WORKER_PROCESSES, "
        "default 1; 'auto': one per core); more than one needs a store server",
    )
    worker.add_argument(
        "--consumer-group",
        dest="consumer_group",
        help="consumer group (env METERING_CONSUMER_GROUP)",
    )
    worker.add_argument(
        "--batch-max-events",
        dest="batch_max_events",
        type=int,
        help="events per flush at most (env METERING_BATCH_MAX_EVENTS)",
    )
    worker.add_argument(
        "--batch-max-seconds",
        dest="batch_max_seconds",
        type=float,
        help="seconds a batch waits to fill (env METERING_BATCH_MAX_SECONDS)",
    )
    worker.add_argument(
        "--partitions",
        dest="topic_partitions",
        type=int,
        help="partitions of topics this worker creates (env METERING_TOPIC_PARTITIONS)",
    )

    query = commands.add_parser("query", help="run SQL on the configured store")
    _common(query)
    query.add_argument("sql")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")

    simulate = commands.add_parser("simulate", help="seeded synthetic ChatGPT Gov traffic")
    _common(simulate)
    simulate.add_argument("--messages", type=int, required=True)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument(
        "--start",
        type=date.fromisoformat,
        default=date(2026, 11, 2),
        help="first UTC day, YYYY-MM-DD",
    )
    simulate.add_argument("--days", type=int, default=1)
    simulate.add_argument("--agencies", type=int, default=3500)
    simulate.add_argument("--users", type=int, default=90000)
    simulate.add_argument("--duplicate-rate", type=float, default=0.0)
    simulate.add_argument("--late-rate", type=float, default=0.0)
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write JSONL (.gz compresses)")
    target.add_argument("--to-kafka", action="store_true", help="publish to the events topic")

    headline = commands.add_parser("headline", help="per-tenant headline for one UTC day")
    _common(headline)
    headline.add_argument("--day", type=date.fromisoformat, help="YYYY-MM-DD (default: latest)")

    migrate = commands.add_parser("migrate", help="create or update the ClickHouse tables")
    _common(migrate)

    from metering.commands_reporting import add_reporting_commands

    add_reporting_commands(commands)

    from metering.corrections import add_correct_command

    add_correct_command(commands)

    from metering.writers_command import add_writers_command

    add_writers_command(commands)

    from metering.backup_command import add_backup_commands

    add_backup_commands(commands)

    from metering.audit import add_audit_command

    add_audit_command(commands)

    from metering.config_check import add_config_command

    add_config_command(commands)

    from metering.commands_ddl import add_ddl_command

    add_ddl_command(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = [name for name in Settings.model_fields if hasattr(args, name)]
    return load_settings(**{name: getattr(args, name) for name in names})


def _worker_processes(flag: str | None) -> int:
    """--processes, else METERING_WORKER_PROCESSES, else 1; 'auto' is the core count."""
    value = flag if flag is not None else os.environ.get("METERING_WORKER_PROCESSES", "1")
    where = "--processes" if flag is not None else "METERING_WORKER_PROCESSES"
    if value.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        processes = int(value)
    except ValueError:
        processes = 0
    if not 1 <= processes <= 64:
        raise SettingsError(
            f"invalid configuration:\n  {where}: {value!r} is not a number of processes "
            "from 1 to 64, nor 'auto' (one per core)"
        )
    return processes


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line from `worker` on, for the writer processes to repeat."""
    return argv[argv.index("worker") :] if "worker" in argv else ["worker"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from metering.logs import configure_logging

    try:
        configure_logging()
    except ValueError as error:  # METERING_LOG_FORMAT names a format that does not exist
        print(f"metering: {error}", file=sys.stderr)
        return 2
    from metering.config_check import run_config_command

    configured = run_config_command(args)
    if configured is not None:
        return configured
    from metering.commands_ddl import run_ddl_command

    rendered = run_ddl_command(args)
    if rendered is not None:
        return rendered
    try:
        settings = _settings(args)
        return int(_dispatch(args, settings))
    except SettingsError as error:
        print(f"metering {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from metering.errors import explain

        message = explain(error)
        if message is None:
            raise
        print(f"metering {args.command}: {message}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from metering.commands_reporting import run_reporting_command

    reported = run_reporting_command(args, settings)
    if reported is not None:
        return reported
    command = args.command
    if command == "correct":
        from metering.corrections import run_correct

        return run_correct(args, settings)
    if command in ("backup", "restore"):
        from metering.backup_command import run_backup, run_restore

        return run_backup(args, settings) if command == "backup" else run_restore(args, settings)
    if command == "writers":
        from metering.writers_command import run_writers

        return run_writers(args, settings)
    if command == "audit":
        from metering.audit import run_audit

        return run_audit(args, settings)
    if command == "replay":
        from metering.progress import Progress
        from metering.replay import replay

        progress = Progress("replay")
        # The topics are created (with kafka-python's admin) only if the events topic is
        # missing: importing kafka-python costs more than a short replay takes.
        sent = replay(settings, args.paths, progress, create_topics=_ensure_topics)
        progress.done()
        print(f"published {sent} messages to {settings.events_topic}")
        return 0
    if command == "worker":
        from metering.worker import run_worker

        processes = _worker_processes(args.processes)
        if processes > 1:
            from metering.worker_processes import run_worker_processes

            return run_worker_processes(settings, processes, _worker_argv(args.argv))
        summary = run_worker(settings, until_idle=args.until_idle)
        metrics = summary.metrics
        print(
            f"worker: {metrics['events_in']} messages in {summary.seconds:.1f}s; counted "
            f"{metrics['counted']}, duplicates {metrics['duplicates']}, rejected "
            f"{sum(metrics['rejected'].values())}, flushes {metrics['flushes']}"  # type: ignore[attr-defined]
        )
        return 0
    if command == "query":
        from metering.open_store import open_for_reading
        from metering.query import format_result, run_query

        client = open_for_reading(settings, schema=False)
        try:
            columns, rows = run_query(client, args.sql)
        finally:
            client.close()
        print(format_result(columns, rows, args.format))
        return 0
    if command == "simulate":
        return _simulate(args, settings)
    if command == "headline":
        from metering.headline import print_headline

        return print_headline(settings, args.day)
    if command == "migrate":
        from store import connect
        from store.migrations import apply_migrations

        client = connect(settings.clickhouse_url)
        try:
            applied = apply_migrations(
                client, settings.effective_clickhouse_mode, settings.clickhouse_cluster
            )
        finally:
            client.close()
        print(f"applied {len(applied)} migration(s)")
        return 0
    raise AssertionError(command)


def _ensure_topics(settings: Settings) -> None:
    from metering.topics import ensure_topics

    ensure_topics(settings)


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from metering.progress import Progress
    from metering.simulate import SimulationPlan, generate_events, write_jsonl

    plan = SimulationPlan(
        messages=args.messages,
        seed=args.seed,
        start=args.start,
        days=args.days,
        agencies=args.agencies,
        users=args.users,
        duplicate_rate=args.duplicate_rate,
        late_rate=args.late_rate,
    )
    progress = Progress("simulate", total=plan.lines)  # duplicates are extra lines
    if args.out is not None:
        written = write_jsonl(plan, args.out, progress=progress.reach)
        progress.done()
        print(f"wrote {written} events to {args.out}")
        return 0
    from metering.replay import publish_lines
    from metering.topics import ensure_topics

    ensure_topics(settings)

    sent = publish_lines(settings, generate_events(plan), progress)
    progress.done()
    print(f"published {sent} events to {settings.events_topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
