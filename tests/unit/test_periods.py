"""Reporting periods: UTC months, federal fiscal years (Oct-Sep) and their quarters."""

from __future__ import annotations

from datetime import date

import pytest

from metering.periods import (
    PeriodError,
    add_months,
    fiscal_quarter,
    fiscal_year,
    fiscal_year_of,
    month,
)


def test_month_is_one_utc_calendar_month() -> None:
    period = month("2026-10")
    assert (period.kind, period.label) == ("month", "2026-10")
    assert (period.start, period.end, period.last_day) == (
        date(2026, 10, 1),
        date(2026, 11, 1),
        date(2026, 10, 31),
    )
    assert period.months() == [date(2026, 10, 1)]
    assert month("2028-02").last_day == date(2028, 2, 29)
    assert month("2026-12").end == date(2027, 1, 1)


def test_fiscal_year_2027_runs_october_2026_to_september_2027() -> None:
    for text in ("2027", "FY2027", "fy2027"):
        period = fiscal_year(text)
        assert period.label == "FY2027"
        assert (period.start, period.last_day) == (date(2026, 10, 1), date(2027, 9, 30))
        assert len(period.months()) == 12
        assert period.fiscal_year_start == date(2026, 10, 1)


@pytest.mark.parametrize(
    ("text", "start", "last_day"),
    [
        ("2027Q1", date(2026, 10, 1), date(2026, 12, 31)),
        ("FY2027Q2", date(2027, 1, 1), date(2027, 3, 31)),
        ("fy2027-q3", date(2027, 4, 1), date(2027, 6, 30)),
        ("2027Q4", date(2027, 7, 1), date(2027, 9, 30)),
    ],
)
def test_fiscal_quarters(text: str, start: date, last_day: date) -> None:
    period = fiscal_quarter(text)
    assert period.kind == "fiscal_quarter"
    assert (period.start, period.last_day) == (start, last_day)
    assert len(period.months()) == 3
    assert period.fiscal_year_start == date(2026, 10, 1)


def test_fiscal_year_of_a_day() -> None:
    assert fiscal_year_of(date(2026, 9, 30)) == 2026
    assert fiscal_year_of(date(2026, 10, 1)) == 2027
    assert fiscal_year_of(date(2027, 9, 30)) == 2027
    assert month("2027-01").fiscal_year_start == date(2026, 10, 1)
    assert month("2026-09").fiscal_year_start == date(2025, 10, 1)


def test_add_months_crosses_years() -> None:
    assert add_months(date(2026, 11, 1), 2) == date(2027, 1, 1)
    assert add_months(date(2027, 1, 1), -4) == date(2026, 9, 1)


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (month, "2026-13"),
        (month, "2026-1"),
        (month, "2026/10"),
        (month, "1969-12"),
        (fiscal_year, "27"),
        (fiscal_year, "FY2027Q1"),
        (fiscal_quarter, "2027Q5"),
        (fiscal_quarter, "2027"),
    ],
)
def test_invalid_periods_are_refused_with_an_example(parse: object, text: str) -> None:
    with pytest.raises(PeriodError, match=repr(text).replace("\\", "\\\\")):
        parse(text)  # type: ignore[operator]
