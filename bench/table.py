"""One measured row per contender, and the printed table with its ratios."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.reference import Verdict
from bench.runner import LogLine, RunRecord

__all__ = ["Measurement", "format_ratios", "format_table", "measure_window", "not_run"]


@dataclass(frozen=True)
class Measurement:
    """A contender's figures; `status` is OK, INVALID, FAILED or NOT RUN."""

    key: str
    name: str
    status: str
    detail: str
    messages: int = 0
    startup_s: float | None = None  # process start -> first message handled
    processing_s: float | None = None  # first message handled -> results in ClickHouse
    tail_s: float | None = None  # results in ClickHouse -> process exit
    rate: float | None = None  # events/s inside the processing window
    cpu_per_m: float | None = None  # CPU s per million events inside the window
    cpu_total_per_m: float | None = None  # whole-process CPU s per million events
    max_rss_mb: float | None = None
    other_cores: float | None = None  # mean CPUs busy with other processes meanwhile

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def not_run(key: str, name: str, status: str, detail: str) -> Measurement:
    return Measurement(key=key, name=name, status=status, detail=detail)


def measure_window(
    key: str,
    name: str,
    run: RunRecord,
    verdict: Verdict,
    *,
    messages: int,
    first: LogLine | None,
    first_count: int,
    done: LogLine | None,
) -> Measurement:
    """Figures of a run whose processing window is [first, done].

    `first_count` events were already handled at `first`, so the rate and the CPU per
    event cover the `messages - first_count` events handled inside the window.
    """
    if run.returncode != 0 or first is None or done is None:
        reason = run.failure() if run.returncode != 0 else "no first/done marker in its log"
        return Measurement(
            key,
            name,
            "FAILED",
            reason,
            max_rss_mb=run.max_rss_mb or None,
            other_cores=run.other_cores,
        )
    window = done.at - first.at
    inside = messages - first_count
    cpu = done.cpu - first.cpu if done.cpu is not None and first.cpu is not None else None
    return Measurement(
        key=key,
        name=name,
        status=verdict.label,
        detail=verdict.detail,
        messages=messages,
        startup_s=first.at - run.spawned,
        processing_s=window,
        tail_s=run.exited - done.at,
        rate=inside / window if window > 0 else None,
        cpu_per_m=cpu / inside * 1e6 if cpu is not None and inside > 0 else None,
        cpu_total_per_m=run.cpu_seconds / messages * 1e6 if messages else None,
        max_rss_mb=run.max_rss_mb,
        other_cores=run.other_cores,
    )


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


_HEADER = (
    "#",
    "contender",
    "result",
    "events",
    "startup s",
    "processing s",
    "tail s",
    "events/s",
    "CPU s/M events",
    "CPU s/M (whole run)",
    "peak RSS MB",
    "other load",
)


def format_table(rows: Sequence[Measurement]) -> str:
    """A Markdown table (pastes into bench/README.md), then one line per non-OK detail."""
    body = [
        (
            m.key,
            m.name,
            m.status,
            f"{m.messages:,}" if m.messages else "-",
            _num(m.startup_s),
            _num(m.processing_s),
            _num(m.tail_s),
            _num(m.rate, 0),
            _num(m.cpu_per_m),
            _num(m.cpu_total_per_m),
            _num(m.max_rss_mb, 0),
            _num(m.other_cores, 2),
        )
        for m in rows
    ]
    widths = [max(len(str(r[i])) for r in [_HEADER, *body]) for i in range(len(_HEADER))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    out = [line(_HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in body]
    out.append("")
    out += [f"{m.key}. {m.name}: {m.status}: {m.detail}" for m in rows]
    return "\n".join(out)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def format_ratios(ours: Measurement | None, others: Sequence[Measurement]) -> str:
    """Row 2 against each other row: throughput and CPU per event, where both are OK."""
    if ours is None:
        return ""
    out = []
    for other in others:
        if not (ours.ok and other.ok):
            why = ours.status if not ours.ok else other.status
            out.append(f"2 vs {other.key} ({other.name}): n/a ({why})")
            continue
        out.append(
            f"2 vs {other.key} ({other.name}): throughput {_ratio(ours.rate, other.rate)}, "
            f"CPU per event {_ratio(ours.cpu_per_m, other.cpu_per_m)}, "
            f"peak RSS {_ratio(ours.max_rss_mb, other.max_rss_mb)}"
        )
    return "\n".join(out)
