"""Injectable faults for recovery tests: a crash at a named step, a store outage.

Set from the environment so a real worker process can be told to die:

    METERING_FAULT_CRASH=after_commit@2      SIGKILL itself at that step of its 2nd flush
    METERING_FAULT_STORE_OUTAGE=2:5.0        every store call fails for 5.0 s,
                                             starting when the 2nd flush begins

    METERING_FAULT_CORRECTION_CRASH=after_commit@1
                                             SIGKILL itself at that step of the 1st
                                             correction it applies (streams/corrections.py)

Steps: after_lookup, after_stage, after_dead_letters, after_commit,
after_apply_<rollup> for each rollup in `store.ledger.APPLY_ROLLUPS`, after_apply.
Correction steps: after_marks, after_commit, after_delete_<rollup> and
after_rebuild_<rollup> for each rollup in `store.corrections.REBUILD_GRAIN`,
after_applied.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

__all__ = ["FaultPlan", "InjectedStoreOutage"]


class InjectedStoreOutage(ConnectionError):
    """The store is 'down' (injected): raised instead of reaching ClickHouse."""


@dataclass
class FaultPlan:
    crash_step: str | None = None
    crash_on_flush: int = 1
    outage_on_flush: int | None = None
    outage_seconds: float = 0.0
    correction_crash_step: str | None = None
    crash_on_correction: int = 1
    _flushes_seen: set[int] = field(default_factory=set)
    _outage_until: float | None = None

    @classmethod
    def from_environment(cls) -> FaultPlan:
        plan = cls()
        crash = os.environ.get("METERING_FAULT_CRASH", "").strip()
        if crash:
            step, _, nth = crash.partition("@")
            plan.crash_step = step
            plan.crash_on_flush = int(nth or "1")
        correction = os.environ.get("METERING_FAULT_CORRECTION_CRASH", "").strip()
        if correction:
            step, _, nth = correction.partition("@")
            plan.correction_crash_step = step
            plan.crash_on_correction = int(nth or "1")
        outage = os.environ.get("METERING_FAULT_STORE_OUTAGE", "").strip()
        if outage:
            nth, _, seconds = outage.partition(":")
            plan.outage_on_flush = int(nth)
            plan.outage_seconds = float(seconds or "5")
        return plan

    def maybe_crash(self, step: str, flush_seq: int) -> None:
        self._flushes_seen.add(flush_seq)
        if self.crash_step == step and len(self._flushes_seen) == self.crash_on_flush:
            os.kill(os.getpid(), signal.SIGKILL)

    def maybe_crash_correction(self, step: str, nth: int) -> None:
        """SIGKILL at `step` of the `nth` correction this process applies."""
        if self.correction_crash_step == step and nth == self.crash_on_correction:
            os.kill(os.getpid(), signal.SIGKILL)

    def flush_started(self, flush_number: int) -> None:
        if self.outage_on_flush is not None and flush_number == self.outage_on_flush:
            self._outage_until = time.monotonic() + self.outage_seconds

    def maybe_fail_store(self) -> None:
        if self._outage_until is not None and time.monotonic() < self._outage_until:
            raise InjectedStoreOutage("store unavailable (injected outage)")
