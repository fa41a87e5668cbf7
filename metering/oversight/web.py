"""`metering serve`: the adoption report as a live web page (aiohttp).

Routes:
  GET  /             every agency, for an oversight user; an agency user goes to its own
                     page; with --public, the published aggregate for a visitor who has
                     not signed in (tenants and levels of government only)
  GET  /agency/{id}  one agency's page: an oversight user's, or that agency's user's
  GET  /login        the sign-in form (`next`: the page to go to after)
  POST /login        sign in (user, password, next): a session cookie, then 303 to next
  POST /logout       end the session, then 303 to /login
  GET  /healthz      "ok" when the store answers as the reporter (no sign-in)
Query parameters `fy` (a fiscal year, e.g. 2027) and `month` (1 to 12, or `all` for the
whole fiscal year) pick the period; `agency` on / goes to that agency's page.

A visitor who has not signed in is sent (303) to /login?next=<the page> from every
page, except `/` with --public, and /agency/... always. Who may sign in: an agency's
ClickHouse user `govmeter_agency_<id>`, the reporter (CLICKHOUSE_REPORTER_USER) and the
users `--oversight-user` names; any other name is refused with the same message as a
wrong password. The password is checked by connecting to ClickHouse as that user, and
every page is then read as that user (see web_store): an agency user's row filters
limit every query to its agency. The sign-in form starts a session (web_session): a
cookie that is HttpOnly and SameSite=Strict, and under TLS Secure with the `__Host-`
prefix. Scripts may send HTTP Basic credentials on each request instead.

Small-cell suppression (`suppression.publish`) applies to every page with the server's
`--min-cell-users`; no query parameter changes it. The store's client is blocking, so
each page's queries run in a worker thread.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from aiohttp import BasicAuth, web
from clickhouse_connect.driver.client import Client

from metering.oversight.adoption import read_adoption
from metering.oversight.suppression import PublishedReport, publish
from metering.oversight.web_page import (
    PageContext,
    PeriodChoice,
    agency_path,
    default_choice,
    parse_choice,
    render_message,
    render_page,
    render_sign_in,
)
from metering.oversight.web_session import COOKIE, COOKIE_TLS, Sessions
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

__all__ = ["SIGN_IN_REFUSED", "ServeOptions", "build_app"]

log = logging.getLogger(__name__)

_BASIC_REALM: Final = 'Basic realm="govmeter oversight page", charset="UTF-8"'
# A 401 must name a scheme; browsers show the page (the sign-in form) for this one.
_FORM_REALM: Final = 'Form realm="govmeter oversight page"'
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
# The same words for a wrong password and for a name that may not sign in here, so the
# page does not tell which oversight users exist.
SIGN_IN_REFUSED: Final = (
    "ClickHouse did not accept that user and password, or that user may not sign in "
    "here. Sign in with your agency's ClickHouse user (govmeter_agency_...) or an "
    "oversight user (such as reporter), and its password."
)


@dataclass(frozen=True)
class ServeOptions:
    min_cell_users: int = 10
    top: int = 10
    public: bool = False  # a visitor who has not signed in sees the published aggregate
    tls: bool = False  # served over TLS: the session cookie is Secure (and __Host-)
    oversight_users: frozenset[str] = frozenset()  # besides the reporter

    @property
    def cookie(self) -> str:
        return COOKIE_TLS if self.tls else COOKIE


class _HttpProblem(Exception):
    """An answer other than the page: a message page, or the sign-in form again."""

    def __init__(
        self,
        status: int,
        title: str,
        message: str,
        *,
        challenge: bool = False,
        form_next: str | None = None,
        user: str = "",
    ) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message
        self.challenge = challenge  # HTTP Basic was used: ask for Basic again
        self.form_next = form_next  # show the sign-in form, going on to this page
        self.user = user


@dataclass(frozen=True)
class _Visitor:
    """Someone signed in: the user the page reads as, and the session (None: Basic)."""

    viewer: Viewer
    token: str | None


_ENDPOINT: Final = web.AppKey("endpoint", StoreEndpoint)
_OPTIONS: Final = web.AppKey("options", ServeOptions)
_SESSIONS: Final = web.AppKey("sessions", Sessions)


def build_app(
    endpoint: StoreEndpoint, options: ServeOptions, sessions: Sessions | None = None
) -> web.Application:
    app = web.Application(middlewares=[_problems])
    app[_ENDPOINT] = endpoint
    app[_OPTIONS] = options
    app[_SESSIONS] = sessions if sessions is not None else Sessions()
    app.router.add_get("/", _index)
    app.router.add_get("/agency/{agency}", _agency_page)
    app.router.add_get("/login", _sign_in_form)
    app.router.add_post("/login", _sign_in)
    app.router.add_post("/logout", _sign_out)
    app.router.add_get("/healthz", _healthz)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except _HttpProblem as problem:
        response = _problem_response(request, problem)
    except WebStoreError as error:
        log.warning("oversight page: %s", error)
        response = _html(503, render_message("The store cannot be read", str(error)))
    except web.HTTPException as answer:  # redirects, 404, 405: with the same headers
        answer.headers.update(_SECURITY_HEADERS)
        raise
    response.headers.update(_SECURITY_HEADERS)
    return response


def _html(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def _problem_response(request: web.Request, problem: _HttpProblem) -> web.Response:
    options = request.app[_OPTIONS]
    if problem.form_next is not None:
        page = render_sign_in(
            problem.form_next, problem=problem.message, user=problem.user, public=options.public
        )
        response = _html(problem.status, page)
        if problem.status == 401:
            response.headers["WWW-Authenticate"] = _FORM_REALM
        return response
    response = _html(
        problem.status,
        render_message(problem.title, problem.message, sign_in=problem.status == 401),
    )
    if problem.challenge:
        response.headers["WWW-Authenticate"] = _BASIC_REALM
    return response


# ---------------------------------------------------------------------------------
# who is signed in


def _may_sign_in(request: web.Request, user: str, password: str) -> Viewer | None:
    """The viewer `user` reads as, or None when that name may not sign in here."""
    if not user or not password:
        return None
    agency = agency_of_user(user)
    if agency is not None:
        return Viewer(user, password, agency)
    options, endpoint = request.app[_OPTIONS], request.app[_ENDPOINT]
    if user == endpoint.reporter.user or user in options.oversight_users:
        return Viewer(user, password)
    return None


def _visitor(request: web.Request) -> _Visitor | None:
    """HTTP Basic credentials (checked when the page connects), else the session's user."""
    header = request.headers.get("Authorization")
    if header is not None:
        try:
            auth = BasicAuth.decode(header, encoding="utf-8")
        except (ValueError, binascii.Error):
            raise _HttpProblem(
                401,
                "Sign-in refused",
                "The Authorization header is not HTTP Basic.",
                challenge=True,
            ) from None
        viewer = _may_sign_in(request, auth.login, auth.password)
        if viewer is None:
            raise _HttpProblem(401, "Sign-in refused", SIGN_IN_REFUSED, challenge=True)
        return _Visitor(viewer, None)
    token = request.cookies.get(request.app[_OPTIONS].cookie)
    if token:
        viewer = request.app[_SESSIONS].viewer(token)
        if viewer is not None:
            return _Visitor(viewer, token)
    return None


def _to_sign_in(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))


async def _connect(request: web.Request, viewer: Viewer, visitor: _Visitor | None) -> Client:
    try:
        return await asyncio.to_thread(request.app[_ENDPOINT].connect, viewer)
    except LoginRefused:
        if visitor is None:  # the server's own reporter: a configuration problem
            raise WebStoreError(
                f"ClickHouse no longer accepts the password of {viewer.user}, the user the "
                "published aggregate is read as: check CLICKHOUSE_REPORTER_PASSWORD"
            ) from None
        if visitor.token is None:
            raise _HttpProblem(401, "Sign-in refused", SIGN_IN_REFUSED, challenge=True) from None
        request.app[_SESSIONS].end(visitor.token)
        raise _HttpProblem(
            401,
            "Signed out",
            f"ClickHouse no longer accepts the password of {viewer.user}: sign in again.",
            form_next=_local_path(request.path_qs),
            user=viewer.user,
        ) from None


# ---------------------------------------------------------------------------------
# pages


async def _index(request: web.Request) -> web.StreamResponse:
    visitor = _visitor(request)
    agency = request.query.get("agency", "")
    if visitor is None:
        if agency or not request.app[_OPTIONS].public:
            raise _to_sign_in(request)
        return await _page(request, None, None)
    viewer = visitor.viewer
    if viewer.agency is not None or agency:
        target = viewer.agency or _agency_id(agency)
        query = request.query_string
        kept = "&".join(p for p in query.split("&") if p and not p.startswith("agency="))
        raise web.HTTPSeeOther(agency_path(target) + (f"?{kept}" if kept else ""))
    return await _page(request, visitor, None)


async def _agency_page(request: web.Request) -> web.StreamResponse:
    visitor = _visitor(request)
    if visitor is None:
        raise _to_sign_in(request)
    agency = _agency_id(request.match_info["agency"])
    own = visitor.viewer.agency
    if own is not None and agency != own:
        raise _HttpProblem(
            403,
            "Another agency's page",
            f"You are signed in as agency {own}; you can see its page only.",
        )
    return await _page(request, visitor, agency)


def _agency_id(text: str) -> str:
    if AGENCY_ID.fullmatch(text) is None:
        raise _HttpProblem(
            400,
            "Not an agency id",
            "An agency id is 1 to 64 characters of a-z, 0-9 and '-', starting with a letter "
            "or digit.",
        )
    return text


async def _page(
    request: web.Request, visitor: _Visitor | None, agency: str | None
) -> web.StreamResponse:
    """A report page: read as the visitor, or as the reporter for the published aggregate."""
    options = request.app[_OPTIONS]
    viewer = visitor.viewer if visitor is not None else request.app[_ENDPOINT].reporter
    client = await _connect(request, viewer, visitor)
    try:
        html = await asyncio.to_thread(
            _render, client, visitor, agency, dict(request.query), options
        )
    finally:
        client.close()
    return _html(200, html)


def _render(
    client: Client,
    visitor: _Visitor | None,
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
    if visitor is None:
        return render_page(
            _aggregate(report),
            PageContext(choice=choice, fiscal_years=fiscal_years, agency=None, agencies=[]),
        )
    viewer = visitor.viewer
    agencies = [] if viewer.agency is not None else period_agencies(client, choice.period)
    context = PageContext(
        choice=choice,
        fiscal_years=fiscal_years,
        agency=agency,
        agencies=agencies,
        signed_in=viewer.user,
        locked_agency=viewer.agency,
        session=visitor.token is not None,
    )
    return render_page(report, context)


def _aggregate(report: PublishedReport) -> PublishedReport:
    """The published aggregate: tenants and levels of government; no agency, model or day."""
    tenants = tuple(
        dataclasses.replace(t, top_agencies=(), agencies_not_ranked=0, models=(), days=())
        for t in report.tenants
    )
    return dataclasses.replace(report, tenants=tenants, trend_days=())


def _fiscal_years(months: tuple[date, date] | None, choice: PeriodChoice) -> list[int]:
    if months is None:
        return [choice.fiscal_year]
    first, last = fiscal_year_of(months[0]), fiscal_year_of(months[1])
    return list(range(first, last + 1))


# ---------------------------------------------------------------------------------
# signing in and out


def _local_path(text: str) -> str:
    """Where a sign-in may go on to: a path of this server, else `/`."""
    if (
        not text.startswith("/")
        or text.startswith("//")
        or len(text) > 2000
        or any(not 0x21 <= ord(c) < 0x7F or c == "\\" for c in text)
        or urlsplit(text).path in ("/login", "/logout")
    ):
        return "/"
    return text


def _same_site_form(request: web.Request) -> None:
    """Browsers say where a form came from (Sec-Fetch-Site); refuse one from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise _HttpProblem(
            403,
            "Form from another site",
            "This form is accepted from the oversight page itself only.",
        )


def _form_field(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


async def _sign_in_form(request: web.Request) -> web.StreamResponse:
    visitor = _visitor(request)
    signed_in = visitor.viewer.user if visitor is not None and visitor.token else None
    page = render_sign_in(
        _local_path(request.query.get("next", "/")),
        public=request.app[_OPTIONS].public,
        signed_in=signed_in,
    )
    return _html(200, page)


async def _sign_in(request: web.Request) -> web.StreamResponse:
    _same_site_form(request)
    options, sessions = request.app[_OPTIONS], request.app[_SESSIONS]
    form = await request.post()
    user, password = _form_field(form, "user"), _form_field(form, "password")
    next_path = _local_path(_form_field(form, "next") or "/")
    viewer = _may_sign_in(request, user, password)
    if viewer is not None:
        try:
            client = await asyncio.to_thread(request.app[_ENDPOINT].connect, viewer)
        except LoginRefused:
            viewer = None
        else:
            client.close()
    if viewer is None:
        log.warning("oversight page sign-in refused", extra={"user": user[:80]})
        raise _HttpProblem(
            401, "Sign-in refused", SIGN_IN_REFUSED, form_next=next_path, user=user[:200]
        )
    previous = request.cookies.get(options.cookie)
    if previous:
        sessions.end(previous)  # a new token at every sign-in
    token = sessions.start(viewer)
    log.info("oversight page signed in", extra={"user": viewer.user, "agency": viewer.agency or ""})
    response = web.Response(status=303, headers={"Location": next_path})
    response.set_cookie(
        options.cookie,
        token,
        path="/",
        httponly=True,
        secure=True if options.tls else None,
        samesite="Strict",
    )
    return response


async def _sign_out(request: web.Request) -> web.StreamResponse:
    _same_site_form(request)
    options = request.app[_OPTIONS]
    token = request.cookies.get(options.cookie)
    if token:
        viewer = request.app[_SESSIONS].viewer(token)
        request.app[_SESSIONS].end(token)
        if viewer is not None:
            log.info("oversight page signed out", extra={"user": viewer.user})
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(
        options.cookie,
        path="/",
        secure=True if options.tls else None,
        httponly=True,
        samesite="Strict",
    )
    return response


async def _healthz(request: web.Request) -> web.StreamResponse:
    endpoint = request.app[_ENDPOINT]
    client = await asyncio.to_thread(endpoint.connect, endpoint.reporter)  # 503 if refused
    try:
        await asyncio.to_thread(client.query, "SELECT 1")
    finally:
        client.close()
    return web.Response(text="ok\n")
