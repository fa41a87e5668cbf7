"""Every statement about corrections, in one place for review (`CorrectionStore` runs
them). The tables and the corrected record are in `store/sql/0010_corrections.sql`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Final

from schemas.events import AGENCY_ID, TENANT
from store.ledger.sql import APPLY_ROLLUPS
from store.writers import CORRECTIONS_LEASE, lease_allows

__all__ = [
    "AFFECTED_KEYS",
    "APPLIED_COLUMNS",
    "CHAIN_HEAD",
    "CORRECTION_COLUMNS",
    "CORRECTION_TYPES",
    "DECIDED",
    "EVENT_STATE",
    "FILL_AGENCIES",
    "MARKED",
    "MARKS_OF",
    "MARK_APPLIED",
    "MAX_SEQ",
    "ORPHAN_MARKS",
    "RANGE_COUNT",
    "REBUILD_GRAIN",
    "RESUME_POSITIONS",
    "SCOPE_EVENT",
    "SCOPE_RANGE",
    "UNAPPLIED",
    "RollupKey",
    "committed_up_to",
    "delete_all_sql",
    "delete_keys_sql",
    "delete_orphan_marks_sql",
    "fill_agencies_sql",
    "first_counted_source",
    "holding",
    "marks_sql",
    "rebuild_all_sql",
    "rebuild_keys_sql",
    "rollup_totals_sql",
]

CORRECTION_COLUMNS: Final = (
    "correction_id",
    "correction_seq",
    "status",
    "refused_reason",
    "action",
    "reason",
    "requested_by",
    "approved_by",
    "requested_at",
    "event_id",
    "scope_agency_id",
    "scope_from",
    "scope_to",
    "amendments",
    "events_marked",
    "first_day",
    "last_day",
    "source_topic",
    "source_partition",
    "source_offset",
    "worker",
    "committed_at",
    "content_sha256",
    "chain_sha256",
    "ledger_head",
)

# Their types, for the commit's conditional insert (`store.conditional_insert`).
CORRECTION_TYPES: Final = {
    "correction_id": "String",
    "correction_seq": "UInt64",
    "status": "String",
    "refused_reason": "String",
    "action": "String",
    "reason": "String",
    "requested_by": "String",
    "approved_by": "String",
    "requested_at": "DateTime64(3, 'UTC')",
    "event_id": "String",
    "scope_agency_id": "String",
    "scope_from": "Nullable(DateTime64(3, 'UTC'))",
    "scope_to": "Nullable(DateTime64(3, 'UTC'))",
    "amendments": "String",
    "events_marked": "UInt64",
    "first_day": "Nullable(Date)",
    "last_day": "Nullable(Date)",
    "source_topic": "String",
    "source_partition": "UInt32",
    "source_offset": "UInt64",
    "worker": "String",
    "committed_at": "DateTime64(3, 'UTC')",
    "content_sha256": "String",
    "chain_sha256": "String",
    "ledger_head": "UInt64",
}

APPLIED_COLUMNS: Final = (
    ("correction_seq", "UInt64"),
    ("correction_id", "String"),
    ("keys_rebuilt", "UInt64"),
    ("applied_at", "DateTime64(3, 'UTC')"),
)


def holding(term: int) -> str:
    """The condition every write of a correction carries: the corrections lease is still
    held under `term` when the server runs the statement."""
    return lease_allows(CORRECTIONS_LEASE, term)


def committed_up_to(head: int) -> str:
    """Events of flushes committed up to commit number `head` (a fragment)."""
    return (
        "flush_seq IN (SELECT flush_seq FROM metering.flush_ledger "
        f"WHERE commit_seq <= {int(head)})"
    )


# Step b's hash (store/corrections/chain.py): the marks of one correction as committed.
MARKS_OF: Final = """
SELECT toString(event_id), toString(action), agency_id, toString(agency_level),
       tokens_in, tokens_out
FROM metering.correction_marks
WHERE correction_seq = {seq:UInt64}
"""

# The chain hash of the last committed correction ('' before the first).
CHAIN_HEAD: Final = """
SELECT argMax(chain_sha256, correction_seq) FROM metering.corrections
"""

DECIDED: Final = """
SELECT status, correction_seq, refused_reason
FROM metering.corrections
WHERE correction_id = {correction_id:String}
ORDER BY correction_seq
LIMIT 1
"""

MAX_SEQ: Final = "SELECT max(correction_seq) FROM metering.corrections"

# Where the corrections topic resumes: after the last record a correction was decided
# from (a record repeating a decided id is skipped again, by its id).
RESUME_POSITIONS: Final = """
SELECT source_topic, source_partition, max(source_offset) + 1
FROM metering.corrections
GROUP BY source_topic, source_partition
"""

ORPHAN_MARKS: Final = (
    "SELECT count() FROM metering.correction_marks WHERE correction_seq > {seq:UInt64}"
)


def delete_orphan_marks_sql(term: int) -> str:
    return (
        "DELETE FROM metering.correction_marks WHERE correction_seq > {seq:UInt64} "
        f"AND {holding(term)} SETTINGS lightweight_deletes_sync = 2"
    )


UNAPPLIED: Final = """
SELECT correction_seq, correction_id, ledger_head
FROM metering.corrections
WHERE status = 'applied'
  AND correction_seq NOT IN (SELECT correction_seq FROM metering.corrections_applied)
ORDER BY correction_seq
"""

# One event as the corrected record has it now ('' agency: not there, voided or never
# counted) and whether a committed flush counted it at all.
EVENT_STATE: Final = """
SELECT
  (SELECT count() FROM metering.corrected_events WHERE event_id = {event_id:UUID}),
  (SELECT count() FROM metering.counted_events
   WHERE event_id = {event_id:UUID}
     AND flush_seq IN (SELECT flush_seq FROM metering.flush_ledger))
"""

RANGE_COUNT: Final = """
SELECT count() FROM metering.corrected_events
WHERE agency_id = {agency_id:String}
  AND occurred_at >= {from:DateTime64(3, 'UTC')} AND occurred_at < {to:DateTime64(3, 'UTC')}
"""

# Step a: one mark per event in scope, holding the event's whole state after the
# correction: a new value where the amendment gives one, else the current value.
_MARKS: Final = """
INSERT INTO metering.correction_marks
    (event_id, correction_seq, correction_id, action, agency_id, agency_level,
     tokens_in, tokens_out, marked_at)
SETTINGS insert_deduplicate = 1, insert_deduplication_token = {token}
SELECT event_id, {{seq:UInt64}}, {{correction_id:String}}, {{action:String}},
       if({{set_agency:UInt8}}, {{agency_id_new:String}}, agency_id),
       if({{set_level:UInt8}}, {{agency_level_new:String}}, agency_level),
       if({{set_in:UInt8}}, {{tokens_in_new:UInt32}}, tokens_in),
       if({{set_out:UInt8}}, {{tokens_out_new:UInt32}}, tokens_out),
       now64(3)
FROM metering.corrected_events
WHERE ({scope}) AND {head} AND {guard}
"""

SCOPE_EVENT: Final = "event_id = {event_id:UUID}"
SCOPE_RANGE: Final = (
    "agency_id = {agency_id:String} AND occurred_at >= {from:DateTime64(3, 'UTC')} "
    "AND occurred_at < {to:DateTime64(3, 'UTC')}"
)


def marks_sql(scope: str, token: str, *, head: int, term: int) -> str:
    """Step a: the marks of the events in scope counted up to commit `head`, written
    only while the lease is held under `term`."""
    return _MARKS.format(
        scope=scope, token=_literal(token), head=committed_up_to(head), guard=holding(term)
    )


MARKED: Final = """
SELECT count(), min(toDate(e.occurred_at)), max(toDate(e.occurred_at))
FROM metering.correction_marks AS m
INNER JOIN metering.counted_events AS e ON e.event_id = m.event_id
WHERE m.correction_seq = {seq:UInt64}
"""

# Step c: the keys to rebuild, every version of each marked event: its counted row and
# each committed mark of it (an amended agency touches the old and the new agency).
# A superset is harmless: a key rebuilt from the corrected record is the same key.
AFFECTED_KEYS: Final = """
SELECT DISTINCT day, tenant, agency_id FROM
(
    SELECT toDate(occurred_at) AS day, tenant, agency_id
    FROM metering.counted_events
    WHERE event_id IN (SELECT event_id FROM metering.correction_marks
                       WHERE correction_seq = {seq:UInt64})
    UNION ALL
    SELECT toDate(e.occurred_at) AS day, e.tenant AS tenant, m.agency_id AS agency_id
    FROM metering.correction_marks AS m
    INNER JOIN metering.counted_events AS e ON e.event_id = m.event_id
    WHERE m.event_id IN (SELECT event_id FROM metering.correction_marks
                         WHERE correction_seq = {seq:UInt64})
      AND m.correction_seq IN (SELECT correction_seq FROM metering.corrections)
)
ORDER BY day, tenant, agency_id
"""

RollupKey = tuple[date, str, str]  # (day, tenant, agency_id)

# How each rollup is keyed for a rebuild: the columns of its rows and the expression of
# the corrected record they come from, coarsest first. Every row of a (tenant, day or
# month, agency) is rebuilt, whatever its level, model or feature; tenant_daily_rollup
# holds whole tenant-days, so those are rebuilt from the tenant-day's events.
REBUILD_GRAIN: Final = {
    "agency_daily_rollup": (("tenant", "day", "agency_id"), "day"),
    "model_daily_rollup": (("tenant", "day", "agency_id"), "day"),
    "agency_monthly_rollup": (("tenant", "month", "agency_id"), "month"),
    "model_monthly_rollup": (("tenant", "month", "agency_id"), "month"),
    "tenant_daily_rollup": (("tenant", "day"), "day"),
}

_EVENT_EXPRESSIONS: Final = {
    "tenant": "tenant",
    "agency_id": "agency_id",
    "day": "toDate(occurred_at)",
    "month": "toStartOfMonth(toDate(occurred_at))",
}

_FLUSH_FILTER: Final = "FROM metering.counted_events\nWHERE flush_seq = {flush_seq:UInt64}"

REBUILD_SETTINGS: Final = {"max_threads": 1, "max_insert_threads": 1, "insert_deduplicate": 1}

_SAFE: Final = {"tenant": TENANT, "agency_id": AGENCY_ID}


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tuples(rollup: str, keys: Iterable[RollupKey]) -> list[tuple[str, ...]]:
    columns, period = REBUILD_GRAIN[rollup]
    chosen: set[tuple[str, ...]] = set()
    for day, tenant, agency_id in keys:
        values = {
            "tenant": tenant,
            "agency_id": agency_id,
            period: (day if period == "day" else day.replace(day=1)).isoformat(),
        }
        for name, pattern in _SAFE.items():
            if name in columns and pattern.fullmatch(values[name]) is None:
                raise ValueError(f"{name} {values[name][:70]!r} is not a valid identifier")
        chosen.add(tuple(values[c] for c in columns))
    return sorted(chosen)


def _in_list(rollup: str, keys: Iterable[RollupKey], *, from_events: bool) -> str:
    columns, period = REBUILD_GRAIN[rollup]
    left = ", ".join(_EVENT_EXPRESSIONS[c] if from_events else c for c in columns)
    rows = []
    for values in _tuples(rollup, keys):
        cells = [
            f"toDate('{v}')" if c == period else _literal(v)
            for c, v in zip(columns, values, strict=True)
        ]
        rows.append("(" + ", ".join(cells) + ")")
    return f"({left}) IN ({', '.join(rows)})"


def delete_keys_sql(rollup: str, keys: Iterable[RollupKey], *, term: int) -> str:
    """Delete every row of the affected keys (lightweight DELETE: measured to work on
    AggregatingMergeTree with the bundled engine; synchronous), while the lease is held
    under `term`."""
    return (
        f"DELETE FROM metering.{rollup} WHERE {_in_list(rollup, keys, from_events=False)} "
        f"AND {holding(term)} SETTINGS lightweight_deletes_sync = 2"
    )


def rebuild_keys_sql(
    rollup: str, keys: Iterable[RollupKey], token: str, *, head: int, term: int
) -> str:
    """Re-insert the affected keys from the corrected record of the flushes committed up
    to commit `head` (later ones fold after the correction), with the same aggregates
    as the flush fold (`store.ledger.sql.APPLY_ROLLUPS`) and a token of its own: the
    rollups' deduplication window drops an INSERT identical to a recent block, so a
    rebuild repeated after a crash would otherwise vanish. Written only while the lease
    is held under `term`."""
    select = APPLY_ROLLUPS[rollup]
    if _FLUSH_FILTER not in select:
        raise RuntimeError(f"store/ledger/sql.py APPLY_ROLLUPS[{rollup!r}] changed its FROM")
    select = select.replace(
        _FLUSH_FILTER,
        "FROM metering.corrected_events\nWHERE "
        + _in_list(rollup, keys, from_events=True)
        + f"\n  AND {committed_up_to(head)}\n  AND {holding(term)}",
    )
    settings = {**REBUILD_SETTINGS, "insert_deduplication_token": _literal(token)}
    clause = ", ".join(f"{name} = {value}" for name, value in settings.items())
    return f"INSERT INTO metering.{rollup}\nSETTINGS {clause}{select}"


MARK_APPLIED: Final = "metering.corrections_applied"


# Which agency may read which correction and which of its marks (migration 0014; the
# agency users' row filters read it: store/local_server/config.py). For every committed
# correction that has no rows yet: each event it dealt with (each event it marked, or
# the one event an event correction named and did not mark) and every agency that event
# was in: before the correction (the agency of the event's latest earlier committed
# mark, else the agency it was counted for), after it (the correction's own mark), and
# the agency it was first counted for. Derived from the committed record alone, so it
# can run at any time; one insert of one block (the settings), so a crash leaves a
# correction with all of its rows or none. `{guard}`: the lease condition.
FILL_AGENCIES: Final = """\
INSERT INTO metering.correction_agencies (correction_seq, event_id, agency_id)
WITH
    (SELECT groupArray(correction_seq) FROM metering.corrections
     WHERE correction_seq NOT IN (SELECT correction_seq FROM metering.correction_agencies))
        AS todo,
    dealt AS
    (
        SELECT correction_seq AS seq, event_id AS dealt_event, agency_id AS after
        FROM metering.correction_marks
        WHERE has(todo, correction_seq)
        UNION ALL
        SELECT correction_seq AS seq, toUUIDOrZero(event_id) AS dealt_event, '' AS after
        FROM metering.corrections
        WHERE has(todo, correction_seq) AND event_id != '' AND events_marked = 0
    )
SELECT DISTINCT d.seq, d.dealt_event, agency
FROM dealt AS d
LEFT JOIN
(
    SELECT event_id, arraySort(groupArray((correction_seq, agency_id))) AS history
    FROM metering.correction_marks
    WHERE correction_seq IN (SELECT correction_seq FROM metering.corrections)
      AND event_id IN (SELECT dealt_event FROM dealt)
    GROUP BY event_id
) AS h ON h.event_id = d.dealt_event
LEFT JOIN
(
    SELECT event_id, any(agency_id) AS counted_for
    FROM metering.counted_events
    WHERE event_id IN (SELECT dealt_event FROM dealt)
      AND flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)
    GROUP BY event_id
) AS o ON o.event_id = d.dealt_event
ARRAY JOIN [
    if(arrayLast(x -> x.1 < d.seq, h.history).2 != '',
       arrayLast(x -> x.1 < d.seq, h.history).2, o.counted_for),
    d.after,
    o.counted_for
] AS agency
WHERE agency != '' AND d.dealt_event != toUUID('00000000-0000-0000-0000-000000000000')
  AND {guard}
SETTINGS max_insert_threads = 1, max_threads = 1,
         min_insert_block_size_rows = 1000000000, min_insert_block_size_bytes = 100000000000"""


def fill_agencies_sql(term: int | None) -> str:
    """`FILL_AGENCIES` while the corrections lease is held under `term` (None: no
    condition, as migration 0014 fills the rows of the corrections before it)."""
    return FILL_AGENCIES.format(guard="1" if term is None else holding(term))


def first_counted_source(rollup: str) -> str:
    """A subquery with the rows and columns of `rollup` as first counted, before any
    correction: the flush fold's aggregates over the committed counted events of one
    period ({start:Date} to {end:Date}). Reads the raw record, so it covers the days
    the raw record still holds (METERING_RAW_RETENTION_DAYS)."""
    select = APPLY_ROLLUPS[rollup]
    if _FLUSH_FILTER not in select:
        raise RuntimeError(f"store/ledger/sql.py APPLY_ROLLUPS[{rollup!r}] changed its FROM")
    select = select.replace(
        _FLUSH_FILTER,
        "FROM metering.counted_events\n"
        "WHERE flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)\n"
        "  AND toDate(occurred_at) >= {start:Date} AND toDate(occurred_at) < {end:Date}",
    )
    grouped = select[: select.rindex("ORDER BY")].rstrip()
    return f"({grouped}\n)"


# The rollups against the corrected record of the flushes committed up to {head}: one
# row per rollup, messages and token sums (a lost part of a rollup shows here).
def rollup_totals_sql(head: int) -> str:
    parts = [
        f"SELECT '{rollup}' AS rollup, sum(messages), sum(tokens_in), sum(tokens_out) "
        f"FROM metering.{rollup}"
        for rollup in REBUILD_GRAIN
    ]
    parts.append(
        "SELECT 'corrected_events', count(), sum(tokens_in), sum(tokens_out) "
        f"FROM metering.corrected_events WHERE {committed_up_to(head)}"
    )
    return "\nUNION ALL\n".join(parts)


def delete_all_sql(rollup: str, *, term: int) -> str:
    """Every row of a rollup, while the lease is held under `term` (a full rebuild)."""
    if rollup not in REBUILD_GRAIN:
        raise ValueError(f"not a rollup: {rollup}")
    return (
        f"DELETE FROM metering.{rollup} WHERE {holding(term)} SETTINGS lightweight_deletes_sync = 2"
    )


def rebuild_all_sql(rollup: str, token: str, *, head: int, term: int) -> str:
    """A rollup from the corrected record of the flushes committed up to `head`."""
    select = APPLY_ROLLUPS[rollup]
    if _FLUSH_FILTER not in select:
        raise RuntimeError(f"store/ledger/sql.py APPLY_ROLLUPS[{rollup!r}] changed its FROM")
    select = select.replace(
        _FLUSH_FILTER,
        f"FROM metering.corrected_events\nWHERE {committed_up_to(head)}\n  AND {holding(term)}",
    )
    settings = {**REBUILD_SETTINGS, "insert_deduplication_token": _literal(token)}
    clause = ", ".join(f"{name} = {value}" for name, value in settings.items())
    return f"INSERT INTO metering.{rollup}\nSETTINGS {clause}{select}"
