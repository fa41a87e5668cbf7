"""Traffic by UTC hour and time zone, time-stamp text and token-count tables."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from statistics import NormalDist

from metering.simulate.plan import FEATURES, MODELS, SimulationPlan
from metering.simulate.population import _TZ_OFFSETS

__all__: list[str] = []  # private helpers of the other modules

_TOKEN_CAP = 1_000_000
_SIGMA_IN = 0.95
_SIGMA_OUT = 0.75
_Z_BITS = 14

_HOUR_JITTER_SIGMA = 0.08

# relative traffic by local hour of day, and by local weekday (Monday first)
_DIURNAL: tuple[float, ...] = (
    0.03, 0.02, 0.02, 0.02, 0.03, 0.06, 0.15, 0.35, 0.70, 0.95, 1.00, 1.00,
    0.85, 0.95, 1.00, 0.95, 0.85, 0.60, 0.35, 0.25, 0.20, 0.15, 0.10, 0.06,
)  # fmt: skip
_WEEKDAY: tuple[float, ...] = (1.00, 1.02, 1.00, 0.95, 0.82, 0.10, 0.08)


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
