"""Progress of a long command (`replay`, `simulate`, `worker --until-idle`) on stderr.

On a terminal: one live bar (done, rate, ETA) drawn by tqdm. Anywhere else (a log
shipper, CI, a pipe): one plain line every `PLAIN_EVERY_SECONDS` and one at the end,
so an 18-million-event replay leaves a few dozen lines, not thousands. `note` adds a
short text after the figures (the worker's flushes): on the bar, and on the plain
lines between start and end.
"""

from __future__ import annotations

import sys
import time
from typing import Final, Never, TextIO

from tqdm import tqdm

__all__ = ["PLAIN_EVERY_SECONDS", "Progress"]

PLAIN_EVERY_SECONDS: Final = 10.0


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: TextIO | None = None,
        unit: str = "events",
    ) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.unit = unit
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._last = self._started
        self._note = ""
        self._bar: tqdm[Never] | None = None
        if _is_terminal(self._stream):
            self._bar = tqdm(
                total=total,
                desc=label,
                unit=f" {unit}",
                unit_scale=True,
                file=self._stream,
                dynamic_ncols=True,
                mininterval=0.25,
                leave=False,
            )

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY_SECONDS:
            self._last = now
            self._line(now, final=False)

    def reach(self, count: int) -> None:
        """Set the running count (for producers that report totals, not increments)."""
        self.advance(count - self.count)

    def set_total(self, total: int) -> None:
        """A total learnt on the way (e.g. the worker's handled messages plus its lag)."""
        self.total = total
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def note(self, text: str) -> None:
        """Show `text` after the figures (e.g. `flushes=3 counted=60k`), until the next note."""
        if text == self._note:
            return
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def done(self) -> float:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.close()
        self._line(now, final=True)
        return now - self._started

    def _line(self, now: float, final: bool) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.count / elapsed
        line = f"{self.label}: {self.count:,} {self.unit}, {rate:,.0f}/s, {elapsed:,.1f}s"
        if self.total and not final and rate > 0:
            line += f", ETA {max(self.total - self.count, 0) / rate:,.0f}s"
        if self._note and not final:
            line += f"; {self._note}"
        self._stream.write(line + "\n")
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
