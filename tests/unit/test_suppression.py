"""Small-cell suppression (rules in metering/oversight/suppression.py) and its renderers."""

from __future__ import annotations

import json
from datetime import date

from metering.oversight.adoption import Adoption, UsageRow
from metering.oversight.render_html import render_html
from metering.oversight.render_text import render_csv, render_json, render_table
from metering.oversight.suppression import Cell, publish, suppress
from metering.periods import month


def row(
    key: str, users: int, messages: int = 100, tenant: str = "gov", level: str = ""
) -> UsageRow:
    return UsageRow(tenant, key, level, 1, users, messages, messages * 10, messages * 5)


def marks(cells: list[Cell]) -> dict[str, str]:
    return {c.row.key: c.suppression for c in cells}


def test_a_row_below_the_threshold_loses_every_measure_but_keeps_its_key() -> None:
    (cell,) = suppress([row("small", 9)], 10, splits_total=False)
    assert cell.suppressed and cell.suppression == "primary"
    assert (cell.active_users, cell.messages, cell.tokens_in, cell.tokens_out) == (
        None,
        None,
        None,
        None,
    )
    assert cell.row.key == "small" and cell.row.agencies == 1
    (exact,) = suppress([row("ten", 10)], 10, splits_total=False)
    assert not exact.suppressed and exact.active_users == 10


def test_a_lone_suppressed_row_in_a_split_takes_the_smallest_other_row_with_it() -> None:
    cells = suppress([row("a", 50), row("b", 3), row("c", 12), row("d", 30)], 10, splits_total=True)
    assert marks(cells) == {"a": "", "b": "primary", "c": "complementary", "d": ""}


def test_complementary_suppression_continues_until_n_users_are_hidden() -> None:
    # Two primary rows of 2 and 3 users hide only 5 users: one more row must go.
    cells = suppress([row("a", 2), row("b", 3), row("c", 11), row("d", 40)], 10, splits_total=True)
    assert marks(cells) == {"a": "primary", "b": "primary", "c": "complementary", "d": ""}
    # Two primary rows of 6 and 7 users already hide 13: nothing more.
    cells = suppress([row("a", 6), row("b", 7), row("c", 11)], 10, splits_total=True)
    assert marks(cells) == {"a": "primary", "b": "primary", "c": ""}


def test_ties_are_broken_by_messages_then_key_and_groups_are_per_tenant() -> None:
    rows = [
        row("x", 4),
        row("p", 20, messages=7),
        row("q", 20, messages=5),
        row("r", 20, messages=5),
        row("x", 40, tenant="ent"),
        row("y", 50, tenant="ent"),
    ]
    cells = suppress(rows, 10, splits_total=True)
    assert [c.suppression for c in cells] == ["primary", "", "complementary", "", "", ""]


def test_when_every_row_is_small_all_are_suppressed_and_nothing_more_is_needed() -> None:
    cells = suppress([row("a", 2), row("b", 3)], 10, splits_total=True)
    assert marks(cells) == {"a": "primary", "b": "primary"}


def test_rows_that_do_not_split_a_total_get_primary_suppression_only() -> None:
    cells = suppress([row("a", 50), row("b", 3)], 10, splits_total=False)
    assert marks(cells) == {"a": "", "b": "primary"}


def test_min_cell_users_of_one_suppresses_nothing() -> None:
    cells = suppress([row("a", 1), row("b", 2)], 1, splits_total=True)
    assert marks(cells) == {"a": "", "b": ""}


SECRET = 987_654  # messages of a suppressed agency: must appear in no output


def adoption() -> Adoption:
    levels = (
        UsageRow("gov", "federal", "", 2, 40, 300, 3000, 1500),
        UsageRow("gov", "state", "", 1, 4, SECRET, 11, 12),
        UsageRow("gov", "local", "", 1, 11, 60, 600, 300),
    )
    agencies = (
        UsageRow("gov", "fed-big", "federal", 1, 30, 200, 2000, 1000),
        UsageRow("gov", "fed-mid", "federal", 1, 12, 100, 1000, 500),
        UsageRow("gov", "state-small", "state", 1, 4, SECRET, 11, 12),
        UsageRow("gov", "local-one", "local", 1, 11, 60, 600, 300),
    )
    models = (
        UsageRow("gov", "gpt-4o", "", 4, 50, 350, 3500, 1800),
        UsageRow("gov", "<b>ft:evil&model</b>", "", 1, 2, SECRET, 111, 12),
    )
    days = (UsageRow("gov", "2026-10-30", "", 4, 55, 360 + SECRET, 3611, 1812),)
    return Adoption(
        period=month("2026-10"),
        agency=None,
        tenants=(UsageRow("gov", "", "", 4, 55, 360 + SECRET, 3611, 1812),),
        levels=levels,
        agencies=agencies,
        models=models,
        days=days,
        data_through=date(2026, 10, 31),
    )


def test_published_report_ranks_only_unsuppressed_agencies_and_hides_small_cells() -> None:
    report = publish(adoption(), 10, top=10)
    (tenant,) = report.tenants
    assert [c.row.key for c in tenant.top_agencies] == ["fed-big", "fed-mid"]
    # state-small is primary; local-one (11 users) is complementary: the two together hide
    # 15 users, so subtracting the ranked agencies from the total reveals no single agency.
    assert tenant.agencies_not_ranked == 2
    assert {c.row.key: c.suppression for c in tenant.levels} == {
        "federal": "",
        "state": "primary",
        "local": "complementary",
    }
    assert report.trend_days[0] == date(2026, 10, 1) and report.trend_days[-1] == date(2026, 10, 31)


def test_no_renderer_shows_a_suppressed_figure() -> None:
    report = publish(adoption(), 10, top=10)
    document = json.loads(render_json(report))
    (tenant,) = document["tenants"]
    assert tenant["tenant"] == "gov" and tenant["agencies"] == 4 and tenant["active_users"] == 55
    state = next(r for r in tenant["by_level"] if r["agency_level"] == "state")
    assert state == {
        "agency_level": "state",
        "agencies": 1,
        "active_users": None,
        "messages": None,
        "tokens_in": None,
        "tokens_out": None,
        "suppressed": True,
        "suppression": "primary",
        "message_share_pct": None,
    }
    model = next(r for r in tenant["by_model"] if r["suppressed"])
    assert model["token_share_pct"] is None
    table, csv_text, html = render_table(report), render_csv(report), render_html(report)
    assert "<10" in table and " c " in table + " "
    for text in (render_json(report), table, csv_text, html):
        assert str(SECRET) not in text and f"{SECRET:,}" not in text
        assert str(SECRET * 10) not in text  # tokens of the suppressed row
    # the tenant total (55 users) is published: it includes the hidden rows, never alone
    assert f"{360 + SECRET:,}" in html


def test_html_is_self_contained_and_escapes_names() -> None:
    html = render_html(publish(adoption(), 10, top=10))
    assert "<b>ft:evil&model</b>" not in html
    assert "&lt;b&gt;ft:evil&amp;model&lt;/b&gt;" in html
    for forbidden in ("<script", "http://", "https://", "@import", "<link"):
        assert forbidden not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert html.count("<svg") == 4  # per tenant: days, levels, top agencies, models
