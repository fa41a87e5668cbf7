"""Seeded synthetic usage traffic for the government chat service.

Every user message becomes one usage event, one compact JSON object per line. The generator
streams: agency and user tables (about 90k users) are held in memory, events never are, so a run
of 18 million messages uses the same memory as a run of 18 thousand.

Shape of the traffic:

* agencies are federal / state / local (about 15% / 25% / 60% by count); users per agency follow
  a power law, so a few federal departments have thousands of users and most local agencies a
  handful; federal agencies hold the largest share of users;
* each agency sits in one US time zone (UTC-5 .. UTC-10); traffic follows local working hours
  (peak 9-17) and weekdays are much busier than weekends;
* messages per user are log-normal (heavy users, long tail); a user's consecutive messages share
  a conversation id until the conversation ends or goes idle;
* models and features have fixed shares; token counts are log-normal per model and feature.

Time zones are fixed standard-time offsets (no daylight saving; the default start, 2 November
2026, is the day after US daylight time ends).

Events are produced hour by hour, each hour in consecutive slices of at most ``_SLICE_MAX``
events sorted by time, so ``occurred_at`` never decreases along the stream without any sorting
of the whole run. Two deliberate exceptions: producer retries (``duplicate_rate``) re-send an
identical line shortly after the original, and late events (``late_rate``) carry an
``occurred_at`` one to six hours before their neighbours (never before the plan's start).

The output is a pure function of the plan: same plan, same bytes.
"""

from __future__ import annotations

import gzip
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Protocol

import orjson

from schemas.events import AGENCY_LEVELS, SCHEMA_VERSION, TENANT

__all__ = [
    "FEATURES",
    "MODELS",
    "SimulationPlan",
    "SimulationStats",
    "generate_events",
    "population_stats",
    "write_jsonl",
]

# name, share of messages, median tokens_in, median tokens_out
MODELS: tuple[tuple[str, float, int, int], ...] = (
    ("gpt-4o", 0.55, 490, 310),
    ("gpt-4.1", 0.20, 560, 330),
    ("o3", 0.10, 510, 640),
    ("gpt-4o-mini", 0.10, 380, 240),
    ("o4-mini", 0.05, 430, 470),
)
# name, share of messages, tokens_in multiplier, tokens_out multiplier
FEATURES: tuple[tuple[str, float, int, int], ...] = (
    ("chat", 0.80, 1, 1),
    ("file-analysis", 0.08, 5, 1),
    ("web-browsing", 0.06, 3, 1),
    ("code-interpreter", 0.04, 2, 2),
    ("deep-research", 0.02, 4, 4),
)

_TOKEN_CAP = 1_000_000
_SIGMA_IN = 0.95
_SIGMA_OUT = 0.75
_Z_BITS = 14

_HOUR_MS = 3_600_000
_SLICE_MAX = 8192
_DUP_MAX_DELAY = 200
_LATE_MIN_MS = 1 * _HOUR_MS
_LATE_MAX_MS = 6 * _HOUR_MS
_CONV_IDLE_MS = 8 * _HOUR_MS
_CONV_MEAN_EXTRA = 4.0
_WRITE_BATCH = 4096
_WRITE_AHEAD = 2
_PROGRESS_EVERY = 100_000

_LEVEL_COUNT_SHARE = (0.15, 0.25, 0.60)
_LEVEL_USER_SHARE = (0.55, 0.27, 0.18)
_LEVEL_ZIPF = (1.1, 0.9, 1.0)
_MIN_AGENCY_USERS = 3
_USER_SIGMA = 1.2
_AGENCY_SIGMA = 0.35
_HOUR_JITTER_SIGMA = 0.08

_TZ_OFFSETS: tuple[int, ...] = (-5, -6, -7, -8, -9, -10)
_FEDERAL_TZ_SHARE: tuple[float, ...] = (0.72, 0.10, 0.06, 0.09, 0.015, 0.015)
_FEDERAL_HQ = 24  # the largest federal departments are headquartered in Washington, DC

# relative traffic by local hour of day, and by local weekday (Monday first)
_DIURNAL: tuple[float, ...] = (
    0.03, 0.02, 0.02, 0.02, 0.03, 0.06, 0.15, 0.35, 0.70, 0.95, 1.00, 1.00,
    0.85, 0.95, 1.00, 0.95, 0.85, 0.60, 0.35, 0.25, 0.20, 0.15, 0.10, 0.06,
)  # fmt: skip
_WEEKDAY: tuple[float, ...] = (1.00, 1.02, 1.00, 0.95, 0.82, 0.10, 0.08)

_FEDERAL_NAMES: tuple[str, ...] = (
    "defense", "va", "hhs", "dhs", "treasury", "justice", "energy", "state", "agriculture",
    "interior", "commerce", "labor", "transportation", "ssa", "hud", "education", "epa", "nasa",
    "gsa", "opm", "sba", "usaid", "nrc", "nsf",
)  # fmt: skip
_FEDERAL_KINDS: tuple[str, ...] = (
    "bureau", "office", "commission", "service", "administration", "board", "institute",
    "council", "center", "agency",
)  # fmt: skip

# state code, population (millions), standard-time UTC offset of most of the state
_STATES: tuple[tuple[str, float, int], ...] = (
    ("al", 5.1, -6), ("ak", 0.7, -9), ("az", 7.4, -7), ("ar", 3.1, -6), ("ca", 39.0, -8),
    ("co", 5.9, -7), ("ct", 3.6, -5), ("de", 1.0, -5), ("dc", 0.7, -5), ("fl", 22.6, -5),
    ("ga", 11.0, -5), ("hi", 1.4, -10), ("id", 2.0, -7), ("il", 12.5, -6), ("in", 6.9, -5),
    ("ia", 3.2, -6), ("ks", 2.9, -6), ("ky", 4.5, -5), ("la", 4.6, -6), ("me", 1.4, -5),
    ("md", 6.2, -5), ("ma", 7.0, -5), ("mi", 10.0, -5), ("mn", 5.7, -6), ("ms", 2.9, -6),
    ("mo", 6.2, -6), ("mt", 1.1, -7), ("ne", 2.0, -6), ("nv", 3.2, -8), ("nh", 1.4, -5),
    ("nj", 9.3, -5), ("nm", 2.1, -7), ("ny", 19.6, -5), ("nc", 10.8, -5), ("nd", 0.8, -6),
    ("oh", 11.8, -5), ("ok", 4.1, -6), ("or", 4.2, -8), ("pa", 13.0, -5), ("ri", 1.1, -5),
    ("sc", 5.4, -5), ("sd", 0.9, -6), ("tn", 7.1, -6), ("tx", 30.5, -6), ("ut", 3.4, -7),
    ("vt", 0.6, -5), ("va", 8.7, -5), ("wa", 7.8, -8), ("wv", 1.8, -5), ("wi", 5.9, -6),
    ("wy", 0.6, -7),
)  # fmt: skip

_STATE_BY_POPULATION = tuple(pop for _, pop, _ in _STATES)
_STATE_BY_SQRT_POPULATION = tuple(math.sqrt(pop) for _, pop, _ in _STATES)

# UUID version 4: the version nibble is "4" and the variant nibble is 8, 9, a or b (RFC 9562)
_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


@dataclass(frozen=True)
class SimulationPlan:
    """What to simulate. ``messages`` counts distinct messages (unique event ids)."""

    messages: int
    seed: int = 7
    start: date = date(2026, 11, 2)  # first UTC day
    days: int = 1
    agencies: int = 3500
    users: int = 90000
    tenants: tuple[tuple[str, float], ...] = (
        ("chatgpt-gov", 0.85),
        ("chatgpt-enterprise", 0.15),
    )  # share of agencies
    duplicate_rate: float = 0.0  # fraction of events re-sent with the same event_id
    late_rate: float = 0.0  # fraction of events whose occurred_at is hours earlier

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", tuple((str(n), float(s)) for n, s in self.tenants))
        _check(self.messages >= 0, "messages must be >= 0")
        _check(self.days >= 1, "days must be >= 1")
        _check(self.agencies >= 1, "agencies must be >= 1")
        _check(self.users >= self.agencies, "users must be >= agencies")
        _check(len(self.tenants) >= 1, "at least one tenant is required")
        for name, share in self.tenants:
            _check(TENANT.fullmatch(name) is not None, f"invalid tenant {name!r}")
            _check(share > 0, f"tenant share must be > 0: {name!r}")
        _check(0.0 <= self.duplicate_rate <= 1.0, "duplicate_rate must be in [0, 1]")
        _check(0.0 <= self.late_rate <= 1.0, "late_rate must be in [0, 1]")

    @property
    def duplicates(self) -> int:
        """Number of extra (re-sent) lines the stream will contain."""
        return round(self.messages * self.duplicate_rate)

    @property
    def late_events(self) -> int:
        """Number of events emitted with an earlier ``occurred_at``."""
        return round(self.messages * self.late_rate)

    @property
    def lines(self) -> int:
        """Total lines in the stream: distinct messages plus re-sent duplicates."""
        return self.messages + self.duplicates


@dataclass(frozen=True)
class SimulationStats:
    """Shape of a plan's simulated population (agencies and users)."""

    agencies_by_level: dict[str, int]
    users_by_level: dict[str, int]
    agencies_by_tenant: dict[str, int]
    agencies_by_utc_offset: dict[int, int]
    median_agency_users: int
    largest_agencies: list[tuple[str, int]]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------- population


@dataclass(frozen=True)
class _Agency:
    agency_id: str
    level: str
    tenant: str
    utc_offset: int
    users: int


# seed, agencies, users, tenants: everything the population depends on
_PopulationKey = tuple[int, int, int, tuple[tuple[str, float], ...]]


def _population_key(plan: SimulationPlan) -> _PopulationKey:
    return plan.seed, plan.agencies, plan.users, plan.tenants


@dataclass(frozen=True)
class _Population:
    agencies: list[_Agency]
    user_ids: list[str]
    user_agency: list[int]
    user_weight: list[float]


def _level_counts(n: int) -> tuple[int, int, int]:
    """Agencies per level, about 15/25/60%, at least one of each when there are three."""
    federal = max(round(n * _LEVEL_COUNT_SHARE[0]), 1 if n >= 3 else 0)
    state = max(round(n * _LEVEL_COUNT_SHARE[1]), 1 if n >= 3 else 0)
    return federal, state, n - federal - state


def _largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integers proportional to ``weights`` that sum exactly to ``total``."""
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    counts = [math.floor(x) for x in exact]
    short = total - sum(counts)
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[:short]:
        counts[i] += 1
    return counts


def _agency_sizes(levels: tuple[int, int, int], users: int) -> list[int]:
    """Users per agency: a floor of a handful, the rest by a per-level power law."""
    n = sum(levels)
    floor = max(1, min(_MIN_AGENCY_USERS, users // n))
    weights: list[float] = []
    for count, share, alpha in zip(levels, _LEVEL_USER_SHARE, _LEVEL_ZIPF, strict=True):
        raw = [(rank + 1) ** -alpha for rank in range(count)]
        norm = sum(raw) or 1.0
        weights.extend(share * w / norm for w in raw)
    extra = _largest_remainder(weights, users - floor * n)
    return [floor + x for x in extra]


def _federal_id(index: int) -> str:
    if index < len(_FEDERAL_NAMES):
        kind = _FEDERAL_NAMES[index]
    else:
        kind = _FEDERAL_KINDS[index % len(_FEDERAL_KINDS)]
    return f"fed-{index + 1:04d}-{kind}"


def _federal_offset(rng: random.Random, index: int) -> int:
    if index < _FEDERAL_HQ:
        return _TZ_OFFSETS[0]
    return rng.choices(_TZ_OFFSETS, weights=_FEDERAL_TZ_SHARE)[0]


def _state_of(rng: random.Random, by_population: bool) -> tuple[str, int]:
    """A state for a local agency (by population) or a state agency (by sqrt population)."""
    weights = _STATE_BY_POPULATION if by_population else _STATE_BY_SQRT_POPULATION
    code, _, offset = rng.choices(_STATES, weights=weights)[0]
    return code, offset


def _agency_places(rng: random.Random, levels: tuple[int, int, int]) -> list[tuple[str, str, int]]:
    """(agency_id, level, utc_offset) for every agency, largest of each level first."""
    federal, state, local = levels
    places: list[tuple[str, str, int]] = []
    for i in range(federal):
        places.append((_federal_id(i), "federal", _federal_offset(rng, i)))
    for i in range(state):
        code, offset = _state_of(rng, by_population=False)
        places.append((f"state-{code}-{i + 1:04d}", "state", offset))
    for i in range(local):
        code, offset = _state_of(rng, by_population=True)
        places.append((f"local-{code}-{i + 1:04d}", "local", offset))
    return places


def _build_agencies(rng: random.Random, key: _PopulationKey) -> list[_Agency]:
    _, agencies, users, tenant_shares = key
    levels = _level_counts(agencies)
    sizes = _agency_sizes(levels, users)
    places = _agency_places(rng, levels)
    names = [name for name, _ in tenant_shares]
    shares = [share for _, share in tenant_shares]
    tenants = rng.choices(names, weights=shares, k=agencies)
    return [
        _Agency(agency_id, level, tenant, offset, size)
        for (agency_id, level, offset), tenant, size in zip(places, tenants, sizes, strict=True)
    ]


def _user_ids(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct random-looking user ids."""
    seen: set[str] = set()
    ids: list[str] = []
    while len(ids) < n:
        user_id = f"u-{rng.getrandbits(48):012x}"
        if user_id not in seen:
            seen.add(user_id)
            ids.append(user_id)
    return ids


def _build_population(key: _PopulationKey) -> _Population:
    """Agencies and users; they depend on the seed, the sizes and the tenants only."""
    rng = random.Random(f"govmeter-sim/{key[0]}/population")  # noqa: S311
    agencies = _build_agencies(rng, key)
    user_agency: list[int] = []
    user_weight: list[float] = []
    gauss, exp = rng.gauss, math.exp
    for index, agency in enumerate(agencies):
        activity = exp(gauss(0.0, _AGENCY_SIGMA))
        user_agency.extend([index] * agency.users)
        user_weight.extend([activity * exp(gauss(0.0, _USER_SIGMA)) for _ in range(agency.users)])
    return _Population(agencies, _user_ids(rng, len(user_agency)), user_agency, user_weight)


def population_stats(plan: SimulationPlan) -> SimulationStats:
    """Summarise the agencies and users a plan simulates (no events are generated)."""
    agencies = _build_population(_population_key(plan)).agencies
    by_level = {level: 0 for level in AGENCY_LEVELS}
    users_by_level = {level: 0 for level in AGENCY_LEVELS}
    by_tenant = {name: 0 for name, _ in plan.tenants}
    by_offset = {offset: 0 for offset in _TZ_OFFSETS}
    for agency in agencies:
        by_level[agency.level] += 1
        users_by_level[agency.level] += agency.users
        by_tenant[agency.tenant] += 1
        by_offset[agency.utc_offset] += 1
    ranked = sorted(agencies, key=lambda a: (-a.users, a.agency_id))
    sizes = sorted(a.users for a in agencies)
    return SimulationStats(
        agencies_by_level=by_level,
        users_by_level=users_by_level,
        agencies_by_tenant=by_tenant,
        agencies_by_utc_offset=by_offset,
        median_agency_users=sizes[len(sizes) // 2],
        largest_agencies=[(a.agency_id, a.users) for a in ranked[:10]],
    )


# --------------------------------------------------------------------------- calendar


def _hour_group_weights(plan: SimulationPlan, group_weight: Sequence[float]) -> list[list[float]]:
    """Traffic weight of each time-zone group in each UTC hour of the plan."""
    rng = random.Random(f"govmeter-sim/{plan.seed}/calendar")  # noqa: S311
    first_weekday = plan.start.weekday()
    table: list[list[float]] = []
    for hour in range(plan.days * 24):
        jitter = math.exp(rng.gauss(0.0, _HOUR_JITTER_SIGMA))
        row: list[float] = []
        for offset, weight in zip(_TZ_OFFSETS, group_weight, strict=True):
            local_day, local_hour = divmod(hour + offset, 24)
            weekday = (first_weekday + local_day) % 7
            row.append(weight * _DIURNAL[local_hour] * _WEEKDAY[weekday] * jitter)
        table.append(row)
    return table


def _hour_prefixes(plan: SimulationPlan) -> list[str]:
    """``YYYY-MM-DDTHH:`` for every UTC hour of the plan."""
    origin = datetime(plan.start.year, plan.start.month, plan.start.day, tzinfo=UTC)
    return [
        (origin + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:") for hour in range(plan.days * 24)
    ]


@lru_cache(maxsize=1)
def _clock_tables() -> tuple[list[str], list[str]]:
    """``MM:SS`` for every second of an hour and ``.mmmZ`` for every millisecond."""
    minutes_seconds = [f"{s // 60:02d}:{s % 60:02d}" for s in range(3600)]
    millis = [f".{ms:03d}Z" for ms in range(1000)]
    return minutes_seconds, millis


@lru_cache(maxsize=1)
def _token_tables() -> tuple[list[list[int]], list[list[int]]]:
    """Per model, log-normal tokens_in / tokens_out indexed by a ``_Z_BITS``-bit random."""
    size = 1 << _Z_BITS
    normal = NormalDist()
    z = [normal.inv_cdf((i + 0.5) / size) for i in range(size)]
    cap = _TOKEN_CAP // max(max(mult_in, mult_out) for _, _, mult_in, mult_out in FEATURES)

    def table(median: int, sigma: float) -> list[int]:
        return [min(cap, max(1, round(median * math.exp(sigma * x)))) for x in z]

    tokens_in = [table(m_in, _SIGMA_IN) for _, _, m_in, _ in MODELS]
    tokens_out = [table(m_out, _SIGMA_OUT) for _, _, _, m_out in MODELS]
    return tokens_in, tokens_out


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = 0.0
    out: list[float] = []
    for w in weights:
        total += w
        out.append(total)
    return out


# --------------------------------------------------------------------------- event stream


# JSON text before tokens_in, tokens_in table, its multiplier, tokens_out table, its multiplier,
# JSON text after tokens_out
_Combo = tuple[str, list[int], int, list[int], int, str]


_LINE_START = f'{{"schema_version":{SCHEMA_VERSION},"event_id":"'


def _members(fields: dict[str, str]) -> str:
    """``"key":"value",...`` exactly as orjson renders (and escapes) these members."""
    return orjson.dumps(fields).decode()[1:-1]


@lru_cache(maxsize=1)
def _combos() -> tuple[list[_Combo], list[float]]:
    """All (model, feature) pairs, their JSON fragments and their cumulative weights."""
    tables_in, tables_out = _token_tables()
    combos: list[_Combo] = []
    weights: list[float] = []
    for m, (model, m_share, _, _) in enumerate(MODELS):
        for feature, f_share, mult_in, mult_out in FEATURES:
            head = f',{_members({"model": model})},"tokens_in":'
            tail = f",{_members({'feature': feature})}}}"
            combos.append((head, tables_in[m], mult_in, tables_out[m], mult_out, tail))
            weights.append(m_share * f_share)
    return combos, _cumulative(weights)


def _agency_prefix(agency: _Agency) -> str:
    """The JSON members fixed for an agency, up to the opening quote of ``user_id``."""
    fields = {"tenant": agency.tenant, "agency_id": agency.agency_id, "agency_level": agency.level}
    return f',{_members(fields)},"user_id":"'


def _user_prefixes(pop: _Population) -> list[str]:
    """Per user, the fixed JSON members up to the opening quote of ``conversation_id``.

    User ids are generated as ``u-`` plus hex digits, so they need no JSON escaping.
    """
    agency_prefix = [_agency_prefix(agency) for agency in pop.agencies]
    return [
        f'{agency_prefix[a]}{u}","conversation_id":"'
        for u, a in zip(pop.user_ids, pop.user_agency, strict=True)
    ]


# members, probability of keeping the drawn slot, member used otherwise (Walker/Vose alias)
_Alias = tuple[list[int], list[float], list[int]]


def _alias(weights: Sequence[float], members: list[int]) -> _Alias:
    """O(1) weighted sampling of ``members``: draw a slot, keep it or take its alias."""
    n = len(weights)
    total = sum(weights)
    scaled = [w * n / total for w in weights] if total > 0 else []
    prob = [1.0] * n
    alias = list(members)
    small = [i for i, p in enumerate(scaled) if p < 1.0]
    large = [i for i, p in enumerate(scaled) if p >= 1.0]
    while small and large:
        lo, hi = small.pop(), large.pop()
        prob[lo], alias[lo] = scaled[lo], members[hi]
        scaled[hi] -= 1.0 - scaled[lo]
        (small if scaled[hi] < 1.0 else large).append(hi)
    return members, prob, alias


@dataclass
class _Stream:
    """Precomputed tables plus the mutable per-user and late-event state of one run."""

    user_prefix: list[str]
    group_alias: list[_Alias]
    hour_group_cum: list[list[float]]
    hour_counts: list[int]
    hour_prefix: list[str]
    conv_id: list[str]
    conv_left: list[int]
    conv_last: list[int]
    late_left: int
    remaining: int
    late_rng: random.Random = field(repr=False)


@dataclass(frozen=True)
class _UserTables:
    """Read-only per-user tables, shared by runs over the same population."""

    user_prefix: list[str]
    group_alias: list[_Alias]
    group_weight: list[float]


@lru_cache(maxsize=1)
def _user_tables(key: _PopulationKey) -> _UserTables:
    """JSON prefixes and per-time-zone samplers of a population (cached: ~0.2 s to build)."""
    pop = _build_population(key)
    groups: list[list[int]] = [[] for _ in _TZ_OFFSETS]
    for user, agency_index in enumerate(pop.user_agency):
        groups[_TZ_OFFSETS.index(pop.agencies[agency_index].utc_offset)].append(user)
    return _UserTables(
        user_prefix=_user_prefixes(pop),
        group_alias=[_alias([pop.user_weight[u] for u in members], members) for members in groups],
        group_weight=[sum(pop.user_weight[u] for u in members) for members in groups],
    )


def _prepare(plan: SimulationPlan) -> _Stream:
    tables = _user_tables(_population_key(plan))
    hour_weights = _hour_group_weights(plan, tables.group_weight)
    n_users = len(tables.user_prefix)
    return _Stream(
        user_prefix=tables.user_prefix,
        group_alias=tables.group_alias,
        hour_group_cum=[_cumulative(row) for row in hour_weights],
        hour_counts=_largest_remainder([sum(row) for row in hour_weights], plan.messages),
        hour_prefix=_hour_prefixes(plan),
        conv_id=[""] * n_users,
        conv_left=[0] * n_users,
        conv_last=[0] * n_users,
        late_left=plan.late_events,
        remaining=plan.messages,
        late_rng=random.Random(f"govmeter-sim/{plan.seed}/late"),  # noqa: S311
    )


def _slice_times(rng: random.Random, lo: int, hi: int, n: int) -> list[int]:
    """``n`` sorted uniform millisecond instants in ``[lo, hi)``."""
    rand, span = rng.random, hi - lo
    return sorted([lo + int(rand() * span) for _ in range(n)])


def _slice_users(st: _Stream, rng: random.Random, hour: int, n: int) -> list[int]:
    """Time-zone group of every event (by the hour's weights), then a user of that group."""
    group_cum = st.hour_group_cum[hour]
    groups = rng.choices(range(len(group_cum)), cum_weights=group_cum, k=n)
    tables, rand = st.group_alias, rng.random
    out: list[int] = []
    for g in groups:
        members, prob, alias = tables[g]
        x = rand() * len(members)
        i = int(x)
        out.append(members[i] if x - i < prob[i] else alias[i])
    return out


def _conversations(
    st: _Stream, rng: random.Random, times: list[int], users: list[int]
) -> list[str]:
    """Conversation id of every event; a conversation ends after a few messages or idling."""
    conv_id, conv_left, conv_last = st.conv_id, st.conv_left, st.conv_last
    rand, bits = rng.random, rng.getrandbits
    out: list[str] = []
    for t, u in zip(times, users, strict=True):
        if conv_left[u] <= 0 or t - conv_last[u] > _CONV_IDLE_MS:
            conv_id[u] = f"c-{bits(80):020x}"
            conv_left[u] = 1 + int(-math.log(1.0 - rand()) * _CONV_MEAN_EXTRA)
        conv_left[u] -= 1
        conv_last[u] = t
        out.append(conv_id[u])
    return out


def _occurred(st: _Stream, times: list[int]) -> list[int]:
    """``times``, with exactly the plan's share of events moved hours earlier (late)."""
    late_left, remaining = st.late_left, st.remaining
    st.remaining = remaining - len(times)
    if not late_left:
        return times
    rand = st.late_rng.random
    out = times.copy()
    for i, t in enumerate(times):
        if late_left and rand() * (remaining - i) < late_left:
            late_left -= 1
            low, high = min(_LATE_MIN_MS, t), min(_LATE_MAX_MS, t)
            out[i] = t - low - int(rand() * (high - low))
    st.late_left = late_left
    return out


def _render(
    st: _Stream,
    rng: random.Random,
    occurred: list[int],
    users: list[int],
    convs: list[str],
) -> list[bytes]:
    """The JSON lines, with a model, a feature and token counts drawn for every event.

    Fixed members come from orjson-rendered fragments and the per-event values are hex
    digits, digits and punctuation, so every line is byte-identical to ``orjson.dumps`` of
    the event (compact, keys in schema order); a template is much faster than a dict.
    """
    combos, combo_cum = _combos()
    picked = rng.choices(combos, cum_weights=combo_cum, k=len(users))
    mmss, millis = _clock_tables()
    prefixes, user_prefix = st.hour_prefix, st.user_prefix
    randbytes, bits, variant = rng.randbytes, rng.getrandbits, _UUID_VARIANT
    shift, mask, start = _Z_BITS, (1 << _Z_BITS) - 1, _LINE_START
    out: list[bytes] = []
    for t, u, conv, (head, t_in, m_in, t_out, m_out, tail) in zip(
        occurred, users, convs, picked, strict=True
    ):
        h = randbytes(16).hex()
        z = bits(2 * _Z_BITS)
        out.append(
            f"{start}{h[:8]}-{h[8:12]}-4{h[13:16]}"
            f'-{variant[h[16]]}{h[17:20]}-{h[20:]}","occurred_at":"{prefixes[t // _HOUR_MS]}'
            f'{mmss[t // 1000 % 3600]}{millis[t % 1000]}"{user_prefix[u]}{conv}"{head}'
            f'{t_in[z >> shift] * m_in},"tokens_out":{t_out[z & mask] * m_out}{tail}'.encode()
        )
    return out


def _slice_lines(
    st: _Stream, rng: random.Random, hour: int, part: tuple[int, int], n: int
) -> list[bytes]:
    """``n`` events inside one slice of one UTC hour, in time order (late events aside)."""
    index, parts = part
    base = hour * _HOUR_MS
    times = _slice_times(
        rng, base + index * _HOUR_MS // parts, base + (index + 1) * _HOUR_MS // parts, n
    )
    users = _slice_users(st, rng, hour, n)
    convs = _conversations(st, rng, times, users)
    return _render(st, rng, _occurred(st, times), users, convs)


def _unique_lines(plan: SimulationPlan) -> Iterator[bytes]:
    """Every distinct message once, hour by hour, each hour in slices of ``_SLICE_MAX``."""
    st = _prepare(plan)
    rng = random.Random(f"govmeter-sim/{plan.seed}/events")  # noqa: S311
    for hour, count in enumerate(st.hour_counts):
        parts = -(-count // _SLICE_MAX)
        for index in range(parts):
            n = count // parts + (1 if index < count % parts else 0)
            yield from _slice_lines(st, rng, hour, (index, parts), n)


def _with_duplicates(lines: Iterator[bytes], plan: SimulationPlan) -> Iterator[bytes]:
    """Re-send exactly ``plan.duplicates`` lines, each a few lines after its original."""
    rng = random.Random(f"govmeter-sim/{plan.seed}/duplicates")  # noqa: S311
    left, total = plan.duplicates, plan.messages
    pending: list[tuple[int, int, bytes]] = []
    for index, line in enumerate(lines):
        yield line
        if left and rng.random() * (total - index) < left:
            left -= 1
            heapq.heappush(pending, (index + rng.randint(1, _DUP_MAX_DELAY), index, line))
        while pending and pending[0][0] <= index:
            yield heapq.heappop(pending)[2]
    while pending:
        yield heapq.heappop(pending)[2]


def generate_events(plan: SimulationPlan) -> Iterator[bytes]:
    """Stream the plan's events: one compact JSON object per item, without a newline.

    Yields ``plan.messages`` distinct events plus ``plan.duplicates`` re-sent copies.
    """
    lines = _unique_lines(plan)
    return _with_duplicates(lines, plan) if plan.duplicates else lines


# --------------------------------------------------------------------------- output


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _batches(plan: SimulationPlan) -> Iterator[tuple[int, bytes]]:
    """(line count, newline-terminated JSONL bytes) in batches of ``_WRITE_BATCH`` lines."""
    lines = generate_events(plan)
    while batch := list(itertools.islice(lines, _WRITE_BATCH)):
        yield len(batch), b"\n".join(batch) + b"\n"


def _write_lines(plan: SimulationPlan, out: _Sink, progress: Callable[[int], None] | None) -> int:
    """Generate on this thread, compress and write on another (zlib and I/O drop the GIL).

    At most ``_WRITE_AHEAD`` batches wait for the writer, so memory stays bounded.
    """
    written, next_report = 0, _PROGRESS_EVERY
    pending: deque[Future[int]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsonl-writer") as writer:
        for count, data in _batches(plan):
            pending.append(writer.submit(out.write, data))
            if len(pending) > _WRITE_AHEAD:
                pending.popleft().result()
            written += count
            if progress is not None and written >= next_report:
                progress(written)
                next_report += _PROGRESS_EVERY
        while pending:
            pending.popleft().result()
    if progress is not None:
        progress(written)
    return written


def write_jsonl(
    plan: SimulationPlan, path: Path, progress: Callable[[int], None] | None = None
) -> int:
    """Write the plan's events as JSONL (gzip when ``path`` ends in ``.gz``); return lines.

    Gzip output uses compression level 1 and a zero header timestamp, so it is reproducible.
    ``progress`` is called with the running line count about every 100k lines and at the end.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw:
        if path.suffix != ".gz":
            return _write_lines(plan, raw, progress)
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
            return _write_lines(plan, gz, progress)
