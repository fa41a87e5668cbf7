"""What to simulate: the plan, the model and feature mix, the population summary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from schemas.events import TENANT

__all__ = ["FEATURES", "MODELS", "SimulationPlan", "SimulationStats"]

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
