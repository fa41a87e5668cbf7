"""Worker counters, exposed in Prometheus text format and in the run summary."""

from __future__ import annotations

import threading
import time
from collections import Counter as _Tally
from typing import TYPE_CHECKING

from schemas.rejections import Reason

if TYPE_CHECKING:
    from streams.batch import ClassifiedBatch
    from streams.sink import FlushResult
    from streams.store_failures import Failure

__all__ = ["Counter", "FailureRecord", "Metrics", "prometheus_label"]


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


class FailureRecord:
    """Failed attempts of one kind (store steps, or dead-letter publishes), by cause."""

    def __init__(self) -> None:
        self.total = Counter()
        self.transient = Counter()
        self.fatal = Counter()
        self.by_cause: _Tally[tuple[str, bool]] = _Tally()
        self.last: dict[str, object] | None = None

    def record(self, failure: Failure, step: str) -> None:
        self.total.inc()
        (self.transient if failure.transient else self.fatal).inc()
        self.by_cause[(failure.cause, failure.transient)] += 1
        self.last = {
            "step": step,
            "cause": failure.cause,
            "transient": failure.transient,
            "at_unix": round(time.time(), 3),
        }

    def summary(self) -> dict[str, int]:
        return {cause: count for (cause, _), count in sorted(self.by_cause.items())}


class Metrics:
    def __init__(self) -> None:
        self.events_in = Counter()
        self.counted = Counter()
        self.duplicates = Counter()
        self.already_counted_skipped = Counter()
        self.flushes = Counter()
        # Flushes refused: another writer's commit had moved the ledger of one of their
        # partitions (the batch is read again from the ledger).
        self.flushes_refused = Counter()
        # Commits that found their number taken by another writer's commit and were
        # appended again at the new head, and flushes that started over because such a
        # commit had counted some of their events.
        self.commits_retried = Counter()
        self.flushes_redone = Counter()
        # Every failed store attempt; `store_failures` says transient or not, and why.
        self.store_errors = Counter()
        self.store_failures = FailureRecord()
        # Failed dead-letter publishes: Kafka, not the store, so reported apart.
        self.dead_letter_failures = FailureRecord()
        self.rejected_by_reason: _Tally[str] = _Tally()
        # Offsets the broker deleted before they were counted:
        # (topic, partition) -> {first missing offset: offset counting resumed at}.
        self._expired: dict[tuple[str, int], dict[int, int]] = {}
        self._expired_lock = threading.Lock()
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

    def record_store_failure(self, failure: Failure, step: str) -> None:
        self.store_errors.inc()
        self.store_failures.record(failure, step)

    def record_dead_letter_failure(self, failure: Failure) -> None:
        self.dead_letter_failures.record(failure, "publish dead letters")

    def record_expired(
        self, topic: str, partition: int, first_missing: int, resume_at: int
    ) -> bool:
        """Offsets first_missing .. resume_at - 1 of a partition are gone from the broker
        and were never counted. One gap per (partition, first missing offset): the
        start-up check and the pipeline may both see it, the second time perhaps with
        more deleted; the furthest resume point counts. True if this changed anything."""
        if resume_at <= first_missing:
            return False
        with self._expired_lock:
            seen = self._expired.setdefault((topic, partition), {})
            if seen.get(first_missing, first_missing) >= resume_at:
                return False
            seen[first_missing] = resume_at
            return True

    def expired_offsets(self) -> dict[tuple[str, int], int]:
        with self._expired_lock:
            return {
                key: sum(resume - first for first, resume in gaps.items())
                for key, gaps in sorted(self._expired.items())
            }

    def summary(self) -> dict[str, object]:
        return {
            "events_in": self.events_in.value,
            "counted": self.counted.value,
            "duplicates": self.duplicates.value,
            "rejected": dict(sorted(self.rejected_by_reason.items())),
            "already_counted_skipped": self.already_counted_skipped.value,
            "flushes": self.flushes.value,
            "flushes_refused": self.flushes_refused.value,
            "commits_retried": self.commits_retried.value,
            "flushes_redone": self.flushes_redone.value,
            "store_errors": self.store_errors.value,
            "store_errors_by_cause": self.store_failures.summary(),
            "dead_letter_errors": self.dead_letter_failures.total.value,
            "offsets_expired": {
                f"{topic}[{partition}]": count
                for (topic, partition), count in self.expired_offsets().items()
            },
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
        # Every reason from the start, at zero: rate() and increase() miss the first
        # rejection of a series that appears with it (infra/prometheus/ alerts on these).
        rejected = {str(reason): 0 for reason in Reason} | self.rejected_by_reason
        for reason, count in sorted(rejected.items()):
            lines.append(
                f'govmeter_events_rejected_total{{reason="{prometheus_label(reason)}"}} {count}'
            )
        store, letters = self.store_failures, self.dead_letter_failures
        lines += [
            "# TYPE govmeter_flushes_total counter",
            f"govmeter_flushes_total {self.flushes.value}",
            "# TYPE govmeter_flushes_refused_total counter",
            f"govmeter_flushes_refused_total {self.flushes_refused.value}",
            "# TYPE govmeter_commits_retried_total counter",
            f"govmeter_commits_retried_total {self.commits_retried.value}",
            "# TYPE govmeter_flushes_redone_total counter",
            f"govmeter_flushes_redone_total {self.flushes_redone.value}",
            "# TYPE govmeter_store_errors_total counter",
            f"govmeter_store_errors_total {self.store_errors.value}",
            "# TYPE govmeter_store_transient_errors_total counter",
            f"govmeter_store_transient_errors_total {store.transient.value}",
            "# TYPE govmeter_store_fatal_errors_total counter",
            f"govmeter_store_fatal_errors_total {store.fatal.value}",
            *_by_cause("govmeter_store_errors_by_cause_total", store),
            "# TYPE govmeter_dead_letter_errors_total counter",
            f"govmeter_dead_letter_errors_total {letters.total.value}",
            *_by_cause("govmeter_dead_letter_errors_by_cause_total", letters),
            "# TYPE govmeter_offsets_expired_total counter",
        ]
        for (topic, partition), count in self.expired_offsets().items():
            lines.append(
                f'govmeter_offsets_expired_total{{topic="{prometheus_label(topic)}",'
                f'partition="{partition}"}} {count}'
            )
        lines += [
            "# TYPE govmeter_flush_seconds_last gauge",
            f"govmeter_flush_seconds_last {self.last_flush_seconds:.6f}",
        ]
        return "\n".join(lines) + "\n"


def _by_cause(name: str, record: FailureRecord) -> list[str]:
    lines = [f"# TYPE {name} counter"]
    for (cause, transient), count in sorted(record.by_cause.items()):
        flag = "true" if transient else "false"
        lines.append(f'{name}{{cause="{prometheus_label(cause)}",transient="{flag}"}} {count}')
    return lines


def prometheus_label(value: str) -> str:
    """A label value escaped for the Prometheus text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
