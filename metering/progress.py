"""A progress line for long commands: count, rate and ETA, on stderr, at most 2/s."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self._print(now, final=False)

    def reach(self, count: int) -> None:
        """Set the running count (for producers that report totals, not increments)."""
        self.advance(count - self.count)

    def done(self) -> float:
        now = time.monotonic()
        self._print(now, final=True)
        return now - self._started

    def _print(self, now: float, final: bool) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.count / elapsed
        line = f"{self.label}: {self.count:,} events, {rate:,.0f}/s, {elapsed:,.1f}s"
        if self.total and not final and rate > 0:
            line += f", ETA {max(self.total - self.count, 0) / rate:,.0f}s"
        end = "\n" if final or not self._stream.isatty() else "\r"
        self._stream.write(line + end)
        self._stream.flush()
