"""Every statement about the ledger, in one place for review (`Ledger` runs them)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "APPLY_ROLLUPS",
    "CHAIN_HEAD",
    "COMMITTED_ID_HALVES",
    "COUNTED_EVENT_COLUMNS",
    "FLUSH_RANGE",
    "LEDGER_COLUMNS",
    "LEDGER_HEAD",
    "REJECTION_COLUMNS",
    "RESUME_POSITIONS",
    "UNAPPLIED_SEQS",
    "already_counted_sql",
    "apply_rollup_sql",
]

COUNTED_EVENT_COLUMNS: Final = (
    "event_id",
    "occurred_at",
    "tenant",
    "agency_id",
    "agency_level",
    "user_id",
    "conversation_id",
    "model",
    "feature",
    "tokens_in",
    "tokens_out",
    "topic",
    "partition",
    "offset",
    "flush_seq",
    "ingested_at",
)

REJECTION_COLUMNS: Final = (
    "received_at",
    "reason",
    "detail",
    "event_id",
    "agency_id",
    "topic",
    "partition",
    "offset",
    "size_bytes",
    "flush_seq",
)

LEDGER_COLUMNS: Final = (
    "flush_seq",
    "topic",
    "partition",
    "first_offset",
    "last_offset",
    "messages",
    "counted",
    "duplicates",
    "rejected",
    "worker",
    "committed_at",
    "content_sha256",
    "chain_sha256",
)

# Already counted: only rows of committed flushes count as "seen" (orphans of a
# crashed flush must not make their own events look like duplicates).
_ALREADY_COUNTED: Final = """
SELECT DISTINCT toString(event_id)
FROM metering.counted_events
WHERE event_id IN ({ids})
  AND flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)
"""

_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def already_counted_sql(ids: Sequence[str]) -> str:
    """The lookup with its ids in the statement text, not as a query parameter.

    A server receives query parameters as HTTP form fields, which it caps at 128 KiB
    (`http_max_field_value_size`): a flush of 20,000 ids is about 800 KiB. The query
    text has no such cap below `max_query_size`, which the client raises. The ids are
    canonical UUIDs (the event model makes them so); anything else is refused here, so
    nothing but hex digits and dashes ever reaches the text.
    """
    for event_id in ids:
        if _CANONICAL_UUID.fullmatch(event_id) is None:
            raise ValueError(f"not a canonical event id: {event_id[:40]!r}")
    return _ALREADY_COUNTED.format(ids=",".join(f"'{event_id}'" for event_id in ids))


# One INSERT ... SELECT per rollup, folding exactly one committed flush in: the
# SELECT of each, keyed by the rollup it inserts into (`apply_rollup_sql` adds the
# INSERT). The ORDER BY and single thread keep the produced block identical on a
# re-apply, so the flush's deduplication token drops it.
APPLY_ROLLUPS: Final = {
    "agency_daily_rollup": """
SELECT toDate(occurred_at) AS day, tenant, agency_id, agency_level,
       count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExactState(user_id) AS users
FROM metering.counted_events
WHERE flush_seq = {flush_seq:UInt64}
GROUP BY day, tenant, agency_id, agency_level
ORDER BY day, tenant, agency_id, agency_level
""",
    "model_daily_rollup": """
SELECT toDate(occurred_at) AS day, tenant, toString(model) AS model,
       toString(feature) AS feature, agency_id, toString(agency_level) AS agency_level,
       count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExactState(user_id) AS users
FROM metering.counted_events
WHERE flush_seq = {flush_seq:UInt64}
GROUP BY day, tenant, model, feature, agency_id, agency_level
ORDER BY day, tenant, model, feature, agency_id, agency_level
""",
    "agency_monthly_rollup": """
SELECT toStartOfMonth(toDate(occurred_at)) AS month, tenant, agency_id,
       toString(agency_level) AS agency_level,
       count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExactState(user_id) AS users
FROM metering.counted_events
WHERE flush_seq = {flush_seq:UInt64}
GROUP BY month, tenant, agency_id, agency_level
ORDER BY month, tenant, agency_id, agency_level
""",
    "model_monthly_rollup": """
SELECT toStartOfMonth(toDate(occurred_at)) AS month, tenant, toString(model) AS model,
       agency_id,
       count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExactState(user_id) AS users
FROM metering.counted_events
WHERE flush_seq = {flush_seq:UInt64}
GROUP BY month, tenant, model, agency_id
ORDER BY month, tenant, model, agency_id
""",
    "tenant_daily_rollup": """
SELECT toDate(occurred_at) AS day, tenant,
       count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       uniqExactState(agency_id) AS agencies, uniqExactState(user_id) AS users
FROM metering.counted_events
WHERE flush_seq = {flush_seq:UInt64}
GROUP BY day, tenant
ORDER BY day, tenant
""",
}

APPLY_SETTINGS: Final = {"max_threads": 1, "max_insert_threads": 1, "insert_deduplicate": 1}


def apply_rollup_sql(rollup: str, flush_seq: int) -> str:
    """The INSERT ... SELECT folding one flush into one rollup, its settings in the text.

    Settings in the statement, not per call: the embedded client applies per-call
    settings with a snapshot query and a SET and a restore per setting around every
    statement, about ten extra queries per rollup per flush.
    """
    settings = {
        **APPLY_SETTINGS,
        "insert_deduplication_token": f"'flush-{int(flush_seq)}-{rollup}'",
    }
    clause = ", ".join(f"{name} = {value}" for name, value in settings.items())
    return f"INSERT INTO metering.{rollup}\nSETTINGS {clause}{APPLY_ROLLUPS[rollup]}"


MARK_APPLIED: Final = "metering.flush_applied"

MAX_COMMITTED_SEQ: Final = "SELECT max(flush_seq) FROM metering.flush_ledger"

UNAPPLIED_SEQS: Final = """
SELECT DISTINCT flush_seq FROM metering.flush_ledger
WHERE flush_seq NOT IN (SELECT flush_seq FROM metering.flush_applied)
ORDER BY flush_seq
"""

ORPHAN_COUNTS: Final = """
SELECT
  (SELECT count() FROM metering.counted_events WHERE flush_seq > {seq:UInt64}),
  (SELECT count() FROM metering.rejections_log WHERE flush_seq > {seq:UInt64})
"""

DELETE_ORPHANS: Final = (
    "ALTER TABLE metering.counted_events DELETE WHERE flush_seq > {seq:UInt64}",
    "ALTER TABLE metering.rejections_log DELETE WHERE flush_seq > {seq:UInt64}",
)

RESUME_POSITIONS: Final = """
SELECT topic, partition, max(last_offset) + 1
FROM metering.flush_ledger
GROUP BY topic, partition
"""

# The two 64-bit halves of each committed id, as little-endian reads of the id's 16
# big-endian bytes (RFC 4122 order), which is what `streams.seen_ids.id_halves`
# computes in Python: the dedupe filter is loaded from these.
COMMITTED_ID_HALVES: Final = """
SELECT reinterpretAsUInt64(substring(UUIDStringToNum(toString(event_id)), 1, 8)) AS high,
       reinterpretAsUInt64(substring(UUIDStringToNum(toString(event_id)), 9, 8)) AS low
FROM metering.counted_events
WHERE flush_seq >= {first:UInt64} AND flush_seq < {stop:UInt64}
  AND flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)
"""

FLUSH_RANGE: Final = "SELECT count(), min(flush_seq), max(flush_seq) FROM metering.flush_ledger"

# Events of committed flushes only: the raw record that billing and reconciliation
# may read (a fragment, for `FROM metering.counted_events WHERE ...`).
COMMITTED_EVENTS: Final = "flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)"

# Store-wide: what the ledger says was counted, and what counted_events holds for
# committed flushes.
COUNTED_TOTALS: Final = f"""
SELECT
    (SELECT sum(counted) FROM metering.flush_ledger) AS ledger_counted,
    (SELECT count() FROM metering.counted_events WHERE {COMMITTED_EVENTS}) AS counted_rows
"""

# The last committed flush and its chain hash, in one read (sink step 0).
LEDGER_HEAD: Final = """
SELECT flush_seq, chain_sha256 FROM metering.flush_ledger
ORDER BY flush_seq DESC LIMIT 1
"""

# The chain head: the chain hash of the last committed flush ('' before migration 0008).
CHAIN_HEAD: Final = """
SELECT chain_sha256 FROM metering.flush_ledger
ORDER BY flush_seq DESC LIMIT 1
"""
