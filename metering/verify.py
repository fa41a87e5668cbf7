"""`metering verify`: recompute every flush's content hash and the chain from the store
alone, and check that the rollups equal the raw counted events.

The content hash and the chain are defined in `store.ledger.chain`; the sink wrote them
on each flush's ledger rows at its commit. Here they are recomputed from
`metering.counted_events`, `metering.rejections_log` and `metering.flush_ledger`, so an
edited, deleted or inserted row of a chained flush shows as that flush's hash differing.
Flushes committed before migration 0008 carry no hash: they are reported as not chained
and do not fail. The rollup check compares `metering.agency_daily` (the merged rollup
states) with the committed counted events, per agency-day, over the whole store or one
period.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from metering.periods import Period
from store.corrections.chain import DECISION_FIELDS, correction_content_sha256
from store.corrections.sql import MARKS_OF
from store.ledger.chain import (
    ChainedEvent,
    ChainedRange,
    ChainedRejection,
    chain_sha256,
    content_sha256,
)

__all__ = ["VerifyResult", "render_verification", "verify_store"]

# In commit order: the chain runs from each commit to the next (migration 0012; before
# it, commit_seq is the flush number, which was the order then).
_LEDGER: Final = """
SELECT commit_seq, topic, partition, first_offset, last_offset, messages, counted,
       duplicates, rejected, content_sha256, chain_sha256, flush_seq
FROM metering.flush_ledger
ORDER BY commit_seq, topic, partition
"""

_EVENTS: Final = """
SELECT toString(event_id), toUnixTimestamp64Milli(occurred_at), tenant, agency_id,
       toString(agency_level), user_id, toString(model), toString(feature),
       tokens_in, tokens_out, toString(topic), partition, offset
FROM metering.counted_events
WHERE flush_seq = {seq:UInt64}
"""

_REJECTIONS: Final = """
SELECT toString(reason), event_id, agency_id, toString(topic), partition, offset, size_bytes
FROM metering.rejections_log
WHERE flush_seq = {seq:UInt64}
"""

# The counted events after corrections (migration 0010): rollups hold the corrected record.
_RAW_DAILY: Final = """
SELECT toDate(occurred_at) AS day, tenant, agency_id, toString(agency_level) AS level,
       count(), sum(tokens_in), sum(tokens_out), uniqExact(user_id)
FROM metering.corrected_events
WHERE 1 {period}
GROUP BY day, tenant, agency_id, level
"""

_ROLLUP_DAILY: Final = """
SELECT day, tenant, agency_id, agency_level, messages, tokens_in, tokens_out, active_users
FROM metering.agency_daily
WHERE 1 {period}
"""

_FIGURES: Final = ("messages", "tokens_in", "tokens_out", "active_users")

_CORRECTIONS: Final = f"""
SELECT {", ".join(DECISION_FIELDS)}, content_sha256, chain_sha256
FROM metering.corrections
ORDER BY correction_seq
"""


@dataclass
class VerifyResult:
    flushes: int = 0
    chained: int = 0
    not_chained: list[int] = field(default_factory=list)
    flush_failures: list[str] = field(default_factory=list)
    agency_days: int = 0
    rollup_failures: list[str] = field(default_factory=list)
    corrections: int = 0
    corrections_not_chained: list[int] = field(default_factory=list)
    correction_failures: list[str] = field(default_factory=list)
    period: str = "all days"

    @property
    def ok(self) -> bool:
        return not self.flush_failures and not self.rollup_failures and not self.correction_failures


def verify_store(client: Client, period: Period | None = None) -> VerifyResult:
    result = VerifyResult(period=period.describe() if period is not None else "all days")
    _verify_chain(client, result)
    _verify_corrections(client, result)
    _verify_rollups(client, period, result)
    return result


def _verify_corrections(client: Client, result: VerifyResult) -> None:
    """Recompute each correction's hash from its row and marks, and the chain."""
    previous = ""
    for row in client.query(_CORRECTIONS).result_rows:
        decision = dict(zip(DECISION_FIELDS, row[: len(DECISION_FIELDS)], strict=True))
        stored_content, stored_chain = str(row[-2]), str(row[-1])
        seq = int(decision["correction_seq"])
        result.corrections += 1
        if not stored_content:
            result.corrections_not_chained.append(seq)
            previous = stored_chain
            continue
        marks = client.query(MARKS_OF, parameters={"seq": seq}).result_rows
        content = correction_content_sha256(decision, marks)
        name = f"correction {seq} ({decision['correction_id']})"
        if content != stored_content:
            result.correction_failures.append(
                f"{name}: content hash differs (stored {stored_content[:16]}..., recomputed "
                f"{content[:16]}...): its row or one of its {len(marks)} mark(s) changed"
                + (
                    f" (the row says {decision['events_marked']} marked)"
                    if int(decision["events_marked"]) != len(marks)
                    and decision["status"] == "applied"
                    else ""
                )
            )
        elif chain_sha256(previous, content) != stored_chain:
            result.correction_failures.append(
                f"{name}: chain hash differs: it does not follow the previous correction's "
                "chain (a correction before it was removed or replaced)"
            )
        previous = stored_chain


def _verify_chain(client: Client, result: VerifyResult) -> None:
    commits: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in client.query(_LEDGER).result_rows:
        commits[int(row[0])].append(tuple(row))
    result.flushes = len(commits)
    previous = ""
    for commit_seq in sorted(commits):
        rows = commits[commit_seq]
        flush_seqs = sorted({int(r[11]) for r in rows})
        seq = flush_seqs[0]
        if len(flush_seqs) > 1:
            result.flush_failures.append(
                f"commit {commit_seq}: held by {len(flush_seqs)} flushes {flush_seqs} (two "
                "writers appended the same number: the store did not arbitrate them)"
            )
            previous = str(rows[-1][10])
            continue
        stored = {(str(r[9]), str(r[10])) for r in rows}
        if len(stored) != 1:
            result.flush_failures.append(
                f"flush {seq}: its ledger rows carry {len(stored)} different hashes"
            )
            previous = str(rows[-1][10])
            continue
        stored_content, stored_chain = stored.pop()
        if not stored_content:
            result.not_chained.append(commit_seq)
            previous = stored_chain
            continue
        result.chained += 1
        events = [
            ChainedEvent(
                str(r[0]),
                int(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                str(r[6]),
                str(r[7]),
                int(r[8]),
                int(r[9]),
                str(r[10]),
                int(r[11]),
                int(r[12]),
            )
            for r in client.query(_EVENTS, parameters={"seq": seq}).result_rows
        ]
        rejections = [
            ChainedRejection(
                str(r[0]),
                None if r[1] is None else str(r[1]),
                None if r[2] is None else str(r[2]),
                str(r[3]),
                int(r[4]),
                int(r[5]),
                int(r[6]),
            )
            for r in client.query(_REJECTIONS, parameters={"seq": seq}).result_rows
        ]
        ranges = [ChainedRange(str(r[1]), *(int(v) for v in r[2:9])) for r in rows]
        content = content_sha256(events, rejections, ranges)
        if content != stored_content:
            counted = sum(r.counted for r in ranges)
            rejected = sum(r.rejected for r in ranges)
            what = []
            if len(events) != counted:
                what.append(f"counted_events holds {len(events)} rows, the ledger {counted}")
            if len(rejections) != rejected:
                what.append(f"rejections_log holds {len(rejections)} rows, the ledger {rejected}")
            if len(events) < counted or len(rejections) < rejected:
                what.append(
                    "rows of a committed flush are missing: start `metering worker`, which "
                    "reads its ranges from Kafka again (or records them as lost)"
                )
            if not what:
                what.append(
                    "a stored field of its counted events, rejections or ledger ranges changed"
                )
            result.flush_failures.append(
                f"flush {seq} (commit {commit_seq}): content hash differs (stored "
                f"{stored_content[:16]}..., recomputed {content[:16]}...): {'; '.join(what)}"
            )
        elif chain_sha256(previous, content) != stored_chain:
            result.flush_failures.append(
                f"flush {seq} (commit {commit_seq}): chain hash differs: it does not follow "
                "the previous commit's chain (a flush before it was removed or replaced)"
            )
        previous = stored_chain


def _period_filter(column: str, period: Period | None) -> str:
    if period is None:
        return ""
    return (
        f"AND toDate({column}) >= toDate('{period.start.isoformat()}') "
        f"AND toDate({column}) < toDate('{period.end.isoformat()}')"
    )


def _verify_rollups(client: Client, period: Period | None, result: VerifyResult) -> None:
    def figures(sql: str) -> dict[tuple[date, str, str, str], tuple[int, ...]]:
        return {
            (row[0], str(row[1]), str(row[2]), str(row[3])): tuple(int(v) for v in row[4:8])
            for row in client.query(sql).result_rows
        }

    raw = figures(_RAW_DAILY.format(period=_period_filter("occurred_at", period)))
    rolled = figures(_ROLLUP_DAILY.format(period=_period_filter("day", period)))
    keys = sorted(set(raw) | set(rolled))
    result.agency_days = len(keys)
    for key in keys:
        left, right = raw.get(key), rolled.get(key)
        if left == right:
            continue
        day, tenant, agency, level = key
        if left is None or right is None:
            where = "rollups only" if left is None else "counted events only"
            detail = f"present in {where}"
        else:
            detail = ", ".join(
                f"{name} counted {a} vs rollups {b}"
                for name, a, b in zip(_FIGURES, left, right, strict=True)
                if a != b
            )
        result.rollup_failures.append(
            f"agency-day {day.isoformat()} {tenant}/{agency} ({level}): {detail}"
        )


def render_verification(result: VerifyResult) -> str:
    lines = [
        f"flushes: {result.flushes} ({result.chained} chained, "
        f"{len(result.not_chained)} not chained (before 0008))"
    ]
    if result.not_chained:
        seqs = result.not_chained
        lines.append(f"  not chained (before 0008): flushes {seqs[0]}..{seqs[-1]}")
    if result.flush_failures:
        lines.append(f"FIRST FLUSH THAT DIFFERS: {result.flush_failures[0]}")
        lines.extend(f"  also: {failure}" for failure in result.flush_failures[1:10])
    else:
        lines.append("  every chained flush's content and chain hash recomputes from the store")
    chained = result.corrections - len(result.corrections_not_chained)
    lines.append(
        f"corrections: {result.corrections} ({chained} chained, "
        f"{len(result.corrections_not_chained)} not chained (before 0011))"
    )
    if result.correction_failures:
        lines.append(f"FIRST CORRECTION THAT DIFFERS: {result.correction_failures[0]}")
        lines.extend(f"  also: {failure}" for failure in result.correction_failures[1:10])
    elif result.corrections:
        lines.append(
            "  every chained correction's content and chain hash recomputes from the store"
        )
    lines.append(f"rollups vs counted events, {result.period}: {result.agency_days} agency-days")
    if result.rollup_failures:
        lines.append(f"FIRST AGENCY-DAY THAT DIFFERS: {result.rollup_failures[0]}")
        lines.extend(f"  also: {failure}" for failure in result.rollup_failures[1:10])
    else:
        lines.append("  every agency-day of the rollups equals the counted events")
    lines.append("verified" if result.ok else "NOT VERIFIED")
    return "\n".join(lines)
