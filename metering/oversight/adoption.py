"""Adoption figures for oversight reports, read from the rollups for one period.

Every figure is an aggregate over agencies, levels, models or days; nothing here
reads or returns a per-user figure (user ids stay inside the uniqExact states).
Distinct users over the period are merged from the daily states, never summed.
With an agency scope, every query is limited to that agency.

The figures are the period as corrected (the rollups, rebuilt by every applied
correction). `as_first_counted` shows the period as it was first counted instead: the
same queries over the committed counted events before any correction, as long as the
raw record holds the period's days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from metering.periods import Period
from schemas.events import AGENCY_LEVELS
from store.corrections.sql import first_counted_source

__all__ = ["Adoption", "UsageRow", "read_adoption"]


@dataclass(frozen=True)
class UsageRow:
    tenant: str
    key: str  # "" for a tenant total, else the level, agency_id, model or ISO day
    agency_level: str  # the agency's level on agency rows, else ""
    agencies: int
    active_users: int
    messages: int
    tokens_in: int
    tokens_out: int

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


@dataclass(frozen=True)
class Adoption:
    period: Period
    agency: str | None
    tenants: tuple[UsageRow, ...]
    levels: tuple[UsageRow, ...]
    agencies: tuple[UsageRow, ...]
    models: tuple[UsageRow, ...]
    days: tuple[UsageRow, ...]
    data_through: date | None  # the latest day with counted usage in the store

    def trend_days(self) -> list[date]:
        """The period's days up to the latest day with data: later days are not yet known."""
        last = self.period.last_day
        if self.data_through is not None and self.data_through < last:
            last = self.data_through
        return [
            date.fromordinal(n) for n in range(self.period.start.toordinal(), last.toordinal() + 1)
        ]


# Each query reads one tenant-period range of a rollup's sort key and groups it.
# Periods are whole months, so the per-tenant, per-level, per-agency and per-model
# queries read the monthly rollups (one users state per agency-month) and the daily
# trend reads the tenant-day rollup; see store/sql/0006_report_rollups.sql.
# `{agency:String}` is '' for every agency, else the one agency in scope (agency ids
# are never empty). Measures: agencies with usage, distinct users (merged states),
# messages and tokens.
_MEASURES: Final = """
       uniqExact(agency_id)  AS agencies,
       uniqExactMerge(users) AS active_users,
       sum(messages)         AS messages,
       sum(tokens_in)        AS tokens_in,
       sum(tokens_out)       AS tokens_out"""

_MONTHS: Final = """
WHERE month >= {start:Date} AND month < {end:Date}
  AND ({agency:String} = '' OR agency_id = {agency:String})"""

_DAYS: Final = """
WHERE day >= {start:Date} AND day < {end:Date}
  AND ({agency:String} = '' OR agency_id = {agency:String})"""

# Per tenant.
_TENANTS_SQL: Final = f"""
SELECT tenant, '' AS key, '' AS level,{_MEASURES}
FROM metering.agency_monthly_rollup{_MONTHS}
GROUP BY tenant
ORDER BY tenant
"""

# Per tenant and level of government.
_LEVELS_SQL: Final = f"""
SELECT tenant, agency_level AS key, '' AS level,{_MEASURES}
FROM metering.agency_monthly_rollup{_MONTHS}
GROUP BY tenant, agency_level
ORDER BY tenant, key
"""

# Per tenant and agency (the report ranks the top ones).
_AGENCIES_SQL: Final = f"""
SELECT tenant, agency_id AS key, agency_level AS level,{_MEASURES}
FROM metering.agency_monthly_rollup{_MONTHS}
GROUP BY tenant, agency_id, agency_level
ORDER BY tenant, messages DESC, key
"""

# Per tenant and model (same totals, another key).
_MODELS_SQL: Final = f"""
SELECT tenant, model AS key, '' AS level,{_MEASURES}
FROM metering.model_monthly_rollup{_MONTHS}
GROUP BY tenant, model
ORDER BY tenant, tokens_in + tokens_out DESC, key
"""

# Per tenant and UTC day: the trend over the period. All agencies: the tenant-day
# rollup; one agency: its own rows of the agency-day rollup.
_DAYS_SQL: Final = """
SELECT tenant, toString(day) AS key, '' AS level,
       uniqExactMerge(agencies) AS agencies,
       uniqExactMerge(users)    AS active_users,
       sum(messages)            AS messages,
       sum(tokens_in)           AS tokens_in,
       sum(tokens_out)          AS tokens_out
FROM metering.tenant_daily_rollup
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY tenant, day
ORDER BY tenant, day
"""

_AGENCY_DAYS_SQL: Final = f"""
SELECT tenant, toString(day) AS key, '' AS level,{_MEASURES}
FROM metering.agency_daily_rollup{_DAYS}
GROUP BY tenant, day
ORDER BY tenant, day
"""


# The latest day with counted usage, any tenant or agency: days after it are not
# zero usage, they are not known yet, so trend charts stop there.
_DATA_THROUGH_SQL: Final = "SELECT max(day) FROM metering.agency_daily_rollup"


_ROLLUPS: Final = (
    "agency_monthly_rollup",
    "model_monthly_rollup",
    "tenant_daily_rollup",
    "agency_daily_rollup",
)


def _first_counted(sql: str) -> str:
    """The query over the counted events before corrections instead of the rollups."""
    for rollup in _ROLLUPS:
        sql = sql.replace(f"FROM metering.{rollup}", f"FROM {first_counted_source(rollup)}")
    return sql


def read_adoption(
    client: Client, period: Period, agency: str | None, *, as_first_counted: bool = False
) -> Adoption:
    parameters = {"start": period.start, "end": period.end, "agency": agency or ""}

    def rows(sql: str) -> tuple[UsageRow, ...]:
        if as_first_counted:
            sql = _first_counted(sql)
        return tuple(_row(r) for r in client.query(sql, parameters=parameters).result_rows)

    levels = sorted(
        rows(_LEVELS_SQL),
        key=lambda r: (
            r.tenant,
            AGENCY_LEVELS.index(r.key) if r.key in AGENCY_LEVELS else 9,
            r.key,
        ),
    )
    latest = client.query(_DATA_THROUGH_SQL).result_rows[0][0]
    return Adoption(
        period=period,
        agency=agency,
        tenants=rows(_TENANTS_SQL),
        levels=tuple(levels),
        agencies=rows(_AGENCIES_SQL),
        models=rows(_MODELS_SQL),
        days=rows(_DAYS_SQL if agency is None else _AGENCY_DAYS_SQL),
        data_through=latest if isinstance(latest, date) and latest.year > 1970 else None,
    )


def _row(values: Sequence[Any]) -> UsageRow:
    return UsageRow(
        tenant=str(values[0]),
        key=str(values[1]),
        agency_level=str(values[2]),
        agencies=int(values[3]),
        active_users=int(values[4]),
        messages=int(values[5]),
        tokens_in=int(values[6]),
        tokens_out=int(values[7]),
    )
