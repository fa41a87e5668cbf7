"""Render billing statements, restatement deltas and reconciliations for people and tools.

Money is printed from `Decimal` as-is (two places) and written to JSON as strings,
so no amount ever passes through a binary float. A list value that leaves out a model
without a list price is marked: `*` and a note in the table, `unpriced_models` and
`"priced": false` in JSON, an `unpriced_models` column in CSV.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any, Final

import orjson

from metering.billing.reconcile import Reconciliation
from metering.billing.runs import BillingOutcome, LineChange
from metering.billing.statements import STATEMENT_COLUMNS, Statement
from metering.kafka_retention import Gap
from metering.query import format_result
from metering.text_table import text_table

__all__ = [
    "render_changes",
    "render_reconciliation",
    "render_statement",
    "summarise_outcome",
]


def _usd(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


_TABLE_COLUMNS: Final = [
    "tenant",
    "agency_id",
    "agency_level",
    "messages",
    "tokens_in",
    "tokens_out",
    "active_users",
    "plan",
    "billable_units",
    "charge_usd",
    "list_value_usd",
]
_TABLE_TEXT_COLUMNS: Final = {"tenant", "agency_id", "agency_level", "plan"}


def _aligned_table(headers: list[str], rows: list[list[str]], text_columns: set[str]) -> str:
    """Aligned columns: text left, numbers right."""
    return text_table(headers, rows, [header not in text_columns for header in headers])


def _cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return _usd(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_statement(outcome: BillingOutcome, fmt: str, price_book: str) -> str:
    statement = outcome.statement
    if fmt == "csv":
        rows = [(*line.row(), ";".join(line.unpriced_models)) for line in statement.lines]
        return format_result([*STATEMENT_COLUMNS, "unpriced_models"], rows, "csv") + "\n"
    if fmt == "json":
        return orjson.dumps(_document(outcome, price_book), option=orjson.OPT_INDENT_2).decode()
    lines = [
        [
            _cell(getattr(line, column)) + ("*" if _marked(column, [line]) else "")
            for column in _TABLE_COLUMNS
        ]
        for line in statement.lines
    ]
    totals = [
        [
            tenant,
            _cell(len(tenant_lines)),
            _cell(sum(li.messages for li in tenant_lines)),
            _usd(sum((li.charge_usd for li in tenant_lines), Decimal("0.00"))),
            _usd(sum((li.list_value_usd for li in tenant_lines), Decimal("0.00")))
            + ("*" if _marked("list_value_usd", tenant_lines) else ""),
        ]
        for tenant, tenant_lines in _by_tenant(statement).items()
    ]
    totals.append(
        [
            "all tenants",
            _cell(len(statement.lines)),
            _cell(statement.total("messages")),
            _usd(statement.charge_usd),
            _usd(statement.list_value_usd)
            + ("*" if _marked("list_value_usd", list(statement.lines)) else ""),
        ]
    )
    out = [
        f"Statement {statement.period.describe()}, amounts in USD",
        _aligned_table(_TABLE_COLUMNS, lines, _TABLE_TEXT_COLUMNS),
        "",
        "Totals",
        _aligned_table(
            ["tenant", "lines", "messages", "charge_usd", "list_value_usd"],
            totals,
            {"tenant"},
        ),
    ]
    if statement.unpriced:
        models = sorted({u.model for u in statement.unpriced})
        out += [
            "",
            f"* list value without the unpriced model(s) {', '.join(models)}: {price_book} "
            "has no list price for them (charges are exact: they do not depend on list prices)",
        ]
    return "\n".join(out)


def _marked(column: str, lines: list[Any]) -> bool:
    return column == "list_value_usd" and any(line.unpriced_models for line in lines)


def _by_tenant(statement: Statement) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for line in statement.lines:
        grouped[line.tenant].append(line)
    return dict(grouped)


def _document(outcome: BillingOutcome, price_book: str) -> dict[str, Any]:
    statement = outcome.statement
    period = statement.period
    run = outcome.run
    return {
        "period": {
            "label": period.label,
            "kind": period.kind,
            "first_day": period.start.isoformat(),
            "last_day": period.last_day.isoformat(),
        },
        "status": outcome.status,
        "run_id": run.run_id if run else None,
        "version": run.version if run else None,
        "restates_run_id": (run.restates_run_id or None) if run else None,
        "previous_run_id": outcome.previous.run_id if outcome.previous else None,
        "corrections": list(outcome.corrections),
        "corrections_since_previous_run": list(outcome.corrections_since_previous)
        if outcome.previous
        else [],
        "price_book": {"path": price_book, "sha256": statement.price_book_sha256},
        "input_sha256": statement.input_sha256,
        "totals": {
            "lines": len(statement.lines),
            "messages": statement.total("messages"),
            "tokens_in": statement.total("tokens_in"),
            "tokens_out": statement.total("tokens_out"),
            "charge_usd": str(statement.charge_usd),
            "list_value_usd": str(statement.list_value_usd),
            "unpriced_models": sorted({u.model for u in statement.unpriced}),
        },
        "unpriced": [
            {
                "model": u.model,
                "month": u.month.isoformat(),
                "tokens_in": u.tokens_in,
                "tokens_out": u.tokens_out,
                "lines": u.lines,
                "reason": u.reason,
            }
            for u in statement.unpriced
        ],
        "lines": [
            {
                **{c: _plain(v) for c, v in zip(STATEMENT_COLUMNS, line.row(), strict=True)},
                "unpriced_models": list(line.unpriced_models),
                "models": [
                    {
                        "model": m,
                        "tokens_in": i,
                        "tokens_out": o,
                        "priced": m not in line.unpriced_models,
                    }
                    for m, i, o in line.models
                ],
            }
            for line in statement.lines
        ],
        "changes": [
            {
                "tenant": c.tenant,
                "agency_id": c.agency_id,
                "agency_level": c.agency_level,
                "status": c.status,
                "changes": {name: [_plain(old), _plain(new)] for name, old, new in c.changes},
                "charge_delta_usd": str(c.charge_delta_usd),
                "list_value_delta_usd": str(c.list_value_delta_usd),
            }
            for c in outcome.changes
        ],
    }


def _signed(amount: Decimal) -> str:
    return ("+" if amount >= 0 else "-") + _usd(abs(amount))


def render_changes(changes: tuple[LineChange, ...] | list[LineChange]) -> str:
    """One row per changed line: each differing field as `old -> new`."""
    rows = []
    for change in changes:
        described = "; ".join(
            f"{name} {_value(old)} -> {_value(new)}" for name, old, new in change.changes
        )
        rows.append(
            (
                change.tenant,
                change.agency_id,
                change.agency_level,
                change.status,
                described,
                _signed(change.charge_delta_usd),
                _signed(change.list_value_delta_usd),
            )
        )
    return format_result(
        [
            "tenant",
            "agency_id",
            "agency_level",
            "status",
            "old -> new",
            "charge_delta_usd",
            "list_value_delta_usd",
        ],
        rows,
        "table",
    )


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Decimal):
        return _usd(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def summarise_outcome(outcome: BillingOutcome) -> list[str]:
    statement = outcome.statement
    totals = (
        f"{len(statement.lines)} lines, charge {_usd(statement.charge_usd)} USD, "
        f"list value {_usd(statement.list_value_usd)} USD"
    )
    digests = (
        f"price book sha256 {statement.price_book_sha256[:12]}, "
        f"input sha256 {statement.input_sha256[:12]}"
    )
    previous = outcome.previous
    waited = []
    if outcome.waited_for is not None:
        holder = outcome.waited_for
        waited.append(
            f"another `metering bill` held version {holder.version} of {holder.period} "
            f"({holder.describe()}); waited for it, then compared again"
        )
    if outcome.status == "unchanged" and previous is not None:
        return [
            *waited,
            f"unchanged since run {previous.run_id} (version {previous.version}, recorded "
            f"{previous.created_at:%Y-%m-%d %H:%M:%S} UTC): same quantities and price book; "
            "nothing recorded",
        ]
    if outcome.status == "recorded" and outcome.run is not None:
        return [*waited, f"recorded run {outcome.run.run_id} (version 1): {totals}; {digests}"]
    lines = list(waited)
    if outcome.status == "restated" and outcome.run is not None and previous is not None:
        lines.append(
            f"restated {statement.period.label}: run {outcome.run.run_id} (version "
            f"{outcome.run.version}) replaces {previous.run_id} ({', '.join(outcome.reasons)}); "
            f"{totals}; charge delta {_signed(statement.charge_usd - previous.charge_usd)} USD"
        )
        if outcome.corrections_since_previous:
            lines.append(
                f"corrections applied since {previous.run_id}: "
                + ", ".join(outcome.corrections_since_previous)
            )
    elif outcome.status == "not_recorded":
        version = 1 if previous is None else previous.version + 1
        lines.append(
            f"dry run: would record version {version} of {statement.period.label}: "
            f"{totals}; nothing recorded"
        )
    if outcome.changes:
        lines.append(
            f"{len(outcome.changes)} line(s) changed since {previous.run_id}:"
            if previous
            else "changes:"
        )
        lines.append(render_changes(outcome.changes))
    return lines


def render_reconciliation(result: Reconciliation, fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(
            {
                "period": result.period.label,
                "billing_run": result.run.run_id if result.run else None,
                "ok": result.ok,
                "tenants": [vars(c) | {"equal": c.equal} for c in result.tenants],
                "differences": [vars(c) for c in result.differences],
                "agencies_compared": len({(c.tenant, c.agency_id) for c in result.agencies}),
                "ledger_counted": result.ledger_counted,
                "counted_rows": result.counted_rows,
                "unapplied_flushes": result.unapplied_flushes,
                "expired_offsets": [_gap(g) for g in result.expired],
                "expired_offsets_pending": (
                    [_gap(g) for g in result.expired_pending] if result.broker_checked else None
                ),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    billed = f"billed (run {result.run.run_id})" if result.run else "billed (no billing run yet)"
    out = [f"Reconcile {result.period.describe()}: events counted = rollups = {billed}", ""]
    out.append(
        format_result(
            ["tenant", "measure", "events", "rollups", "billed", "result"],
            [
                (
                    c.tenant,
                    c.measure,
                    c.events,
                    c.rollups,
                    "-" if c.billed is None else c.billed,
                    "equal" if c.equal else "DIFFERENT",
                )
                for c in result.tenants
            ],
            "table",
        )
    )
    agencies = len({(c.tenant, c.agency_id, c.agency_level) for c in result.agencies})
    agency_differences = [c for c in result.agencies if not c.equal]
    out.append("")
    out.append(
        f"per agency: {agencies} (tenant, agency) lines x 4 measures compared, "
        f"{len(agency_differences)} differences"
    )
    for difference in result.differences:
        out.append(f"  DIFFERENT {difference.describe()}")
    ledger_equal = result.ledger_counted == result.counted_rows
    out.append(
        f"ledger: {result.ledger_counted:,} events counted in flush_ledger "
        f"{'=' if ledger_equal else '!='} {result.counted_rows:,} rows in counted_events "
        "(all periods)"
    )
    out.append(
        f"flushes committed but not yet in the rollups: {result.unapplied_flushes}"
        + ("" if result.unapplied_flushes == 0 else " (start the worker: recovery applies them)")
    )
    out.extend(_expired_lines(result))
    if result.run is not None and any(
        c.billed is not None and c.billed != c.rollups for c in result.differences
    ):
        out.append(
            f"the billing run {result.run.run_id} is behind the rollups: run `metering bill` "
            f"for {result.period.label} again to restate it"
        )
    if result.ok:
        what = "billed quantities" if result.run else "(no billing run to compare)"
        out.append(f"OK: events counted = rollup totals = {what} for {result.period.label}")
    else:
        out.append(
            f"NOT RECONCILED: {len(result.differences)} difference(s) for {result.period.label}"
        )
    return "\n".join(out)


def _gap(gap: Gap) -> dict[str, Any]:
    return {
        "topic": gap.topic,
        "partition": gap.partition,
        "first_missing": gap.first_missing,
        "last_missing": gap.resume_at - 1,
        "messages": gap.messages,
        "detected_at": None if gap.detected_at is None else gap.detected_at.isoformat(),
        "worker": gap.worker or None,
    }


def _expired_lines(result: Reconciliation) -> list[str]:
    gaps = [*result.expired, *result.expired_pending]
    if not gaps:
        checked = "" if result.broker_checked else " (the broker was not asked: only recorded gaps)"
        return [f"offsets expired on the broker before they were counted: none{checked}"]
    out = [
        f"offsets expired on the broker before they were counted (all periods): "
        f"{result.expired_messages:,} message(s) in {len(gaps)} gap(s); the counts of "
        "their periods are short by at most that many"
    ]
    for gap in result.expired:
        when = "" if gap.detected_at is None else f"{gap.detected_at:%Y-%m-%d %H:%M:%S} UTC"
        out.append(f"  {gap.describe()}: recorded {when} by {gap.worker}")
    for gap in result.expired_pending:
        out.append(
            f"  {gap.describe()}: on the broker now, no worker has resumed past it yet "
            f"(its earliest offset is {gap.resume_at}, the ledger resumes at {gap.first_missing})"
        )
    if not result.broker_checked:
        out.append("  (the broker was not asked: gaps no worker has reached are not shown)")
    return out
