"""A live progress bar for `metering worker --until-idle` on a terminal.

Messages handled so far, out of handled plus what the broker still holds for the
worker's partitions (the consumer lag), so the bar's total grows while producers
publish; after the figures, the flushes so far (`flush_figures`). While the bar is
up, the readable log lines leave out the `flush committed` lines it stands for; the
JSON logs keep them. Shown only when stderr is a terminal; JSON logs elsewhere stay
as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from tqdm import tqdm

from metering.logs import shown_in_progress
from metering.progress import Progress
from streams.metrics import Metrics

__all__ = ["flush_figures", "show_worker_progress"]

Lag = Callable[[], Awaitable[dict[tuple[str, int], int]]]


def flush_figures(metrics: Metrics) -> str:
    """`flushes=3 counted=59.9k dup=2 rejected=0 last=0.21s` (the figures of the
    `flush committed` lines, most wanted first: a narrow terminal cuts the end), or ""
    before the first flush."""
    flushes = metrics.flushes.value
    if flushes == 0:
        return ""
    rejected = sum(metrics.rejected_by_reason.values())
    return (
        f"flushes={_count(flushes)} counted={_count(metrics.counted.value)} "
        f"dup={_count(metrics.duplicates.value)} rejected={_count(rejected)} "
        f"last={metrics.last_flush_seconds:.2f}s"
    )


def _count(n: int) -> str:
    return str(n) if n < 1000 else tqdm.format_sizeof(n)


async def show_worker_progress(metrics: Metrics, lag: Lag, every: float = 0.5) -> None:
    """Run until cancelled; cancelled, it closes the bar and prints one summary line."""
    if not sys.stderr.isatty():
        return
    progress = Progress("worker", unit="messages")
    try:
        with shown_in_progress("govmeter.sink", "flush committed"):
            while True:
                await asyncio.sleep(every)
                handled = int(metrics.events_in.value)
                with contextlib.suppress(Exception):  # the lag is a hint; never stop for it
                    behind = sum((await lag()).values())
                    progress.set_total(handled + behind)
                progress.note(flush_figures(metrics))
                progress.reach(handled)
    finally:
        progress.done()
