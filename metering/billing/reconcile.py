"""Reconcile a period: events counted = rollup totals = billed quantities.

Three independent sources, compared per tenant and per (tenant, agency_id,
agency_level) for messages, tokens_in and tokens_out, and for active users:
  events   `metering.corrected_events`: the rows of committed flushes after
           corrections (voided events left out, amended fields replaced), by the UTC
           day of `occurred_at` (the raw record; distinct users counted from user_id)
  rollups  `metering.agency_monthly` summed over the period's months (distinct users
           over the period merged from the uniqExact states)
  billed   the lines of the latest billing run of the period, if there is one
A key missing from one source counts as zero there, so it shows up as a difference.
Two store-wide checks come with it: every committed flush is folded into the
rollups, and the ledger's counted total equals the rows in counted_events.

Also store-wide, and shown without changing the verdict (nothing can be reconciled
with messages that no longer exist): offsets the broker deleted before they were
counted, as recorded by the worker (`metering.expired_offsets`) and, when the broker's
earliest offsets are given, the gaps no worker has reached yet (earliest offset beyond
the ledger's resume point). The counts of whatever periods those messages belonged to
are short by at most that many messages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from metering.billing.runs import BillingRun, latest_run, read_lines
from metering.billing.statements import unapplied_flushes
from metering.kafka_retention import Gap, expired_gaps, read_expired
from metering.periods import Period
from store.ledger import Ledger

__all__ = ["MEASURES", "Comparison", "Reconciliation", "reconcile"]

MEASURES: Final = ("messages", "tokens_in", "tokens_out", "active_users")

Figures = dict[str, int]
AgencyKey = tuple[str, str, str]

# Events counted in the period, per agency, after corrections: rows of committed flushes
# only (rows of a flush that never reached the ledger are orphans that recovery
# deletes; corrected_events reads committed flushes only). toDate()
# of the UTC column is the UTC day, the same expression the rollups are built with.
_EVENTS_BY_AGENCY_SQL: Final = """
SELECT tenant, agency_id, toString(agency_level) AS agency_level,
       count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExact(user_id) AS active_users
FROM metering.corrected_events
WHERE toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}
GROUP BY tenant, agency_id, agency_level
"""

# The same per tenant: distinct users across all of the tenant's agencies.
_EVENTS_BY_TENANT_SQL: Final = """
SELECT tenant, count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExact(user_id) AS active_users
FROM metering.corrected_events
WHERE toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}
GROUP BY tenant
"""

# Rollup sums per agency, from the contract view (summed over the period's months).
_ROLLUP_SUMS_SQL: Final = """
SELECT tenant, agency_id, agency_level,
       sum(messages) AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out
FROM metering.agency_monthly
WHERE month >= {start:Date} AND month < {end:Date}
GROUP BY tenant, agency_id, agency_level
"""

# Distinct users over the period per agency: merged states, never a sum of months.
_ROLLUP_USERS_BY_AGENCY_SQL: Final = """
SELECT tenant, agency_id, agency_level, uniqExactMerge(users) AS active_users
FROM metering.agency_daily_rollup
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY tenant, agency_id, agency_level
"""

# Distinct users over the period per tenant (the union of its agencies' users).
_ROLLUP_USERS_BY_TENANT_SQL: Final = """
SELECT tenant, uniqExactMerge(users) AS active_users
FROM metering.agency_daily_rollup
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY tenant
"""


@dataclass(frozen=True)
class Comparison:
    tenant: str
    agency_id: str  # "" for a tenant total
    agency_level: str
    measure: str
    events: int
    rollups: int
    billed: int | None  # None: no billing run, or a measure not billed at this level

    @property
    def equal(self) -> bool:
        return self.events == self.rollups and self.billed in (None, self.events)

    def describe(self) -> str:
        where = self.tenant if not self.agency_id else f"{self.tenant}/{self.agency_id}"
        parts = [f"events {self.events}", f"rollups {self.rollups}"]
        if self.billed is not None:
            parts.append(f"billed {self.billed}")
        return f"{where} {self.measure}: " + ", ".join(parts)


@dataclass(frozen=True)
class Reconciliation:
    period: Period
    run: BillingRun | None
    tenants: tuple[Comparison, ...]
    agencies: tuple[Comparison, ...]
    ledger_counted: int
    counted_rows: int
    unapplied_flushes: int
    expired: tuple[Gap, ...] = ()  # recorded by a worker
    expired_pending: tuple[Gap, ...] = ()  # on the broker, not yet reached by a worker
    broker_checked: bool = False  # whether the broker's earliest offsets were read

    @property
    def expired_messages(self) -> int:
        return sum(g.messages for g in (*self.expired, *self.expired_pending))

    @property
    def differences(self) -> list[Comparison]:
        return [c for c in (*self.tenants, *self.agencies) if not c.equal]

    @property
    def ok(self) -> bool:
        return (
            not self.differences
            and self.ledger_counted == self.counted_rows
            and self.unapplied_flushes == 0
        )


def reconcile(
    client: Client,
    period: Period,
    *,
    events_topic: str | None = None,
    broker_earliest: Mapping[int, int] | None = None,
) -> Reconciliation:
    """Compare the three sources for `period`; with `events_topic` and the broker's
    earliest offset per partition of it, also the expired gaps no worker reached yet."""
    bounds = {"start": period.start, "end": period.end}
    events_agency: dict[AgencyKey, Figures] = {}
    for row in client.query(_EVENTS_BY_AGENCY_SQL, parameters=bounds).result_rows:
        events_agency[(str(row[0]), str(row[1]), str(row[2]))] = _figures(row[3:])
    events_tenant = {
        str(row[0]): _figures(row[1:])
        for row in client.query(_EVENTS_BY_TENANT_SQL, parameters=bounds).result_rows
    }
    rollup_agency: dict[AgencyKey, Figures] = defaultdict(dict)
    for row in client.query(_ROLLUP_SUMS_SQL, parameters=bounds).result_rows:
        key = (str(row[0]), str(row[1]), str(row[2]))
        rollup_agency[key].update(
            messages=int(row[3]), tokens_in=int(row[4]), tokens_out=int(row[5])
        )
    for row in client.query(_ROLLUP_USERS_BY_AGENCY_SQL, parameters=bounds).result_rows:
        rollup_agency[(str(row[0]), str(row[1]), str(row[2]))]["active_users"] = int(row[3])
    rollup_tenant: dict[str, Figures] = defaultdict(dict)
    for key, figures in rollup_agency.items():
        for measure in ("messages", "tokens_in", "tokens_out"):
            rollup_tenant[key[0]][measure] = rollup_tenant[key[0]].get(measure, 0) + figures.get(
                measure, 0
            )
    for row in client.query(_ROLLUP_USERS_BY_TENANT_SQL, parameters=bounds).result_rows:
        rollup_tenant[str(row[0])]["active_users"] = int(row[1])

    run = latest_run(client, period.label)
    billed_agency: dict[AgencyKey, Figures] = {}
    billed_tenant: dict[str, Figures] = defaultdict(dict)
    if run is not None:
        for line in read_lines(client, run):
            billed_agency[line.key] = {m: int(getattr(line, m)) for m in MEASURES}
            for measure in ("messages", "tokens_in", "tokens_out"):
                billed_tenant[line.tenant][measure] = billed_tenant[line.tenant].get(
                    measure, 0
                ) + getattr(line, measure)

    agencies = [
        Comparison(
            tenant=key[0],
            agency_id=key[1],
            agency_level=key[2],
            measure=measure,
            events=events_agency.get(key, {}).get(measure, 0),
            rollups=rollup_agency.get(key, {}).get(measure, 0),
            billed=None if run is None else billed_agency.get(key, {}).get(measure, 0),
        )
        for key in sorted(set(events_agency) | set(rollup_agency) | set(billed_agency))
        for measure in MEASURES
    ]
    tenants = [
        Comparison(
            tenant=tenant,
            agency_id="",
            agency_level="",
            measure=measure,
            events=events_tenant.get(tenant, {}).get(measure, 0),
            rollups=rollup_tenant.get(tenant, {}).get(measure, 0),
            # Distinct users of a tenant are not a sum of lines: not billed at this level.
            billed=None
            if run is None or measure == "active_users"
            else billed_tenant.get(tenant, {}).get(measure, 0),
        )
        for tenant in sorted(set(events_tenant) | set(rollup_tenant) | set(billed_tenant))
        for measure in MEASURES
    ]
    ledger = Ledger(client)
    ledger_counted, counted_rows = ledger.counted_totals()
    expired = read_expired(client)
    pending: list[Gap] = []
    checked = events_topic is not None and broker_earliest is not None
    if events_topic is not None and broker_earliest is not None:
        resume = ledger.resume_positions()
        known = {(g.topic, g.partition, g.first_missing) for g in expired}
        pending = [
            gap
            for gap in expired_gaps(resume, events_topic, broker_earliest)
            if (gap.topic, gap.partition, gap.first_missing) not in known
        ]
    return Reconciliation(
        period=period,
        run=run,
        tenants=tuple(tenants),
        agencies=tuple(agencies),
        ledger_counted=int(ledger_counted or 0),
        counted_rows=int(counted_rows or 0),
        unapplied_flushes=unapplied_flushes(client),
        expired=tuple(expired),
        expired_pending=tuple(pending),
        broker_checked=checked,
    )


def _figures(values: Sequence[Any]) -> Figures:
    return {measure: int(str(value)) for measure, value in zip(MEASURES, values, strict=True)}
