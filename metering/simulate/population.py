"""Agencies and users: levels, sizes, time zones and tenants, seeded."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from metering.simulate.plan import SimulationPlan, SimulationStats
from schemas.events import AGENCY_LEVELS

__all__ = ["population_stats"]

_LEVEL_COUNT_SHARE = (0.15, 0.25, 0.60)
_LEVEL_USER_SHARE = (0.55, 0.27, 0.18)
_LEVEL_ZIPF = (1.1, 0.9, 1.0)
_MIN_AGENCY_USERS = 3
_USER_SIGMA = 1.2
_AGENCY_SIGMA = 0.35

_TZ_OFFSETS: tuple[int, ...] = (-5, -6, -7, -8, -9, -10)
_FEDERAL_TZ_SHARE: tuple[float, ...] = (0.72, 0.10, 0.06, 0.09, 0.015, 0.015)
_FEDERAL_HQ = 24  # the largest federal departments are headquartered in Washington, DC

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
