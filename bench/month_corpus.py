"""The month benchmark's corpus: simulated traffic with the faults real producers send.

On top of `metering simulate`'s stream (2% re-sent duplicates, 1% late events hours out of
order) it spells some timestamps in other UTC offsets, adds unknown extra fields, and
inserts about 3% bad lines of every rejection class, 70 KiB ones included (too_large).
`expected_from` computes the totals the pipeline must show from those lines alone: every
valid event once (the first line of each event_id), bad lines and duplicates not at all.

The corpus and its expectation are written once under `var/` and reused by later runs.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Final

import orjson

from bench.reference import Reference
from metering.simulate import SimulationPlan, generate_events

__all__ = [
    "BAD_KINDS",
    "Expected",
    "MonthCorpus",
    "corpus_plan",
    "expected_from",
    "faulty_lines",
    "month_corpus",
]

MESSAGES_PER_DAY: Final = 600_000  # 18M messages make a 30-day month
BAD_RATE: Final = 0.03  # bad lines per distinct event
TOO_LARGE_RATE: Final = 0.0002  # of those, 70 KiB lines per distinct event (3.6k at 18M)
OFFSET_RATE: Final = 0.2  # valid events whose occurred_at is spelled in another offset
EXTRA_FIELD_RATE: Final = 0.1  # valid events with a field the contract does not name
_OFFSETS: Final = ("-10:00", "-05:00", "-03:30", "+01:00", "+05:30", "+09:45", "+14:00")
_RECENT: Final = 4096  # event ids remembered: the simulator re-sends within 200 lines

# The rejection classes other than too_large (CONTRACT section 2), and one way to make each.
BAD_KINDS: Final = (
    "invalid_json",
    "content_not_allowed",
    "unsupported_schema_version",
    "schema_violation",
)


def corpus_plan(messages: int, seed: int = 7) -> SimulationPlan:
    return SimulationPlan(
        messages=messages,
        days=max(1, messages // MESSAGES_PER_DAY),
        seed=seed,
        duplicate_rate=0.02,
        late_rate=0.01,
    )


def _in_offset(occurred_at: str, offset: str) -> str:
    """The same instant written in `offset` (milliseconds kept)."""
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    local = datetime.fromisoformat(occurred_at).astimezone(zone)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{offset}"


def _bad_line(event: dict[str, object], kind: str, rng: random.Random) -> bytes:
    bad = dict(event, event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    if kind == "too_large":
        bad["notes"] = "x" * (70 * 1024)
    elif kind == "content_not_allowed":
        bad["prompt"] = "summarise the attached memo"
    elif kind == "unsupported_schema_version":
        bad["schema_version"] = 2
    elif kind == "schema_violation":
        choice = rng.randrange(4)
        if choice == 0:
            bad["tokens_in"] = -1
        elif choice == 1:
            del bad["user_id"]
        elif choice == 2:
            bad["agency_level"] = "county"
        else:
            bad["tokens_out"] = str(bad["tokens_out"])
    line = orjson.dumps(bad)
    if kind == "invalid_json":
        return line[: rng.randrange(1, len(line) - 1)]
    return line


def faulty_lines(plan: SimulationPlan) -> Iterator[tuple[bytes, str]]:
    """(line, kind) in publishing order; kind is valid, duplicate or a rejection class."""
    rng = random.Random(f"govmeter-bench-month/{plan.seed}")
    recent: deque[str] = deque()
    seen: set[str] = set()
    spelled: dict[str, bytes] = {}  # event id -> the bytes its first line was sent as
    for line in generate_events(plan):
        event = orjson.loads(line)
        event_id = event["event_id"]
        if event_id in seen:  # a re-sent copy: the same bytes as its first line
            yield spelled[event_id], "duplicate"
            continue
        seen.add(event_id)
        recent.append(event_id)
        if len(recent) > _RECENT:
            gone = recent.popleft()
            seen.discard(gone)
            spelled.pop(gone, None)
        changed = False
        if rng.random() < OFFSET_RATE:
            event["occurred_at"] = _in_offset(event["occurred_at"], rng.choice(_OFFSETS))
            changed = True
        if rng.random() < EXTRA_FIELD_RATE:
            event["client"] = {"app": "web", "build": rng.randrange(1000)}
            changed = True
        if changed:
            line = orjson.dumps(event)
        spelled[event_id] = line
        yield line, "valid"
        roll = rng.random()
        if roll < TOO_LARGE_RATE:
            yield _bad_line(event, "too_large", rng), "too_large"
        elif roll < BAD_RATE:
            kind = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
            yield _bad_line(event, kind, rng), kind


@dataclass
class Expected:
    """What the pipeline must show for a corpus: the totals and each line's fate."""

    reference: Reference
    lines: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_json(self) -> bytes:
        ref = self.reference
        return orjson.dumps(
            {
                "lines": self.lines,
                "duplicates": self.duplicates,
                "rejected": self.rejected,
                "user_sample": ref.user_sample,
                "messages": ref.messages,
                "totals": [[*key, *value] for key, value in ref.totals.items()],
                "users": [[*key, sorted(users)] for key, users in ref.users.items()],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Expected:
        raw = orjson.loads(data)
        ref = Reference(user_sample=raw["user_sample"], messages=raw["messages"])
        ref.totals = {(r[0], r[1], r[2], r[3]): [r[4], r[5], r[6]] for r in raw["totals"]}
        ref.users = {(r[0], r[1], r[2], r[3]): set(r[4]) for r in raw["users"]}
        return cls(ref, raw["lines"], raw["duplicates"], dict(raw["rejected"]))


def expected_from(lines: Iterator[tuple[bytes, str]], expected: Expected) -> Iterator[bytes]:
    """Pass the lines through, adding each valid event to `expected`'s totals once."""
    for line, kind in lines:
        expected.lines += 1
        if kind == "valid":
            expected.reference.add(line)
        elif kind == "duplicate":
            expected.duplicates += 1
        else:
            expected.rejected[kind] = expected.rejected.get(kind, 0) + 1
        yield line


@dataclass(frozen=True)
class MonthCorpus:
    path: Path  # the JSONL file, one line per message
    expected: Expected


def month_corpus(directory: Path, messages: int, seed: int = 7) -> MonthCorpus:
    """The corpus of `messages` distinct events, generated once into `directory`."""
    plan = corpus_plan(messages, seed)
    stem = f"month-{messages}-seed{seed}"
    path = directory / f"{stem}.jsonl"
    facts = directory / f"{stem}.expected.json"
    if path.is_file() and facts.is_file():
        return MonthCorpus(path, Expected.from_json(facts.read_bytes()))
    directory.mkdir(parents=True, exist_ok=True)
    expected = Expected(Reference.for_messages(messages))
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        chunk: list[bytes] = []
        for line in expected_from(faulty_lines(plan), expected):
            chunk.append(line)
            if len(chunk) >= 10_000:
                out.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")
    partial.replace(path)
    facts.write_bytes(expected.to_json())
    return MonthCorpus(path, expected)
