"""Billing runs: record a statement once per change, compare it with the last one.

A period's first recorded statement is version 1. Billing the period again:
  * same quantities (input digest) and same price book (file digest) as the latest
    run: nothing is written; the outcome is "unchanged since run X";
  * anything different: a restatement, version N+1, with the per-line changes
    (old -> new) and the charge and list-value deltas against the latest run.
Write order is claim first, then lines, run row last: the run row is the commit point.

Each run records the corrections in effect for its period when it was computed (the
applied corrections whose events lie in the period, `metering.corrections`), so a
restatement names the corrections applied since the run it replaces.

Two `metering bill` runs for one period at once (two processes, two hosts) must not
both write version N: ClickHouse has no transactions, so "read the latest version,
then write the next" is a race in which both read N-1, and their lines mix under one
run_id. So a run claims (period, version N) before it writes anything:

  1. insert one row into metering.billing_claims with a unique claim_id and the insert
     deduplication token "billing-claim:<period>:v<N>:a<attempt>". ClickHouse checks
     and records a block's token under the table's lock (and through Keeper on a
     cluster): of any number of inserts with one token, exactly one is stored;
  2. read the claim of (period, N, attempt) back: whoever finds its own claim_id holds
     version N and writes it; everyone else finds the holder's row, and no interleaving
     of the inserts and reads can show two runs their own claim;
  3. the loser waits (up to `wait_seconds`) for the holder's run row and then starts
     over (usually: "unchanged since run X", the holder having billed the same
     quantities), or refuses naming the holder's claim; it never wrote a line.
A holder that died leaves a claim without a run row; once that claim is older than
the lease (`lease_seconds`, measured on the server's clock), the next run claims the
next attempt. The holder checks that its attempt is still the latest right before
its lines and again before its run row; the statement is computed before claiming,
so a holder needs the lease only for those two inserts.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, Literal

from clickhouse_connect.driver.client import Client

from metering.billing.statements import BillingError, LineKey, Statement, StatementLine
from metering.periods import Period

__all__ = [
    "COMPARED_FIELDS",
    "BillingBusyError",
    "BillingOutcome",
    "BillingRun",
    "Claim",
    "LineChange",
    "OutcomeStatus",
    "bill_statement",
    "claim_version",
    "compare_lines",
    "latest_run",
    "period_corrections",
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
    "corrections",
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

# The applied corrections whose marked events lie in a period (first_day..last_day
# overlaps it), in the order they were applied.
_PERIOD_CORRECTIONS_SQL: Final = """
SELECT correction_id
FROM metering.corrections
WHERE status = 'applied'
  AND first_day < {end:Date} AND last_day >= {start:Date}
ORDER BY correction_seq
"""

# Lines left by a run that crashed before its run row was written.
_ORPHAN_COUNT_SQL: Final = (
    "SELECT count() FROM metering.billing_lines WHERE run_id = {run_id:String}"
)
_ORPHAN_DELETE_SQL: Final = "DELETE FROM metering.billing_lines WHERE run_id = {run_id:String}"

# The claims of one period's version, latest attempt first, then in the order stored,
# with the server's clock to judge their age by.
_CLAIMS_SQL: Final = """
SELECT attempt, claim_id, claimed_by, claimed_at, now64(6) AS server_now
FROM metering.billing_claims
WHERE period = {period:String} AND version = {version:UInt32}
ORDER BY attempt DESC, claimed_at, claim_id
"""
_CLAIM_COLUMNS: Final = ["period", "version", "attempt", "claim_id", "claimed_by"]

DEFAULT_WAIT_SECONDS: Final = 60.0
DEFAULT_LEASE_SECONDS: Final = 600.0
# Test hook: hold a won claim this many seconds before writing (two runs then overlap).
PAUSE_AFTER_CLAIM_ENV: Final = "METERING_FAULT_BILL_PAUSE_AFTER_CLAIM"


@dataclass(frozen=True)
class Claim:
    period: str
    version: int
    attempt: int
    claim_id: str
    claimed_by: str
    claimed_at: datetime

    def describe(self) -> str:
        return (
            f"claim {self.claim_id[:12]} by {self.claimed_by} at "
            f"{self.claimed_at:%Y-%m-%d %H:%M:%S} UTC"
        )


class BillingBusyError(BillingError):
    """Another run holds the claim on the version this run would record."""

    def __init__(self, message: str, holder: Claim) -> None:
        super().__init__(message)
        self.holder = holder


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
    corrections: tuple[str, ...] = ()  # ids of the corrections in effect for the period

    def row(self) -> list[Any]:
        return [
            list(self.corrections) if column == "corrections" else getattr(self, column)
            for column in _RUN_COLUMNS
        ]


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
    waited_for: Claim | None = None  # another run's claim this one waited for
    # Corrections in effect for the period now, and those of them the previous run
    # did not have (what a restatement names).
    corrections: tuple[str, ...] = ()

    @property
    def corrections_since_previous(self) -> tuple[str, ...]:
        before = set(self.previous.corrections) if self.previous is not None else set()
        return tuple(c for c in self.corrections if c not in before)

    @property
    def reasons(self) -> list[str]:
        if self.previous is None:
            return []
        reasons = []
        if self.previous.input_sha256 != self.statement.input_sha256:
            reasons.append("quantities changed")
        if self.previous.price_book_sha256 != self.statement.price_book_sha256:
            reasons.append("price book changed")
        if self.corrections_since_previous:
            reasons.append(f"{len(self.corrections_since_previous)} correction(s) applied")
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
        corrections=tuple(str(c) for c in values["corrections"]),
    )


def period_corrections(client: Client, period: Period) -> tuple[str, ...]:
    """Ids of the applied corrections that touch `period`, in the order applied."""
    rows = client.query(
        _PERIOD_CORRECTIONS_SQL, parameters={"start": period.start, "end": period.end}
    ).result_rows
    return tuple(str(row[0]) for row in rows)


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
    client: Client,
    statement: Statement,
    *,
    now: datetime,
    record: bool = True,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BillingOutcome:
    """Record `statement` as the next version of its period unless nothing changed.

    When another run holds the claim on that version, wait up to `wait_seconds` for it
    to record, then compare again; past that, BillingBusyError names the holder.
    """
    deadline = clock() + wait_seconds
    waited_for: Claim | None = None
    corrections = period_corrections(client, statement.period)
    while True:
        previous = latest_run(client, statement.period.label)
        if previous is not None and (
            previous.input_sha256 == statement.input_sha256
            and previous.price_book_sha256 == statement.price_book_sha256
        ):
            return BillingOutcome(
                "unchanged", statement, previous, previous, (), waited_for, previous.corrections
            )
        old_lines = read_lines(client, previous) if previous is not None else []
        changes = tuple(compare_lines(old_lines, list(statement.lines))) if previous else ()
        if not record:
            return BillingOutcome(
                "not_recorded", statement, None, previous, changes, corrections=corrections
            )
        version = 1 if previous is None else previous.version + 1
        try:
            claim = claim_version(
                client, statement.period.label, version, lease_seconds=lease_seconds
            )
        except BillingBusyError as busy:
            waited_for = busy.holder
            if not _wait_for_version(client, busy.holder, deadline, clock, sleep):
                raise BillingBusyError(
                    f"{busy} It has not recorded version {version} within "
                    f"{wait_seconds:g} s; this run recorded nothing. Run `metering bill` "
                    "again once it has finished (if it died, its claim expires "
                    f"{lease_seconds:g} s after it was made).",
                    busy.holder,
                ) from None
            continue
        _pause_after_claim()
        run = _new_run(statement.period, statement, previous, now, corrections)
        _write(client, run, statement, claim)
        status: OutcomeStatus = "recorded" if previous is None else "restated"
        return BillingOutcome(status, statement, run, previous, changes, waited_for, corrections)


def claim_version(
    client: Client, period: str, version: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> Claim:
    """Claim (period, version) for this run, or raise BillingBusyError naming the holder."""
    attempt = 1
    latest = _claims(client, period, version)
    if latest:
        holder, server_now = latest[0]
        if _fresh(holder, server_now, lease_seconds):
            raise _busy(holder)
        attempt = holder.attempt + 1  # the holder died before recording: take over
    claim_id = uuid.uuid4().hex
    claimed_by = f"{socket.gethostname()}:{os.getpid()}"
    client.insert(
        "metering.billing_claims",
        [[period, version, attempt, claim_id, claimed_by]],
        column_names=_CLAIM_COLUMNS,
        settings={
            "insert_deduplicate": 1,
            "insert_deduplication_token": f"billing-claim:{period}:v{version}:a{attempt}",
        },
    )
    claims = _claims(client, period, version)
    if not claims:
        raise BillingError(
            f"{period}: the claim on version {version} was not stored in "
            "metering.billing_claims; check that the table exists (`metering migrate`)"
        )
    holder, _ = claims[0]
    if holder.attempt != attempt or holder.claim_id != claim_id:
        raise _busy(holder)
    return holder


def _claims(client: Client, period: str, version: int) -> list[tuple[Claim, datetime]]:
    """The claims of (period, version): the holder of the latest attempt first."""
    rows = client.query(_CLAIMS_SQL, parameters={"period": period, "version": version})
    return [
        (
            Claim(period, version, int(row[0]), str(row[1]), str(row[2]), row[3]),
            row[4],
        )
        for row in rows.result_rows
    ]


def _fresh(claim: Claim, server_now: datetime, lease_seconds: float) -> bool:
    return (server_now - claim.claimed_at).total_seconds() < lease_seconds


def _busy(holder: Claim) -> BillingBusyError:
    return BillingBusyError(
        f"{holder.period}: another `metering bill` holds version {holder.version} "
        f"({holder.describe()}).",
        holder,
    )


def _still_held(client: Client, claim: Claim) -> bool:
    claims = _claims(client, claim.period, claim.version)
    return bool(claims) and claims[0][0].claim_id == claim.claim_id


def _wait_for_version(
    client: Client,
    holder: Claim,
    deadline: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> bool:
    """True once the holder's version is recorded (or its claim is gone), False at the
    deadline."""
    while True:
        latest = latest_run(client, holder.period)
        if latest is not None and latest.version >= holder.version:
            return True
        claims = _claims(client, holder.period, holder.version)
        if claims and claims[0][0].claim_id != holder.claim_id:
            return True  # taken over: compare again (and claim the next attempt)
        if clock() >= deadline:
            return False
        sleep(min(0.5, max(0.0, deadline - clock())))


def _pause_after_claim() -> None:
    seconds = os.environ.get(PAUSE_AFTER_CLAIM_ENV, "").strip()
    if seconds:
        time.sleep(float(seconds))


def _new_run(
    period: Period,
    statement: Statement,
    previous: BillingRun | None,
    now: datetime,
    corrections: tuple[str, ...] = (),
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
        corrections=corrections,
    )


def _write(client: Client, run: BillingRun, statement: Statement, claim: Claim) -> None:
    if not statement.lines:
        raise ValueError("an empty statement is never recorded")
    recorded = latest_run(client, run.period)
    if recorded is not None and recorded.version >= run.version:
        raise BillingError(
            f"{run.period}: version {recorded.version} was recorded ({recorded.run_id}) "
            f"while this run held {claim.describe()}; nothing recorded: bill again"
        )
    _check_held(client, claim)
    parameters = {"run_id": run.run_id}
    if int(client.query(_ORPHAN_COUNT_SQL, parameters=parameters).result_rows[0][0]):
        # Lines of a holder that died before its run row: only a holder deletes them.
        client.command(_ORPHAN_DELETE_SQL, parameters=parameters)
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
    _check_held(client, claim)
    client.insert("metering.billing_runs", [run.row()], column_names=_RUN_COLUMNS)


def _check_held(client: Client, claim: Claim) -> None:
    if not _still_held(client, claim):
        raise BillingError(
            f"{claim.period}: this run's claim on version {claim.version} ({claim.describe()}) "
            f"was taken over after its lease expired; nothing recorded: bill again"
        )
