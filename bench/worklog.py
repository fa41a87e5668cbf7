"""What the worker's JSON log says about one run: its phases and its flushes.

Lines used: "store ready", "worker consuming", "flush committed" (flush_seq, messages,
seconds, step_seconds), "idle and fully flushed; stopping" and "worker stopped".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.runner import LogLine, RunRecord

__all__ = ["FLUSH_STEPS", "Flush", "WorkerTimeline", "describe", "worker_timeline"]

FLUSH_STEPS = ("lookup", "stage", "dead_letters", "commit", "apply")


@dataclass(frozen=True)
class Flush:
    seq: int
    messages: int
    committed: float  # wall clock of the "flush committed" line
    cpu: float | None  # worker CPU seconds when that line arrived
    rss_mb: float | None  # worker resident memory when that line arrived
    seconds: float
    steps: dict[str, float]


@dataclass
class WorkerTimeline:
    spawned: float
    exited: float
    store_ready: float | None = None
    consuming: float | None = None
    idle_reached: float | None = None
    flushes: list[Flush] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.flushes)

    def step_totals(self) -> dict[str, float]:
        totals = dict.fromkeys(FLUSH_STEPS, 0.0)
        for flush in self.flushes:
            for step, seconds in flush.steps.items():
                totals[step] = totals.get(step, 0.0) + seconds
        return totals

    def in_flush_seconds(self, flushes: Sequence[Flush] | None = None) -> float:
        return sum(f.seconds for f in (self.flushes if flushes is None else flushes))


def _flush(line: LogLine) -> Flush:
    r = line.record
    steps = r.get("step_seconds") or {}
    return Flush(
        seq=int(r.get("flush_seq", 0)),
        messages=int(r.get("messages", 0)),
        committed=line.at,
        cpu=line.cpu,
        rss_mb=line.rss_mb,
        seconds=float(r.get("seconds", 0.0)),
        steps={str(k): float(v) for k, v in steps.items()} if isinstance(steps, dict) else {},
    )


def worker_timeline(run: RunRecord) -> WorkerTimeline:
    timeline = WorkerTimeline(spawned=run.spawned, exited=run.exited)
    for line in run.lines:
        msg = line.msg
        if msg == "flush committed":
            timeline.flushes.append(_flush(line))
        elif msg == "store ready" and timeline.store_ready is None:
            timeline.store_ready = line.at
        elif msg == "worker consuming" and timeline.consuming is None:
            timeline.consuming = line.at
        elif msg.startswith("idle and fully flushed"):
            timeline.idle_reached = line.at
        elif msg == "worker stopped":
            # One line per writer process (`--processes N`): their counters add up.
            timeline.summary = _merged(timeline.summary, dict(line.record))
    return timeline


def _merged(total: dict[str, object], more: dict[str, object]) -> dict[str, object]:
    """Two writers' summaries as one: numbers and per-reason counts added."""
    if not total:
        return more
    merged = dict(total)
    for key, value in more.items():
        before = merged.get(key)
        if isinstance(value, int) and isinstance(before, int):
            merged[key] = before + value
        elif isinstance(value, dict) and isinstance(before, dict):
            counts = dict(before)
            for name, count in value.items():
                counts[name] = counts.get(name, 0) + count
            merged[key] = counts
        else:
            merged.setdefault(key, value)
    return merged


def _s(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.1f} s"


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def describe(timeline: WorkerTimeline) -> list[str]:
    """Where the worker's time went, phase by phase and flush step by flush step."""
    flushes = timeline.flushes
    if not flushes:
        return ["worker: no flush committed"]
    first, last = flushes[0], flushes[-1]
    steady = flushes[1:]
    window = last.committed - first.committed
    in_flush = timeline.in_flush_seconds(steady)
    steps = dict.fromkeys(FLUSH_STEPS, 0.0)
    for flush in steady:
        for step, seconds in flush.steps.items():
            steps[step] = steps.get(step, 0.0) + seconds
    step_text = (
        ", ".join(
            f"{step} {seconds:.1f} s ({seconds / window:.0%})" for step, seconds in steps.items()
        )
        if window > 0
        else "-"
    )
    sizes = [f.messages for f in flushes]
    durations = sorted(f.seconds for f in flushes)
    stop = timeline.idle_reached
    lines = [
        "worker phases: "
        f"start -> store ready {_s(_gap(timeline.spawned, timeline.store_ready))} "
        "(imports, migrations, recovery); "
        f"-> worker consuming {_s(_gap(timeline.store_ready, timeline.consuming))} (faust start); "
        f"-> first flush committed {_s(_gap(timeline.consuming, first.committed))} "
        f"(group join, first batch of {first.messages:,}); "
        f"-> last flush committed {_s(window)} ({len(steady)} more flushes); "
        f"-> idle stop {_s(_gap(last.committed, stop))}; -> exit {_s(_gap(stop, timeline.exited))}",
        f"steady window {window:.1f} s: inside flushes {in_flush:.1f} s "
        f"({in_flush / window:.0%}); outside (consume, admit, classify) "
        f"{window - in_flush:.1f} s ({(window - in_flush) / window:.0%})"
        if window > 0
        else "steady window: one flush only",
        f"flush steps in the steady window: {step_text}",
        f"flushes: {len(flushes)}, messages per flush mean {sum(sizes) / len(sizes):,.0f} "
        f"(max {max(sizes):,}), seconds per flush median {durations[len(durations) // 2]:.2f} "
        f"max {durations[-1]:.2f}",
    ]
    resident = [f.rss_mb for f in flushes if f.rss_mb is not None]
    if len(resident) >= 10:
        marks = [(share, resident[min(len(resident) - 1, int(len(resident) * share))])
                 for share in (0.1, 0.25, 0.5, 0.75, 1.0)]  # fmt: skip
        lines.append(
            "worker resident memory after 10/25/50/75/100% of the flushes: "
            + ", ".join(f"{mb:.0f}" for _, mb in marks)
            + " MB"
        )
    if len(steady) >= 4:
        half = len(steady) // 2
        early, late = steady[:half], steady[half:]
        lines.append(
            "flush seconds, first half vs second half of the run: "
            f"{sum(f.seconds for f in early) / len(early):.2f} vs "
            f"{sum(f.seconds for f in late) / len(late):.2f} "
            f"(lookup {sum(f.steps.get('lookup', 0) for f in early) / len(early):.2f} vs "
            f"{sum(f.steps.get('lookup', 0) for f in late) / len(late):.2f})"
        )
    return lines
