"""The live oversight page of `metering serve`: the adoption report's page with period
and agency pickers and the viewer's login state around it. Pure: no I/O.

The pickers are a plain GET form (no scripts): a fiscal year, and either the whole
fiscal year or one of its months (October first, as the fiscal year runs), and on the
public page an agency. Every control has a visible label and the keyboard reaches each
in page order; the report itself comes from `render_html` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from html import escape
from typing import Final
from urllib.parse import quote, urlencode

from metering.oversight.render_html import page_document, report_body, report_header
from metering.oversight.suppression import PublishedReport
from metering.periods import (
    Period,
    PeriodError,
    fiscal_year,
    fiscal_year_of,
    month,
)

__all__ = [
    "FISCAL_MONTHS",
    "PageContext",
    "PeriodChoice",
    "agency_path",
    "default_choice",
    "parse_choice",
    "render_message",
    "render_page",
]

# Calendar month numbers in fiscal-year order.
FISCAL_MONTHS: Final = (10, 11, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9)
_MONTH_NAMES: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class PeriodChoice:
    """What the pickers chose: a fiscal year, and one of its months or all of it."""

    fiscal_year: int
    month: int | None = None  # a calendar month number; None: the whole fiscal year

    @property
    def period(self) -> Period:
        if self.month is None:
            return fiscal_year(str(self.fiscal_year))
        year = self.fiscal_year - 1 if self.month >= 10 else self.fiscal_year
        return month(f"{year:04d}-{self.month:02d}")

    def query(self) -> str:
        return urlencode(
            {"fy": str(self.fiscal_year), "month": "all" if self.month is None else str(self.month)}
        )


def default_choice(latest_month: date | None, today: date) -> PeriodChoice:
    """The latest month with counted usage, else the current month."""
    day = latest_month or today
    return PeriodChoice(fiscal_year_of(day), day.month)


def parse_choice(fy: str | None, month_text: str | None, default: PeriodChoice) -> PeriodChoice:
    """The `fy` and `month` query parameters; PeriodError names a bad one."""
    if not fy and not month_text:
        return default
    year = default.fiscal_year
    if fy:
        if not fy.isdigit() or len(fy) != 4:
            raise PeriodError(f"fy={fy!r} is not a fiscal year; write e.g. fy=2027")
        year = int(fy)
    number: int | None = default.month if not fy else None
    if month_text and month_text != "all":
        if not month_text.isdigit() or not 1 <= int(month_text) <= 12:
            raise PeriodError(f"month={month_text!r} must be 1 to 12 or all")
        number = int(month_text)
    elif month_text == "all":
        number = None
    choice = PeriodChoice(year, number)
    choice.period  # noqa: B018 (validates the year range)
    return choice


def agency_path(agency: str, choice: PeriodChoice | None = None) -> str:
    path = "/agency/" + quote(agency, safe="")
    return path if choice is None else f"{path}?{choice.query()}"


@dataclass(frozen=True)
class PageContext:
    """Everything around the report: who reads, what was chosen, what may be chosen."""

    choice: PeriodChoice
    fiscal_years: Sequence[int]
    agency: str | None  # the agency whose page this is, or None for all agencies
    agencies: Sequence[str]  # agency picker choices (the public page only)
    agency_user: str | None = None  # the logged-in agency user, if any
    locked_agency: str | None = None  # the agency an agency user is limited to


def render_page(report: PublishedReport, context: PageContext) -> str:
    scope = f"agency {context.agency}" if context.agency else "all agencies"
    if context.agency_user is not None:
        scope += f" (signed in as {context.agency_user})"
    title = f"Adoption report {report.period.label}"
    if context.agency:
        title += f", agency {context.agency}"
    body = report_body(report, lambda agency: agency_path(agency, context.choice))
    return page_document(
        title=title,
        header_html=report_header(report, scope),
        nav_html=_controls(context),
        main_html=body,
    )


def _controls(context: PageContext) -> str:
    choice = context.choice
    years = sorted({*context.fiscal_years, choice.fiscal_year})
    fy_options = "".join(
        f'<option value="{year}"{" selected" if year == choice.fiscal_year else ""}>FY{year}'
        "</option>"
        for year in years
    )
    month_options = '<option value="all"{}>Whole fiscal year</option>'.format(
        " selected" if choice.month is None else ""
    ) + "".join(
        f'<option value="{number}"{" selected" if number == choice.month else ""}>'
        f"{_MONTH_NAMES[number - 1]}</option>"
        for number in FISCAL_MONTHS
    )
    if context.locked_agency is not None:
        action = agency_path(context.locked_agency)
        agency_control = (
            f'<p class="agency-fixed">Agency: <strong>{escape(context.locked_agency)}</strong></p>'
        )
    else:
        action = "/"
        agency_options = '<option value="">All agencies</option>' + "".join(
            f'<option value="{escape(agency)}"{" selected" if agency == context.agency else ""}>'
            f"{escape(agency)}</option>"
            for agency in sorted({*context.agencies, *([context.agency] if context.agency else [])})
        )
        agency_control = (
            '<label for="pick-agency">Agency'
            f'<select id="pick-agency" name="agency">{agency_options}</select></label>'
        )
    if context.agency_user is not None:
        who = f"Signed in as {escape(context.agency_user)}. Close the browser to sign out."
    else:
        who = 'Public page. <a href="/login">Agency sign-in</a>'
    back = (
        f' <a href="/?{choice.query()}">All agencies</a>'
        if context.agency and context.locked_agency is None
        else ""
    )
    return f"""<nav class="controls" aria-label="Report period and agency">
<form method="get" action="{escape(action)}">
<label for="pick-fy">Fiscal year<select id="pick-fy" name="fy">{fy_options}</select></label>
<label for="pick-month">Month<select id="pick-month" name="month">{month_options}</select></label>
{agency_control}
<button type="submit">Show report</button>
<p class="who">{who}{back}</p>
</form>
</nav>"""


def render_message(title: str, message: str, *, sign_in: bool = False) -> str:
    """A page saying why there is no report (bad request, refused login, store down)."""
    link = (
        ' <a href="/login">Sign in again</a> or <a href="/">open the public page</a>.'
        if sign_in
        else ' <a href="/">Open the public page</a>.'
    )
    return page_document(
        title=title,
        header_html=f"<h1>{escape(title)}</h1>",
        main_html=f"<p>{escape(message)}{link}</p>",
    )
