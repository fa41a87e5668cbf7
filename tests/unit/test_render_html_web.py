"""The live page of `metering serve` without a store: pickers, periods, who reads, the
sign-in form and its session cookie, and the refusals that happen before any query
(tests/integration/test_oversight_page.py runs it over HTTPS on a real store in headless
Chromium)."""

from __future__ import annotations

import asyncio
import base64
import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, cast

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from clickhouse_connect.driver.client import Client

from metering.oversight.web import SIGN_IN_REFUSED, ServeOptions, build_app
from metering.oversight.web_page import (
    PageContext,
    PeriodChoice,
    agency_path,
    default_choice,
    parse_choice,
    render_page,
    render_sign_in,
)
from metering.oversight.web_session import Sessions
from metering.oversight.web_store import (
    LoginRefused,
    StoreEndpoint,
    Viewer,
    WebStoreError,
    agency_of_user,
    check_oversight_users,
)
from metering.periods import PeriodError
from metering.settings import SettingsError, load_settings
from tests.unit.test_render_html import sample, tags

NOVEMBER = PeriodChoice(2027, 11)


def test_the_pickers_name_a_month_of_a_fiscal_year_or_all_of_it() -> None:
    assert NOVEMBER.period.label == "2026-11"  # FY2027 starts in October 2026
    assert PeriodChoice(2027, 9).period.label == "2027-09"
    assert PeriodChoice(2027).period.label == "FY2027"
    assert parse_choice(None, None, NOVEMBER) == NOVEMBER
    assert parse_choice("2026", None, NOVEMBER) == PeriodChoice(2026)  # a year: all of it
    assert parse_choice("2026", "all", NOVEMBER) == PeriodChoice(2026)
    assert parse_choice(None, "3", NOVEMBER) == PeriodChoice(2027, 3)
    assert parse_choice("2028", "10", NOVEMBER).period.label == "2027-10"
    for fy, number in (("27", None), ("20x7", None), ("2027", "13"), ("2027", "0"), ("1900", "1")):
        with pytest.raises(PeriodError):
            parse_choice(fy, number, NOVEMBER)
    assert default_choice(date(2026, 11, 1), date(2030, 1, 1)) == NOVEMBER
    assert default_choice(None, date(2027, 10, 5)) == PeriodChoice(2028, 10)
    assert NOVEMBER.query() == "fy=2027&month=11"
    assert agency_path("fed-gsa", PeriodChoice(2027)) == "/agency/fed-gsa?fy=2027&month=all"


def test_agency_users_are_known_by_name() -> None:
    assert agency_of_user("govmeter_agency_fed_gsa") == "fed-gsa"
    assert agency_of_user("govmeter_agency_7") == "7"
    for other in ("reporter", "default", "govmeter_agency_", "govmeter_agency_FED", "agency_x"):
        assert agency_of_user(other) is None, other


def test_the_endpoint_reads_as_the_reporter_never_with_the_urls_own_user() -> None:
    settings = load_settings(
        clickhouse_url="http://writer:secret@ch.example:8123", reporter_password="r-pass"
    )
    endpoint = StoreEndpoint.from_settings(settings)
    assert (endpoint.scheme, endpoint.host, endpoint.port) == ("http", "ch.example", 8123)
    assert endpoint.reporter == Viewer("reporter", "r-pass")
    assert "r-pass" not in repr(endpoint) and "secret" not in endpoint.describe()
    with pytest.raises(WebStoreError, match="CLICKHOUSE_REPORTER_PASSWORD is not set"):
        StoreEndpoint.from_settings(
            load_settings(clickhouse_url="http://ch.example:8123", reporter_password="")
        )
    with pytest.raises(WebStoreError, match="has no users"):
        StoreEndpoint.from_settings(load_settings(clickhouse_url="chdb://./var/x"))


def test_the_controls_are_labelled_and_show_what_was_chosen() -> None:
    context = PageContext(
        choice=NOVEMBER,
        fiscal_years=[2026, 2027],
        agency=None,
        agencies=["fed-gsa", "state-ca"],
        signed_in="reporter",
        session=True,
    )
    html = render_page(sample(), context)
    found = tags(html)
    for control in ("pick-fy", "pick-month", "pick-agency"):
        assert ("label", {"for": control}) in found
        assert any(tag == "select" and a.get("id") == control for tag, a in found)
    assert re.search(r'<option value="2027" selected>FY2027</option>', html)
    assert re.search(r'<option value="11" selected>November</option>', html)
    months = re.findall(r'<option value="(\w+)"[^>]*>(\w[\w ]*)</option>', html)
    assert [m for m, _ in months if m.isdigit() and int(m) <= 12][:3] == ["10", "11", "12"]
    assert "Signed in as reporter." in html
    assert '<form method="post" action="/logout">' in html  # a session: a sign-out button
    assert '<a href="/agency/fed-gsa?fy=2027&amp;month=11">fed-gsa</a>' in html
    assert html.index('class="skip-link"') < html.index("<nav")


def test_an_agency_users_page_has_no_agency_picker() -> None:
    context = PageContext(
        choice=NOVEMBER,
        fiscal_years=[2027],
        agency="fed-gsa",
        agencies=[],
        signed_in="govmeter_agency_fed_gsa",
        locked_agency="fed-gsa",
    )
    html = render_page(sample(), context)
    assert 'id="pick-agency"' not in html and 'action="/agency/fed-gsa"' in html
    assert "Signed in as govmeter_agency_fed_gsa (HTTP Basic)." in html
    assert "agency fed-gsa (signed in as govmeter_agency_fed_gsa)" in html
    assert "/logout" not in html  # HTTP Basic: no session to end


def test_the_published_aggregate_is_tenants_and_levels_only() -> None:
    report = sample()
    context = PageContext(choice=NOVEMBER, fiscal_years=[2027], agency=None, agencies=[])
    html = render_page(report, context)
    kinds = {tag_attrs.get("data-table") for _, tag_attrs in tags(html)} - {None}
    assert kinds == {"levels"}
    assert 'id="pick-agency"' not in html and 'action="/"' in html
    assert "/agency/" not in html and "/logout" not in html
    for agency in ("fed-gsa", "state-ca", "local-nyc", "gpt-4o"):
        assert agency not in html, agency
    assert '<a href="/login">Sign in</a>' in html
    assert "the published aggregate, tenants and levels of government" in html
    assert 'data-measure="active_users">98<' in html  # the tenant's headline figures


def test_the_sign_in_form_is_labelled_and_goes_back_to_the_page() -> None:
    page = render_sign_in(
        '/agency/fed-gsa?fy=2027&month=11"><script>',
        problem=SIGN_IN_REFUSED,
        user="govmeter_agency_fed_gsa",
        public=True,
    )
    found = tags(page)
    for control in ("sign-in-user", "sign-in-password"):
        assert ("label", {"for": control}) in found
    [password] = [a for tag, a in found if tag == "input" and a.get("id") == "sign-in-password"]
    assert password["type"] == "password" and password["autocomplete"] == "current-password"
    [next_field] = [a for tag, a in found if tag == "input" and a.get("name") == "next"]
    assert next_field["value"] == '/agency/fed-gsa?fy=2027&month=11"><script>'  # escaped
    assert "<script>" not in page
    assert ("form", {"class": "sign-in", "method": "post", "action": "/login"}) in found
    assert f'<p class="problem" role="alert">{html.escape(SIGN_IN_REFUSED)}</p>' in page
    assert 'value="govmeter_agency_fed_gsa"' in page
    assert '<a href="/">published aggregate</a>' in page
    assert "published aggregate" not in render_sign_in("/")
    assert '<html lang="en">' in page and 'class="skip-link"' in page and "<h1>" in page


def test_oversight_users_are_neither_agencies_nor_the_writer() -> None:
    settings = load_settings(clickhouse_url="http://writer:secret@ch.example:8123")
    assert check_oversight_users(["ig_audit", "ig_audit", "gao"], settings) == {"ig_audit", "gao"}
    for name, reason in (
        ("govmeter_agency_fed_gsa", "is an agency's user"),
        ("writer", "never reads as them"),
        ("default", "never reads as them"),
        ("govmeter_writer", "never reads as them"),
        ("govmeter_server", "never reads as them"),
        ("", "is not a ClickHouse user name"),
        (" ig", "is not a ClickHouse user name"),
    ):
        with pytest.raises(SettingsError, match=reason):
            check_oversight_users([name], settings)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _answer(response: ClientResponse) -> tuple[int, str, str, str]:
    return (
        response.status,
        response.headers.get("WWW-Authenticate", ""),
        response.headers.get("Content-Security-Policy", ""),
        await response.text(),
    )


def _with_client(
    endpoint: StoreEndpoint,
    options: ServeOptions,
    test: Callable[[TestClient[Any, Any]], Awaitable[None]],
    sessions: Sessions | None = None,
) -> None:
    async def run() -> None:
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(endpoint, options, sessions))
        )
        await client.start_server()
        try:
            await test(client)
        finally:
            await client.close()

    asyncio.run(run())


# Port 9 (discard) on loopback: no ClickHouse there; none of these requests connects.
NOWHERE = StoreEndpoint("http", "127.0.0.1", 9, Viewer("reporter", "x"))


def test_refusals_before_any_query() -> None:
    seen: list[tuple[int, str, str, str]] = []

    async def requests(client: TestClient[Any, Any]) -> None:
        for path, headers in (
            ("/", _basic("default", "x")),
            ("/", {"Authorization": "Bearer abc"}),
            ("/agency/fed-va", _basic("govmeter_agency_fed_gsa", "pw")),
            ("/agency/NOT%20AN%20ID", _basic("govmeter_agency_fed_gsa", "pw")),
            ("/login", {}),
        ):
            response = await client.get(path, headers=headers, allow_redirects=False)
            seen.append(await _answer(response))

    _with_client(NOWHERE, ServeOptions(), requests)
    assert [s[0] for s in seen] == [401, 401, 403, 400, 200]
    assert all(s[1].startswith("Basic realm=") for s in seen[:2])
    assert all("default-src 'none'" in s[2] for s in seen)
    assert html.escape(SIGN_IN_REFUSED) in seen[0][3]
    assert "you can see its page only" in seen[2][3]
    assert 'action="/login"' in seen[4][3] and seen[4][1] == ""
    for _, _, _, page in seen:  # error pages are accessible documents too
        assert '<html lang="en">' in page and 'class="skip-link"' in page and "<h1>" in page


def test_a_visitor_who_has_not_signed_in_is_sent_to_sign_in() -> None:
    seen: dict[tuple[bool, str], tuple[int, str]] = {}

    def requests(public: bool) -> Callable[[TestClient[Any, Any]], Awaitable[None]]:
        async def run(client: TestClient[Any, Any]) -> None:
            for path in ("/", "/?fy=2027&month=11", "/agency/fed-va?fy=2027", "/?agency=fed-va"):
                response = await client.get(path, allow_redirects=False)
                seen[(public, path)] = (response.status, response.headers.get("Location", ""))
                assert response.headers["Cache-Control"] == "no-store"

        return run

    _with_client(NOWHERE, ServeOptions(), requests(False))
    _with_client(NOWHERE, ServeOptions(public=True), requests(True))
    assert seen[(False, "/")] == (303, "/login?next=/")
    assert seen[(False, "/?fy=2027&month=11")] == (303, "/login?next=/?fy%3D2027%26month%3D11")
    for public in (False, True):
        assert seen[(public, "/agency/fed-va?fy=2027")] == (
            303,
            "/login?next=/agency/fed-va?fy%3D2027",
        )
        assert seen[(public, "/?agency=fed-va")] == (303, "/login?next=/?agency%3Dfed-va")
    # With --public, / is the aggregate, read as the reporter: here no store answers.
    assert seen[(True, "/")][0] == 503


@dataclass(frozen=True)
class _Accepting(StoreEndpoint):
    """A store that accepts one password ("right") for every user, and counts logins."""

    logins: list[str] = field(default_factory=list, compare=False)

    def connect(self, viewer: Viewer) -> Client:
        self.logins.append(viewer.user)
        if viewer.password != "right":
            raise LoginRefused(f"ClickHouse refused the login of {viewer.user}")

        class _Closed:
            def close(self) -> None:
                pass

        return cast(Client, _Closed())


def _cookie(response: ClientResponse) -> tuple[str, str, set[str]]:
    """The Set-Cookie header's name, value and attributes (lower case)."""
    [header] = response.headers.getall("Set-Cookie")
    first, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = first.partition("=")
    return name, value, {a.lower() for a in attributes}


def test_signing_in_starts_a_session_in_an_httponly_samesite_cookie() -> None:
    endpoint = _Accepting("http", "127.0.0.1", 9, Viewer("reporter", "x"))
    sessions = Sessions()
    found: dict[str, Any] = {}

    async def flow(client: TestClient[Any, Any]) -> None:
        async def sign_in(user: str, password: str, **extra: Any) -> ClientResponse:
            form = {"user": user, "password": password, "next": "/agency/fed-gsa?fy=2027"}
            return await client.post("/login", data=form, allow_redirects=False, **extra)

        for name, user, password in (
            ("wrong", "govmeter_agency_fed_gsa", "wrong"),
            ("not allowed", "default", "right"),
            ("no password", "reporter", ""),
        ):
            found[name] = await _answer(await sign_in(user, password))
        found["cross-site"] = (
            await sign_in("reporter", "right", headers={"Sec-Fetch-Site": "cross-site"})
        ).status
        agency = await sign_in("govmeter_agency_fed_gsa", "right")
        found["agency"] = (agency.status, agency.headers["Location"], _cookie(agency))
        name, token, _ = found["agency"][2]
        cookie = {"Cookie": f"{name}={token}"}
        other = await client.get("/agency/fed-va", headers=cookie, allow_redirects=False)
        own = await client.get("/?fy=2027", headers=cookie, allow_redirects=False)
        found["pages"] = (other.status, own.status, own.headers["Location"])
        form = await client.get("/login", headers=cookie)
        found["form"] = await form.text()
        out = await client.post("/logout", headers=cookie, allow_redirects=False)
        found["out"] = (out.status, out.headers["Location"], _cookie(out), len(sessions))
        again = await client.get("/agency/fed-gsa", headers=cookie, allow_redirects=False)
        found["after"] = (again.status, again.headers["Location"])
        for target in ("//evil.example/", "https://evil.example/", "/logout", "/\\evil"):
            bad = await client.post(
                "/login",
                data={"user": "reporter", "password": "right", "next": target},
                allow_redirects=False,
            )
            assert (bad.status, bad.headers["Location"]) == (303, "/"), target

    _with_client(endpoint, ServeOptions(), flow, sessions)
    for name in ("wrong", "not allowed", "no password"):
        status, challenge, _, page = found[name]
        assert (status, challenge) == (401, 'Form realm="govmeter oversight page"'), name
        assert html.escape(SIGN_IN_REFUSED) in page and 'action="/login"' in page, name
        assert 'value="/agency/fed-gsa?fy=2027"' in page  # the form goes on to the same page
    assert endpoint.logins[:1] == ["govmeter_agency_fed_gsa"]  # "default" never reached it
    assert "default" not in endpoint.logins
    assert found["cross-site"] == 403
    status, location, (name, token, attributes) = found["agency"]
    assert (status, location, name) == (303, "/agency/fed-gsa?fy=2027", "govmeter_session")
    assert len(token) >= 43 and attributes == {"httponly", "path=/", "samesite=strict"}
    assert found["pages"] == (403, 303, "/agency/fed-gsa?fy=2027")
    assert "You are signed in as govmeter_agency_fed_gsa" in found["form"]
    status, location, (name, value, attributes), left = found["out"]
    assert (status, location, name, value.strip('"'), left) == (
        303,
        "/login",
        "govmeter_session",
        "",
        0,
    )
    assert "max-age=0" in attributes
    assert found["after"] == (303, "/login?next=/agency/fed-gsa")


def test_under_tls_the_session_cookie_is_secure_and_host_only() -> None:
    endpoint = _Accepting("http", "127.0.0.1", 9, Viewer("reporter", "x"))
    found: list[tuple[str, str, set[str]]] = []

    async def flow(client: TestClient[Any, Any]) -> None:
        response = await client.post(
            "/login", data={"user": "reporter", "password": "right"}, allow_redirects=False
        )
        assert (response.status, response.headers["Location"]) == (303, "/")
        found.append(_cookie(response))

    _with_client(endpoint, ServeOptions(tls=True), flow)
    [(name, _, attributes)] = found
    assert name == "__Host-govmeter_session"
    assert attributes == {"httponly", "path=/", "samesite=strict", "secure"}


def test_oversight_users_sign_in_and_others_do_not() -> None:
    endpoint = _Accepting("http", "127.0.0.1", 9, Viewer("reporter", "x"))
    statuses: dict[str, int] = {}

    async def flow(client: TestClient[Any, Any]) -> None:
        for user in ("reporter", "ig_audit", "analyst", "govmeter_agency_7"):
            response = await client.post(
                "/login", data={"user": user, "password": "right"}, allow_redirects=False
            )
            statuses[user] = response.status

    _with_client(endpoint, ServeOptions(oversight_users=frozenset({"ig_audit"})), flow)
    assert statuses == {"reporter": 303, "ig_audit": 303, "analyst": 401, "govmeter_agency_7": 303}
    assert "analyst" not in endpoint.logins
