"""The live oversight page (`metering serve`) in headless Chromium, on the golden corpus.

The corpus is counted once for the module; one agency gets its ClickHouse user. Then
`metering serve` runs as a subprocess and Chromium loads its pages. The numbers in the
DOM are compared with numbers queried from the store directly (the contract views for
every sum, counted_events for distinct users of a level, model or day, which no view
has), put through the same small-cell suppression. An agency user signed in with HTTP
Basic auth sees only its agency. The page and the static `report adoption --format
html` pass axe-core at WCAG 2.1 AA and can be used by keyboard alone.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from metering.oversight.adoption import Adoption, UsageRow
from metering.oversight.render_text import share_pct
from metering.oversight.suppression import Cell, PublishedReport, publish
from metering.periods import Period, fiscal_year, month
from schemas.events import AGENCY_LEVELS
from tests.accessibility.browser import axe_source, browser, chromium, headless
from tests.accessibility.page_dom import PageNumbers, read_numbers
from tests.accessibility.png import read_png
from tests.integration.harness import CORPUS, MeteringRun, free_port

pytestmark = pytest.mark.integration

N = 10  # metering serve's default --min-cell-users
AGENCY = "fed-gsa"  # in both tenants in November: 15 users in one, 9 (suppressed) in the other
NOVEMBER = "?fy=2027&month=11"


@dataclass
class Served:
    run: MeteringRun
    url: str
    agency_user: str
    agency_password: str

    def auth(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        token = f"{user or self.agency_user}:{password or self.agency_password}"
        return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}


@pytest.fixture(scope="module")
def served(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("oversight-page"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    applied = run.metering("access", "agency-user", "--agency", AGENCY, "--apply")
    assert applied.returncode == 0, applied.stderr
    [line] = [line for line in applied.stdout.splitlines() if "shown once" in line]
    password = line.rsplit(" ", 1)[1]
    run.store.stop()
    run.store.start()  # the server reads users.d at start

    port = free_port()
    log = (run.workdir / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "serve", "--port", str(port)],
        env=run.env,
        cwd=run.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, run.workdir / "serve.log")
        yield Served(run, url, f"govmeter_agency_{AGENCY.replace('-', '_')}", password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"metering serve exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"metering serve did not answer within 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser_path() -> str:
    return chromium()


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, body, final URL) of a GET, redirects followed."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), response.geturl()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), url


# ---------------------------------------------------------------------------------
# the expected numbers, from the store directly


def _expected(run: MeteringRun, period: Period, agency: str | None) -> PublishedReport:
    """The page's report recomputed from the views (sums) and counted_events (distinct
    users of a level, model or day), with the same suppression."""
    client = clickhouse_connect.get_client(dsn=run.store.url)
    try:
        p: dict[str, Any] = {"start": period.start, "end": period.end, "agency": agency or ""}
        days = "day >= {start:Date} AND day < {end:Date}"
        months = "month >= {start:Date} AND month < {end:Date}"
        raw = "toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}"
        scope = " AND ({agency:String} = '' OR agency_id = {agency:String})"

        def users(group: str) -> dict[tuple[str, ...], int]:
            rows = client.query(
                f"SELECT {group}, uniqExact(user_id) FROM metering.counted_events "
                f"WHERE {raw}{scope} GROUP BY {group}",
                parameters=p,
            ).result_rows
            return {tuple(str(v) for v in r[:-1]): int(r[-1]) for r in rows}

        def sums(source: str, where: str, group: str) -> dict[tuple[str, ...], list[int]]:
            width = group.count(",") + 1
            rows = client.query(
                f"SELECT {group}, uniqExact(agency_id), sum(messages), sum(tokens_in), "
                f"sum(tokens_out) FROM {source} WHERE {where}{scope} GROUP BY {group}",
                parameters=p,
            ).result_rows
            return {tuple(str(v) for v in r[:width]): [int(v) for v in r[width:]] for r in rows}

        def usage(
            grouped: dict[tuple[str, ...], list[int]],
            distinct: dict[tuple[str, ...], int],
            level: bool = False,
        ) -> tuple[UsageRow, ...]:
            return tuple(
                UsageRow(
                    tenant=key[0],
                    key=key[1] if len(key) > 1 else "",
                    agency_level=key[2] if level else "",
                    agencies=values[0],
                    active_users=distinct[key[:2]] if level else distinct[key],
                    messages=values[1],
                    tokens_in=values[2],
                    tokens_out=values[3],
                )
                for key, values in sorted(grouped.items())
            )

        tenants = usage(sums("metering.agency_daily", days, "tenant"), users("tenant"))
        levels = usage(
            sums("metering.agency_daily", days, "tenant, agency_level"),
            users("tenant, agency_level"),
        )
        agencies = usage(
            sums("metering.agency_monthly", months, "tenant, agency_id, agency_level"),
            users("tenant, agency_id"),
            level=True,
        )
        models = usage(
            {
                (str(r[0]), str(r[1])): [int(v) for v in r[2:]]
                for r in client.query(
                    "SELECT tenant, model, uniqExact(agency_id), count(), sum(tokens_in), "
                    f"sum(tokens_out) FROM metering.counted_events WHERE {raw}{scope} "
                    "GROUP BY tenant, model",
                    parameters=p,
                ).result_rows
            },
            users("tenant, model"),
        )
        by_day = usage(
            sums("metering.agency_daily", days, "tenant, toString(day)"),
            users("tenant, toString(toDate(occurred_at))"),
        )
        if period.kind == "month":  # the monthly views give distinct users directly
            for row in client.query(
                "SELECT tenant, agency_id, active_users FROM metering.agency_monthly "
                f"WHERE {months}{scope}",
                parameters=p,
            ).result_rows:
                [mine] = [a for a in agencies if (a.tenant, a.key) == (row[0], row[1])]
                assert mine.active_users == row[2]
            if agency is None:
                for row in client.query(
                    "SELECT tenant, active_users, agencies, messages FROM "
                    f"metering.monthly_totals WHERE {months}",
                    parameters=p,
                ).result_rows:
                    [mine] = [t for t in tenants if t.tenant == row[0]]
                    assert (mine.active_users, mine.agencies, mine.messages) == row[1:]
    finally:
        client.close()
    adoption = Adoption(
        period=period,
        agency=agency,
        tenants=tenants,
        levels=tuple(sorted(levels, key=lambda r: (r.tenant, AGENCY_LEVELS.index(r.key)))),
        agencies=agencies,
        models=tuple(sorted(models, key=lambda r: (r.tenant, -r.tokens, r.key))),
        days=by_day,
        data_through=date(2026, 11, 2),
    )
    return publish(adoption, N, 10)


def _shown(cell: Cell, measure: str) -> str:
    """A measure as the page writes it: the number, or the suppression mark."""
    if cell.suppression == "primary":
        return f"<{N}" if measure == "active_users" else "s"
    if cell.suppression == "complementary":
        return "c"
    value = getattr(cell, measure)
    return f"{value:,}"


MEASURES = ("active_users", "messages", "tokens_in", "tokens_out")


def _check_page(page: PageNumbers, report: PublishedReport) -> int:
    """Every figure of every table on the page equals `report`; returns how many."""
    checked = 0
    assert set(page.headline) == {t.tenant for t in report.tenants}
    for tenant in report.tenants:
        name, total = tenant.tenant, tenant.total
        shown = page.headline[name]
        assert shown["agencies"] == f"{total.row.agencies:,}", name
        for measure in MEASURES:
            assert shown[measure] == _shown(total, measure), (name, measure)
        checked += 5

        def rows(kind: str, cells: tuple[Cell, ...], name: str = name) -> None:
            nonlocal checked
            table = page.tables[(kind, name)]
            assert list(table) == [c.row.key for c in cells], (kind, name)
            for cell in cells:
                row = table[cell.row.key]
                for measure in MEASURES:
                    assert row[measure] == _shown(cell, measure), (kind, name, cell.row.key)
                if kind != "agencies":
                    assert row["agencies"] == f"{cell.row.agencies:,}"
                checked += 4

        rows("levels", tenant.levels)
        rows("models", tenant.models)
        rows("days", tenant.days)
        rows("agencies", tenant.top_agencies)
        for cell in tenant.levels:
            share = share_pct(cell.messages, total.messages)
            expected = "" if share is None else f"{share:.1f}%"
            assert page.tables[("levels", name)][cell.row.key]["message_share_pct"] == expected
        for rank, cell in enumerate(tenant.top_agencies, start=1):
            row = page.tables[("agencies", name)][cell.row.key]
            assert (row["rank"], row["agency_level"]) == (str(rank), cell.row.agency_level)
        # The charts draw the same numbers.
        assert page.bars[("agencies", name)] == [c.messages for c in tenant.top_agencies]
        assert page.bars[("daily", name)] == [
            c.messages for c in tenant.days if c.messages is not None
        ]
        assert page.bars[("models", name)] == [
            c.tokens for c in tenant.models if c.tokens is not None
        ]
    return checked


# ---------------------------------------------------------------------------------
# the public page


def test_the_page_shows_the_numbers_of_the_views(served: Served, browser_path: str) -> None:
    profile = served.run.workdir / "profile-public"
    for query, period in (
        (NOVEMBER, month("2026-11")),
        ("?fy=2027&month=10", month("2026-10")),
        ("?fy=2027&month=all", fiscal_year("2027")),
    ):
        dom = headless(browser_path, profile, "--dump-dom", served.url + "/" + query)
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = read_numbers(dom.stdout)
        expected = _expected(served.run, period, None)
        assert {t.tenant for t in expected.tenants} == {"chatgpt-gov", "chatgpt-enterprise"}
        assert _check_page(page, expected) > 100
        assert f"Adoption report {period.label}" in dom.stdout
        suppressed = [
            c
            for t in expected.tenants
            for c in (*t.levels, *t.models, *t.days, *t.top_agencies)
            if c.suppressed
        ]
        if period.label == "2026-11":
            assert suppressed, "the corpus has small cells in November"
            assert re.search(r'<option value="2027" selected="?"?>FY2027</option>', dom.stdout)
            assert re.search(r'<option value="11" selected="?"?>November</option>', dom.stdout)


def test_the_page_of_one_agency_and_the_pickers(served: Served, browser_path: str) -> None:
    profile = served.run.workdir / "profile-agency"
    dom = headless(browser_path, profile, "--dump-dom", f"{served.url}/agency/fed-va{NOVEMBER}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _check_page(read_numbers(dom.stdout), _expected(served.run, month("2026-11"), "fed-va"))
    # The form's agency picker lands on the same page.
    status, body, final = _status(f"{served.url}/?fy=2027&month=11&agency=fed-va")
    assert (status, final) == (200, f"{served.url}/agency/fed-va?fy=2027&month=11")
    assert _check_page(read_numbers(body), _expected(served.run, month("2026-11"), "fed-va"))
    for bad in ("?fy=20x7", "?fy=2027&month=13", "?agency=FED%20VA"):
        assert _status(served.url + "/" + bad)[0] == 400, bad
    # No query parameter lowers the suppression threshold.
    loose = _status(f"{served.url}/{NOVEMBER}&min_cell_users=1&min-cell-users=1")[1]
    assert (
        read_numbers(loose).tables == read_numbers(_status(served.url + "/" + NOVEMBER)[1]).tables
    )


# ---------------------------------------------------------------------------------
# an agency user


def test_an_agency_user_sees_only_its_agency(served: Served, browser_path: str) -> None:
    async def load(path: str, headers: dict[str, str]) -> tuple[str, str]:
        async with browser(browser_path) as page:
            await page.open(served.url + path, headers)
            location: str = await page.evaluate("location.pathname + location.search")
            return await page.dom(), location

    html, location = asyncio.run(load("/" + NOVEMBER, served.auth()))
    assert location == f"/agency/{AGENCY}{NOVEMBER}"
    page = read_numbers(html)
    expected = _expected(served.run, month("2026-11"), AGENCY)
    assert _check_page(page, expected) > 20
    gov = next(t for t in expected.tenants if t.tenant == "chatgpt-gov")
    assert gov.total.suppression == "primary"  # 9 users in chatgpt-gov: suppressed even here
    assert page.headline["chatgpt-gov"]["messages"] == "s"
    for (kind, _), rows in page.tables.items():
        if kind == "agencies":
            assert set(rows) <= {AGENCY}
    others = {
        str(r["agency_id"])
        for r in served.run.query("SELECT DISTINCT agency_id FROM metering.agency_daily")
    }
    for other in others - {AGENCY, "7"}:  # "7" is a digit of many numbers
        assert other not in html, other
    assert f"Signed in as {served.agency_user}" in html
    assert 'id="pick-agency"' not in html  # its page only: no agency picker

    # ClickHouse's row filters decide: the same user never reaches another agency's page.
    assert _status(f"{served.url}/agency/fed-va{NOVEMBER}", served.auth())[0] == 403
    status, _, final = _status(f"{served.url}/?agency=fed-va&fy=2027&month=11", served.auth())
    assert status == 200 and final.endswith(f"/agency/{AGENCY}?fy=2027&month=11")
    # A wrong password, or a user that is not an agency's, is refused with a challenge.
    for user, password in ((served.agency_user, "wrong"), ("reporter", "x"), ("default", "-")):
        for path in ("/", f"/agency/{AGENCY}"):
            request = urllib.request.Request(served.url + path, headers=served.auth(user, password))
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401, (user, path)
            assert refused.value.headers["WWW-Authenticate"].startswith("Basic "), (user, path)
    # /login asks for credentials, then goes back to the page.
    assert _status(served.url + "/login")[0] == 401
    status, _, final = _status(served.url + "/login", served.auth())
    assert status == 200 and f"/agency/{AGENCY}" in final


# ---------------------------------------------------------------------------------
# screenshot


def test_a_screenshot_of_the_page(served: Served, browser_path: str) -> None:
    shot = served.run.workdir / "oversight-page.png"
    result = headless(
        browser_path,
        served.run.workdir / "profile-shot",
        "--window-size=1280,2000",
        f"--screenshot={shot}",
        served.url + "/" + NOVEMBER,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    image = read_png(shot.read_bytes())
    assert (image.width, image.height) == (1280, 2000)
    assert image.colours() > 500  # charts, text and tables, not a blank page
    assert 0.03 < image.share_of((0x0F, 0x2A, 0x47)) < 0.2  # the page header's band
    assert 0.4 < image.share_of((255, 255, 255)) < 0.95
    assert image.share_of((0x2F, 0x6F, 0xB3)) > 0.005  # the bars of the daily chart
    top = image.pixels[:60]  # the header is at the top
    assert (abs(top.astype(int) - [0x0F, 0x2A, 0x47]).max(axis=2) <= 8).mean() > 0.8


# ---------------------------------------------------------------------------------
# Section 508: axe-core at WCAG 2.1 AA, keyboard, text alternatives


_CHART_FACTS = """[...document.querySelectorAll('figure.chart')].map(f => {
  const svg = f.querySelector('svg');
  const text = id => (document.getElementById(id) || {}).textContent || '';
  return {
    id: f.id,
    name: text(f.id + '-title'),
    description: text(f.id + '-desc'),
    svg: !!svg,
    svg_alternative: !svg || (svg.getAttribute('role') === 'img' &&
      svg.getAttribute('aria-labelledby') === f.id + '-title' &&
      svg.getAttribute('aria-describedby') === f.id + '-desc'),
    table_rows: f.querySelectorAll('table tbody tr').length,
    caption: (f.querySelector('table caption') || {}).textContent || '',
  };
})"""

_HEADINGS = "[...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1])"


def test_both_pages_pass_axe_and_work_by_keyboard(
    served: Served, browser_path: str, tmp_path: Path
) -> None:
    static = tmp_path / "adoption.html"
    made = served.run.metering(
        "report", "adoption", "--month", "2026-11", "--format", "html", "--out", str(static)
    )
    assert made.returncode == 0, made.stderr
    pages: list[tuple[str, str, dict[str, str]]] = [
        ("static report", static.as_uri(), {}),
        ("live page", served.url + "/" + NOVEMBER, {}),
        ("fiscal year", served.url + "/?fy=2027&month=all", {}),
        ("agency page", f"{served.url}/agency/fed-va{NOVEMBER}", {}),
        ("agency user", f"{served.url}/agency/{AGENCY}{NOVEMBER}", served.auth()),
        ("refused page", f"{served.url}/agency/fed-va{NOVEMBER}", served.auth()),
    ]
    source = axe_source()

    async def audit() -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        async with browser(browser_path) as page:
            for name, url, headers in pages:
                await page.open(url, headers)
                result = await page.axe(source)
                charts = await page.evaluate(_CHART_FACTS)
                headings = await page.evaluate(_HEADINGS)
                walk = await page.tab_walk()
                await page.open(url, headers)
                await page.press("Tab")
                await page.press("Enter")
                after_skip = await page.evaluate("location.hash + ' ' + document.activeElement.id")
                found[name] = {
                    "axe": result,
                    "charts": charts,
                    "headings": headings,
                    "walk": walk,
                    "after_skip": after_skip,
                }
        return found

    found = asyncio.run(audit())
    for name, facts in found.items():
        violations = facts["axe"]["violations"]
        assert violations == [], (name, [(v["id"], v["help"], v["nodes"][:3]) for v in violations])
        assert {"color-contrast", "html-has-lang", "document-title", "bypass"} <= set(
            facts["axe"]["passes"]
        ), name  # axe really ran its checks
        headings = facts["headings"]
        assert headings[0] == 1 and headings.count(1) == 1, (name, headings)
        assert all(b - a <= 1 for a, b in itertools.pairwise(headings)), name
        walk = facts["walk"]
        assert walk and "skip-link" in walk[0].classes and walk[0].href == "#main", name
        assert facts["after_skip"] == "#main main", name
        for stop in walk:
            assert stop.focus_visible and stop.ring_drawn and stop.on_screen, (name, stop)
        if name == "refused page":
            continue
        charts = facts["charts"]
        assert len(charts) == 8, name  # four per tenant
        for chart in charts:
            assert chart["name"] and len(chart["description"]) > 20, (name, chart)
            assert chart["svg_alternative"], (name, chart)
            assert chart["caption"] and chart["table_rows"] >= 1, (name, chart)
    controls = [stop.id for stop in found["live page"]["walk"] if stop.id.startswith("pick-")]
    assert controls == ["pick-fy", "pick-month", "pick-agency"]
    assert any(stop.tag == "button" for stop in found["live page"]["walk"])
    assert any(stop.href.startswith("/agency/") for stop in found["live page"]["walk"])
    assert [s.id for s in found["agency user"]["walk"] if s.id.startswith("pick-")] == [
        "pick-fy",
        "pick-month",
    ]
