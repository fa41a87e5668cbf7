"""Reporting periods: UTC calendar months and US federal fiscal years and quarters.

The federal fiscal year runs from October 1 to September 30 and is named after the
calendar year in which it ends: FY2027 = 2026-10-01 .. 2027-09-30. Its quarters are
Q1 = October to December, Q2 = January to March, Q3 = April to June, Q4 = July to
September. Every period is a whole number of UTC calendar months, `start` inclusive
and `end` exclusive, so it maps onto `metering.agency_monthly` rows exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final, Literal

from schemas.errors import InputError

__all__ = [
    "Period",
    "PeriodError",
    "PeriodKind",
    "add_months",
    "fiscal_quarter",
    "fiscal_year",
    "fiscal_year_of",
    "fiscal_year_start",
    "month",
]

PeriodKind = Literal["month", "fiscal_quarter", "fiscal_year"]

# ClickHouse `Date` covers 1970-01-01 .. 2149-06-06; keep every period inside it.
_FIRST_YEAR: Final = 1971
_LAST_YEAR: Final = 2148

_MONTH: Final = re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})")
_FISCAL_YEAR: Final = re.compile(r"(?:FY)?(?P<year>\d{4})", re.IGNORECASE)
_FISCAL_QUARTER: Final = re.compile(r"(?:FY)?(?P<year>\d{4})-?Q(?P<quarter>[1-4])", re.IGNORECASE)


class PeriodError(InputError):
    """A period argument that is not a valid month, fiscal year or fiscal quarter."""


@dataclass(frozen=True)
class Period:
    kind: PeriodKind
    label: str  # "2026-10", "FY2027Q1", "FY2027": stable, used as the billing run key
    start: date  # first day, inclusive
    end: date  # first day after the period, exclusive

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def fiscal_year_start(self) -> date:
        """October 1 of the fiscal year the period lies in (a period never spans two)."""
        return fiscal_year_start(fiscal_year_of(self.start))

    def months(self) -> list[date]:
        """The first day of every month in the period, in order."""
        months = []
        current = self.start
        while current < self.end:
            months.append(current)
            current = add_months(current, 1)
        return months

    def describe(self) -> str:
        return f"{self.label} (UTC {self.start.isoformat()} .. {self.last_day.isoformat()})"


def add_months(first_day: date, count: int) -> date:
    index = first_day.year * 12 + (first_day.month - 1) + count
    return date(index // 12, index % 12 + 1, 1)


def fiscal_year_of(day: date) -> int:
    """The federal fiscal year containing `day` (October starts the next year's FY)."""
    return day.year + 1 if day.month >= 10 else day.year


def fiscal_year_start(year: int) -> date:
    return date(year - 1, 10, 1)


def _check_year(year: int, text: str) -> None:
    if not _FIRST_YEAR <= year <= _LAST_YEAR:
        raise PeriodError(f"{text!r}: year must be between {_FIRST_YEAR} and {_LAST_YEAR}")


def month(text: str) -> Period:
    """`YYYY-MM`: one UTC calendar month."""
    match = _MONTH.fullmatch(text.strip())
    if match is None:
        raise PeriodError(f"{text!r} is not a month; write YYYY-MM, e.g. 2026-10")
    year, number = int(match["year"]), int(match["month"])
    _check_year(year, text)
    if not 1 <= number <= 12:
        raise PeriodError(f"{text!r}: month must be 01 to 12")
    start = date(year, number, 1)
    return Period("month", f"{year:04d}-{number:02d}", start, add_months(start, 1))


def fiscal_year(text: str) -> Period:
    """`2027` or `FY2027`: October 1, 2026 to September 30, 2027."""
    match = _FISCAL_YEAR.fullmatch(text.strip())
    if match is None:
        raise PeriodError(f"{text!r} is not a fiscal year; write e.g. 2027 or FY2027")
    year = int(match["year"])
    _check_year(year, text)
    _check_year(year - 1, text)
    start = fiscal_year_start(year)
    return Period("fiscal_year", f"FY{year:04d}", start, add_months(start, 12))


def fiscal_quarter(text: str) -> Period:
    """`2027Q1` or `FY2027Q1`: Q1 is October to December of the previous calendar year."""
    match = _FISCAL_QUARTER.fullmatch(text.strip())
    if match is None:
        raise PeriodError(f"{text!r} is not a fiscal quarter; write e.g. 2027Q1 or FY2027Q1")
    year, quarter = int(match["year"]), int(match["quarter"])
    _check_year(year, text)
    _check_year(year - 1, text)
    start = add_months(fiscal_year_start(year), 3 * (quarter - 1))
    return Period("fiscal_quarter", f"FY{year:04d}Q{quarter}", start, add_months(start, 3))
