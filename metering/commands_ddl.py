"""`metering ddl`: print the schema's full DDL for one ClickHouse deployment.

`metering ddl --mode embedded|server|cluster [--cluster NAME]` renders every
migration in `store/sql/` the way `metering migrate` would run it on that
deployment (`store/ddl.py`), ready for `clickhouse-client --multiquery`. It opens
no store and needs no other configuration. In cluster mode the name comes from
`--cluster`, else from CLICKHOUSE_CLUSTER.

`metering.cli` adds the command with `add_ddl_command` and runs it with
`run_ddl_command`; `python -m metering.commands_ddl ddl ...` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from store.ddl import MODES, DDLError, check_cluster

__all__ = ["add_ddl_command", "main", "run_ddl_command"]

_CLUSTER_ENV = "CLICKHOUSE_CLUSTER"


def add_ddl_command(subparsers: Any) -> None:
    """Add `ddl` to a `metering` subparsers object."""
    ddl = subparsers.add_parser(
        "ddl", help="print the DDL of every migration for one ClickHouse deployment"
    )
    ddl.add_argument(
        "--mode",
        dest="ddl_mode",
        choices=MODES,
        required=True,
        help="embedded (chDB) and server print the SQL files as they are; cluster adds "
        "ON CLUSTER and Replicated engines (one shard, any number of replicas)",
    )
    ddl.add_argument(
        "--cluster",
        dest="ddl_cluster",
        metavar="NAME",
        help=f"cluster name from remote_servers, or a macro such as {{cluster}} "
        f"(cluster mode only; env {_CLUSTER_ENV})",
    )


def run_ddl_command(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int | None:
    """Print the DDL; None if `args` is another command, 2 for an unusable mode or name."""
    if getattr(args, "command", None) != "ddl":
        return None
    from store.migrations import MigrationError, render_migrations

    source: Mapping[str, str] = os.environ if env is None else env
    mode = args.ddl_mode
    cluster: str | None = args.ddl_cluster
    if mode == "cluster" and cluster is None:
        cluster = source.get(_CLUSTER_ENV) or None
    try:
        check_cluster(mode, cluster)
        text = render_migrations(mode, cluster)
    except (DDLError, MigrationError) as error:
        hint = f" (--cluster NAME or {_CLUSTER_ENV})" if mode == "cluster" else ""
        print(f"metering ddl: {error}{hint}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metering", description="Print the schema DDL.")
    add_ddl_command(parser.add_subparsers(dest="command", required=True))
    result = run_ddl_command(parser.parse_args(argv), env)
    return 0 if result is None else result


if __name__ == "__main__":
    sys.exit(main())
