"""A live progress bar for `metering worker --until-idle` on a terminal.

Messages handled so far, out of handled plus what the broker still holds for the
worker's partitions (the consumer lag), so the bar's total grows while producers
publish. Shown only when stderr is a terminal; JSON logs elsewhere stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from metering.progress import Progress
from streams.metrics import Metrics

__all__ = ["show_worker_progress"]

Lag = Callable[[], Awaitable[dict[tuple[str, int], int]]]


async def show_worker_progress(metrics: Metrics, lag: Lag, every: float = 0.5) -> None:
    """Run until cancelled; cancelled, it closes the bar and prints one summary line."""
    if not sys.stderr.isatty():
        return
    progress = Progress("worker", unit="messages")
    try:
        while True:
            await asyncio.sleep(every)
            handled = int(metrics.events_in.value)
            with contextlib.suppress(Exception):  # the lag is a hint; never stop for it
                behind = sum((await lag()).values())
                progress.set_total(handled + behind)
            progress.reach(handled)
    finally:
        progress.done()
