"""The live page of `metering serve` without a store: pickers, periods, who reads, and
the refusals that happen before any query (tests/integration/test_oversight_page.py
runs it on a real store in headless Chromium)."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import date

import pytest
from aiohttp.test_utils import TestClient, TestServer

from metering.oversight.web import ServeOptions, build_app
from metering.oversight.web_page import (
    PageContext,
    PeriodChoice,
    agency_path,
    default_choice,
    parse_choice,
    render_page,
)
from metering.oversight.web_store import (
    StoreEndpoint,
    Viewer,
    WebStoreError,
    agency_of_user,
)
from metering.periods import PeriodError
from metering.settings import load_settings
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
        choice=NOVEMBER, fiscal_years=[2026, 2027], agency=None, agencies=["fed-gsa", "state-ca"]
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
    assert '<a href="/login">Agency sign-in</a>' in html
    assert '<a href="/agency/fed-gsa?fy=2027&amp;month=11">fed-gsa</a>' in html
    assert html.index('class="skip-link"') < html.index("<nav")


def test_an_agency_users_page_has_no_agency_picker() -> None:
    context = PageContext(
        choice=NOVEMBER,
        fiscal_years=[2027],
        agency="fed-gsa",
        agencies=[],
        agency_user="govmeter_agency_fed_gsa",
        locked_agency="fed-gsa",
    )
    html = render_page(sample(), context)
    assert 'id="pick-agency"' not in html and 'action="/agency/fed-gsa"' in html
    assert "Signed in as govmeter_agency_fed_gsa" in html
    assert "agency fed-gsa (signed in as govmeter_agency_fed_gsa)" in html


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_refusals_before_any_query() -> None:
    # Port 9 (discard) on loopback: no ClickHouse there; none of these requests connects.
    endpoint = StoreEndpoint("http", "127.0.0.1", 9, Viewer("reporter", "x"))

    async def requests() -> list[tuple[int, str, str, str]]:
        client = TestClient(TestServer(build_app(endpoint, ServeOptions())))
        await client.start_server()
        try:
            seen = []
            for path, headers in (
                ("/", _basic("reporter", "x")),
                ("/", {"Authorization": "Bearer abc"}),
                ("/login", {}),
                ("/agency/NOT%20AN%20ID", {}),
                ("/agency/fed-va", _basic("govmeter_agency_fed_gsa", "pw")),
            ):
                response = await client.get(path, headers=headers, allow_redirects=False)
                seen.append(
                    (
                        response.status,
                        response.headers.get("WWW-Authenticate", ""),
                        response.headers.get("Content-Security-Policy", ""),
                        await response.text(),
                    )
                )
            return seen
        finally:
            await client.close()

    seen = asyncio.run(requests())
    assert [s[0] for s in seen] == [401, 401, 401, 400, 403]
    assert all(s[1].startswith("Basic realm=") for s in seen[:3])
    assert all("default-src 'none'" in s[2] for s in seen)
    assert "you can see its page only" in seen[4][3]
    for _, _, _, html in seen:  # error pages are accessible documents too
        assert '<html lang="en">' in html and 'class="skip-link"' in html and "<h1>" in html
