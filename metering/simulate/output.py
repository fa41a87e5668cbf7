"""JSONL output: batches of lines, compressed and written on a second thread."""

from __future__ import annotations

import gzip
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from metering.simulate.events import generate_events
from metering.simulate.plan import SimulationPlan

__all__ = ["write_jsonl"]

_WRITE_BATCH = 4096
_WRITE_AHEAD = 2
_PROGRESS_EVERY = 100_000


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _batches(plan: SimulationPlan) -> Iterator[tuple[int, bytes]]:
    """(line count, newline-terminated JSONL bytes) in batches of ``_WRITE_BATCH`` lines."""
    lines = generate_events(plan)
    while batch := list(itertools.islice(lines, _WRITE_BATCH)):
        yield len(batch), b"\n".join(batch) + b"\n"


def _write_lines(plan: SimulationPlan, out: _Sink, progress: Callable[[int], None] | None) -> int:
    """Generate on this thread, compress and write on another (zlib and I/O drop the GIL).

    At most ``_WRITE_AHEAD`` batches wait for the writer, so memory stays bounded.
    """
    written, next_report = 0, _PROGRESS_EVERY
    pending: deque[Future[int]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsonl-writer") as writer:
        for count, data in _batches(plan):
            pending.append(writer.submit(out.write, data))
            if len(pending) > _WRITE_AHEAD:
                pending.popleft().result()
            written += count
            if progress is not None and written >= next_report:
                progress(written)
                next_report += _PROGRESS_EVERY
        while pending:
            pending.popleft().result()
    if progress is not None:
        progress(written)
    return written


def write_jsonl(
    plan: SimulationPlan, path: Path, progress: Callable[[int], None] | None = None
) -> int:
    """Write the plan's events as JSONL (gzip when ``path`` ends in ``.gz``); return lines.

    Gzip output uses compression level 1 and a zero header timestamp, so it is reproducible.
    ``progress`` is called with the running line count about every 100k lines and at the end.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw:
        if path.suffix != ".gz":
            return _write_lines(plan, raw, progress)
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
            return _write_lines(plan, gz, progress)
