"""One measured row per contender, and the printed table with its ratios."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.reference import Verdict
from bench.runner import LogLine, RunRecord

__all__ = [
    "Measurement",
    "ServerFigures",
    "format_ratios",
    "format_server",
    "format_table",
    "measure_window",
    "not_run",
]


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


@dataclass(frozen=True)
class ServerFigures:
    """The local ClickHouse server process of a row that writes over HTTP (row 2s)."""

    start_s: float  # infra/clickhouse/start until it returned (a query answers)
    rest_rss_mb: float | None  # VmRSS after start, before the worker
    peak_rss_mb: float | None  # highest VmRSS while the worker ran (VmHWM reset at start)
    cpu_during_run_s: float | None  # utime + stime from the worker's spawn to its exit
    window_cpu_s: float | None  # the same inside the worker's processing window
    window_cpu_per_m: float | None = None  # ... per million events of that window


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
    """Row `ours` (row 2) against each other row: throughput and CPU per event, where
    both are OK."""
    if ours is None:
        return ""
    out = []
    for other in others:
        if not (ours.ok and other.ok):
            why = ours.status if not ours.ok else other.status
            out.append(f"{ours.key} vs {other.key} ({other.name}): n/a ({why})")
            continue
        out.append(
            f"{ours.key} vs {other.key} ({other.name}): throughput "
            f"{_ratio(ours.rate, other.rate)}, "
            f"CPU per event {_ratio(ours.cpu_per_m, other.cpu_per_m)}, "
            f"peak RSS {_ratio(ours.max_rss_mb, other.max_rss_mb)}"
        )
    return "\n".join(out)


def format_server(
    row: Measurement, server: ServerFigures, in_process: Measurement | None = None
) -> list[str]:
    """Note lines under the table for a row whose store is a server process: the
    server's start, memory and CPU, the worker + server CPU per event, and that sum
    against the in-process row (whose worker CPU includes the engine's)."""
    lines = [
        f"{row.key} server process (infra/clickhouse/start): started in {server.start_s:.1f} s; "
        f"RSS at rest {_num(server.rest_rss_mb, 0)} MB, peak during the run "
        f"{_num(server.peak_rss_mb, 0)} MB; CPU {_num(server.cpu_during_run_s)} s during the "
        f"worker's run, {_num(server.window_cpu_s)} s inside its processing window "
        f"({_num(server.window_cpu_per_m)} s per M events)"
    ]
    both = (
        row.cpu_per_m + server.window_cpu_per_m
        if row.cpu_per_m is not None and server.window_cpu_per_m is not None
        else None
    )
    lines.append(
        f"{row.key} worker + server CPU s/M events in the window: {_num(both)} "
        f"(worker {_num(row.cpu_per_m)} + server {_num(server.window_cpu_per_m)}); "
        f"'other load' of row {row.key} excludes the server"
    )
    if in_process is not None:
        if row.ok and in_process.ok:
            lines.append(
                f"{row.key} vs {in_process.key} ({in_process.name}): throughput "
                f"{_ratio(row.rate, in_process.rate)}, CPU per event (worker + server) "
                f"{_ratio(both, in_process.cpu_per_m)}, "
                f"peak RSS (worker + server) "
                f"{_ratio(_sum(row.max_rss_mb, server.peak_rss_mb), in_process.max_rss_mb)}"
            )
        else:
            why = row.status if not row.ok else in_process.status
            lines.append(f"{row.key} vs {in_process.key} ({in_process.name}): n/a ({why})")
    return lines


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
