"""The expected totals, computed from the generated events while they are published.

Per (day, tenant, agency_id, agency_level): messages, tokens_in and tokens_out, exactly,
for every run. Distinct users per agency-day are held as sets for every agency while the
run has at most `USERS_EXACT_LIMIT` messages; above that, for a fixed 1-in-N sample of
agencies (chosen by a hash of the agency id), which bounds the memory of an 18M run.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Final

import orjson

from schemas.events import parse_rfc3339

__all__ = [
    "USERS_EXACT_LIMIT",
    "AgencyDay",
    "Reference",
    "Verdict",
    "verify_count",
    "verify_rows",
]

USERS_EXACT_LIMIT: Final = 2_000_000

# (day "YYYY-MM-DD", tenant, agency_id, agency_level)
AgencyDay = tuple[str, str, str, str]


@dataclass
class Reference:
    """Totals of the events seen by `observe`/`add`; `user_sample` 1 means every agency."""

    user_sample: int = 1
    messages: int = 0
    totals: dict[AgencyDay, list[int]] = field(default_factory=dict)
    users: dict[AgencyDay, set[str]] = field(default_factory=dict)
    _sampled: dict[str, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def for_messages(cls, messages: int) -> Reference:
        return cls(user_sample=max(1, math.ceil(messages / USERS_EXACT_LIMIT)))

    def sampled(self, agency_id: str) -> bool:
        """Whether distinct users are checked for this agency (stable across runs)."""
        hit = self._sampled.get(agency_id)
        if hit is None:
            hit = zlib.crc32(agency_id.encode()) % self.user_sample == 0
            self._sampled[agency_id] = hit
        return hit

    def add(self, line: bytes) -> None:
        event = orjson.loads(line)
        occurred = event["occurred_at"]
        if occurred.endswith("Z"):
            day = occurred[:10]
        else:
            day = parse_rfc3339(occurred).date().isoformat()
        key = (day, event["tenant"], event["agency_id"], event["agency_level"])
        row = self.totals.get(key)
        if row is None:
            row = self.totals[key] = [0, 0, 0]
        row[0] += 1
        row[1] += event["tokens_in"]
        row[2] += event["tokens_out"]
        if self.sampled(key[2]):
            self.users.setdefault(key, set()).add(event["user_id"])
        self.messages += 1

    def observe(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """Pass `lines` through unchanged, adding each one to the totals."""
        for line in lines:
            self.add(line)
            yield line


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str

    @property
    def label(self) -> str:
        return "OK" if self.ok else "INVALID"


def _day(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def verify_rows(reference: Reference, rows: Iterable[Sequence[object]]) -> Verdict:
    """Compare contender rows (day, tenant, agency_id, agency_level, messages, tokens_in,
    tokens_out, active_users) with the reference; every difference makes it INVALID."""
    got: dict[AgencyDay, tuple[int, int, int, int]] = {}
    repeated = 0
    for row in rows:
        day, tenant, agency_id, level, messages, tokens_in, tokens_out, users = row
        key = (_day(day), str(tenant), str(agency_id), str(level))
        if key in got:
            repeated += 1
        got[key] = (int(messages), int(tokens_in), int(tokens_out), int(users))  # type: ignore[call-overload]
    missing = [k for k in reference.totals if k not in got]
    extra = [k for k in got if k not in reference.totals]
    wrong_sums = [k for k, v in reference.totals.items() if k in got and list(got[k][:3]) != v]
    wrong_users = [
        k for k, users in reference.users.items() if k in got and got[k][3] != len(users)
    ]
    counted = sum(v[0] for v in got.values())
    checked_users = len(reference.users)
    scope = (
        f"{len(reference.totals)} agency-days, users checked on "
        f"{'all' if reference.user_sample == 1 else f'1 in {reference.user_sample} agencies'}"
        f" ({checked_users} agency-days)"
    )
    problems: list[str] = []
    if counted != reference.messages:
        problems.append(f"messages {counted} != {reference.messages}")
    for name, keys in (
        ("missing", missing),
        ("unexpected", extra),
        ("wrong sums", wrong_sums),
        ("wrong distinct users", wrong_users),
    ):
        if keys:
            problems.append(f"{len(keys)} {name} (e.g. {'|'.join(keys[0])})")
    if repeated:
        problems.append(f"{repeated} repeated rows")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, scope)


def verify_count(reference: Reference, messages: int | None) -> Verdict:
    """The floor aggregates nothing: only the number of decoded messages is checked."""
    if messages != reference.messages:
        return Verdict(False, f"read {messages} messages, published {reference.messages}")
    return Verdict(True, "message count only")
