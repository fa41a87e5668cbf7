"""Synthetic traffic generator: determinism, validity, calendar shape, streaming."""

from __future__ import annotations

import gzip
import itertools
import re
import resource
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from metering.simulate import (
    MODELS,
    SimulationPlan,
    generate_events,
    population_stats,
    write_jsonl,
)

TENANT_RE = re.compile(r"[a-z0-9-]{1,64}")
AGENCY_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
OCCURRED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FEATURE_RE = re.compile(r"[a-z0-9-]{1,64}")
LEVELS = {"federal", "state", "local"}
REQUIRED = {
    "schema_version",
    "event_id",
    "occurred_at",
    "tenant",
    "agency_id",
    "agency_level",
    "user_id",
    "conversation_id",
    "model",
    "tokens_in",
    "tokens_out",
}
ALLOWED = REQUIRED | {"feature"}


def take(plan: SimulationPlan) -> list[bytes]:
    return list(generate_events(plan))


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def check_event(line: bytes) -> dict[str, object]:
    """Validate one line against the event rules without using project code."""
    assert b"\n" not in line
    event = orjson.loads(line)
    assert isinstance(event, dict)
    assert orjson.dumps(event) == line  # compact, exactly what orjson writes
    assert REQUIRED <= event.keys() <= ALLOWED
    assert event["schema_version"] == 1
    assert UUID_RE.fullmatch(event["event_id"])
    assert uuid.UUID(event["event_id"]).version == 4
    assert OCCURRED_RE.fullmatch(event["occurred_at"])
    assert TENANT_RE.fullmatch(event["tenant"])
    assert AGENCY_RE.fullmatch(event["agency_id"])
    assert event["agency_level"] in LEVELS
    # The simulator's exact id shapes (well inside the contract's 128-character limit)
    # and its exact model list.
    assert re.fullmatch(r"u-[0-9a-f]{12}", event["user_id"])
    assert re.fullmatch(r"c-[0-9a-f]{20}", event["conversation_id"])
    assert event["model"] in {name for name, *_ in MODELS}
    for key in ("tokens_in", "tokens_out"):
        assert type(event[key]) is int
        assert 0 <= event[key] <= 1_000_000
    if "feature" in event:
        assert FEATURE_RE.fullmatch(event["feature"])
    return event


@pytest.fixture(scope="module")
def sample() -> list[bytes]:
    return take(SimulationPlan(messages=20_000, seed=11, days=2))


def test_same_seed_same_bytes_different_seed_different() -> None:
    first = take(SimulationPlan(messages=2_000))
    assert first == take(SimulationPlan(messages=2_000))
    other = take(SimulationPlan(messages=2_000, seed=8))
    assert len(other) == 2_000
    assert first != other
    assert not {orjson.loads(x)["event_id"] for x in first} & {
        orjson.loads(x)["event_id"] for x in other
    }


def test_exact_count_and_lazy_stream() -> None:
    stream = generate_events(SimulationPlan(messages=12_345, agencies=40, users=400))
    assert iter(stream) is stream  # a generator, not a materialised list
    assert sum(1 for _ in stream) == 12_345
    assert take(SimulationPlan(messages=0)) == []
    assert len(take(SimulationPlan(messages=1, agencies=1, users=1))) == 1


def test_every_event_is_valid(sample: list[bytes]) -> None:
    events = [check_event(line) for line in sample]
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["agency_level"] for e in events} == LEVELS
    assert {e["tenant"] for e in events} == {"chatgpt-gov", "chatgpt-enterprise"}
    assert len({e["model"] for e in events}) >= 4


def test_conversations_belong_to_one_user_and_are_reused(sample: list[bytes]) -> None:
    owner: dict[str, str] = {}
    per_conversation: Counter[str] = Counter()
    for line in sample:
        event = orjson.loads(line)
        conv, user = event["conversation_id"], event["user_id"]
        assert owner.setdefault(conv, user) == user
        per_conversation[conv] += 1
    reused = sum(1 for n in per_conversation.values() if n >= 2)
    assert reused >= 0.1 * len(per_conversation)


def test_model_shares_and_token_medians(sample: list[bytes]) -> None:
    events = [orjson.loads(line) for line in sample]
    models = Counter(e["model"] for e in events)
    assert models.most_common(1)[0][0] == "gpt-4o"
    assert 0.45 < models["gpt-4o"] / len(events) < 0.65
    tokens_in = sorted(e["tokens_in"] for e in events)
    tokens_out = sorted(e["tokens_out"] for e in events)
    assert 400 <= tokens_in[len(events) // 2] <= 900
    assert 200 <= tokens_out[len(events) // 2] <= 500
    assert tokens_in[-1] > 10 * tokens_in[len(events) // 2]  # long tail


def test_timestamps_inside_plan_window_even_when_late() -> None:
    plan = SimulationPlan(messages=10_000, start=date(2026, 12, 30), days=3, late_rate=0.05)
    lo = datetime(2026, 12, 30, tzinfo=UTC)
    hi = lo + timedelta(days=3)
    for line in generate_events(plan):
        stamp = orjson.loads(line)["occurred_at"]
        assert stamp.endswith("Z")
        assert OCCURRED_RE.fullmatch(stamp)
        assert lo <= parse_ts(stamp) < hi


def test_weekdays_and_working_hours_dominate() -> None:
    plan = SimulationPlan(messages=50_000, start=date(2026, 11, 2), days=7)  # Monday
    per_hour = Counter(orjson.loads(line)["occurred_at"][:13] for line in generate_events(plan))
    by_day: Counter[int] = Counter()
    by_hour: Counter[int] = Counter()
    for stamp, count in per_hour.items():
        weekday = date.fromisoformat(stamp[:10]).weekday()
        by_day[weekday] += count
        if weekday < 5:
            by_hour[int(stamp[11:13])] += count
    weekday_hourly = sum(by_day[d] for d in range(5)) / (5 * 24)
    weekend_hourly = (by_day[5] + by_day[6]) / (2 * 24)
    assert weekday_hourly > 2 * weekend_hourly
    # 14-21 UTC is 9-16 in Eastern time (most users); 05-10 UTC is night everywhere in the US
    peak = sum(by_hour[h] for h in range(14, 22)) / 8
    night = sum(by_hour[h] for h in range(5, 11)) / 6
    assert peak > 5 * night


def test_most_agencies_appear_in_a_large_run() -> None:
    plan = SimulationPlan(messages=200_000)
    seen = {orjson.loads(line)["agency_id"] for line in generate_events(plan)}
    assert len(seen) >= 0.9 * plan.agencies


def test_population_shape() -> None:
    plan = SimulationPlan(messages=0)
    stats = population_stats(plan)
    assert sum(stats.agencies_by_level.values()) == plan.agencies
    assert sum(stats.users_by_level.values()) == plan.users
    assert sum(stats.agencies_by_tenant.values()) == plan.agencies
    counts = stats.agencies_by_level
    assert counts["federal"] < counts["state"] < counts["local"]
    assert 0.10 < counts["federal"] / plan.agencies < 0.20
    assert 0.50 < counts["local"] / plan.agencies < 0.70
    users = stats.users_by_level
    assert users["federal"] > users["state"] and users["federal"] > users["local"]
    assert stats.largest_agencies[0][1] >= 1_000
    assert stats.median_agency_users <= 20
    assert set(stats.agencies_by_utc_offset) <= set(range(-10, -4))


def test_gzip_output_equals_plain(tmp_path: Path) -> None:
    plan = SimulationPlan(messages=5_000, seed=3)
    seen: list[int] = []
    plain, packed = tmp_path / "out" / "events.jsonl", tmp_path / "out" / "events.jsonl.gz"
    assert write_jsonl(plan, plain, progress=seen.append) == 5_000
    assert write_jsonl(plan, packed) == 5_000
    assert seen[-1] == 5_000
    text = plain.read_bytes()
    assert text.endswith(b"\n")
    assert gzip.decompress(packed.read_bytes()) == text
    assert text.splitlines() == take(plan)
    again = tmp_path / "again.jsonl.gz"
    write_jsonl(plan, again)
    assert again.read_bytes() == packed.read_bytes()  # reproducible archive


def test_duplicates_are_exact_resends_placed_shortly_after() -> None:
    plan = SimulationPlan(messages=20_000, duplicate_rate=0.01)
    lines = take(plan)
    assert len(lines) == 20_000 + 200 == plan.lines
    ids = [orjson.loads(line)["event_id"] for line in lines]
    counts = Counter(ids)
    assert len(counts) == 20_000
    assert sum(1 for n in counts.values() if n == 2) == 200
    assert max(counts.values()) == 2
    first_at: dict[str, int] = {}
    originals: list[bytes] = []
    for pos, (event_id, line) in enumerate(zip(ids, lines, strict=True)):
        if event_id in first_at:
            assert line == lines[first_at[event_id]]
            assert 0 < pos - first_at[event_id] <= 500
        else:
            first_at[event_id] = pos
            originals.append(line)
    assert originals == take(SimulationPlan(messages=20_000))


def test_late_events_exact_count_otherwise_time_ordered() -> None:
    def earlier_than_seen(lines: Iterator[bytes]) -> int:
        latest, behind = "", 0
        for line in lines:
            stamp = orjson.loads(line)["occurred_at"]
            behind += stamp < latest
            latest = max(latest, stamp)
        return behind

    assert earlier_than_seen(generate_events(SimulationPlan(messages=20_000))) == 0
    late = SimulationPlan(messages=20_000, late_rate=0.02)
    assert earlier_than_seen(generate_events(late)) == late.late_events == 400


def test_invalid_plans_are_rejected() -> None:
    for bad in (
        {"messages": -1},
        {"messages": 1, "days": 0},
        {"messages": 1, "agencies": 10, "users": 5},
        {"messages": 1, "tenants": (("Bad Tenant", 1.0),)},
        {"messages": 1, "duplicate_rate": 1.5},
        {"messages": 1, "late_rate": -0.1},
    ):
        with pytest.raises(ValueError):
            SimulationPlan(**bad)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def test_constant_memory_while_streaming() -> None:
    stream = generate_events(SimulationPlan(messages=300_000, days=2))
    for _ in itertools.islice(stream, 20_000):  # tables built, steady state reached
        pass
    baseline = peak = _rss_bytes()
    for count, _ in enumerate(stream):
        if count % 20_000 == 0:
            peak = max(peak, _rss_bytes())
    peak = max(peak, _rss_bytes())
    assert count == 300_000 - 20_000 - 1
    assert peak - baseline < 50 * 1024 * 1024
