"""`python -m store.local_server start|stop|status|serve` (infra/clickhouse/ calls it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from store.local_server.config import render_server_reporter_xml
from store.local_server.control import LocalServer, LocalServerError, ServerOptions
from store.local_server.process import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.local_server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start the local server unless it runs")
    commands.add_parser("stop", help="stop the local server of this data directory")
    commands.add_parser("status", help="exit 0 if the server runs and answers")
    commands.add_parser("reporter-xml", help="print the reporter user for a server's users.d")
    run = commands.add_parser("serve", help="the server process itself (used by start)")
    run.add_argument("--data-dir", type=Path, required=True)
    run.add_argument("--server-dir", type=Path, required=True)
    run.add_argument("--http-host", default="127.0.0.1")
    run.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args(argv)

    if args.command == "serve":
        # clickhouse-local reads config.xml from the server directory: serve goes there
        # once the engine is imported (store/local_server/process.py says why not before).
        return serve(args.data_dir, args.server_dir, args.http_host, args.http_port)
    if args.command == "reporter-xml":
        sys.stdout.write(render_server_reporter_xml())
        return 0
    try:
        server = LocalServer(ServerOptions.from_environment())
        if args.command == "start":
            print(server.start(), flush=True)
            return 0
        if args.command == "stop":
            print(server.stop(), flush=True)
            return 0
        pid = server.running_pid()
        if pid is not None and server.answers():
            print(f"clickhouse: running on {server.options.http_url} (pid {pid})")
            return 0
        print(f"clickhouse: not running (server directory {server.layout.server_dir})")
        return 1
    except LocalServerError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
