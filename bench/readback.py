"""Read one contender's agency-day rows from its store, in a process of its own.

`python -m bench.readback (--store PATH | --url http://HOST:PORT) --source pipeline|bench
--out FILE.json` (the embedded store can be open in one process at a time, so the bench
never opens contender stores itself; `--url` reads a ClickHouse server over HTTP).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.contenders.chstore import READ_QUERIES, open_server, open_store

__all__ = ["main", "read_rows"]


def read_rows(store: Path | str, source: str) -> list[list[object]]:
    """The rows of `source` from the embedded store at a path, or a server at a URL."""
    client = open_store(store) if isinstance(store, Path) else open_server(store)
    try:
        return [list(row) for row in client.query(READ_QUERIES[source]).result_rows]
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", type=Path, help="an embedded (chDB) store directory")
    where.add_argument("--url", help="a ClickHouse server, http(s)://...")
    p.add_argument("--source", choices=sorted(READ_QUERIES), required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    target: Path | str = args.store if args.store is not None else args.url
    args.out.write_bytes(orjson.dumps(read_rows(target, args.source)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
