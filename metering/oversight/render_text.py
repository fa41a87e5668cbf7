"""Render a published adoption report as a text table, CSV or JSON.

Only `PublishedReport` goes in, so suppressed figures are already gone: a renderer
cannot show what suppression removed, it can only mark where it was.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

import orjson

from metering.oversight.suppression import Cell, PublishedReport, PublishedTenant
from metering.text_table import text_table

__all__ = [
    "CSV_COLUMNS",
    "SUPPRESSION_NOTE",
    "render_csv",
    "render_json",
    "render_table",
    "report_document",
    "share_pct",
]

CSV_COLUMNS: Final = [
    "section",
    "tenant",
    "key",
    "agency_level",
    "rank",
    "agencies",
    "active_users",
    "messages",
    "tokens_in",
    "tokens_out",
    "share_pct",
    "suppressed",
    "suppression",
]

SUPPRESSION_NOTE: Final = (
    "Figures describing fewer than {n} active users are suppressed (<{n}, s); so are "
    "rows that would let them be derived from a total (c). Agencies with fewer than "
    "{n} active users are not ranked."
)

_SECTIONS: Final = (
    ("by_level", "agency_level"),
    ("top_agencies", "agency_id"),
    ("by_model", "model"),
    ("by_day", "day"),
)


def share_pct(part: int | None, whole: int | None) -> float | None:
    """A share in percent with one decimal, or None when either side is not published."""
    if part is None or whole is None or whole == 0:
        return None
    value = (Decimal(part) * 100 / Decimal(whole)).quantize(
        Decimal("0.1"), rounding=ROUND_HALF_EVEN
    )
    return float(value)


def _measures(cell: Cell) -> dict[str, Any]:
    return {
        "agencies": cell.row.agencies,
        "active_users": cell.active_users,
        "messages": cell.messages,
        "tokens_in": cell.tokens_in,
        "tokens_out": cell.tokens_out,
        "suppressed": cell.suppressed,
        "suppression": cell.suppression or None,
    }


def _section_rows(tenant: PublishedTenant) -> dict[str, list[dict[str, Any]]]:
    total = tenant.total
    levels = [
        {
            "agency_level": c.row.key,
            **_measures(c),
            "message_share_pct": share_pct(c.messages, total.messages),
        }
        for c in tenant.levels
    ]
    top = [
        {"rank": rank, "agency_id": c.row.key, "agency_level": c.row.agency_level, **_measures(c)}
        for rank, c in enumerate(tenant.top_agencies, start=1)
    ]
    models = [
        {"model": c.row.key, **_measures(c), "token_share_pct": share_pct(c.tokens, total.tokens)}
        for c in tenant.models
    ]
    days = [{"day": c.row.key, **_measures(c)} for c in tenant.days]
    return {"by_level": levels, "top_agencies": top, "by_model": models, "by_day": days}


def report_document(report: PublishedReport) -> dict[str, Any]:
    """The JSON document: everything the other renderers show, as plain values."""
    period = report.period
    return {
        "report": "adoption",
        "period": {
            "label": period.label,
            "kind": period.kind,
            "first_day": period.start.isoformat(),
            "last_day": period.last_day.isoformat(),
            "timezone": "UTC",
        },
        "agency": report.agency,
        "min_cell_users": report.min_cell_users,
        "suppression_note": SUPPRESSION_NOTE.format(n=report.min_cell_users),
        "tenants": [
            {
                "tenant": t.tenant,
                **_measures(t.total),
                "agencies_not_ranked": t.agencies_not_ranked,
                **_section_rows(t),
            }
            for t in report.tenants
        ],
    }


def render_json(report: PublishedReport) -> str:
    return orjson.dumps(report_document(report), option=orjson.OPT_INDENT_2).decode()


def render_csv(report: PublishedReport) -> str:
    """One long table: a `section` column says which breakdown each row belongs to."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for tenant in report_document(report)["tenants"]:
        writer.writerow({**tenant, "section": "tenant", "key": ""})
        for section, key_name in _SECTIONS:
            for row in tenant[section]:
                share = row.get("token_share_pct", row.get("message_share_pct"))
                level = row.get("agency_level", "") if section == "top_agencies" else ""
                writer.writerow(
                    {
                        **row,
                        "section": section,
                        "tenant": tenant["tenant"],
                        "key": row[key_name],
                        "agency_level": level,
                        "share_pct": share,
                    }
                )
    return out.getvalue()


# ---------------------------------------------------------------------------------
# text table


def _number(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _figures(cell: Cell, n: int) -> list[str]:
    if cell.suppression == "primary":
        return [f"<{n}", "s", "s", "s"]
    if cell.suppression == "complementary":
        return ["c", "c", "c", "c"]
    return [
        _number(cell.active_users),
        _number(cell.messages),
        _number(cell.tokens_in),
        _number(cell.tokens_out),
    ]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int) -> str:
    """Columns from index `right_from` on are numbers: right-aligned."""
    return text_table(headers, rows, [i >= right_from for i in range(len(headers))])


_MEASURE_HEADERS: Final = ["agencies", "active_users", "messages", "tokens_in", "tokens_out"]


def render_table(report: PublishedReport) -> str:
    n = report.min_cell_users
    period = report.period
    scope = f"agency {report.agency}" if report.agency else "all agencies"
    parts = [
        f"Adoption report {period.describe()}, {scope}",
        SUPPRESSION_NOTE.format(n=n),
        "",
        "Tenants",
        _table(
            ["tenant", *_MEASURE_HEADERS],
            [
                [t.tenant, _number(t.total.row.agencies), *_figures(t.total, n)]
                for t in report.tenants
            ],
            right_from=1,
        ),
    ]
    for t in report.tenants:
        parts += [
            "",
            f"{t.tenant}: by level of government",
            _table(
                ["level", *_MEASURE_HEADERS, "share_of_messages"],
                [
                    [
                        c.row.key,
                        _number(c.row.agencies),
                        *_figures(c, n),
                        _pct(share_pct(c.messages, t.total.messages)),
                    ]
                    for c in t.levels
                ],
                right_from=1,
            ),
            "",
            f"{t.tenant}: top {report.top} agencies by messages"
            + (
                f" ({t.agencies_not_ranked} with fewer than {n} active users not ranked)"
                if t.agencies_not_ranked
                else ""
            ),
            _table(
                [
                    "rank",
                    "agency_id",
                    "level",
                    "active_users",
                    "messages",
                    "tokens_in",
                    "tokens_out",
                ],
                [
                    [str(rank), c.row.key, c.row.agency_level, *_figures(c, n)]
                    for rank, c in enumerate(t.top_agencies, start=1)
                ],
                right_from=3,
            ),
            "",
            f"{t.tenant}: by model",
            _table(
                ["model", *_MEASURE_HEADERS, "share_of_tokens"],
                [
                    [
                        c.row.key,
                        _number(c.row.agencies),
                        *_figures(c, n),
                        _pct(share_pct(c.tokens, t.total.tokens)),
                    ]
                    for c in t.models
                ],
                right_from=1,
            ),
            "",
            f"{t.tenant}: by day (UTC)",
            _table(
                ["day", *_MEASURE_HEADERS],
                [[c.row.key, _number(c.row.agencies), *_figures(c, n)] for c in t.days],
                right_from=1,
            ),
        ]
    return "\n".join(parts)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}%"
