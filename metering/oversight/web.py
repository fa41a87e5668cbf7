"""`metering serve`: the adoption report as a live web page (aiohttp).

Routes:
  GET /                   all agencies (public page; an agency user goes to its own page)
  GET /agency/{id}        one agency's page
  GET /login              HTTP Basic sign-in for agency users, then back to /
  GET /healthz            "ok" when the store answers as the reporter
Query parameters `fy` (a fiscal year, e.g. 2027) and `month` (1 to 12, or `all` for the
whole fiscal year) pick the period; `agency` on / goes to that agency's page.

Every page is read as the viewer (see web_store): the public page as the read-only
reporter, an agency user's page as that ClickHouse user, whose row filters limit every
query to its agency. Small-cell suppression (`suppression.publish`) applies to every page
with the server's `--min-cell-users`; no query parameter changes it. The store's client
is blocking, so each page's queries run in a worker thread.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from aiohttp import BasicAuth, web
from clickhouse_connect.driver.client import Client

from metering.oversight.adoption import read_adoption
from metering.oversight.suppression import publish
from metering.oversight.web_page import (
    PageContext,
    PeriodChoice,
    agency_path,
    default_choice,
    parse_choice,
    render_message,
    render_page,
)
from metering.oversight.web_store import (
    LoginRefused,
    StoreEndpoint,
    Viewer,
    WebStoreError,
    agency_of_user,
    data_months,
    period_agencies,
)
from metering.periods import PeriodError, fiscal_year_of
from schemas.events import AGENCY_ID

__all__ = ["ServeOptions", "build_app"]

log = logging.getLogger(__name__)

_REALM: Final = 'Basic realm="govmeter agency users", charset="UTF-8"'
# No scripts, no outside requests: the page is inline CSS and inline SVG.
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ServeOptions:
    min_cell_users: int = 10
    top: int = 10


class _HttpProblem(Exception):
    def __init__(self, status: int, title: str, message: str, *, challenge: bool = False) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.challenge = status, title, message, challenge


_ENDPOINT: Final = web.AppKey("endpoint", StoreEndpoint)
_OPTIONS: Final = web.AppKey("options", ServeOptions)


def build_app(endpoint: StoreEndpoint, options: ServeOptions) -> web.Application:
    app = web.Application(middlewares=[_problems])
    app[_ENDPOINT] = endpoint
    app[_OPTIONS] = options
    app.router.add_get("/", _index)
    app.router.add_get("/agency/{agency}", _agency_page)
    app.router.add_get("/login", _login)
    app.router.add_get("/healthz", _healthz)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except _HttpProblem as problem:
        response = web.Response(
            status=problem.status,
            text=render_message(problem.title, problem.message, sign_in=problem.challenge),
            content_type="text/html",
            charset="utf-8",
        )
        if problem.challenge:
            response.headers["WWW-Authenticate"] = _REALM
    except WebStoreError as error:
        log.warning("oversight page: %s", error)
        response = web.Response(
            status=503,
            text=render_message("The store cannot be read", str(error)),
            content_type="text/html",
            charset="utf-8",
        )
    response.headers.update(_SECURITY_HEADERS)
    return response


def _viewer(request: web.Request) -> Viewer:
    """The reporter without credentials; an agency user with them (checked on connect)."""
    endpoint = request.app[_ENDPOINT]
    header = request.headers.get("Authorization")
    if header is None:
        return endpoint.reporter
    try:
        auth = BasicAuth.decode(header, encoding="utf-8")
    except (ValueError, binascii.Error):
        raise _HttpProblem(
            401, "Sign-in refused", "The Authorization header is not HTTP Basic.", challenge=True
        ) from None
    agency = agency_of_user(auth.login)
    if agency is None:
        raise _HttpProblem(
            401,
            "Sign-in refused",
            "Sign in with an agency's ClickHouse user (govmeter_agency_...) and its password; "
            "the public page needs no sign-in.",
            challenge=True,
        )
    return Viewer(auth.login, auth.password, agency)


async def _connect(request: web.Request, viewer: Viewer) -> Client:
    try:
        return await asyncio.to_thread(request.app[_ENDPOINT].connect, viewer)
    except LoginRefused:
        raise _HttpProblem(
            401,
            "Sign-in refused",
            f"ClickHouse did not accept the password of {viewer.user}.",
            challenge=True,
        ) from None


async def _index(request: web.Request) -> web.StreamResponse:
    viewer = _viewer(request)
    agency = request.query.get("agency", "")
    if viewer.agency is not None or agency:
        target = viewer.agency or _agency_id(agency)
        query = request.query_string
        kept = "&".join(p for p in query.split("&") if p and not p.startswith("agency="))
        raise web.HTTPSeeOther(agency_path(target) + (f"?{kept}" if kept else ""))
    return await _page(request, viewer, None)


async def _agency_page(request: web.Request) -> web.StreamResponse:
    viewer = _viewer(request)
    agency = _agency_id(request.match_info["agency"])
    if viewer.agency is not None and agency != viewer.agency:
        raise _HttpProblem(
            403,
            "Another agency's page",
            f"You are signed in as agency {viewer.agency}; you can see its page only.",
        )
    return await _page(request, viewer, agency)


def _agency_id(text: str) -> str:
    if AGENCY_ID.fullmatch(text) is None:
        raise _HttpProblem(
            400,
            "Not an agency id",
            "An agency id is 1 to 64 characters of a-z, 0-9 and '-', starting with a letter "
            "or digit.",
        )
    return text


async def _page(request: web.Request, viewer: Viewer, agency: str | None) -> web.StreamResponse:
    options = request.app[_OPTIONS]
    client = await _connect(request, viewer)
    try:
        html = await asyncio.to_thread(
            _render, client, viewer, agency, dict(request.query), options
        )
    finally:
        client.close()
    return web.Response(text=html, content_type="text/html", charset="utf-8")


def _render(
    client: Client,
    viewer: Viewer,
    agency: str | None,
    query: dict[str, Any],
    options: ServeOptions,
) -> str:
    """Every query of one page, in this worker thread, as the viewer."""
    months = data_months(client, agency)
    default = default_choice(months[1] if months else None, datetime.now(UTC).date())
    try:
        choice = parse_choice(query.get("fy"), query.get("month"), default)
    except PeriodError as error:
        raise _HttpProblem(400, "Not a period", str(error)) from None
    fiscal_years = _fiscal_years(months, choice)
    adoption = read_adoption(client, choice.period, agency)
    report = publish(adoption, options.min_cell_users, options.top)
    agencies = [] if viewer.agency is not None else period_agencies(client, choice.period)
    context = PageContext(
        choice=choice,
        fiscal_years=fiscal_years,
        agency=agency,
        agencies=agencies,
        agency_user=viewer.user if viewer.agency is not None else None,
        locked_agency=viewer.agency,
    )
    return render_page(report, context)


def _fiscal_years(months: tuple[date, date] | None, choice: PeriodChoice) -> list[int]:
    if months is None:
        return [choice.fiscal_year]
    first, last = fiscal_year_of(months[0]), fiscal_year_of(months[1])
    return list(range(first, last + 1))


async def _login(request: web.Request) -> web.StreamResponse:
    if "Authorization" not in request.headers:
        raise _HttpProblem(
            401,
            "Agency sign-in",
            "Sign in with your agency's ClickHouse user (govmeter_agency_...) and password.",
            challenge=True,
        )
    viewer = _viewer(request)
    client = await _connect(request, viewer)
    client.close()
    raise web.HTTPSeeOther("/")


async def _healthz(request: web.Request) -> web.StreamResponse:
    endpoint = request.app[_ENDPOINT]
    client = await asyncio.to_thread(endpoint.connect, endpoint.reporter)  # 503 if refused
    try:
        await asyncio.to_thread(client.query, "SELECT 1")
    finally:
        client.close()
    return web.Response(text="ok\n")
