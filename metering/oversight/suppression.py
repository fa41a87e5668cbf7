"""Small-cell suppression: what an oversight report may publish.

Rules, with N = --min-cell-users (default 10):

1. Primary. A row (a tenant, level, agency, model or day) whose active_users is
   below N has its active_users, messages, tokens_in and tokens_out suppressed:
   `null` with `"suppressed": true` in JSON, "<N" (users) and "s" (the other
   measures) in tables. Its key (tenant, level, agency id, model, day) and its count
   of agencies stay visible: they describe agencies, not people.
2. Complementary. Levels, agencies, models and days each split a tenant's published
   total; subtracting the published rows from it would reveal a lone suppressed
   row. So within each such split, once any row is suppressed, further rows are
   suppressed, fewest active users first, until the suppressed rows are at least
   two and together count at least N active users (added up per row), or all rows
   are suppressed. These rows are marked "c" in tables, `"suppression":
   "complementary"` in JSON.
3. Tenant totals follow rule 1 only (no published figure contains two tenants).
4. Top agencies are ranked among agencies that are not suppressed; the report says
   how many agencies were left out of the ranking for this reason.
5. Shares (a model's or a level's share of tokens or messages) are given only for
   rows that are not suppressed.
No per-user figure is ever computed. Rules 1 to 5 hold within one table; they do
not guard against combining several tables, periods or agency scopes.
Billing statements are exempt: they are not published.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

from metering.oversight.adoption import Adoption, UsageRow
from metering.periods import Period

__all__ = [
    "DEFAULT_MIN_CELL_USERS",
    "Cell",
    "PublishedReport",
    "PublishedTenant",
    "Suppression",
    "publish",
    "suppress",
]

DEFAULT_MIN_CELL_USERS: Final = 10

Suppression = Literal["", "primary", "complementary"]


@dataclass(frozen=True)
class Cell:
    """A row as published: its measures are None when suppressed."""

    row: UsageRow
    suppression: Suppression = ""

    @property
    def suppressed(self) -> bool:
        return self.suppression != ""

    def _shown(self, value: int) -> int | None:
        return None if self.suppressed else value

    @property
    def active_users(self) -> int | None:
        return self._shown(self.row.active_users)

    @property
    def messages(self) -> int | None:
        return self._shown(self.row.messages)

    @property
    def tokens_in(self) -> int | None:
        return self._shown(self.row.tokens_in)

    @property
    def tokens_out(self) -> int | None:
        return self._shown(self.row.tokens_out)

    @property
    def tokens(self) -> int | None:
        return self._shown(self.row.tokens)


def suppress(rows: Sequence[UsageRow], min_users: int, *, splits_total: bool) -> list[Cell]:
    """Apply rule 1, and rule 2 per tenant when the rows split the tenant total."""
    marks: dict[int, Suppression] = {
        i: "primary" for i, row in enumerate(rows) if row.active_users < min_users
    }
    if splits_total:
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_tenant[row.tenant].append(i)
        for indexes in by_tenant.values():
            _complement([i for i in indexes if i in marks], indexes, rows, marks, min_users)
    return [Cell(row, marks.get(i, "")) for i, row in enumerate(rows)]


def _complement(
    hidden: list[int],
    group: list[int],
    rows: Sequence[UsageRow],
    marks: dict[int, Suppression],
    min_users: int,
) -> None:
    if not hidden:
        return
    candidates = sorted(
        (i for i in group if i not in marks),
        key=lambda i: (rows[i].active_users, rows[i].messages, rows[i].key),
    )
    hidden_users = sum(rows[i].active_users for i in hidden)
    count = len(hidden)
    for i in candidates:
        if count >= 2 and hidden_users >= min_users:
            return
        marks[i] = "complementary"
        count += 1
        hidden_users += rows[i].active_users


@dataclass(frozen=True)
class PublishedTenant:
    total: Cell
    levels: tuple[Cell, ...]
    top_agencies: tuple[Cell, ...]
    agencies_not_ranked: int  # suppressed agencies, left out of the ranking
    models: tuple[Cell, ...]
    days: tuple[Cell, ...]

    @property
    def tenant(self) -> str:
        return self.total.row.tenant


@dataclass(frozen=True)
class PublishedReport:
    period: Period
    agency: str | None
    min_cell_users: int
    top: int
    tenants: tuple[PublishedTenant, ...]
    trend_days: tuple[date, ...]  # the period's days up to the latest day with data


def publish(adoption: Adoption, min_cell_users: int, top: int) -> PublishedReport:
    totals = suppress(adoption.tenants, min_cell_users, splits_total=False)
    levels = suppress(adoption.levels, min_cell_users, splits_total=True)
    agencies = suppress(adoption.agencies, min_cell_users, splits_total=True)
    models = suppress(adoption.models, min_cell_users, splits_total=True)
    days = suppress(adoption.days, min_cell_users, splits_total=True)
    tenants = []
    for total in totals:
        tenant = total.row.tenant
        own_agencies = _of(tenant, agencies)
        ranked = sorted(
            (c for c in own_agencies if not c.suppressed),
            key=lambda c: (-c.row.messages, c.row.key),
        )
        tenants.append(
            PublishedTenant(
                total=total,
                levels=tuple(_of(tenant, levels)),
                top_agencies=tuple(ranked[:top]),
                agencies_not_ranked=sum(1 for c in own_agencies if c.suppressed),
                models=tuple(_of(tenant, models)),
                days=tuple(_of(tenant, days)),
            )
        )
    return PublishedReport(
        period=adoption.period,
        agency=adoption.agency,
        min_cell_users=min_cell_users,
        top=top,
        tenants=tuple(tenants),
        trend_days=tuple(adoption.trend_days()),
    )


def _of(tenant: str, cells: Iterable[Cell]) -> list[Cell]:
    return [c for c in cells if c.row.tenant == tenant]
