"""The HTML report's markup for Section 508: every chart has a text alternative and a data
table beside it, colour is never alone, the page is usable by keyboard. (axe-core runs
on the rendered pages in tests/accessibility and tests/integration/test_oversight_page.)"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import date, timedelta
from html.parser import HTMLParser

from metering.oversight.adoption import Adoption, UsageRow
from metering.oversight.render_html import LEVEL_COLOURS, render_html, report_body
from metering.oversight.suppression import PublishedReport, publish
from metering.periods import fiscal_year, month
from tests.accessibility.page_dom import read_numbers

SECRET = 7  # the users of the one small agency: never on the page


def _row(tenant: str, key: str, users: int, messages: int, level: str = "") -> UsageRow:
    return UsageRow(tenant, key, level, 1, users, messages, messages * 30, messages * 12)


def sample(days: int = 2) -> PublishedReport:
    period = month("2026-11") if days <= 30 else fiscal_year("2027")
    first = period.start
    # local-tiny is suppressed (7 users); state-ut, the smallest other, goes with it.
    agencies = [
        _row("gov", "fed-gsa", 40, 400, "federal"),
        _row("gov", "state-ca", 25, 250, "state"),
        _row("gov", "state-ut", 11, 50, "state"),
        _row("gov", "local-nyc", 15, 150, "local"),
        _row("gov", "local-tiny", SECRET, 111, "local"),
    ]
    adoption = Adoption(
        period=period,
        agency=None,
        tenants=(UsageRow("gov", "", "", 5, 98, 961, 961 * 30, 961 * 12),),
        levels=(
            UsageRow("gov", "federal", "", 1, 40, 400, 12000, 4800),
            UsageRow("gov", "state", "", 2, 36, 300, 9000, 3600),
            UsageRow("gov", "local", "", 2, 22, 261, 7830, 3132),
        ),
        agencies=tuple(agencies),
        models=(
            _row("gov", "gpt-4o", 80, 700),
            _row("gov", "o3", 30, 150),
            _row("gov", "ft:" + "m" * 60, 3, 111),
        ),
        days=tuple(
            _row("gov", (first + timedelta(days=i)).isoformat(), 30 + i % 9, 20 + i)
            for i in range(days)
        ),
        data_through=first + timedelta(days=days - 1),
    )
    return publish(adoption, 10, top=10)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def tags(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def test_the_page_has_a_language_a_skip_link_and_headings_in_order() -> None:
    html = render_html(sample())
    assert '<html lang="en">' in html
    found = tags(html)
    first_link = next(a for tag, a in found if tag == "a")
    assert first_link == {"class": "skip-link", "href": "#main"}
    assert ("main", {"id": "main", "tabindex": "-1"}) in found
    levels = [int(tag[1]) for tag, _ in found if re.fullmatch(r"h[1-6]", tag)]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), levels
    assert ":focus-visible" in html and ".skip-link:focus" in html


def test_every_chart_is_an_image_named_and_described_with_a_data_table_beside_it() -> None:
    html = render_html(sample())
    found = tags(html)
    ids = Counter(a["id"] for _, a in found if "id" in a)
    assert [i for i, n in ids.items() if n > 1] == []  # ids are unique: references hold
    svgs = [a for tag, a in found if tag == "svg"]
    assert len(svgs) == 4
    for svg in svgs:
        assert svg["role"] == "img"
        assert ids[svg["aria-labelledby"]] == 1 and ids[svg["aria-describedby"]] == 1
    for figure in re.findall(r'<figure class="chart.*?</figure>', html, flags=re.S):
        assert figure.count("<svg") == 1 and figure.count("<table") == 1
        assert "<caption>" in figure and 'scope="col"' in figure
        summary = re.search(r'<p class="summary" id="[^"]+">([^<]+)</p>', figure)
        assert summary is not None and len(summary.group(1)) > 30
    numbers = read_numbers(html)
    assert set(numbers.tables) == {(k, "gov") for k in ("days", "levels", "agencies", "models")}


def test_the_text_alternatives_say_what_the_charts_show_and_never_a_suppressed_figure() -> None:
    html = render_html(sample())
    assert "Share of the tenant&#x27;s messages: federal 400 (41.6%); state 300 (31.2%)" in html
    assert "Highest: fed-gsa (federal) with 400 messages" in html
    assert "Most: 21 on 2026-11-02; fewest: 20 on 2026-11-01" in html
    assert "ft:" + "m" * 60 + " suppressed" in html
    # local-tiny (7 users) is suppressed: not ranked, so not named, and neither its users
    # nor its messages appear (nor those of the fine-tuned model, 3 users, 111 messages).
    assert "local-tiny" not in html and "state-ut" not in html
    assert f">{SECRET}<" not in html and "111" not in html and "3,330" not in html
    assert "gpt-4o 29,400 tokens" in html


def test_colour_is_never_the_only_carrier_of_meaning() -> None:
    html = render_html(sample())
    # Agency bars are coloured by level, and each names its level in text.
    for agency, level in (("fed-gsa", "federal"), ("state-ca", "state"), ("local-nyc", "local")):
        assert f"msgs · {level}" in html, agency
    # Donut slices carry their share as text, and the legend names each level.
    assert re.search(r'class="on-colour"[^>]*>42%</text>', html)
    for level in LEVEL_COLOURS:
        assert f"{level} &middot;" in html
    # Suppressed bars are hatched and say so.
    assert "suppressed: fewer than 10 active users" in html
    assert 'data-suppressed="true"' in html


def test_a_long_trend_table_scrolls_in_a_focusable_named_region() -> None:
    html = render_html(sample(days=200))
    region = re.search(
        r'class="table-scroll" tabindex="0" role="region" aria-label="([^"]+)"', html
    )
    assert region is not None and region.group(1) == "Usage per UTC day, gov"
    assert html.count('class="table-scroll"') == 1  # the other tables are short


def test_agency_links_on_the_live_page_only() -> None:
    report = sample()
    assert "<a href" not in report_body(report).replace('href="#main"', "")
    body = report_body(report, lambda agency: f"/agency/{agency}?fy=2027")
    assert '<a href="/agency/fed-gsa?fy=2027">fed-gsa</a>' in body


def test_an_empty_period_says_so() -> None:
    empty = Adoption(month("2026-12"), None, (), (), (), (), (), None)
    html = render_html(publish(empty, 10, top=10))
    assert "No counted usage in this period." in html and "<svg" not in html


def test_trend_days_stop_at_the_data() -> None:
    report = sample()
    assert report.trend_days[-1] == date(2026, 11, 2)
    assert "Data through 2026-11-02." in render_html(report)
