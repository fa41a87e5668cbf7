"""`python -m bench.classify`: the worker's per-event Python without Kafka or a store.

Times, on the same messages, what the worker does with a batch between reading it and
writing it: classify it (`streams.batch.classify_batch`, the fast path and the full
classifier for what it cannot decide), then build what the flush writes (the staged
Arrow table, `counted_events_table`, and the content hash, `flush_content_sha256`). The
third row, both steps, is the one to compare across versions: `classify_batch` now
builds the valid events' columns and content lines ahead, so its own row includes
part of the second. Also `classify` one message at a time, the single-message API.

Two corpora of the same size: `clean`, the simulator's traffic as `bench.pipeline`
publishes it, and `faulty`, the month benchmark's mix (`bench.month_corpus`: 2%
duplicates, late events, 20% of timestamps in other UTC offsets, unknown fields, 3% bad
lines of every rejection class). Prints messages per second and CPU seconds per million
messages, best of `--repeat` runs.

    python -m bench.classify [--messages 200000] [--batch 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from bench.month_corpus import corpus_plan, faulty_lines
from metering.simulate import SimulationPlan, generate_events
from schemas.rejections import classify
from streams.batch import ClassifiedBatch, SourceMessage, classify_batch
from streams.sink import counted_events_table, flush_content_sha256

__all__ = ["main"]

_TOPIC = "usage.events"
_PARTITIONS = 6


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.classify", description=__doc__)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=20_000, help="messages per batch (a flush)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each step; the best counts")
    return p


def _clean(messages: int) -> list[bytes]:
    return list(itertools.islice(generate_events(SimulationPlan(messages=messages)), messages))


def _faulty(messages: int) -> list[bytes]:
    lines = (line for line, _ in faulty_lines(corpus_plan(messages)))
    return list(itertools.islice(lines, messages))


def _batches(lines: Sequence[bytes], size: int) -> list[list[SourceMessage]]:
    """Batches as the intake hands them over: offsets in order per partition."""
    messages = [
        SourceMessage(_TOPIC, index % _PARTITIONS, index // _PARTITIONS, None, line)
        for index, line in enumerate(lines)
    ]
    return [messages[start : start + size] for start in range(0, len(messages), size)]


def _best(repeat: int, step: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of `repeat` runs."""
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def _flush_parts(batches: Sequence[ClassifiedBatch], *, afresh: bool) -> None:
    now = datetime.now(UTC)
    for seq, batch in enumerate(batches):
        # classify_batch builds the staged columns and content lines ahead (kept on the
        # valid events); `afresh` forgets them, so the step measures building them.
        derived = getattr(batch.valid, "derived", None)
        if afresh and isinstance(derived, dict):
            derived.clear()
        counted_events_table(batch.valid, seq, now)
        flush_content_sha256(batch.valid, batch.rejected, list(batch.ranges.values()))


def _row(corpus: str, step: str, messages: int, seconds: tuple[float, float]) -> str:
    wall, cpu = seconds
    return (
        f"| {corpus:<7} | {step:<44} | {messages:>9,} | {messages / wall:>12,.0f} "
        f"| {cpu / messages * 1e6:>13.2f} |"
    )


def _measure(corpus: str, lines: list[bytes], size: int, repeat: int) -> None:
    batches = _batches(lines, size)
    classified = [classify_batch(batch) for batch in batches]
    steps: list[tuple[str, Callable[[], object]]] = [
        ("classify_batch", lambda: [classify_batch(batch) for batch in batches]),
        (
            "table + content hash of the valid events",
            lambda: _flush_parts(classified, afresh=True),
        ),
        (
            "both: a flush's per-event Python",
            lambda: _flush_parts([classify_batch(batch) for batch in batches], afresh=False),
        ),
        ("classify, one message at a time", lambda: [classify(line) for line in lines]),
    ]
    for step, run in steps:
        print(_row(corpus, step, len(lines), _best(repeat, run)), flush=True)
    valid = sum(len(batch.valid) for batch in classified)
    print(f"| {corpus:<7} | ({valid:,} of {len(lines):,} counted, the rest rejected or repeats)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(f"bench.classify: {args.messages:,} messages per corpus, batches of {args.batch:,}")
    print(
        "| corpus  | step                                         |  messages "
        "|   messages/s | CPU s/M msgs  |"
    )
    print(f"|---------|{'-' * 46}|-----------|--------------|---------------|")
    for corpus, make in (("clean", _clean), ("faulty", _faulty)):
        _measure(corpus, make(args.messages), args.batch, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
