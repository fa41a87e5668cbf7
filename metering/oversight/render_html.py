"""Render a published adoption report as one self-contained HTML page.

No network and no scripts: inline CSS and inline SVG charts drawn here. Per tenant:
headline figures, then four charts (usage per day, share of messages by level of
government, top agencies, tokens by model). Every chart has a text alternative (the
SVG is an image named by its heading and described by a sentence summing it up) and,
beside it, a data table with every number it draws. Suppressed cells are drawn as
hatched stubs labelled "suppressed" and written as "<N", "s" or "c", exactly as in
the text table.

Section 508 (WCAG 2.1 AA): `lang`, a skip link to `main`, headings in order (h1 page,
h2 tenant, h3 chart), a visible focus ring on every focusable element, colour never
the only carrier of meaning (levels are named beside their bars and in the legend,
slices carry their share as text, suppression is written out), table headers with
scopes and captions. `metering serve` (metering.oversight.web) builds its live page
from the same pieces: `page_document`, `report_header` and `report_body`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from metering.oversight.render_text import SUPPRESSION_NOTE, share_pct
from metering.oversight.suppression import Cell, PublishedReport, PublishedTenant

__all__ = [
    "CSS",
    "LEVEL_COLOURS",
    "AgencyLink",
    "page_document",
    "render_html",
    "report_body",
    "report_header",
]

# Level colours: each at least 4.5:1 against white (white share labels sit on them).
LEVEL_COLOURS: Final = {"federal": "#1d4e89", "state": "#1f7a70", "local": "#a35200"}
OTHER_COLOUR: Final = "#5a4fa2"
BAR_COLOUR: Final = "#2f6fb3"
MODEL_COLOUR: Final = "#5a4fa2"
SUPPRESSED_STROKE: Final = "#5d6670"  # 3:1 against white: the stub is visible as a shape

# An agency id to the address of its page (the live page), or None (the static page).
AgencyLink = Callable[[str], str] | None

CSS: Final = """
:root { --ink:#1b1f24; --muted:#5d6670; --rule:#d9dee4; --panel:#f6f8fa; --accent:#1d4e89;
        --focus:#ffdd00; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 "Liberation Sans", "DejaVu Sans", Arial, sans-serif;
       color: var(--ink); background: #fff; }
a { color: var(--accent); text-decoration: underline; }
.skip-link { position: absolute; left: -10000px; top: 0; z-index: 10; padding: 8px 14px;
             background: var(--focus); color: #0b0c0c; font-weight: 700; }
.skip-link:focus { left: 8px; top: 8px; }
:focus-visible { outline: 3px solid #0b0c0c; outline-offset: 2px;
                 box-shadow: 0 0 0 5px var(--focus); }
header :focus-visible, nav :focus-visible { outline-color: var(--focus); box-shadow: none; }
main:focus, main:focus-visible { outline: none; box-shadow: none; }
header { padding: 28px 40px 18px; background: #0f2a47; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 600; }
header p { margin: 2px 0; color: #dce5f0; }
header a { color: #fff; }
nav.controls { padding: 12px 40px; background: #16365a; color: #fff; display: flex;
               flex-wrap: wrap; gap: 10px 18px; align-items: flex-end; }
nav.controls form { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: flex-end;
                    margin: 0; }
nav.controls label { display: flex; flex-direction: column; font-size: 13px; gap: 3px; }
nav.controls select { max-width: 24em; }
nav.controls select, nav.controls button { font: inherit; padding: 5px 8px; border-radius: 4px;
        border: 1px solid #8fa6c1; background: #fff; color: var(--ink); min-height: 34px; }
nav.controls button { background: #ffdd00; border-color: #ffdd00; font-weight: 700;
                      cursor: pointer; }
nav.controls .who { margin-left: auto; font-size: 13px; display: flex; flex-wrap: wrap;
                    gap: 6px 12px; align-items: center; }
nav.controls .who p { margin: 0; }
nav.controls .who button { background: transparent; border-color: #fff; color: #fff;
                           font-weight: 400; }
nav.controls a { color: #fff; }
form.sign-in { display: grid; gap: 4px; max-width: 26em; margin: 18px 0; }
form.sign-in label { font-weight: 600; margin-top: 10px; }
form.sign-in input { font: inherit; padding: 6px 8px; min-height: 36px; border-radius: 4px;
                     border: 1px solid var(--muted); color: var(--ink); background: #fff; }
form.sign-in button { justify-self: start; margin-top: 16px; font: inherit; font-weight: 700;
                      padding: 7px 18px; border-radius: 4px; border: 1px solid #0f2a47;
                      background: #0f2a47; color: #fff; cursor: pointer; }
.problem { margin: 18px 0 0; padding: 10px 14px; border-left: 5px solid #a4262c;
           background: #fdf2f2; }
main { display: block; padding: 8px 40px 40px; max-width: 1280px; }
section.tenant { margin-top: 28px; }
h2 { font-size: 22px; margin: 0 0 12px; padding-bottom: 6px;
     border-bottom: 2px solid var(--rule); }
h3 { font-size: 17px; margin: 0 0 4px; font-weight: 600; }
.kpis { display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 12px;
        margin: 0 0 18px; }
.kpi { background: var(--panel); border-radius: 8px; padding: 12px 14px; }
.kpi .value { font-size: 26px; font-weight: 700; margin: 0; }
.kpi .label { color: var(--muted); font-size: 13px; text-transform: uppercase;
              letter-spacing: .04em; }
figure.chart { margin: 0 0 18px; background: #fff; border: 1px solid var(--rule);
               border-radius: 8px; padding: 14px 16px; }
figcaption .summary { margin: 0 0 10px; color: var(--muted); font-size: 13px; }
.chart-body { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 18px;
              align-items: start; }
figure.wide .chart-body { grid-template-columns: minmax(0, 1fr); }
svg { display: block; width: 100%; height: auto; }
svg text { font-family: "Liberation Sans", "DejaVu Sans", Arial, sans-serif; fill: var(--ink); }
svg .axis { fill: var(--muted); font-size: 11px; }
svg .grid { stroke: #e6e9ed; }
svg text.on-colour { fill: #fff; font-weight: 700; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 8px 0 0; padding: 0;
          list-style: none; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
          vertical-align: -1px; border: 1px solid var(--ink); }
.donut { display: flex; gap: 18px; align-items: center; }
.donut .plot { width: 220px; flex: none; }
.donut .legend { flex-direction: column; }
.note { color: var(--muted); font-size: 13px; }
.table-scroll { max-height: 24em; overflow: auto; border: 1px solid var(--rule); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 0 0 6px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--rule); text-align: left;
         white-space: nowrap; }
thead th { background: var(--panel); font-weight: 600; position: sticky; top: 0;
           white-space: normal; vertical-align: bottom; }
tbody th { font-weight: 400; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.suppressed { color: var(--muted); font-style: italic; }
.wrap { white-space: normal; overflow-wrap: anywhere; }
"""


def _hatch(pattern_id: str) -> str:
    return (
        f'<defs><pattern id="{pattern_id}" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eceef1"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#5d6670" stroke-width="2"/></pattern></defs>'
    )


def render_html(report: PublishedReport) -> str:
    return page_document(
        title=f"Adoption report {report.period.label}",
        header_html=report_header(report),
        main_html=report_body(report),
    )


def page_document(*, title: str, header_html: str, main_html: str, nav_html: str = "") -> str:
    """The page around a report: language, skip link, landmarks, inline CSS."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<a class="skip-link" href="#main">Skip to main content</a>
<header>
{header_html}
</header>
{nav_html}
<main id="main" tabindex="-1">
{main_html}
</main>
</body>
</html>
"""


def report_header(report: PublishedReport, scope: str | None = None) -> str:
    """The page heading, the period and scope, and what suppression means."""
    period = report.period
    if scope is None:
        scope = f"agency {report.agency}" if report.agency else "all agencies"
    return (
        f"<h1>{escape(f'Adoption report {period.label}')}</h1>\n"
        f"<p>{escape(period.describe())} &middot; {escape(scope)}</p>\n"
        f"<p>{escape(SUPPRESSION_NOTE.format(n=report.min_cell_users))}</p>"
    )


def report_body(
    report: PublishedReport, agency_link: AgencyLink = None, *, aggregate_only: bool = False
) -> str:
    """One section per tenant; `agency_link` makes agency ids links to their pages.
    `aggregate_only`: the headline figures and the levels of government, nothing else."""
    if not report.tenants:
        return '<p class="note">No counted usage in this period.</p>'
    return "\n".join(
        _tenant_section(t, report, agency_link, aggregate_only=aggregate_only)
        for t in report.tenants
    )


def _fmt(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}%"


def _tenant_section(
    tenant: PublishedTenant, report: PublishedReport, link: AgencyLink, *, aggregate_only: bool
) -> str:
    name = escape(tenant.tenant)
    total = tenant.total
    n = report.min_cell_users
    kpis = "".join(
        f'<div class="kpi"><dt class="label">{label}</dt>'
        f'<dd class="value" data-measure="{key}">{_figure(value, total, n, key)}</dd></div>'
        for label, key, value in (
            ("Agencies", "agencies", total.row.agencies),
            ("Active users", "active_users", total.active_users),
            ("Messages", "messages", total.messages),
            ("Tokens in", "tokens_in", total.tokens_in),
            ("Tokens out", "tokens_out", total.tokens_out),
        )
    )
    base = f"tenant-{name}"
    if aggregate_only:
        charts = _level_figure(tenant, n, f"{base}-levels")
    else:
        charts = "".join(
            [
                _daily_figure(tenant, report, f"{base}-daily"),
                _level_figure(tenant, n, f"{base}-levels"),
                _agency_figure(tenant, report, f"{base}-agencies", link),
                _model_figure(tenant, n, f"{base}-models"),
            ]
        )
    return f"""<section class="tenant" id="{base}" data-tenant="{name}" \
aria-labelledby="{base}-title">
<h2 id="{base}-title">{name}</h2>
<dl class="kpis">{kpis}</dl>
{charts}
</section>"""


def _figure(value: int | None, cell: Cell, n: int, key: str) -> str:
    if key == "agencies" or not cell.suppressed:
        return escape(_fmt(value))
    return f"&lt;{n}" if key == "active_users" and cell.suppression == "primary" else "s"


def _cells(cell: Cell, n: int) -> list[str]:
    if cell.suppression == "primary":
        return [f"<{n}", "s", "s", "s"]
    if cell.suppression == "complementary":
        return ["c", "c", "c", "c"]
    return [
        _fmt(cell.active_users),
        _fmt(cell.messages),
        _fmt(cell.tokens_in),
        _fmt(cell.tokens_out),
    ]


_MEASURES: Final = ("active_users", "messages", "tokens_in", "tokens_out")


def _chart_figure(
    cid: str, title: str, summary: str, chart: str, table: str, *, wide: bool = False
) -> str:
    """A chart with its text alternative (heading + summary) and its data table beside it."""
    cls = "chart wide" if wide else "chart"
    return (
        f'<figure class="{cls}" id="{cid}" aria-labelledby="{cid}-title">'
        f'<figcaption><h3 id="{cid}-title">{escape(title)}</h3>'
        f'<p class="summary" id="{cid}-desc">{escape(summary)}</p></figcaption>'
        f'<div class="chart-body"><div class="plot-area">{chart}</div>'
        f'<div class="data">{table}</div></div></figure>'
    )


@dataclass(frozen=True)
class _Column:
    header: str
    measure: str  # data-measure of the cells ("" for none)
    numeric: bool = True


def _table(
    cid: str,
    caption: str,
    kind: str,
    tenant: str,
    columns: Sequence[_Column],
    rows: Sequence[tuple[str, Sequence[str]]],
    *,
    header_column: int = 0,
    scroll: bool = False,
) -> str:
    """A data table: `rows` are (data-key, cell texts); the `header_column` is a row header."""
    head = "".join(
        f'<th scope="col"{" class=num" if c.numeric else ""}>{escape(c.header)}</th>'
        for c in columns
    )
    body = []
    for key, values in rows:
        cells = []
        for i, (column, value) in enumerate(zip(columns, values, strict=True)):
            cells.append(_cell(value, column, header=i == header_column))
        body.append(f'<tr data-key="{escape(key)}">{"".join(cells)}</tr>')
    if not rows:
        body.append(f'<tr><td colspan="{len(columns)}" class="note">none</td></tr>')
    table = (
        f'<table id="{cid}-table" data-table="{kind}" data-tenant="{escape(tenant)}">'
        f"<caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    if scroll:
        # A box that scrolls must be reachable by keyboard: focusable, named.
        return (
            f'<div class="table-scroll" tabindex="0" role="region" '
            f'aria-label="{escape(caption)}">{table}</div>'
        )
    return table


def _cell(value: str, column: _Column, *, header: bool) -> str:
    classes = []
    if column.numeric:
        classes.append("num")
    if value in ("s", "c") or value.startswith("<"):
        classes.append("suppressed")
    if len(value) > 20:  # long agency ids and model names may wrap; nothing else does
        classes.append("wrap")
    attributes = f' class="{" ".join(classes)}"' if classes else ""
    if column.measure:
        attributes += f' data-measure="{column.measure}"'
    if header:
        return f'<th scope="row"{attributes}>{_html(value)}</th>'
    return f"<td{attributes}>{_html(value)}</td>"


class _Markup(str):
    """Cell text that is already HTML (an agency link): not escaped again."""


def _html(value: str) -> str:
    return str(value) if isinstance(value, _Markup) else escape(value)


_COUNT_COLUMNS: Final = (
    _Column("agencies", "agencies"),
    _Column("active users", "active_users"),
    _Column("messages", "messages"),
    _Column("tokens in", "tokens_in"),
    _Column("tokens out", "tokens_out"),
)


# ---------------------------------------------------------------------------------
# charts


@dataclass(frozen=True)
class _Bar:
    label: str
    value: int | None  # None: suppressed
    note: str  # shown right of the bar
    colour: str
    title: str


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5 and 5 times a power of ten (whole) that is >= value."""
    for power in range(19):
        for tenths in (10, 20, 25, 50):
            candidate: int = tenths * 10**power // 10
            if candidate >= value:
                return candidate
    return value


def _svg(cid: str, width: int, height: int, body: str) -> str:
    """An image named by the chart's heading and described by its summary."""
    return (
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="{cid}-title" '
        f'aria-describedby="{cid}-desc" xmlns="http://www.w3.org/2000/svg">'
        f"{_hatch(cid + '-hatch')}{body}</svg>"
    )


def _suppressed_fill(cid: str) -> str:
    return f"url(#{cid}-hatch)"


def _daily_figure(tenant: PublishedTenant, report: PublishedReport, cid: str) -> str:
    n = report.min_cell_users
    days = list(report.trend_days)
    shown = [c for c in tenant.days if c.messages is not None]
    hidden = len(tenant.days) - len(shown)
    if not days:
        summary = "No days in range."
    elif not shown:
        summary = (
            f"{len(days)} days from {days[0].isoformat()} to {days[-1].isoformat()}; every "
            f"day with usage is suppressed (fewer than {n} active users, or complementary)."
        )
    else:
        high = max(shown, key=lambda c: (c.messages or 0, c.row.key))
        low = min(shown, key=lambda c: (c.messages or 0, c.row.key))
        summary = (
            f"{len(days)} days from {days[0].isoformat()} to {days[-1].isoformat()}, "
            f"{sum(c.messages or 0 for c in shown):,} messages on the days shown. Most: "
            f"{high.messages:,} on {high.row.key}; fewest: {low.messages:,} on {low.row.key}."
        )
        if hidden:
            summary += f" {hidden} days are suppressed and drawn as hatched stubs."
        if days[-1] < report.period.last_day:
            summary += f" Data through {days[-1].isoformat()}."
    table = _table(
        cid,
        f"Usage per UTC day, {tenant.tenant}",
        "days",
        tenant.tenant,
        [_Column("day", "", numeric=False), *_COUNT_COLUMNS],
        [(c.row.key, [c.row.key, _fmt(c.row.agencies), *_cells(c, n)]) for c in tenant.days],
        scroll=len(tenant.days) > 12,
    )
    return _chart_figure(
        cid,
        "Messages per day (UTC)",
        summary,
        _daily_chart(tenant, report, cid),
        table,
        wide=True,
    )


def _daily_chart(tenant: PublishedTenant, report: PublishedReport, cid: str) -> str:
    days = list(report.trend_days)
    by_day = {c.row.key: c for c in tenant.days}
    if not days:
        return '<p class="note">No days in range.</p>'
    width, height = 1100, 260
    left, right, top, bottom = 64, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_ceiling(max((c.messages or 0) for c in by_day.values()) if by_day else 1) or 1
    slot = plot_w / len(days)
    bar_w = max(1.0, slot * 0.72)
    parts = []
    for i in range(5):
        value = peak * i // 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{value:,}</text>'
        )
    label_every = max(1, math.ceil(len(days) / 16))
    for i, day in enumerate(days):
        x = left + slot * i + (slot - bar_w) / 2
        cell = by_day.get(day.isoformat())
        if cell is not None and cell.messages is not None:
            h = plot_h * cell.messages / peak
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{BAR_COLOUR}" rx="1.5" data-day="{day.isoformat()}" '
                f'data-messages="{cell.messages}"><title>{day.isoformat()}: '
                f"{cell.messages:,} messages, {_fmt(cell.active_users)} active users</title></rect>"
            )
            if len(days) <= 31:
                parts.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 5:.1f}" '
                    f'text-anchor="middle" font-size="12">{cell.messages:,}</text>'
                )
        elif cell is not None:
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - 10:.1f}" width="{bar_w:.1f}" height="10" '
                f'fill="{_suppressed_fill(cid)}" stroke="{SUPPRESSED_STROKE}" '
                f'data-day="{day.isoformat()}" data-suppressed="true">'
                f"<title>{day.isoformat()}: suppressed</title></rect>"
            )
            if len(days) <= 31:
                parts.append(
                    f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{top + plot_h - 15:.1f}" '
                    'text-anchor="middle">suppressed</text>'
                )
        if i % label_every == 0 or i == len(days) - 1:
            parts.append(
                f'<text class="axis" x="{left + slot * i + slot / 2:.1f}" y="{height - 18}" '
                f'text-anchor="middle">{day:%m-%d}</text>'
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="#9aa3ad"/>'
    )
    return _svg(cid, width, height, "".join(parts))


def _level_figure(tenant: PublishedTenant, n: int, cid: str) -> str:
    total = tenant.total.messages
    slices = _level_slices(tenant, cid)
    if total is None or total == 0:
        summary = f"Suppressed: fewer than {n} active users."
    else:
        summary = (
            "Share of the tenant's messages: "
            + "; ".join(
                f"{label} {value:,} ({_pct(share_pct(value, total))})" for label, value, _ in slices
            )
            + "."
        )
    table = _table(
        cid,
        f"Usage by level of government, {tenant.tenant}",
        "levels",
        tenant.tenant,
        [
            _Column("level", "", numeric=False),
            *_COUNT_COLUMNS,
            _Column("share of messages", "message_share_pct"),
        ],
        [
            (
                c.row.key,
                [
                    c.row.key,
                    _fmt(c.row.agencies),
                    *_cells(c, n),
                    _pct(share_pct(c.messages, total)),
                ],
            )
            for c in tenant.levels
        ],
    )
    return _chart_figure(
        cid,
        "Share of messages by level of government",
        summary,
        _level_donut(tenant, n, cid, slices),
        table,
    )


def _level_slices(tenant: PublishedTenant, cid: str) -> list[tuple[str, int, str]]:
    shown = [c for c in tenant.levels if c.messages is not None]
    hidden = [c for c in tenant.levels if c.messages is None]
    total = tenant.total.messages
    if total is None:
        return []
    slices: list[tuple[str, int, str]] = [
        (c.row.key, c.messages or 0, LEVEL_COLOURS.get(c.row.key, OTHER_COLOUR)) for c in shown
    ]
    if hidden:
        # The combined size of the suppressed levels is total minus the shown ones; rule 2
        # of suppression makes that a sum over at least two levels and N users.
        slices.append(
            (
                "suppressed: " + ", ".join(c.row.key for c in hidden),
                total - sum(value for _, value, _ in slices),
                _suppressed_fill(cid),
            )
        )
    return slices


def _level_donut(
    tenant: PublishedTenant, n: int, cid: str, slices: list[tuple[str, int, str]]
) -> str:
    total = tenant.total.messages
    if total is None or total == 0:
        return f'<p class="note">Suppressed: fewer than {n} active users.</p>'
    size, cx, cy, r_outer, r_inner = 220, 110, 110, 100, 58
    parts, angle = [], -math.pi / 2
    labels = []
    for label, value, colour in slices:
        if value <= 0:
            continue
        sweep = 2 * math.pi * value / total
        parts.append(_arc(cx, cy, r_outer, r_inner, angle, sweep, colour, f"{label}: {value:,}"))
        share = share_pct(value, total)
        if sweep >= 0.45 and share is not None and not colour.startswith("url("):
            middle, radius = angle + sweep / 2, (r_outer + r_inner) / 2
            labels.append(
                f'<text class="on-colour" x="{cx + radius * math.cos(middle):.1f}" '
                f'y="{cy + radius * math.sin(middle) + 4:.1f}" text-anchor="middle" '
                f'font-size="12">{int(share + 0.5)}%</text>'
            )
        angle += sweep
    parts.extend(labels)
    parts.append(
        f'<text x="{cx}" y="{cy - 2}" text-anchor="middle" font-size="22" font-weight="700">'
        f"{total:,}</text>"
        f'<text class="axis" x="{cx}" y="{cy + 16}" text-anchor="middle">messages</text>'
    )
    legend = "".join(
        f'<li><span class="swatch" style="background:{_css_colour(colour)}"></span>'
        f"{escape(label)} &middot; {value:,} ({_pct(share_pct(value, total))})</li>"
        for label, value, colour in slices
    )
    svg = _svg(cid, size, size, "".join(parts))
    return (
        f'<div class="donut"><div class="plot">{svg}</div>'
        f'<ul class="legend" aria-label="Legend">{legend}</ul></div>'
    )


def _css_colour(colour: str) -> str:
    return (
        "repeating-linear-gradient(45deg,#5d6670 0 2px,#eceef1 2px 5px)"
        if colour.startswith("url(")
        else colour
    )


def _arc(
    cx: float, cy: float, r1: float, r0: float, start: float, sweep: float, fill: str, title: str
) -> str:
    if sweep >= 2 * math.pi - 1e-9:
        return (
            f'<circle cx="{cx}" cy="{cy}" r="{(r1 + r0) / 2}" fill="none" stroke="{fill}" '
            f'stroke-width="{r1 - r0}"><title>{escape(title)}</title></circle>'
        )
    end = start + sweep
    large = 1 if sweep > math.pi else 0

    def point(r: float, a: float) -> str:
        return f"{cx + r * math.cos(a):.2f} {cy + r * math.sin(a):.2f}"

    path = (
        f"M {point(r1, start)} A {r1} {r1} 0 {large} 1 {point(r1, end)} "
        f"L {point(r0, end)} A {r0} {r0} 0 {large} 0 {point(r0, start)} Z"
    )
    return (
        f'<path d="{path}" fill="{fill}" stroke="#fff" stroke-width="1.5">'
        f"<title>{escape(title)}</title></path>"
    )


def _agency_figure(
    tenant: PublishedTenant, report: PublishedReport, cid: str, link: AgencyLink
) -> str:
    n = report.min_cell_users
    top = tenant.top_agencies
    if top:
        first, last = top[0], top[-1]
        summary = (
            f"{len(top)} agencies ranked by messages. Highest: {first.row.key} "
            f"({first.row.agency_level}) with {_fmt(first.messages)} messages"
        )
        if len(top) > 1:
            summary += (
                f"; number {len(top)}: {last.row.key} ({last.row.agency_level}) with "
                f"{_fmt(last.messages)}"
            )
        summary += ". Each bar is labelled with its level of government."
    else:
        summary = "No agency can be ranked."
    if tenant.agencies_not_ranked:
        summary += (
            f" {tenant.agencies_not_ranked} agencies with fewer than {n} active users are "
            "not ranked."
        )

    def agency_cell(agency: str) -> str:
        if link is None:
            return agency
        return _Markup(f'<a href="{escape(link(agency))}">{escape(agency)}</a>')

    table = _table(
        cid,
        f"Top {report.top} agencies by messages, {tenant.tenant}",
        "agencies",
        tenant.tenant,
        [
            _Column("rank", "rank"),
            _Column("agency", "", numeric=False),
            _Column("level", "agency_level", numeric=False),
            _Column("active users", "active_users"),
            _Column("messages", "messages"),
            _Column("tokens in", "tokens_in"),
            _Column("tokens out", "tokens_out"),
        ],
        [
            (c.row.key, [str(i), agency_cell(c.row.key), c.row.agency_level, *_cells(c, n)])
            for i, c in enumerate(top, start=1)
        ],
        header_column=1,
    )
    return _chart_figure(
        cid, f"Top {report.top} agencies by messages", summary, _agency_bars(tenant, n, cid), table
    )


def _agency_bars(tenant: PublishedTenant, n: int, cid: str) -> str:
    bars = [
        _Bar(
            label=c.row.key,
            value=c.messages,
            note=f"{_fmt(c.messages)} msgs · {c.row.agency_level}",
            colour=LEVEL_COLOURS.get(c.row.agency_level, OTHER_COLOUR),
            title=f"{c.row.key} ({c.row.agency_level})",
        )
        for c in tenant.top_agencies
    ]
    legend = "".join(
        f'<li><span class="swatch" style="background:{colour}"></span>{level}</li>'
        for level, colour in LEVEL_COLOURS.items()
    )
    note = (
        f'<p class="note">{tenant.agencies_not_ranked} agencies with fewer than {n} active '
        "users are not ranked.</p>"
        if tenant.agencies_not_ranked
        else ""
    )
    chart = _hbars(cid, bars, width=560, label_w=170)
    return f'{chart}<ul class="legend" aria-label="Legend">{legend}</ul>{note}'


def _model_figure(tenant: PublishedTenant, n: int, cid: str) -> str:
    total = tenant.total.tokens
    described = []
    for c in tenant.models:
        share = share_pct(c.tokens, total)
        if c.tokens is not None and share is not None:
            described.append(f"{c.row.key} {c.tokens:,} tokens ({share:.1f}%)")
        else:
            described.append(f"{c.row.key} suppressed")
    summary = (
        f"{len(tenant.models)} models by tokens (in + out): " + "; ".join(described) + "."
        if described
        else "No model usage."
    )
    table = _table(
        cid,
        f"Usage by model, {tenant.tenant}",
        "models",
        tenant.tenant,
        [
            _Column("model", "", numeric=False),
            *_COUNT_COLUMNS,
            _Column("share of tokens", "token_share_pct"),
        ],
        [
            (
                c.row.key,
                [
                    c.row.key,
                    _fmt(c.row.agencies),
                    *_cells(c, n),
                    _pct(share_pct(c.tokens, total)),
                ],
            )
            for c in tenant.models
        ],
    )
    return _chart_figure(
        cid, "Tokens by model (in + out)", summary, _model_bars(tenant, n, cid), table, wide=True
    )


def _model_bars(tenant: PublishedTenant, n: int, cid: str) -> str:
    bars = []
    for c in tenant.models:
        share = share_pct(c.tokens, tenant.total.tokens)
        note = (
            f"{_fmt(c.tokens)} tokens ({share:.1f}%)"
            if share is not None and c.tokens is not None
            else (
                f"suppressed: fewer than {n} active users"
                if c.suppression == "primary"
                else "suppressed (c)"
            )
        )
        bars.append(_Bar(c.row.key, c.tokens, note, MODEL_COLOUR, c.row.key))
    return _hbars(cid, bars, width=1100, label_w=330)


def _hbars(cid: str, bars: list[_Bar], *, width: int, label_w: int) -> str:
    if not bars:
        return '<p class="note">Nothing to rank.</p>'
    row_h, note_w = 26, 190
    plot_w = width - label_w - note_w
    peak = max((b.value or 0) for b in bars) or 1
    parts = []
    for i, bar in enumerate(bars):
        y = i * row_h
        fits = label_w // 8  # characters of 13px text that fit left of the bars
        text = bar.label if len(bar.label) <= fits else bar.label[: fits - 1] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">'
            f"<title>{escape(bar.title)}</title>{escape(text)}</text>"
        )
        if bar.value is None:
            parts.append(
                f'<rect x="{label_w}" y="{y + 5}" width="24" height="16" '
                f'fill="{_suppressed_fill(cid)}" stroke="{SUPPRESSED_STROKE}" '
                'data-suppressed="true"/>'
            )
            bar_end: float = label_w + 24
        else:
            w = max(1.0, plot_w * bar.value / peak)
            parts.append(
                f'<rect x="{label_w}" y="{y + 5}" width="{w:.1f}" height="16" rx="2" '
                f'fill="{bar.colour}" data-value="{bar.value}"><title>{escape(bar.title)}: '
                f"{bar.value:,}</title></rect>"
            )
            bar_end = label_w + w
        parts.append(
            f'<text class="axis" x="{bar_end + 6:.1f}" y="{y + 17}" font-size="12">'
            f"{escape(bar.note)}</text>"
        )
    return _svg(cid, width, row_h * len(bars) + 4, "".join(parts))
