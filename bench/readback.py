"""Read one contender's agency-day rows from its store, in a process of its own.

`python -m bench.readback --store PATH --source pipeline|bench --out FILE.json`
(the embedded store can be open in one process at a time, so the bench never opens
contender stores itself).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.contenders.chstore import READ_QUERIES, open_store

__all__ = ["main", "read_rows"]


def read_rows(store: Path, source: str) -> list[list[object]]:
    client = open_store(store)
    try:
        return [list(row) for row in client.query(READ_QUERIES[source]).result_rows]
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--source", choices=sorted(READ_QUERIES), required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.write_bytes(orjson.dumps(read_rows(args.store, args.source)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
