"""The live oversight page (`metering serve`) over HTTPS in headless Chromium, on the
golden corpus.

The corpus is counted once for the module; one agency gets its ClickHouse user and an
oversight office gets a read-only user of its own (`--oversight-user`). Then two
`metering serve` run as subprocesses with a certificate made for the test: one where
every page asks to sign in, one with `--public`. Visitors sign in with the form (a
session cookie) as the reporter, the oversight user or the agency, and each request's
exact status is checked: who sees which page. The numbers in the DOM are compared with
numbers queried from the store directly (the contract views for every sum,
counted_events for distinct users of a level, model or day, which no view has), put
through the same small-cell suppression. The pages, the sign-in page and the static
`report adoption --format html` pass axe-core at WCAG 2.1 AA and can be used by
keyboard alone. A non-loopback --host without TLS is refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import itertools
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from metering.oversight.adoption import Adoption, UsageRow
from metering.oversight.render_text import share_pct
from metering.oversight.suppression import Cell, PublishedReport, publish
from metering.oversight.web import SIGN_IN_REFUSED
from metering.periods import Period, fiscal_year, month
from schemas.events import AGENCY_LEVELS
from store.local_server.config import LOOPBACK, REPORTER_READS
from tests.accessibility.browser import Browser, axe_source, browser, chromium, headless
from tests.accessibility.page_dom import PageNumbers, read_numbers
from tests.accessibility.png import read_png
from tests.integration.harness import CORPUS, MeteringRun, free_port
from tests.tls import Certificate, make_certificate

pytestmark = pytest.mark.integration

N = 10  # metering serve's default --min-cell-users
AGENCY = "fed-gsa"  # in both tenants in November: 15 users in one, 9 (suppressed) in the other
NOVEMBER = "?fy=2027&month=11"
OVERSIGHT_USER = "ig_audit"  # an inspector general's office's own read-only user
OVERSIGHT_PASSWORD = "ig-audit-test-password"
SESSION_COOKIE = "__Host-govmeter_session"  # the cookie's name under TLS


@dataclass(frozen=True)
class Fetched:
    status: int
    body: str
    url: str  # the final URL, redirects followed
    headers: Message


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Served:
    run: MeteringRun
    url: str  # every page asks to sign in
    public_url: str  # --public: the published aggregate without sign-in
    agency_user: str
    agency_password: str
    reporter_password: str
    certificate: Certificate
    tls: ssl.SSLContext  # trusts the test's certificate only

    @property
    def chromium_flags(self) -> tuple[str, ...]:
        """Chromium accepts the test's certificate (and no other unknown one)."""
        return (f"--ignore-certificate-errors-spki-list={self.certificate.spki_sha256()}",)

    def fetch(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        form: dict[str, str] | None = None,
        follow: bool = True,
    ) -> Fetched:
        """A GET (or a POST of `form`) over HTTPS; redirects followed unless `follow` is off."""
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=self.tls)]
        if not follow:
            handlers.append(_NoRedirects())
        opener = urllib.request.build_opener(*handlers)
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with opener.open(request, timeout=30) as response:
                return Fetched(
                    response.status, response.read().decode(), response.geturl(), response.headers
                )
        except urllib.error.HTTPError as error:
            return Fetched(error.code, error.read().decode(), url, error.headers)

    def status(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(status, body, final URL) of a GET, redirects followed."""
        fetched = self.fetch(url, headers)
        return fetched.status, fetched.body, fetched.url

    def sign_in(self, user: str, password: str, base: str | None = None) -> dict[str, str]:
        """Sign in with the form; the Cookie header of the session it starts."""
        answer = self.fetch(
            f"{base or self.url}/login",
            form={"user": user, "password": password, "next": "/"},
            follow=False,
        )
        assert answer.status == 303, (user, answer.status, answer.body[-500:])
        cookie = answer.headers["Set-Cookie"].split(";")[0]
        assert cookie.startswith(SESSION_COOKIE + "="), cookie
        return {"Cookie": cookie}

    def reporter(self, base: str | None = None) -> dict[str, str]:
        return self.sign_in("reporter", self.reporter_password, base)

    def agency(self) -> dict[str, str]:
        return self.sign_in(self.agency_user, self.agency_password)

    def basic(self, user: str, password: str) -> dict[str, str]:
        token = f"{user}:{password}"
        return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}


def _oversight_user_xml(user: str, password: str) -> str:
    """A read-only user for an oversight office, reading what the reporter reads."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    grants = "".join(f"<query>GRANT SELECT ON {name}</query>" for name in REPORTER_READS)
    networks = "".join(f"<ip>{host}</ip>" for host in LOOPBACK)
    return (
        f"<clickhouse><users><{user}><password_sha256_hex>{digest}</password_sha256_hex>"
        f"<networks>{networks}</networks><profile>readonly</profile><quota>default</quota>"
        f"<grants>{grants}</grants></{user}></users></clickhouse>\n"
    )


@contextlib.contextmanager
def _serving(run: MeteringRun, tls: ssl.SSLContext, name: str, *flags: str) -> Iterator[str]:
    """`metering serve FLAGS` on a free port until the block ends; its https:// URL."""
    port = free_port()
    log_path = run.workdir / f"{name}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "serve", "--port", str(port), *flags],
        env=run.env,
        cwd=run.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, tls, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def served(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("oversight-page"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    applied = run.metering("access", "agency-user", "--agency", AGENCY, "--apply")
    assert applied.returncode == 0, applied.stderr
    [line] = [line for line in applied.stdout.splitlines() if "shown once" in line]
    password = line.rsplit(" ", 1)[1]
    users_d = run.store.server_dir / "users.d"
    (users_d / f"{OVERSIGHT_USER}.xml").write_text(
        _oversight_user_xml(OVERSIGHT_USER, OVERSIGHT_PASSWORD)
    )
    run.store.stop()
    run.store.start()  # the server reads users.d at start

    certificate = make_certificate(run.workdir / "tls")
    tls = ssl.create_default_context(cafile=str(certificate.cert))
    common = ("--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key))
    with (
        _serving(run, tls, "serve", *common, "--oversight-user", OVERSIGHT_USER) as url,
        _serving(run, tls, "serve-public", *common, "--public") as public_url,
    ):
        yield Served(
            run,
            url,
            public_url,
            f"govmeter_agency_{AGENCY.replace('-', '_')}",
            password,
            run.store.reporter_password(),
            certificate,
            tls,
        )


def _wait_until_healthy(
    url: str, tls: ssl.SSLContext, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"metering serve exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2, context=tls) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"metering serve did not answer within 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser_path() -> str:
    return chromium()


async def _load(page: Browser, url: str, headers: dict[str, str] | None = None) -> str:
    await page.open(url, headers)
    return await page.dom()


# ---------------------------------------------------------------------------------
# the expected numbers, from the store directly


def _expected(run: MeteringRun, period: Period, agency: str | None) -> PublishedReport:
    """The page's report recomputed from the views (sums) and counted_events (distinct
    users of a level, model or day), with the same suppression."""
    client = run.store.client()
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


def _check_aggregate(page: PageNumbers, report: PublishedReport) -> int:
    """The published aggregate: every tenant's headline and levels equal `report`, and
    nothing else is on the page (no agency, model or day)."""
    checked = 0
    assert set(page.headline) == {t.tenant for t in report.tenants}
    assert {kind for kind, _ in page.tables} == {"levels"}
    assert not any(page.bars.values())
    for tenant in report.tenants:
        name, total = tenant.tenant, tenant.total
        assert page.headline[name]["agencies"] == f"{total.row.agencies:,}", name
        for measure in MEASURES:
            assert page.headline[name][measure] == _shown(total, measure), (name, measure)
        table = page.tables[("levels", name)]
        assert list(table) == [c.row.key for c in tenant.levels], name
        for cell in tenant.levels:
            for measure in MEASURES:
                assert table[cell.row.key][measure] == _shown(cell, measure), (name, cell.row.key)
            share = share_pct(cell.messages, total.messages)
            assert table[cell.row.key]["message_share_pct"] == (
                "" if share is None else f"{share:.1f}%"
            )
            checked += 5
    return checked


def _agency_ids(run: MeteringRun) -> set[str]:
    rows = run.query("SELECT DISTINCT agency_id FROM metering.agency_daily")
    return {str(r["agency_id"]) for r in rows} - {"7"}  # "7" is a digit of many numbers


# ---------------------------------------------------------------------------------
# who sees what: the exact status of every page for every visitor


_PATHS = ("/", f"/agency/{AGENCY}", "/agency/fed-va", "/login", "/healthz")


def _statuses(served: Served, base: str, headers: dict[str, str]) -> dict[str, int]:
    return {path: served.fetch(base + path, headers, follow=False).status for path in _PATHS}


def test_who_sees_what_over_https(served: Served) -> None:
    visitors = {
        "anonymous": {},
        "reporter": served.reporter(),
        "oversight user": served.sign_in(OVERSIGHT_USER, OVERSIGHT_PASSWORD),
        "agency user": served.agency(),
    }
    seen = {name: _statuses(served, served.url, headers) for name, headers in visitors.items()}
    everything = {path: 200 for path in _PATHS}
    assert seen == {
        "anonymous": {
            "/": 303,
            f"/agency/{AGENCY}": 303,
            "/agency/fed-va": 303,
            "/login": 200,
            "/healthz": 200,
        },
        "reporter": everything,
        "oversight user": everything,
        "agency user": {
            "/": 303,  # to its own page
            f"/agency/{AGENCY}": 200,
            "/agency/fed-va": 403,
            "/login": 200,
            "/healthz": 200,
        },
    }
    public = {
        "anonymous": _statuses(served, served.public_url, {}),
        "reporter": _statuses(served, served.public_url, served.reporter(served.public_url)),
    }
    assert public == {
        "anonymous": {
            "/": 200,  # the published aggregate
            f"/agency/{AGENCY}": 303,
            "/agency/fed-va": 303,
            "/login": 200,
            "/healthz": 200,
        },
        "reporter": everything,
    }

    # Anonymous: every page goes to the sign-in form, which then goes back to that page.
    for base in (served.url, served.public_url):
        answer = served.fetch(f"{base}/agency/{AGENCY}{NOVEMBER}", follow=False)
        assert answer.headers["Location"] == f"/login?next=/agency/{AGENCY}?fy%3D2027%26month%3D11"
    assert served.fetch(served.url + "/", follow=False).headers["Location"] == "/login?next=/"
    form = served.fetch(f"{served.url}/agency/{AGENCY}{NOVEMBER}")
    assert (form.status, urllib.parse.urlsplit(form.url).path) == (200, "/login")
    assert 'action="/login"' in form.body and 'id="sign-in-password"' in form.body
    assert f'name="next" value="/agency/{AGENCY}?fy=2027&amp;month=11"' in form.body
    for name in ("chatgpt-gov", "chatgpt-enterprise", "data-table", "data-measure"):
        assert name not in form.body, name  # nothing of the report
    assert "published aggregate" not in form.body
    assert "published aggregate" in served.status(served.public_url + "/login")[1]

    # The session cookie: under TLS Secure and __Host-, always HttpOnly and SameSite=Strict.
    answer = served.fetch(
        served.url + "/login",
        form={"user": "reporter", "password": served.reporter_password, "next": "/?fy=2027"},
        follow=False,
    )
    assert (answer.status, answer.headers["Location"]) == (303, "/?fy=2027")
    [set_cookie] = answer.headers.get_all("Set-Cookie") or []
    first, *attributes = [part.strip() for part in set_cookie.split(";")]
    assert first.startswith(SESSION_COOKIE + "=") and len(first) > len(SESSION_COOKIE) + 40
    assert {a.lower() for a in attributes} == {"httponly", "path=/", "samesite=strict", "secure"}
    session = {"Cookie": first}
    assert served.fetch(served.url + "/?fy=2027", session, follow=False).status == 200

    # A wrong password, or a user that may not sign in here: 401, the form, one message.
    refusals = [
        (served.agency_user, "wrong"),
        ("reporter", "wrong"),
        (OVERSIGHT_USER, "wrong"),
        ("default", ""),  # the writer (no password on the local server)
        ("default", "x"),
        ("analyst", "x"),
    ]
    for user, password in refusals:
        answer = served.fetch(
            served.url + "/login",
            form={"user": user, "password": password, "next": "/"},
            follow=False,
        )
        assert answer.status == 401, (user, answer.status)
        assert answer.headers["WWW-Authenticate"] == 'Form realm="govmeter oversight page"'
        assert f'<p class="problem" role="alert">{html.escape(SIGN_IN_REFUSED)}</p>' in answer.body
        assert "Set-Cookie" not in answer.headers and 'action="/login"' in answer.body
    assert SIGN_IN_REFUSED == (
        "ClickHouse did not accept that user and password, or that user may not sign in "
        "here. Sign in with your agency's ClickHouse user (govmeter_agency_...) or an "
        "oversight user (such as reporter), and its password."
    )
    # A form posted from another site is refused before any sign-in.
    crossed = served.fetch(
        served.url + "/login",
        {"Sec-Fetch-Site": "cross-site"},
        form={"user": "reporter", "password": served.reporter_password},
        follow=False,
    )
    assert crossed.status == 403 and "Set-Cookie" not in crossed.headers

    # Signing out ends the session on the server: the same cookie then signs nobody in.
    out = served.fetch(served.url + "/logout", session, form={}, follow=False)
    assert (out.status, out.headers["Location"]) == (303, "/login")
    assert out.headers["Set-Cookie"].startswith(SESSION_COOKIE + '=""')
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    gone = served.fetch(served.url + "/?fy=2027", session, follow=False)
    assert (gone.status, gone.headers["Location"]) == (303, "/login?next=/?fy%3D2027")

    # TLS 1.2 or later only.
    with (
        socket.create_connection(("127.0.0.1", _port(served.url)), timeout=10) as raw,
        served.tls.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        assert wrapped.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.create_default_context(cafile=str(served.certificate.cert))
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", _port(served.url)), timeout=10) as raw,
        old.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


def test_a_non_loopback_host_needs_tls(served: Served, tmp_path: Path) -> None:
    port = free_port()
    refused = served.run.metering("serve", "--host", "0.0.0.0", "--port", str(port), timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        "metering serve: --host 0.0.0.0 is not a loopback address, and without TLS the "
        "sign-in would send ClickHouse passwords, the session cookie and the agencies' "
        "figures in clear text across that network: give --tls-cert PATH and --tls-key "
        "PATH (PEM files), or --insecure-http when a TLS-terminating proxy in front of the "
        "page is the only thing that reaches it\n"
    )
    missing = tmp_path / "missing-cert.pem"
    key = str(served.certificate.key)
    for flags, expected in (
        (
            ["--tls-cert", str(missing), "--tls-key", key],
            f"--tls-cert {missing}: cannot read it (No such file or directory)",
        ),
        (["--tls-cert", str(served.certificate.cert)], "--tls-cert needs --tls-key as well"),
        (
            ["--tls-cert", str(served.certificate.cert), "--tls-key", key, "--insecure-http"],
            "--insecure-http and --tls-cert/--tls-key contradict each other",
        ),
    ):
        answer = served.run.metering(
            "serve", "--host", "0.0.0.0", "--port", str(port), *flags, timeout=60
        )
        assert answer.returncode == 2, (flags, answer.stderr)
        assert answer.stderr.startswith(f"metering serve: {expected}"), (flags, answer.stderr)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing ever listened


# ---------------------------------------------------------------------------------
# the pages, read as the reporter and the oversight user


def test_the_page_shows_the_numbers_of_the_views(served: Served, browser_path: str) -> None:
    reporter = served.reporter()
    oversight = served.sign_in(OVERSIGHT_USER, OVERSIGHT_PASSWORD)
    periods = (
        (NOVEMBER, month("2026-11")),
        ("?fy=2027&month=10", month("2026-10")),
        ("?fy=2027&month=all", fiscal_year("2027")),
    )

    async def pages() -> tuple[list[str], str]:
        async with browser(browser_path, flags=served.chromium_flags) as page:
            found = [await _load(page, served.url + "/" + query, reporter) for query, _ in periods]
            return found, await _load(page, served.url + "/" + NOVEMBER, oversight)

    doms, office = asyncio.run(pages())
    for dom, (_, period) in zip(doms, periods, strict=True):
        page = read_numbers(dom)
        expected = _expected(served.run, period, None)
        assert {t.tenant for t in expected.tenants} == {"chatgpt-gov", "chatgpt-enterprise"}
        assert _check_page(page, expected) > 100
        assert f"Adoption report {period.label}" in dom
        assert "Signed in as reporter." in dom
        suppressed = [
            c
            for t in expected.tenants
            for c in (*t.levels, *t.models, *t.days, *t.top_agencies)
            if c.suppressed
        ]
        if period.label == "2026-11":
            assert suppressed, "the corpus has small cells in November"
            assert re.search(r'<option value="2027" selected="?"?>FY2027</option>', dom)
            assert re.search(r'<option value="11" selected="?"?>November</option>', dom)
    # The oversight office's own user sees what the reporter sees.
    assert read_numbers(office).tables == read_numbers(doms[0]).tables
    assert f"Signed in as {OVERSIGHT_USER}." in office


def test_the_page_of_one_agency_and_the_pickers(served: Served, browser_path: str) -> None:
    reporter = served.reporter()

    async def page_of_fed_va() -> str:
        async with browser(browser_path, flags=served.chromium_flags) as page:
            return await _load(page, f"{served.url}/agency/fed-va{NOVEMBER}", reporter)

    dom = asyncio.run(page_of_fed_va())
    assert _check_page(read_numbers(dom), _expected(served.run, month("2026-11"), "fed-va"))
    # The form's agency picker lands on the same page.
    status, body, final = served.status(f"{served.url}/?fy=2027&month=11&agency=fed-va", reporter)
    assert (status, final) == (200, f"{served.url}/agency/fed-va?fy=2027&month=11")
    assert _check_page(read_numbers(body), _expected(served.run, month("2026-11"), "fed-va"))
    for bad in ("?fy=20x7", "?fy=2027&month=13", "?agency=FED%20VA"):
        assert served.status(served.url + "/" + bad, reporter)[0] == 400, bad
    # No query parameter lowers the suppression threshold.
    loose = served.status(f"{served.url}/{NOVEMBER}&min_cell_users=1&min-cell-users=1", reporter)
    strict = served.status(served.url + "/" + NOVEMBER, reporter)
    assert read_numbers(loose[1]).tables == read_numbers(strict[1]).tables


# ---------------------------------------------------------------------------------
# the published aggregate (--public)


def test_the_published_aggregate_without_sign_in(served: Served, browser_path: str) -> None:
    dom = headless(
        browser_path,
        served.run.workdir / "profile-public",
        *served.chromium_flags,
        "--dump-dom",
        served.public_url + "/" + NOVEMBER,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    expected = _expected(served.run, month("2026-11"), None)
    assert _check_aggregate(read_numbers(dom.stdout), expected) > 20
    for agency in _agency_ids(served.run):
        assert agency not in dom.stdout, agency
    assert 'id="pick-agency"' not in dom.stdout and "/agency/" not in dom.stdout
    assert '<a href="/login">Sign in</a>' in dom.stdout
    # The aggregate is the same whatever query parameter is added.
    loose = served.status(f"{served.public_url}/{NOVEMBER}&min_cell_users=1&agency_level=x")
    assert loose[0] == 200
    assert read_numbers(loose[1]).tables == read_numbers(dom.stdout).tables
    # Signed in on the same server, the reporter sees everything.
    full = served.status(served.public_url + "/" + NOVEMBER, served.reporter(served.public_url))
    assert full[0] == 200 and _check_page(read_numbers(full[1]), expected) > 100


# ---------------------------------------------------------------------------------
# an agency user


def _submit(user: str, password: str) -> str:
    """Script filling in and sending the sign-in form."""
    return (
        "(() => {"
        f"document.getElementById('sign-in-user').value = {_js(user)};"
        f"document.getElementById('sign-in-password').value = {_js(password)};"
        "document.querySelector('form.sign-in').submit(); })()"
    )


def _js(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_an_agency_user_sees_only_its_agency(served: Served, browser_path: str) -> None:
    async def sign_in_in_chromium() -> dict[str, Any]:
        found: dict[str, Any] = {}
        async with browser(browser_path, flags=served.chromium_flags) as page:
            await page.open(served.url + "/" + NOVEMBER)
            found["asked"] = await page.evaluate("location.pathname + location.search")
            await page.follow(_submit(served.agency_user, "wrong"))
            found["refused"] = await page.dom()
            await page.follow(_submit(served.agency_user, served.agency_password))
            found["location"] = await page.evaluate("location.pathname + location.search")
            found["html"] = await page.dom()
            found["script_cookies"] = await page.evaluate("document.cookie")
            await page.open(f"{served.url}/agency/fed-va{NOVEMBER}")
            found["other"] = await page.dom()
            await page.open(f"{served.url}/agency/{AGENCY}{NOVEMBER}")
            await page.follow("document.querySelector('form[action=\"/logout\"]').submit()")
            found["after_sign_out"] = await page.evaluate("location.pathname")
            await page.open(f"{served.url}/agency/{AGENCY}{NOVEMBER}")
            found["signed_out"] = await page.evaluate("location.pathname")
        return found

    found = asyncio.run(sign_in_in_chromium())
    assert found["asked"] == "/login?next=/?fy%3D2027%26month%3D11"
    assert SIGN_IN_REFUSED in found["refused"]  # Chromium shows the 401 page: the form
    assert found["location"] == f"/agency/{AGENCY}{NOVEMBER}"
    assert found["script_cookies"] == ""  # HttpOnly: no script reads the session
    page = read_numbers(found["html"])
    expected = _expected(served.run, month("2026-11"), AGENCY)
    assert _check_page(page, expected) > 20
    gov = next(t for t in expected.tenants if t.tenant == "chatgpt-gov")
    assert gov.total.suppression == "primary"  # 9 users in chatgpt-gov: suppressed even here
    assert page.headline["chatgpt-gov"]["messages"] == "s"
    for (kind, _), rows in page.tables.items():
        if kind == "agencies":
            assert set(rows) <= {AGENCY}
    for other in _agency_ids(served.run) - {AGENCY}:
        assert other not in found["html"], other
    assert f"Signed in as {served.agency_user}." in found["html"]
    assert 'id="pick-agency"' not in found["html"]  # its page only: no agency picker
    assert "you can see its page only" in found["other"]
    assert (found["after_sign_out"], found["signed_out"]) == ("/login", "/login")

    # ClickHouse's row filters decide: the same user never reaches another agency's page.
    session = served.agency()
    assert served.status(f"{served.url}/agency/fed-va{NOVEMBER}", session)[0] == 403
    status, _, final = served.status(f"{served.url}/?agency=fed-va&fy=2027&month=11", session)
    assert status == 200 and final.endswith(f"/agency/{AGENCY}?fy=2027&month=11")
    # Scripts may send HTTP Basic credentials on every request instead of a session.
    basic = served.basic(served.agency_user, served.agency_password)
    assert served.status(f"{served.url}/agency/{AGENCY}{NOVEMBER}", basic)[0] == 200
    assert served.status(f"{served.url}/agency/fed-va{NOVEMBER}", basic)[0] == 403
    for user, password in ((served.agency_user, "wrong"), ("reporter", "x"), ("default", "-")):
        for path in ("/", f"/agency/{AGENCY}"):
            answer = served.fetch(served.url + path, served.basic(user, password))
            assert answer.status == 401, (user, path)
            assert answer.headers["WWW-Authenticate"].startswith("Basic "), (user, path)


# ---------------------------------------------------------------------------------
# screenshot


def test_a_screenshot_of_the_page(served: Served, browser_path: str) -> None:
    reporter = served.reporter()

    async def shoot() -> bytes:
        async with browser(browser_path, 1280, 2000, flags=served.chromium_flags) as page:
            await page.open(served.url + "/" + NOVEMBER, reporter)
            return await page.screenshot(1280, 2000)

    png = asyncio.run(shoot())
    (served.run.workdir / "oversight-page.png").write_bytes(png)
    image = read_png(png)
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


# Pages with no report on them: a message, or the sign-in form.
_NO_REPORT = ("refused page", "sign-in page", "sign-in refused")


def test_every_page_passes_axe_and_works_by_keyboard(
    served: Served, browser_path: str, tmp_path: Path
) -> None:
    static = tmp_path / "adoption.html"
    made = served.run.metering(
        "report", "adoption", "--month", "2026-11", "--format", "html", "--out", str(static)
    )
    assert made.returncode == 0, made.stderr
    reporter, agency = served.reporter(), served.agency()
    Step = Callable[[Browser], Awaitable[None]]

    def opening(url: str, headers: dict[str, str] | None = None) -> Step:
        async def step(page: Browser) -> None:
            await page.open(url, headers)

        return step

    async def refused_sign_in(page: Browser) -> None:
        await page.open(served.url + "/login")
        await page.follow(_submit(served.agency_user, "wrong"))

    pages: list[tuple[str, Step]] = [
        ("static report", opening(static.as_uri())),
        ("sign-in page", opening(f"{served.url}/agency/fed-va{NOVEMBER}")),  # redirected
        ("sign-in refused", refused_sign_in),
        ("public aggregate", opening(served.public_url + "/" + NOVEMBER)),
        ("live page", opening(served.url + "/" + NOVEMBER, reporter)),
        ("fiscal year", opening(served.url + "/?fy=2027&month=all", reporter)),
        ("agency page", opening(f"{served.url}/agency/fed-va{NOVEMBER}", reporter)),
        ("agency user", opening(f"{served.url}/agency/{AGENCY}{NOVEMBER}", agency)),
        ("refused page", opening(f"{served.url}/agency/fed-va{NOVEMBER}", agency)),
    ]
    source = axe_source()

    async def audit() -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        async with browser(browser_path, flags=served.chromium_flags) as page:
            for name, prepare in pages:
                await prepare(page)
                location = await page.evaluate("location.pathname")
                result = await page.axe(source)
                charts = await page.evaluate(_CHART_FACTS)
                headings = await page.evaluate(_HEADINGS)
                walk = await page.tab_walk()
                await prepare(page)
                await page.press("Tab")
                await page.press("Enter")
                after_skip = await page.evaluate("location.hash + ' ' + document.activeElement.id")
                found[name] = {
                    "location": location,
                    "axe": result,
                    "charts": charts,
                    "headings": headings,
                    "walk": walk,
                    "after_skip": after_skip,
                }
        return found

    found = asyncio.run(audit())
    assert found["sign-in page"]["location"] == found["sign-in refused"]["location"] == "/login"
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
        if name in _NO_REPORT:
            continue
        charts = facts["charts"]
        # Four per tenant; the aggregate has the levels of government only.
        assert len(charts) == (2 if name == "public aggregate" else 8), name
        for chart in charts:
            assert chart["name"] and len(chart["description"]) > 20, (name, chart)
            assert chart["svg_alternative"], (name, chart)
            assert chart["caption"] and chart["table_rows"] >= 1, (name, chart)
    for name in ("sign-in page", "sign-in refused"):
        fields = [s.id for s in found[name]["walk"] if s.id.startswith("sign-in-")]
        assert fields == ["sign-in-user", "sign-in-password"], name
        assert any(s.tag == "button" and s.name == "Sign in" for s in found[name]["walk"]), name
    controls = [stop.id for stop in found["live page"]["walk"] if stop.id.startswith("pick-")]
    assert controls == ["pick-fy", "pick-month", "pick-agency"]
    assert any(stop.tag == "button" for stop in found["live page"]["walk"])
    assert any(stop.name == "Sign out" for stop in found["live page"]["walk"])
    assert any(stop.href.startswith("/agency/") for stop in found["live page"]["walk"])
    assert [s.id for s in found["agency user"]["walk"] if s.id.startswith("pick-")] == [
        "pick-fy",
        "pick-month",
    ]
    assert [s.id for s in found["public aggregate"]["walk"] if s.id.startswith("pick-")] == [
        "pick-fy",
        "pick-month",
    ]
