"""`metering certify`: a completeness certificate for one period, recorded in the store.

Two parts, each a list of equalities that must hold exactly:

Store-wide, per topic partition, from the flush ledger:
  - messages = counted + duplicates + rejected (summed over the partition's flushes);
  - rejected = the rows of `metering.rejected_events` on that partition (per reason);
  - the ranges are contiguous: each flush's first_offset is the previous flush's
    last_offset + 1, except where `metering.expired_offsets` records that the broker
    deleted exactly the offsets between them before they were counted.
  Offsets inside a range that held no message for the reader (transaction markers,
  aborted records) are last_offset - first_offset + 1 - messages, shown as skipped.
  The ledger's counted total equals the rows of counted_events of committed flushes.

For the period (its UTC days), per agency (`metering.billing.reconcile`):
  counted events after corrections (`metering.corrected_events`) = rollups = billed
  quantities of the latest billing run of the period
  ("not billed" when there is none), for messages, tokens and active users; every
  committed flush is folded into the rollups. Events that arrived after the period was
  first billed (ingested after the first run's created_at, occurred in the period) are
  counted and shown: they are why a later run restates. So are the corrections applied
  to the period's events (`metering.corrections`): each with its id, action, events
  marked, who requested and who approved it; every one must be rebuilt into the rollups.

The certificate (JSON or HTML) is inserted into `metering.certificates` with the
sha256 of its body, which the command prints.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from metering.billing.reconcile import reconcile
from metering.kafka_retention import read_expired
from metering.periods import Period
from store.ledger.integrity import lost_ranges
from store.ledger.sql import COMMITTED_EVENTS

__all__ = ["Certificate", "certify", "record_certificate", "render_certificate"]

_RANGES: Final = """
SELECT topic, partition, flush_seq, first_offset, last_offset, messages, counted,
       duplicates, rejected
FROM metering.flush_ledger
ORDER BY topic, partition, first_offset
"""

_REJECTED: Final = """
SELECT toString(topic), partition, toString(reason), count()
FROM metering.rejected_events
GROUP BY topic, partition, reason
"""

# Corrections whose marked events lie in the period, and whether each was rebuilt.
_CORRECTIONS: Final = """
SELECT correction_id, correction_seq, toString(action), events_marked, requested_by,
       approved_by, reason, committed_at,
       correction_seq IN (SELECT correction_seq FROM metering.corrections_applied) AS rebuilt
FROM metering.corrections
WHERE status = 'applied' AND first_day < {end:Date} AND last_day >= {start:Date}
ORDER BY correction_seq
"""

_FIRST_RUN: Final = """
SELECT min(created_at), count() FROM metering.billing_runs WHERE period = {period:String}
"""

_LATE: Final = f"""
SELECT count() FROM metering.counted_events
WHERE toDate(occurred_at) >= {{start:Date}} AND toDate(occurred_at) < {{end:Date}}
  AND ingested_at > {{after:DateTime64(3)}} AND {COMMITTED_EVENTS}
"""


@dataclass
class Certificate:
    period: Period
    created_at: datetime
    partitions: list[dict[str, Any]] = field(default_factory=list)
    agencies: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    billing: dict[str, Any] = field(default_factory=dict)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    inequalities: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.inequalities

    def as_json(self) -> dict[str, Any]:
        return {
            "certificate": "govmeter completeness certificate v1",
            "period": {
                "label": self.period.label,
                "kind": self.period.kind,
                "start": self.period.start.isoformat(),
                "end_exclusive": self.period.end.isoformat(),
            },
            "created_at": self.created_at.isoformat(),
            "complete": self.ok,
            "inequalities": self.inequalities,
            "equalities": [
                "per partition: messages = counted + duplicates + rejected",
                "per partition: rejected = rows of metering.rejected_events (by reason)",
                "per partition: each flush's first_offset = previous last_offset + 1, "
                "or the gap is recorded in metering.expired_offsets",
                "store: ledger counted = counted_events rows of committed flushes",
                "store: no range of the ledger is lost (metering.lost_ranges is empty)",
                "period, per agency: counted events after corrections = rollups = billed "
                "(latest run)",
                "period: every applied correction is rebuilt into the rollups",
            ],
            "partitions": self.partitions,
            "totals": self.totals,
            "billing": self.billing,
            "corrections_applied": len(self.corrections),
            "corrections": self.corrections,
            "agencies": self.agencies,
        }


def certify(client: Client, period: Period, now: datetime) -> Certificate:
    cert = Certificate(period=period, created_at=now)
    _partitions(client, cert)
    _lost(client, cert)
    _period(client, period, cert)
    _corrections(client, period, cert)
    return cert


def _lost(client: Client, cert: Certificate) -> None:
    """Ranges the ledger holds whose rows the store lost and Kafka could not give back."""
    for lost in lost_ranges(client):
        cert.inequalities.append(f"store: lost {lost.describe()}")


def _corrections(client: Client, period: Period, cert: Certificate) -> None:
    rows = client.query(
        _CORRECTIONS, parameters={"start": period.start, "end": period.end}
    ).result_rows
    for row in rows:
        committed = row[7] if row[7].tzinfo is not None else row[7].replace(tzinfo=UTC)
        cert.corrections.append(
            {
                "correction_id": str(row[0]),
                "correction_seq": int(row[1]),
                "action": str(row[2]),
                "events_marked": int(row[3]),
                "requested_by": str(row[4]),
                "approved_by": str(row[5]),
                "reason": str(row[6]),
                "committed_at": committed.isoformat(),
            }
        )
        if not int(row[8]):
            cert.inequalities.append(
                f"{period.label}: correction {row[0]} is committed but not yet rebuilt into "
                "the rollups (start the worker: it finishes it)"
            )


def _partitions(client: Client, cert: Certificate) -> None:
    rejected: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for topic, partition, reason, count in client.query(_REJECTED).result_rows:
        rejected[(str(topic), int(partition))][str(reason)] = int(count)
    expired: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for gap in read_expired(client):
        expired[(gap.topic, gap.partition)][gap.first_missing] = gap.resume_at
    ranges: dict[tuple[str, int], list[tuple[int, ...]]] = defaultdict(list)
    for row in client.query(_RANGES).result_rows:
        ranges[(str(row[0]), int(row[1]))].append(tuple(int(v) for v in row[2:]))
    for key in sorted(set(ranges) | set(rejected)):
        topic, partition = key
        where = f"{topic}[{partition}]"
        rows = ranges.get(key, [])
        sums = [sum(r[i] for r in rows) for i in range(3, 7)]
        messages, counted, duplicates, rejected_total = sums
        by_reason = dict(sorted(rejected.get(key, {}).items()))
        gaps = expired.get(key, {})
        expired_messages = 0
        for previous, current in itertools.pairwise(rows):
            expected_first = previous[2] + 1
            if current[1] == expected_first:
                continue
            if gaps.get(expected_first) == current[1]:
                expired_messages += current[1] - expected_first
                continue
            cert.inequalities.append(
                f"{where}: flush {current[0]} starts at offset {current[1]}, not at "
                f"{expected_first} after flush {previous[0]} (no expired-offsets record "
                "covers the gap)"
            )
        if messages != counted + duplicates + rejected_total:
            cert.inequalities.append(
                f"{where}: messages {messages} != counted {counted} + duplicates "
                f"{duplicates} + rejected {rejected_total}"
            )
        if sum(by_reason.values()) != rejected_total:
            cert.inequalities.append(
                f"{where}: the ledger rejected {rejected_total}, rejected_events holds "
                f"{sum(by_reason.values())}"
            )
        first = rows[0][1] if rows else None
        last = rows[-1][2] if rows else None
        span = 0 if first is None or last is None else last - first + 1
        cert.partitions.append(
            {
                "topic": topic,
                "partition": partition,
                "flushes": len(rows),
                "first_offset": first,
                "last_offset": last,
                "messages": messages,
                "counted": counted,
                "duplicates": duplicates,
                "rejected": rejected_total,
                "rejected_by_reason": by_reason,
                "skipped_offsets": span - messages - expired_messages,
                "expired_offsets": expired_messages,
                "expired_before_counted": sum(end - begin for begin, end in gaps.items()),
            }
        )


def _period(client: Client, period: Period, cert: Certificate) -> None:
    result = reconcile(client, period)
    if result.ledger_counted != result.counted_rows:
        cert.inequalities.append(
            f"store: the ledger counted {result.ledger_counted} events, counted_events "
            f"holds {result.counted_rows} rows of committed flushes"
        )
    if result.unapplied_flushes:
        cert.inequalities.append(
            f"store: {result.unapplied_flushes} committed flush(es) not folded into the rollups"
        )
    for comparison in result.agencies:
        if not comparison.equal:
            cert.inequalities.append(f"{period.label}: {comparison.describe()}")
    for comparison in result.tenants:
        if not comparison.equal:
            cert.inequalities.append(f"{period.label}: {comparison.describe()}")
    per_agency: dict[tuple[str, str, str], dict[str, Any]] = {}
    for comparison in result.agencies:
        entry = per_agency.setdefault(
            (comparison.tenant, comparison.agency_id, comparison.agency_level),
            {
                "tenant": comparison.tenant,
                "agency_id": comparison.agency_id,
                "agency_level": comparison.agency_level,
            },
        )
        entry[comparison.measure] = {
            "counted": comparison.events,
            "rollups": comparison.rollups,
            "billed": "not billed" if comparison.billed is None else comparison.billed,
        }
    cert.agencies = [per_agency[key] for key in sorted(per_agency)]
    totals: dict[str, Any] = {"ledger_counted": result.ledger_counted}
    for measure in ("messages", "tokens_in", "tokens_out"):
        totals[measure] = {
            "counted": sum(c.events for c in result.tenants if c.measure == measure),
            "rollups": sum(c.rollups for c in result.tenants if c.measure == measure),
            "billed": "not billed"
            if result.run is None
            else sum(c.billed or 0 for c in result.tenants if c.measure == measure),
        }
    cert.totals = totals
    first_run, runs = client.query(_FIRST_RUN, parameters={"period": period.label}).result_rows[0]
    if int(runs) == 0:
        cert.billing = {"status": "not billed"}
        return
    late = client.query(
        _LATE, parameters={"start": period.start, "end": period.end, "after": first_run}
    ).result_rows[0][0]
    assert result.run is not None
    cert.billing = {
        "status": "billed",
        "runs": int(runs),
        "first_billed_at": (
            first_run if first_run.tzinfo is not None else first_run.replace(tzinfo=UTC)
        ).isoformat(),
        "latest_run_id": result.run.run_id,
        "latest_version": result.run.version,
        "arrived_after_first_billing": int(late),
    }


def render_certificate(cert: Certificate, fmt: str) -> str:
    body = cert.as_json()
    if fmt == "json":
        return json.dumps(body, indent=2, sort_keys=False) + "\n"
    return _html(body)


def _table(caption: str, headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>\n"
    )


def _corrections_html(label: str, corrections: list[dict[str, Any]]) -> str:
    if not corrections:
        return f"<p>None: no correction was applied to {html.escape(label)}.</p>\n"
    return _table(
        f"Corrections applied to {label}",
        ["correction", "action", "events marked", "requested by", "approved by", "reason"],
        [
            [
                *(c["correction_id"], c["action"], c["events_marked"]),
                *(c["requested_by"], c["approved_by"], c["reason"]),
            ]
            for c in corrections
        ],
    )


def _html(body: dict[str, Any]) -> str:
    label = body["period"]["label"]
    verdict = "complete" if body["complete"] else "NOT complete"
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>Completeness certificate {html.escape(label)}</title></head><body><main>\n",
        f"<h1>Completeness certificate for {html.escape(label)}</h1>\n",
        f"<p>Created {html.escape(body['created_at'])}: the period is {verdict}.</p>\n",
        "<h2>Inequalities</h2>\n",
        "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in body["inequalities"]) + "</ul>\n"
        if body["inequalities"]
        else "<p>None: every equality below holds.</p>\n",
        "<h2>Equalities checked</h2>\n<ul>"
        + "".join(f"<li>{html.escape(e)}</li>" for e in body["equalities"])
        + "</ul>\n",
        "<h2>Partitions</h2>\n",
        _table(
            "Flush ledger per topic partition (whole ledger)",
            [
                *("topic", "partition", "flushes", "first offset", "last offset", "messages"),
                *("counted", "duplicates", "rejected", "skipped", "expired"),
            ],
            [
                [
                    p[name]
                    for name in (
                        *("topic", "partition", "flushes", "first_offset", "last_offset"),
                        *("messages", "counted", "duplicates", "rejected"),
                        *("skipped_offsets", "expired_before_counted"),
                    )
                ]
                for p in body["partitions"]
            ],
        ),
        "<h2>Period totals</h2>\n",
        _table(
            f"Counted, rollups and billed in {label}",
            ["measure", "counted", "rollups", "billed"],
            [
                [m, *(body["totals"][m][k] for k in ("counted", "rollups", "billed"))]
                for m in ("messages", "tokens_in", "tokens_out")
            ],
        ),
        "<h2>Billing</h2>\n",
        _table(
            "Billing runs of the period",
            ["field", "value"],
            [[k, v] for k, v in body["billing"].items()],
        ),
        "<h2>Corrections</h2>\n",
        _corrections_html(label, body["corrections"]),
        "<h2>Agencies</h2>\n",
        _table(
            f"Messages per agency in {label}",
            ["tenant", "agency", "level", "counted", "rollups", "billed"],
            [
                [
                    *(a["tenant"], a["agency_id"], a["agency_level"]),
                    *(a["messages"][k] for k in ("counted", "rollups", "billed")),
                ]
                for a in body["agencies"]
            ],
        ),
        "</main></body></html>\n",
    ]
    return "".join(parts)


def record_certificate(client: Client, cert: Certificate, fmt: str, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    client.insert(
        "metering.certificates",
        [[cert.period.label, cert.created_at, fmt, digest, text]],
        column_names=["period", "created_at", "format", "sha256", "body"],
    )
    return digest
