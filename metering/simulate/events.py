"""The event stream: hour by hour, slice by slice, one JSON line per event."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

from metering.simulate.plan import FEATURES, MODELS, SimulationPlan
from metering.simulate.population import (
    _TZ_OFFSETS,
    _Agency,
    _build_population,
    _largest_remainder,
    _Population,
    _population_key,
    _PopulationKey,
)
from metering.simulate.working_hours import (
    _Z_BITS,
    _clock_tables,
    _cumulative,
    _hour_group_weights,
    _hour_prefixes,
    _token_tables,
)
from schemas.events import SCHEMA_VERSION

__all__ = ["generate_events"]

_HOUR_MS = 3_600_000
_SLICE_MAX = 8192
_DUP_MAX_DELAY = 200
_LATE_MIN_MS = 1 * _HOUR_MS
_LATE_MAX_MS = 6 * _HOUR_MS
_CONV_IDLE_MS = 8 * _HOUR_MS
_CONV_MEAN_EXTRA = 4.0

# UUID version 4: the version nibble is "4" and the variant nibble is 8, 9, a or b (RFC 9562)
_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


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
