"""Worker counters, exposed in Prometheus text format and in the run summary."""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.batch import ClassifiedBatch
    from streams.sink import FlushResult

__all__ = ["Counter", "Metrics"]


class Counter:
    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def inc(self, amount: int = 1) -> None:
        with self._lock:
            self._value += amount

    @property
    def value(self) -> int:
        return self._value


class Metrics:
    def __init__(self) -> None:
        self.events_in = Counter()
        self.counted = Counter()
        self.duplicates = Counter()
        self.already_counted_skipped = Counter()
        self.flushes = Counter()
        self.store_errors = Counter()
        self.rejected_by_reason: _Tally[str] = _Tally()
        self.last_flush_seconds = 0.0
        self.flush_seconds_total = 0.0

    def record_flush(self, result: FlushResult, batch: ClassifiedBatch, seconds: float) -> None:
        self.flushes.inc()
        self.counted.inc(result.counted)
        self.duplicates.inc(result.duplicates)
        for rejected in batch.rejected:
            self.rejected_by_reason[str(rejected.rejection.reason)] += 1
        self.last_flush_seconds = seconds
        self.flush_seconds_total += seconds

    def summary(self) -> dict[str, object]:
        return {
            "events_in": self.events_in.value,
            "counted": self.counted.value,
            "duplicates": self.duplicates.value,
            "rejected": dict(sorted(self.rejected_by_reason.items())),
            "already_counted_skipped": self.already_counted_skipped.value,
            "flushes": self.flushes.value,
            "store_errors": self.store_errors.value,
        }

    def prometheus(self) -> str:
        lines = [
            "# TYPE govmeter_events_in_total counter",
            f"govmeter_events_in_total {self.events_in.value}",
            "# TYPE govmeter_events_counted_total counter",
            f"govmeter_events_counted_total {self.counted.value}",
            "# TYPE govmeter_events_duplicate_total counter",
            f"govmeter_events_duplicate_total {self.duplicates.value}",
            "# TYPE govmeter_events_rejected_total counter",
        ]
        for reason, count in sorted(self.rejected_by_reason.items()):
            lines.append(f'govmeter_events_rejected_total{{reason="{reason}"}} {count}')
        lines += [
            "# TYPE govmeter_flushes_total counter",
            f"govmeter_flushes_total {self.flushes.value}",
            "# TYPE govmeter_store_errors_total counter",
            f"govmeter_store_errors_total {self.store_errors.value}",
            "# TYPE govmeter_flush_seconds_last gauge",
            f"govmeter_flush_seconds_last {self.last_flush_seconds:.6f}",
        ]
        return "\n".join(lines) + "\n"
