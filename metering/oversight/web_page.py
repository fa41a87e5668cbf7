"""The live oversight page of `metering serve`: the adoption report's page with period
and agency pickers and the viewer's sign-in state around it, and the sign-in page.
Pure: no I/O.

The pickers are a plain GET form (no scripts): a fiscal year, and either the whole
fiscal year or one of its months (October first, as the fiscal year runs), and for an
oversight user an agency. Every control has a visible label and the keyboard reaches
each in page order; the report itself comes from `render_html` unchanged. The
published aggregate (`--public`, for visitors who have not signed in) is the tenants'
headline figures and levels of government only, without the agency picker.
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
from metering.oversight.web_session import IDLE_SECONDS, MAX_SECONDS
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
    "render_sign_in",
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
    agencies: Sequence[str]  # agency picker choices (an oversight user's pages only)
    signed_in: str | None = None  # the ClickHouse user signed in; None: the aggregate
    locked_agency: str | None = None  # the agency an agency user is limited to
    session: bool = False  # signed in with the form (a session to end), not HTTP Basic


def render_page(report: PublishedReport, context: PageContext) -> str:
    scope = f"agency {context.agency}" if context.agency else "all agencies"
    if context.signed_in is not None:
        scope += f" (signed in as {context.signed_in})"
    else:
        scope += ": the published aggregate, tenants and levels of government"
    title = f"Adoption report {report.period.label}"
    if context.agency:
        title += f", agency {context.agency}"
    body = report_body(
        report,
        lambda agency: agency_path(agency, context.choice),
        aggregate_only=context.signed_in is None,
    )
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
    elif context.signed_in is None:
        action, agency_control = "/", ""
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
    back = (
        f' <a href="/?{choice.query()}">All agencies</a>'
        if context.agency and context.locked_agency is None and context.signed_in is not None
        else ""
    )
    sign_out = ""
    if context.signed_in is None:
        who = 'Published aggregate. <a href="/login">Sign in</a> to see agencies.'
    elif context.session:
        who = f"Signed in as {escape(context.signed_in)}."
        sign_out = (
            '<form method="post" action="/logout"><button type="submit">Sign out</button></form>'
        )
    else:
        who = f"Signed in as {escape(context.signed_in)} (HTTP Basic)."
    return f"""<nav class="controls" aria-label="Report period and agency">
<form method="get" action="{escape(action)}">
<label for="pick-fy">Fiscal year<select id="pick-fy" name="fy">{fy_options}</select></label>
<label for="pick-month">Month<select id="pick-month" name="month">{month_options}</select></label>
{agency_control}
<button type="submit">Show report</button>
</form>
<div class="who"><p>{who}{back}</p>{sign_out}</div>
</nav>"""


def render_message(title: str, message: str, *, sign_in: bool = False) -> str:
    """A page saying why there is no report (bad request, refused login, store down)."""
    link = (
        ' <a href="/login">Sign in again</a>.'
        if sign_in
        else ' <a href="/">Back to the oversight page</a>.'
    )
    return page_document(
        title=title,
        header_html=f"<h1>{escape(title)}</h1>",
        main_html=f"<p>{escape(message)}{link}</p>",
    )


def render_sign_in(
    next_path: str = "/",
    *,
    problem: str | None = None,
    user: str = "",
    public: bool = False,
    signed_in: str | None = None,
) -> str:
    """The sign-in form: a ClickHouse user and its password, posted to /login.

    `next_path` is where a sign-in goes (a local path, checked by the caller); `problem`
    says why the last attempt was refused; `public`: the aggregate needs no sign-in."""
    notes = []
    if problem is not None:
        notes.append(f'<p class="problem" role="alert">{escape(problem)}</p>')
    if signed_in is not None:
        notes.append(
            f"<p>You are signed in as {escape(signed_in)}. Signing in again replaces that "
            'session. <a href="/">Back to the oversight page</a>.</p>'
        )
    aggregate = (
        '<p>The <a href="/">published aggregate</a> (tenants and levels of government, '
        "small cells suppressed) needs no sign-in.</p>"
        if public
        else ""
    )
    form = f"""<form class="sign-in" method="post" action="/login">
<input type="hidden" name="next" value="{escape(next_path)}">
<label for="sign-in-user">ClickHouse user</label>
<input id="sign-in-user" name="user" value="{escape(user)}" autocomplete="username"
 autocapitalize="none" spellcheck="false" required aria-describedby="sign-in-who">
<label for="sign-in-password">Password</label>
<input id="sign-in-password" name="password" type="password"
 autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>"""
    main = f"""{"".join(notes)}
<p id="sign-in-who">An agency signs in with its ClickHouse user (<code>govmeter_agency_...</code>)
and sees its own agency; the reporter, or an oversight user this server names, sees every
agency. The password is checked by signing in to ClickHouse as that user, and every
page is then read as that user.</p>
{form}
<p class="note">A session ends after {IDLE_SECONDS // 60} minutes without a page, \
{MAX_SECONDS // 3600} hours after sign-in, when you sign out, or when the server restarts.</p>
{aggregate}"""
    return page_document(
        title="Sign in: oversight page",
        header_html=(
            "<h1>Sign in</h1>\n<p>The adoption report of the usage-metering pipeline, read "
            "live from the store.</p>"
        ),
        main_html=main,
    )
