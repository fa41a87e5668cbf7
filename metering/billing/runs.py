"""Billing runs: record a statement once per change, compare it with the last one.

A period's first recorded statement is version 1. Billing the period again:
  * same quantities (input digest) and same price book (file digest) as the latest
    run: nothing is written; the outcome is "unchanged since run X";
  * anything different: a restatement, version N+1, with the per-line changes
    (old -> new) and the charge and list-value deltas against the latest run.
Write order is lines first, run row last: the run row is the commit point.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, Literal

from clickhouse_connect.driver.client import Client

from metering.billing.periods import Period
from metering.billing.statements import LineKey, Statement, StatementLine

__all__ = [
    "COMPARED_FIELDS",
    "BillingOutcome",
    "BillingRun",
    "LineChange",
    "OutcomeStatus",
    "bill_statement",
    "compare_lines",
    "latest_run",
    "read_lines",
]

OutcomeStatus = Literal["recorded", "restated", "unchanged", "not_recorded"]

# Fields of a line whose change makes a restatement show it (quantities, then money).
COMPARED_FIELDS: Final = (
    "messages",
    "tokens_in",
    "tokens_out",
    "active_users",
    "billable_units",
    "charge_usd",
    "list_value_usd",
)

_RUN_COLUMNS: Final = [
    "run_id",
    "period",
    "period_kind",
    "period_start",
    "period_end",
    "version",
    "restates_run_id",
    "price_book_sha256",
    "input_sha256",
    "lines",
    "messages",
    "tokens_in",
    "tokens_out",
    "charge_usd",
    "list_value_usd",
    "created_at",
]

_LINE_COLUMNS: Final = [
    "run_id",
    "period",
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
    "models",
    "model_tokens_in",
    "model_tokens_out",
]

# The latest committed run of a period (a run exists iff its billing_runs row does).
_LATEST_RUN_SQL: Final = f"""
SELECT {", ".join(_RUN_COLUMNS)}
FROM metering.billing_runs
WHERE period = {{period:String}}
ORDER BY version DESC
LIMIT 1
"""

# The lines of one run, in statement order.
_LINES_SQL: Final = f"""
SELECT {", ".join(_LINE_COLUMNS)}
FROM metering.billing_lines
WHERE run_id = {{run_id:String}}
ORDER BY tenant, agency_id, agency_level
"""

# Lines left by a run that crashed before its run row was written.
_ORPHAN_COUNT_SQL: Final = (
    "SELECT count() FROM metering.billing_lines WHERE run_id = {run_id:String}"
)
_ORPHAN_DELETE_SQL: Final = "DELETE FROM metering.billing_lines WHERE run_id = {run_id:String}"


@dataclass(frozen=True)
class BillingRun:
    run_id: str
    period: str
    period_kind: str
    period_start: date
    period_end: date
    version: int
    restates_run_id: str
    price_book_sha256: str
    input_sha256: str
    lines: int
    messages: int
    tokens_in: int
    tokens_out: int
    charge_usd: Decimal
    list_value_usd: Decimal
    created_at: datetime

    def row(self) -> list[Any]:
        return [getattr(self, column) for column in _RUN_COLUMNS]


@dataclass(frozen=True)
class LineChange:
    tenant: str
    agency_id: str
    agency_level: str
    status: Literal["changed", "added", "removed"]
    changes: tuple[tuple[str, Any, Any], ...]  # (field, old, new) for fields that differ
    charge_delta_usd: Decimal
    list_value_delta_usd: Decimal


@dataclass(frozen=True)
class BillingOutcome:
    status: OutcomeStatus
    statement: Statement
    run: BillingRun | None  # the run holding these lines (new, or the unchanged latest)
    previous: BillingRun | None  # the latest run before this one
    changes: tuple[LineChange, ...]

    @property
    def reasons(self) -> list[str]:
        if self.previous is None:
            return []
        reasons = []
        if self.previous.input_sha256 != self.statement.input_sha256:
            reasons.append("quantities changed")
        if self.previous.price_book_sha256 != self.statement.price_book_sha256:
            reasons.append("price book changed")
        return reasons


def latest_run(client: Client, period_label: str) -> BillingRun | None:
    rows = client.query(_LATEST_RUN_SQL, parameters={"period": period_label}).result_rows
    if not rows:
        return None
    values = dict(zip(_RUN_COLUMNS, rows[0], strict=True))
    return BillingRun(
        run_id=str(values["run_id"]),
        period=str(values["period"]),
        period_kind=str(values["period_kind"]),
        period_start=values["period_start"],
        period_end=values["period_end"],
        version=int(values["version"]),
        restates_run_id=str(values["restates_run_id"]),
        price_book_sha256=str(values["price_book_sha256"]),
        input_sha256=str(values["input_sha256"]),
        lines=int(values["lines"]),
        messages=int(values["messages"]),
        tokens_in=int(values["tokens_in"]),
        tokens_out=int(values["tokens_out"]),
        charge_usd=Decimal(values["charge_usd"]),
        list_value_usd=Decimal(values["list_value_usd"]),
        created_at=values["created_at"],
    )


def read_lines(client: Client, run: BillingRun) -> list[StatementLine]:
    lines = []
    for row in client.query(_LINES_SQL, parameters={"run_id": run.run_id}).result_rows:
        values = dict(zip(_LINE_COLUMNS, row, strict=True))
        lines.append(
            StatementLine(
                period=str(values["period"]),
                month=run.period_start if run.period_kind == "month" else None,
                tenant=str(values["tenant"]),
                agency_id=str(values["agency_id"]),
                agency_level=str(values["agency_level"]),
                messages=int(values["messages"]),
                tokens_in=int(values["tokens_in"]),
                tokens_out=int(values["tokens_out"]),
                active_users=int(values["active_users"]),
                plan=str(values["plan"]),
                billable_units=int(values["billable_units"]),
                charge_usd=Decimal(values["charge_usd"]),
                list_value_usd=Decimal(values["list_value_usd"]),
                models=tuple(
                    (str(m), int(i), int(o))
                    for m, i, o in zip(
                        values["models"],
                        values["model_tokens_in"],
                        values["model_tokens_out"],
                        strict=True,
                    )
                ),
            )
        )
    return lines


def compare_lines(old: list[StatementLine], new: list[StatementLine]) -> list[LineChange]:
    """Lines added, removed or changed between two statements, in key order."""
    old_by_key: dict[LineKey, StatementLine] = {line.key: line for line in old}
    new_by_key: dict[LineKey, StatementLine] = {line.key: line for line in new}
    zero = Decimal("0.00")
    changes = []
    for key in sorted(set(old_by_key) | set(new_by_key)):
        before, after = old_by_key.get(key), new_by_key.get(key)
        differing = tuple(
            (
                name,
                getattr(before, name) if before else None,
                getattr(after, name) if after else None,
            )
            for name in COMPARED_FIELDS
            if before is None or after is None or getattr(before, name) != getattr(after, name)
        )
        if not differing:
            continue
        changes.append(
            LineChange(
                tenant=key[0],
                agency_id=key[1],
                agency_level=key[2],
                status="added" if before is None else "removed" if after is None else "changed",
                changes=differing,
                charge_delta_usd=(after.charge_usd if after else zero)
                - (before.charge_usd if before else zero),
                list_value_delta_usd=(after.list_value_usd if after else zero)
                - (before.list_value_usd if before else zero),
            )
        )
    return changes


def bill_statement(
    client: Client, statement: Statement, *, now: datetime, record: bool = True
) -> BillingOutcome:
    """Record `statement` as the next version of its period unless nothing changed."""
    previous = latest_run(client, statement.period.label)
    if previous is not None and (
        previous.input_sha256 == statement.input_sha256
        and previous.price_book_sha256 == statement.price_book_sha256
    ):
        return BillingOutcome("unchanged", statement, previous, previous, ())
    old_lines = read_lines(client, previous) if previous is not None else []
    changes = tuple(compare_lines(old_lines, list(statement.lines))) if previous else ()
    if not record:
        return BillingOutcome("not_recorded", statement, None, previous, changes)
    run = _new_run(statement.period, statement, previous, now)
    _write(client, run, statement)
    status: OutcomeStatus = "recorded" if previous is None else "restated"
    return BillingOutcome(status, statement, run, previous, changes)


def _new_run(
    period: Period, statement: Statement, previous: BillingRun | None, now: datetime
) -> BillingRun:
    version = 1 if previous is None else previous.version + 1
    return BillingRun(
        run_id=f"{period.label}-v{version}",
        period=period.label,
        period_kind=period.kind,
        period_start=period.start,
        period_end=period.end,
        version=version,
        restates_run_id=previous.run_id if previous else "",
        price_book_sha256=statement.price_book_sha256,
        input_sha256=statement.input_sha256,
        lines=len(statement.lines),
        messages=statement.total("messages"),
        tokens_in=statement.total("tokens_in"),
        tokens_out=statement.total("tokens_out"),
        charge_usd=statement.charge_usd,
        list_value_usd=statement.list_value_usd,
        created_at=now,
    )


def _write(client: Client, run: BillingRun, statement: Statement) -> None:
    parameters = {"run_id": run.run_id}
    if int(client.query(_ORPHAN_COUNT_SQL, parameters=parameters).result_rows[0][0]):
        client.command(_ORPHAN_DELETE_SQL, parameters=parameters)
    if not statement.lines:
        raise ValueError("an empty statement is never recorded")
    client.insert(
        "metering.billing_lines",
        [
            [
                run.run_id,
                line.period,
                line.tenant,
                line.agency_id,
                line.agency_level,
                line.messages,
                line.tokens_in,
                line.tokens_out,
                line.active_users,
                line.plan,
                line.billable_units,
                line.charge_usd,
                line.list_value_usd,
                [m for m, _, _ in line.models],
                [i for _, i, _ in line.models],
                [o for _, _, o in line.models],
            ]
            for line in statement.lines
        ],
        column_names=_LINE_COLUMNS,
    )
    client.insert("metering.billing_runs", [run.row()], column_names=_RUN_COLUMNS)
