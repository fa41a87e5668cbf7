"""Render a published adoption report as one self-contained HTML page.

No network and no scripts: inline CSS and inline SVG charts drawn here. Per tenant:
headline figures, usage per day (bars), share of messages by level of government
(donut), top agencies and tokens by model (horizontal bars), then the tables with
every number the charts show. Suppressed cells are drawn as hatched stubs and
written as "<N", "s" or "c", exactly as in the text table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from metering.oversight.render_text import SUPPRESSION_NOTE, share_pct
from metering.oversight.suppression import Cell, PublishedReport, PublishedTenant

__all__ = ["render_html"]

LEVEL_COLOURS: Final = {"federal": "#1d4e89", "state": "#2a9d8f", "local": "#e9a23b"}
OTHER_COLOUR: Final = "#7b6fae"
BAR_COLOUR: Final = "#2f6fb3"
MODEL_COLOUR: Final = "#5a4fa2"
SUPPRESSED_FILL: Final = "url(#hatch)"

_CSS: Final = """
:root { --ink:#1b1f24; --muted:#5d6670; --rule:#d9dee4; --panel:#f6f8fa; --accent:#2f6fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 "Liberation Sans", "DejaVu Sans", Arial, sans-serif;
       color: var(--ink); background: #fff; }
header { padding: 28px 40px 18px; background: #0f2a47; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 600; }
header p { margin: 2px 0; color: #c9d6e6; }
main { padding: 8px 40px 40px; max-width: 1280px; }
section.tenant { margin-top: 28px; }
h2 { font-size: 22px; margin: 0 0 12px; padding-bottom: 6px;
     border-bottom: 2px solid var(--rule); }
h3 { font-size: 15px; margin: 0 0 8px; color: var(--muted); font-weight: 600; }
.kpis { display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 12px;
        margin-bottom: 18px; }
.kpi { background: var(--panel); border-radius: 8px; padding: 12px 14px; }
.kpi .value { font-size: 26px; font-weight: 700; }
.kpi .label { color: var(--muted); font-size: 13px; text-transform: uppercase;
              letter-spacing: .04em; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 18px; }
figure { margin: 0; background: #fff; border: 1px solid var(--rule); border-radius: 8px;
         padding: 14px 16px; }
figure.wide { grid-column: 1 / -1; }
figcaption { font-weight: 600; margin-bottom: 8px; }
svg { display: block; width: 100%; height: auto; }
svg text { font-family: "Liberation Sans", "DejaVu Sans", Arial, sans-serif; fill: var(--ink); }
svg .axis { fill: var(--muted); font-size: 11px; }
svg .grid { stroke: #e6e9ed; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin-top: 8px; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
          vertical-align: -1px; }
.note { color: var(--muted); font-size: 13px; }
details { margin-top: 18px; }
summary { cursor: pointer; font-weight: 600; }
.tables { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 18px;
          margin-top: 10px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--rule); text-align: left;
         white-space: nowrap; }
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.suppressed { color: var(--muted); font-style: italic; }
td.wrap { white-space: normal; overflow-wrap: anywhere; }
"""

_HATCH: Final = (
    '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eceef1"/>'
    '<line x1="0" y1="0" x2="0" y2="6" stroke="#9aa3ad" stroke-width="2"/></pattern></defs>'
)


def render_html(report: PublishedReport) -> str:
    n = report.min_cell_users
    period = report.period
    scope = f"agency {report.agency}" if report.agency else "all agencies"
    sections = "\n".join(_tenant_section(t, report) for t in report.tenants)
    if not report.tenants:
        sections = '<p class="note">No counted usage in this period.</p>'
    title = f"Adoption report {period.label}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{escape(title)}</h1>
<p>{escape(period.describe())} &middot; {escape(scope)}</p>
<p>{escape(SUPPRESSION_NOTE.format(n=n))}</p>
</header>
<main>
{sections}
</main>
</body>
</html>
"""


def _fmt(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _tenant_section(tenant: PublishedTenant, report: PublishedReport) -> str:
    name = escape(tenant.tenant)
    total = tenant.total
    n = report.min_cell_users
    kpis = "".join(
        f'<div class="kpi"><div class="label">{label}</div>'
        f'<div class="value" data-measure="{key}">{_figure(value, total, n, key)}</div></div>'
        for label, key, value in (
            ("Agencies", "agencies", total.row.agencies),
            ("Active users", "active_users", total.active_users),
            ("Messages", "messages", total.messages),
            ("Tokens in", "tokens_in", total.tokens_in),
            ("Tokens out", "tokens_out", total.tokens_out),
        )
    )
    charts = "".join(
        [
            _figure_block("Messages per day (UTC)", _daily_chart(tenant, report), wide=True),
            _figure_block("Share of messages by level of government", _level_donut(tenant, n)),
            _figure_block(
                f"Top {report.top} agencies by messages",
                _agency_bars(tenant, n),
            ),
            _figure_block("Tokens by model (in + out)", _model_bars(tenant, n), wide=True),
        ]
    )
    tables = "".join(
        [
            _table(
                "By level of government",
                ["level", "agencies", "active users", "messages", "tokens in", "tokens out"],
                [[c.row.key, _fmt(c.row.agencies), *_cells(c, n)] for c in tenant.levels],
            ),
            _table(
                "Top agencies",
                ["#", "agency", "level", "active users", "messages", "tokens in", "tokens out"],
                [
                    [str(i), c.row.key, c.row.agency_level, *_cells(c, n)]
                    for i, c in enumerate(tenant.top_agencies, start=1)
                ],
                numeric_from=3,
            ),
            _table(
                "By model",
                ["model", "agencies", "active users", "messages", "tokens in", "tokens out"],
                [[c.row.key, _fmt(c.row.agencies), *_cells(c, n)] for c in tenant.models],
            ),
            _table(
                "By day (UTC)",
                ["day", "agencies", "active users", "messages", "tokens in", "tokens out"],
                [[c.row.key, _fmt(c.row.agencies), *_cells(c, n)] for c in tenant.days],
            ),
        ]
    )
    return f"""<section class="tenant" id="tenant-{name}" data-tenant="{name}">
<h2>{name}</h2>
<div class="kpis">{kpis}</div>
<div class="charts">{charts}</div>
<details open><summary>The numbers</summary><div class="tables">{tables}</div></details>
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


def _figure_block(caption: str, body: str, *, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f"<figure{cls}><figcaption>{escape(caption)}</figcaption>{body}</figure>"


def _table(
    caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1
) -> str:
    head = "".join(
        f"<th{' class=num' if i >= numeric_from else ''}>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(_td(value, numeric=i >= numeric_from) for i, value in enumerate(row))
        + "</tr>"
        for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="note">none</td></tr>'
    return f"<div><h3>{escape(caption)}</h3><table><tr>{head}</tr>{body}</table></div>"


def _td(value: str, *, numeric: bool) -> str:
    classes = []
    if numeric:
        classes.append("num")
    if value in ("s", "c") or value.startswith("<"):
        classes.append("suppressed")
    if len(value) > 20:  # long agency ids and model names may wrap; nothing else does
        classes.append("wrap")
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attribute}>{escape(value)}</td>"


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


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{_HATCH}{body}</svg>'
    )


def _daily_chart(tenant: PublishedTenant, report: PublishedReport) -> str:
    days = list(report.trend_days)
    by_day = {c.row.key: c for c in tenant.days}
    if not days:
        return '<p class="note">No days in range.</p>'
    width, height = 1100, 260
    left, right, top, bottom = 64, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_ceiling(max((c.messages or 0) for c in by_day.values()) if by_day else 1)
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
                f'fill="{SUPPRESSED_FILL}"><title>{day.isoformat()}: suppressed</title></rect>'
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
    last = days[-1]
    note = (
        f'<p class="note">Data through {last.isoformat()}.</p>'
        if last < report.period.last_day
        else ""
    )
    return _svg(width, height, "".join(parts), f"Messages per day for {tenant.tenant}") + note


def _level_donut(tenant: PublishedTenant, n: int) -> str:
    shown = [c for c in tenant.levels if c.messages is not None]
    hidden = [c for c in tenant.levels if c.messages is None]
    total = tenant.total.messages
    if total is None or total == 0:
        return f'<p class="note">Suppressed: fewer than {n} active users.</p>'
    slices: list[tuple[str, int, str]] = [
        (c.row.key, c.messages or 0, LEVEL_COLOURS.get(c.row.key, OTHER_COLOUR)) for c in shown
    ]
    hidden_messages = total - sum(value for _, value, _ in slices)
    if hidden:
        # The combined size of the suppressed levels is total minus the shown ones; rule 2
        # of suppression makes that a sum over at least two levels and N users.
        slices.append(
            (
                "suppressed: " + ", ".join(c.row.key for c in hidden),
                hidden_messages,
                SUPPRESSED_FILL,
            )
        )
    size, cx, cy, r_outer, r_inner = 220, 110, 110, 100, 58
    parts, angle = [], -math.pi / 2
    for label, value, colour in slices:
        if value <= 0:
            continue
        sweep = 2 * math.pi * value / total
        parts.append(_arc(cx, cy, r_outer, r_inner, angle, sweep, colour, f"{label}: {value:,}"))
        angle += sweep
    parts.append(
        f'<text x="{cx}" y="{cy - 2}" text-anchor="middle" font-size="22" font-weight="700">'
        f"{total:,}</text>"
        f'<text class="axis" x="{cx}" y="{cy + 16}" text-anchor="middle">messages</text>'
    )
    legend = "".join(
        f'<span><span class="swatch" style="background:{_css_colour(colour)}"></span>'
        f"{escape(label)} &middot; {value:,} ({share_pct(value, total):.1f}%)</span>"
        for label, value, colour in slices
    )
    svg = _svg(size, size, "".join(parts), f"Share of messages by level for {tenant.tenant}")
    return (
        f'<div style="display:flex;gap:18px;align-items:center">'
        f'<div style="width:220px;flex:none">{svg}</div>'
        f'<div class="legend" style="flex-direction:column">{legend}</div></div>'
    )


def _css_colour(colour: str) -> str:
    return (
        "repeating-linear-gradient(45deg,#9aa3ad 0 2px,#eceef1 2px 5px)"
        if (colour == SUPPRESSED_FILL)
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


def _agency_bars(tenant: PublishedTenant, n: int) -> str:
    bars = [
        _Bar(
            label=c.row.key,
            value=c.messages,
            note=f"{_fmt(c.messages)} msgs · {_fmt(c.active_users)} users",
            colour=LEVEL_COLOURS.get(c.row.agency_level, OTHER_COLOUR),
            title=f"{c.row.key} ({c.row.agency_level})",
        )
        for c in tenant.top_agencies
    ]
    legend = "".join(
        f'<span><span class="swatch" style="background:{colour}"></span>{level}</span>'
        for level, colour in LEVEL_COLOURS.items()
    )
    note = (
        f'<p class="note">{tenant.agencies_not_ranked} agencies with fewer than {n} active '
        "users are not ranked.</p>"
        if tenant.agencies_not_ranked
        else ""
    )
    chart = _hbars(bars, f"Top agencies for {tenant.tenant}", width=560, label_w=170)
    return f'{chart}<div class="legend">{legend}</div>{note}'


def _model_bars(tenant: PublishedTenant, n: int) -> str:
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
    return _hbars(bars, f"Tokens by model for {tenant.tenant}", width=1100, label_w=330)


def _hbars(bars: list[_Bar], label: str, *, width: int, label_w: int) -> str:
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
                f'<rect x="{label_w}" y="{y + 5}" width="24" height="16" fill="{SUPPRESSED_FILL}"/>'
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
    return _svg(width, row_h * len(bars) + 4, "".join(parts), label)
