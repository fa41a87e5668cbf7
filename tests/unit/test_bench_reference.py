"""The bench's own arithmetic: reference totals, the row check, freshness, timelines."""

from __future__ import annotations

import itertools

import orjson
import pytest

from bench.freshness import percentile, seen_by_reader, visibility
from bench.reference import Reference, verify_count, verify_rows
from bench.runner import LogLine, RunRecord
from bench.table import format_ratios, format_table, measure_window
from bench.worklog import describe, worker_timeline
from metering.simulate import SimulationPlan, generate_events


def _reference(messages: int = 3000, days: int = 2) -> tuple[Reference, list[bytes]]:
    lines = list(generate_events(SimulationPlan(messages=messages, days=days)))
    reference = Reference.for_messages(messages)
    assert list(reference.observe(lines)) == lines
    return reference, lines


def _rows(reference: Reference) -> list[list[object]]:
    return [[*key, *sums, len(reference.users[key])] for key, sums in reference.totals.items()]


def test_reference_totals_match_a_plain_count() -> None:
    reference, lines = _reference()
    events = [orjson.loads(line) for line in lines]
    assert reference.messages == len(events)
    assert sum(row[0] for row in reference.totals.values()) == len(events)
    assert sum(row[1] for row in reference.totals.values()) == sum(e["tokens_in"] for e in events)
    days = {key[0] for key in reference.totals}
    assert days == {"2026-11-02", "2026-11-03"}
    key = next(iter(reference.totals))
    users = {
        e["user_id"]
        for e in events
        if (e["occurred_at"][:10], e["tenant"], e["agency_id"], e["agency_level"]) == key
    }
    assert reference.users[key] == users


def test_exact_rows_are_ok_in_any_order_and_day_type() -> None:
    reference, _ = _reference()
    rows = list(reversed(_rows(reference)))
    verdict = verify_rows(reference, rows)
    assert verdict.ok, verdict.detail


def test_every_kind_of_difference_is_invalid() -> None:
    reference, _ = _reference()
    rows = _rows(reference)
    changed_tokens = [list(r) for r in rows]
    changed_tokens[0][5] = int(changed_tokens[0][5]) + 1  # type: ignore[call-overload]
    changed_users = [list(r) for r in rows]
    changed_users[1][7] = int(changed_users[1][7]) + 1  # type: ignore[call-overload]
    extra = [*rows, ["2026-11-04", "chatgpt-gov", "fed-0001-defense", "federal", 1, 1, 1, 1]]
    for bad, words in (
        (changed_tokens, "wrong sums"),
        (changed_users, "wrong distinct users"),
        (rows[1:], "missing"),
        (extra, "unexpected"),
        ([*rows, rows[0]], "repeated"),
    ):
        verdict = verify_rows(reference, bad)
        assert not verdict.ok
        assert verdict.label == "INVALID"
        assert words in verdict.detail


def test_large_runs_check_users_on_a_stable_sample_of_agencies() -> None:
    reference = Reference.for_messages(18_000_000)
    assert reference.user_sample == 9
    for line in generate_events(SimulationPlan(messages=5000)):
        reference.add(line)
    sampled = {key[2] for key in reference.users}
    agencies = {key[2] for key in reference.totals}
    assert sampled
    assert sampled < agencies
    assert all(reference.sampled(a) == (a in sampled) for a in agencies)
    rows = [
        [*key, *sums, len(reference.users.get(key, ())) or 999]
        for key, sums in reference.totals.items()
    ]
    assert verify_rows(reference, rows).ok  # unsampled agency-days: users are not checked


def test_floor_checks_the_count_only() -> None:
    reference, _ = _reference(messages=100, days=1)
    assert verify_count(reference, 100).ok
    assert not verify_count(reference, 99).ok
    assert not verify_count(reference, None).ok


def test_visibility_maps_offsets_to_the_first_covering_flush() -> None:
    sent = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    flushes = [(2, 1.0), (3, 2.0)]  # offsets 0-1, then 2-4; offset 5 never flushed
    fresh = visibility(sent, flushes, skip=1)
    assert fresh.measured == 5
    assert fresh.visible == 4
    # latencies of offsets 1..4: 0.9, then 1.8, 1.7, 1.6 (offsets 2-4 all visible at 2.0)
    assert fresh.max == pytest.approx(1.8)
    assert fresh.p50 == pytest.approx(1.6)
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_a_reader_sees_each_event_at_the_first_poll_whose_count_covers_it() -> None:
    sent = [0.0, 0.1, 0.2, 0.3, 0.4]
    # polls: nothing, then 2 visible, the same 2 again, then 4; event 4 never seen
    polls = [(0.5, 0), (1.0, 2), (1.5, 2), (2.5, 4)]
    fresh = seen_by_reader(sent, polls)
    assert (fresh.measured, fresh.visible) == (5, 4)
    # latencies: 1.0, 0.9 (seen at 1.0), then 2.3, 2.2 (seen at 2.5)
    assert fresh.max == pytest.approx(2.3)
    assert fresh.p50 == pytest.approx(1.0)


def _flush_line(seq: int, messages: int, at: float, cpu: float) -> LogLine:
    record = {
        "msg": "flush committed",
        "flush_seq": seq,
        "messages": messages,
        "seconds": 0.5,
        "step_seconds": {"lookup": 0.1, "stage": 0.2, "commit": 0.05, "apply": 0.15},
    }
    return LogLine(at, cpu, record)


def test_worker_timeline_and_measurement() -> None:
    run = RunRecord(argv=["metering", "worker"], spawned=100.0, exited=130.0, returncode=0)
    run.cpu_seconds = 25.0
    run.max_rss_mb = 500.0
    run.lines = [
        LogLine(101.0, 1.0, {"msg": "store ready"}),
        LogLine(102.0, 2.0, {"msg": "worker consuming"}),
        *(
            _flush_line(seq, 1000, 103.0 + seq, 3.0 + seq)
            for seq in itertools.islice(itertools.count(1), 10)
        ),
        LogLine(117.0, 14.0, {"msg": "idle and fully flushed; stopping"}),
    ]
    timeline = worker_timeline(run)
    assert timeline.messages == 10_000
    assert timeline.consuming == 102.0
    assert timeline.step_totals()["stage"] == pytest.approx(2.0)
    reference = Reference(messages=10_000)
    m = measure_window(
        "2",
        "pipeline",
        run,
        verify_count(reference, 10_000),
        messages=10_000,
        first=run.first("flush committed"),
        first_count=1000,
        done=run.last("flush committed"),
    )
    assert m.startup_s == 4.0
    assert m.processing_s == 9.0
    assert m.rate == 1000.0
    assert m.cpu_per_m == 1000.0  # 9 CPU seconds for 9,000 events
    assert m.tail_s == 17.0
    text = format_table([m])
    assert "| 2 " in text
    assert "1,000" in text
    assert "throughput 1.00x" in format_ratios(m, [m])
    lines = describe(timeline)
    assert any("inside flushes 4.5 s" in line for line in lines)
