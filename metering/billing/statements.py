"""Statements: read a period's quantities from the rollups and price them.

Quantities come from the contract view `metering.agency_monthly` (messages, tokens,
active users per month and agency) and from `metering.model_daily_rollup` (tokens
per model, for the list value). Pricing is pure: `price_statement` turns the
quantities and a `PriceBook` into lines, following the rules written in
`pricebook.toml`. Money is `Decimal` throughout, rounded half-even to cents once per
line.

A model the price book has no list price for does not stop billing: the charges (per
agency per fiscal year, per active seat) never depend on model prices, so the lines
are exact; the list value of that model is left out and the line says so
(`unpriced_models`), and the statement carries one `UnpricedModel` per model and month
for the warning. `strict=True` refuses the statement instead, as before.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Final

import orjson
from clickhouse_connect.driver.client import Client

from metering.billing.pricebook import PriceBook, PriceBookError
from metering.periods import Period
from schemas.errors import ServiceError
from store.corrections import CorrectionStore
from store.ledger import Ledger

__all__ = [
    "STATEMENT_COLUMNS",
    "BillingError",
    "LineKey",
    "ModelTokens",
    "MonthQuantities",
    "Statement",
    "StatementLine",
    "UnpricedModel",
    "Usage",
    "input_digest",
    "price_statement",
    "read_settled_usage",
    "read_usage",
    "store_moment",
    "to_cents",
    "unapplied_flushes",
]

CENT: Final = Decimal("0.01")
MILLION: Final = Decimal(1_000_000)

STATEMENT_COLUMNS: Final = [
    "period",
    "month",
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

LineKey = tuple[str, str, str]  # (tenant, agency_id, agency_level), the views' key


class BillingError(ServiceError):
    """The store is not in a state that can be billed; the message says what to do."""


def to_cents(amount: Decimal) -> Decimal:
    """Round half to even to whole cents (the single rounding point of a line)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class MonthQuantities:
    month: date
    tenant: str
    agency_id: str
    agency_level: str
    messages: int
    tokens_in: int
    tokens_out: int
    active_users: int

    @property
    def key(self) -> LineKey:
        return (self.tenant, self.agency_id, self.agency_level)


@dataclass(frozen=True)
class ModelTokens:
    month: date
    tenant: str
    agency_id: str
    agency_level: str
    model: str
    tokens_in: int
    tokens_out: int

    @property
    def key(self) -> LineKey:
        return (self.tenant, self.agency_id, self.agency_level)


@dataclass(frozen=True)
class Usage:
    """Everything one statement is computed from, as read from the store."""

    period: Period
    months: tuple[MonthQuantities, ...]
    model_tokens: tuple[ModelTokens, ...]
    # distinct users over the whole period; for a month, agency_monthly's own figure
    period_users: dict[LineKey, int] = field(default_factory=dict)
    # first month with usage in the period's fiscal year, up to the period's end
    first_active_month: dict[LineKey, date] = field(default_factory=dict)


@dataclass(frozen=True)
class StatementLine:
    period: str
    month: date | None  # the month's first day for a monthly statement, else None
    tenant: str
    agency_id: str
    agency_level: str
    messages: int
    tokens_in: int
    tokens_out: int
    active_users: int
    plan: str
    billable_units: int
    charge_usd: Decimal
    list_value_usd: Decimal
    models: tuple[tuple[str, int, int], ...]  # (model, tokens_in, tokens_out), sorted
    # Models of `models` without a list price: their tokens are not in list_value_usd.
    unpriced_models: tuple[str, ...] = ()

    @property
    def key(self) -> LineKey:
        return (self.tenant, self.agency_id, self.agency_level)

    def row(self) -> tuple[Any, ...]:
        """The values of STATEMENT_COLUMNS, in order."""
        return (
            self.period,
            self.month,
            self.tenant,
            self.agency_id,
            self.agency_level,
            self.messages,
            self.tokens_in,
            self.tokens_out,
            self.active_users,
            self.plan,
            self.billable_units,
            self.charge_usd,
            self.list_value_usd,
        )

    def quantities(self) -> dict[str, Any]:
        """What the input digest covers: every quantity, no price."""
        return {
            "tenant": self.tenant,
            "agency_id": self.agency_id,
            "agency_level": self.agency_level,
            "messages": self.messages,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "active_users": self.active_users,
            "billable_units": self.billable_units,
            "models": [list(entry) for entry in self.models],
        }


def input_digest(period_label: str, lines: Iterable[StatementLine]) -> str:
    """sha256 of the canonical JSON of the statement's quantities (sorted, compact)."""
    canonical = {
        "period": period_label,
        "lines": [line.quantities() for line in sorted(lines, key=lambda li: li.key)],
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class UnpricedModel:
    """A model used in a month that the price book has no list price for."""

    model: str
    month: date
    tokens_in: int
    tokens_out: int
    lines: int  # statement lines using it that month
    reason: str  # the price book's own message: the model, the file, what to add

    def warning(self) -> str:
        return (
            f"warning: {self.reason}. The list value of {self.model!r} in {self.month:%Y-%m} "
            f"({self.tokens_in:,} tokens in, {self.tokens_out:,} out, {self.lines} line(s)) "
            "is shown as unpriced and left out of the list value; the charges are exact "
            "(they do not depend on list prices). Bill with --strict to refuse instead."
        )


@dataclass(frozen=True)
class Statement:
    period: Period
    lines: tuple[StatementLine, ...]
    price_book_sha256: str
    unpriced: tuple[UnpricedModel, ...] = ()

    @property
    def input_sha256(self) -> str:
        return input_digest(self.period.label, self.lines)

    @property
    def charge_usd(self) -> Decimal:
        return sum((line.charge_usd for line in self.lines), Decimal("0.00"))

    @property
    def list_value_usd(self) -> Decimal:
        return sum((line.list_value_usd for line in self.lines), Decimal("0.00"))

    def total(self, measure: str) -> int:
        return sum(int(getattr(line, measure)) for line in self.lines)


# ---------------------------------------------------------------------------------
# Reading the store

# Monthly quantities per statement key, straight from the contract view.
_MONTHS_SQL: Final = """
SELECT month, tenant, agency_id, agency_level, messages, tokens_in, tokens_out, active_users
FROM metering.agency_monthly
WHERE month >= {start:Date} AND month < {end:Date}
ORDER BY month, tenant, agency_id, agency_level
"""

# Distinct users over a multi-month period: merge the per-day uniqExact states over
# the whole range (summing monthly figures would count a user once per month).
_PERIOD_USERS_SQL: Final = """
SELECT tenant, agency_id, agency_level, uniqExactMerge(users) AS active_users
FROM metering.agency_daily_rollup
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY tenant, agency_id, agency_level
"""

# Tokens per model, month and statement key, for the list value. The model rollup
# is also keyed by feature; summing over it gives the same totals as agency_monthly.
_MODEL_TOKENS_SQL: Final = """
SELECT toStartOfMonth(day) AS month, tenant, agency_id, agency_level, model,
       sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out
FROM metering.model_daily_rollup
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY month, tenant, agency_id, agency_level, model
ORDER BY month, tenant, agency_id, agency_level, model
"""

# The first month with usage in the fiscal year, looking only up to the period's
# end: the per-agency annual fee is charged in that month (see pricebook.toml).
_FIRST_ACTIVE_SQL: Final = """
SELECT tenant, agency_id, agency_level, min(month) AS first_month
FROM metering.agency_monthly
WHERE month >= {fiscal_year_start:Date} AND month < {end:Date}
GROUP BY tenant, agency_id, agency_level
"""


def unapplied_flushes(client: Client) -> int:
    """Committed flushes not yet folded into the rollups. A worker applies them when it
    starts (recovery); until then the rollups trail the ledger and must not be billed."""
    return len(Ledger(client).unapplied_flushes())


# What the worker has done to the rollups so far: the last committed flush and the
# flushes not yet folded, the last committed correction and those not yet rebuilt.
StoreMoment = tuple[int, tuple[int, ...], int, tuple[tuple[int, str], ...]]


def store_moment(client: Client) -> StoreMoment:
    ledger, corrections = Ledger(client), CorrectionStore(client)
    return (
        ledger.max_committed_seq(),
        tuple(ledger.unapplied_flushes()),
        corrections.max_seq(),
        tuple((seq, correction_id) for seq, correction_id, _ in corrections.unapplied()),
    )


def read_settled_usage(
    client: Client,
    period: Period,
    *,
    wait_seconds: float = 30.0,
    pause_seconds: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Usage:
    """The period's quantities as of one moment with nothing half-applied.

    A flush is folded into the rollups one table at a time, and a correction rebuilds a
    rollup key by deleting it and inserting it again, so a read while either is under
    way can see one rollup ahead of another, or a key missing. The quantities are read
    when no committed flush or correction is pending, and kept only if nothing was
    committed meanwhile; otherwise read again, for up to `wait_seconds`. A flush or a
    correction still pending then is one a stopped worker left: its recovery finishes it.
    """
    deadline = clock() + wait_seconds
    while True:
        before = store_moment(client)
        _, flushes, _, corrections = before
        if not flushes and not corrections:
            usage = read_usage(client, period)
            if store_moment(client) == before:
                return usage
        if clock() >= deadline:
            raise BillingError(_unsettled(flushes, corrections, wait_seconds))
        sleep(pause_seconds)


def _unsettled(
    flushes: tuple[int, ...], corrections: tuple[tuple[int, str], ...], waited: float
) -> str:
    if not flushes and not corrections:
        return (
            f"the rollups changed during every read for {waited:g} s (a worker is folding "
            "flushes or applying corrections without a pause); bill again"
        )
    pending = []
    if flushes:
        pending.append(f"{len(flushes)} committed flush(es) not yet folded into the rollups")
    if corrections:
        ids = ", ".join(correction_id for _, correction_id in corrections)
        pending.append(f"correction(s) {ids} committed but not yet rebuilt")
    return (
        f"{' and '.join(pending)} after {waited:g} s; start the worker once (its recovery "
        "finishes them), then bill again"
    )


def read_usage(client: Client, period: Period) -> Usage:
    bounds = {"start": period.start, "end": period.end}
    months = tuple(
        MonthQuantities(
            month=row[0],
            tenant=str(row[1]),
            agency_id=str(row[2]),
            agency_level=str(row[3]),
            messages=int(row[4]),
            tokens_in=int(row[5]),
            tokens_out=int(row[6]),
            active_users=int(row[7]),
        )
        for row in client.query(_MONTHS_SQL, parameters=bounds).result_rows
    )
    model_tokens = tuple(
        ModelTokens(
            month=row[0],
            tenant=str(row[1]),
            agency_id=str(row[2]),
            agency_level=str(row[3]),
            model=str(row[4]),
            tokens_in=int(row[5]),
            tokens_out=int(row[6]),
        )
        for row in client.query(_MODEL_TOKENS_SQL, parameters=bounds).result_rows
    )
    if period.kind == "month":
        period_users = {m.key: m.active_users for m in months}
    else:
        period_users = {
            (str(r[0]), str(r[1]), str(r[2])): int(r[3])
            for r in client.query(_PERIOD_USERS_SQL, parameters=bounds).result_rows
        }
    first_active = {
        (str(r[0]), str(r[1]), str(r[2])): r[3]
        for r in client.query(
            _FIRST_ACTIVE_SQL,
            parameters={"fiscal_year_start": period.fiscal_year_start, "end": period.end},
        ).result_rows
    }
    return Usage(period, months, model_tokens, period_users, first_active)


# ---------------------------------------------------------------------------------
# Pricing (pure)


def price_statement(usage: Usage, book: PriceBook, *, strict: bool = False) -> Statement:
    """Price every line. A model without a list price is unpriced (see the module's
    docstring), or, with `strict`, a PriceBookError naming the model and the book."""
    period = usage.period
    by_key: dict[LineKey, list[MonthQuantities]] = defaultdict(list)
    for quantities in usage.months:
        by_key[quantities.key].append(quantities)
    tokens_by_key: dict[LineKey, list[ModelTokens]] = defaultdict(list)
    for tokens in usage.model_tokens:
        tokens_by_key[tokens.key].append(tokens)
    unexpected = set(tokens_by_key) - set(by_key)
    if unexpected:
        tenant, agency, _ = sorted(unexpected)[0]
        raise BillingError(
            f"{period.label}: the model rollup has tokens for {tenant}/{agency} that the "
            "agency rollup lacks; a flush is only partly applied: start the worker once "
            "(recovery re-applies it) and bill again"
        )
    unpriced: dict[tuple[str, date], list[Any]] = {}
    lines = [
        _price_line(
            period, key, by_key[key], tokens_by_key.get(key, []), usage, book, strict, unpriced
        )
        for key in sorted(by_key)
    ]
    return Statement(
        period,
        tuple(lines),
        book.sha256,
        tuple(
            UnpricedModel(model, when, tokens_in, tokens_out, count, reason)
            for (model, when), (tokens_in, tokens_out, count, reason) in sorted(unpriced.items())
        ),
    )


def _price_line(
    period: Period,
    key: LineKey,
    months: list[MonthQuantities],
    model_tokens: list[ModelTokens],
    usage: Usage,
    book: PriceBook,
    strict: bool,
    unpriced: dict[tuple[str, date], list[Any]],
) -> StatementLine:
    tenant, agency_id, agency_level = key
    tokens_in = sum(m.tokens_in for m in months)
    tokens_out = sum(m.tokens_out for m in months)
    if (sum(t.tokens_in for t in model_tokens), sum(t.tokens_out for t in model_tokens)) != (
        tokens_in,
        tokens_out,
    ):
        raise BillingError(
            f"{period.label}: tokens per model for {tenant}/{agency_id} do not add up to the "
            "agency rollup; a flush is only partly applied: start the worker once "
            "(recovery re-applies it) and bill again"
        )
    with localcontext() as context:
        context.prec = 60  # far beyond any product of token counts and prices: exact
        charge, units, kinds = Decimal(0), 0, []
        for quantities in months:
            plan = book.plan_for(tenant, quantities.month)
            if plan.kind not in kinds:
                kinds.append(plan.kind)
            if plan.kind == "per_active_user_month":
                units += quantities.active_users
                charge += plan.price_usd * quantities.active_users
            elif usage.first_active_month.get(key) == quantities.month:
                units += 1
                charge += plan.price_usd
        list_value = Decimal(0)
        per_model: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        unpriced_here: set[str] = set()
        for tokens in model_tokens:
            per_model[tokens.model][0] += tokens.tokens_in
            per_model[tokens.model][1] += tokens.tokens_out
            try:
                price = book.price_for(tokens.model, tokens.month)
            except PriceBookError as error:
                if strict:
                    raise
                unpriced_here.add(tokens.model)
                seen = unpriced.setdefault((tokens.model, tokens.month), [0, 0, 0, str(error)])
                seen[0] += tokens.tokens_in
                seen[1] += tokens.tokens_out
                seen[2] += 1
                continue
            list_value += (
                tokens.tokens_in * price.input_per_million_usd
                + tokens.tokens_out * price.output_per_million_usd
            ) / MILLION
        charge_usd, list_value_usd = to_cents(charge), to_cents(list_value)
    return StatementLine(
        period=period.label,
        month=period.start if period.kind == "month" else None,
        tenant=tenant,
        agency_id=agency_id,
        agency_level=agency_level,
        messages=sum(m.messages for m in months),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        active_users=usage.period_users.get(key, 0),
        plan="+".join(kinds),
        billable_units=units,
        charge_usd=charge_usd,
        list_value_usd=list_value_usd,
        models=tuple((model, v[0], v[1]) for model, v in sorted(per_model.items())),
        unpriced_models=tuple(sorted(unpriced_here)),
    )
