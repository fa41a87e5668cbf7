"""Progress markers a contender writes to stderr: one JSON object per line.

The bench reads them as they arrive and samples the contender's CPU time at each one,
so "first" and "done" bound the processing window exactly.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import orjson

__all__ = ["DONE", "FIRST", "READY", "emit"]

READY = "bench ready"
FIRST = "bench first message"
DONE = "bench done"


def emit(msg: str, **fields: object) -> None:
    """Write one marker line (flushed at once) with a wall-clock timestamp."""
    now = time.time()
    entry: dict[str, object] = {
        "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "t": now,
        "msg": msg,
        **fields,
    }
    sys.stderr.write(orjson.dumps(entry, default=str).decode() + "\n")
    sys.stderr.flush()
