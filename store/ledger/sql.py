"""Every statement about the ledger, in one place for review (`Ledger` runs them)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "APPLY_ROLLUPS",
    "COMMITS_AT",
    "COMMITS_SINCE",
    "COMMITTED_EVENTS",
    "COMMITTED_ID_HALVES",
    "COMMIT_COLUMNS",
    "COMMIT_CONDITION",
    "COUNTED_EVENT_COLUMNS",
    "COUNTED_TOTALS",
    "FLUSH_RANGE",
    "IS_APPLIED",
    "LAST_WRITER_OF",
    "LEDGER_COLUMNS",
    "LEDGER_HEAD",
    "MARK_APPLIED",
    "MAX_COMMITTED_SEQ",
    "ORPHANS",
    "REJECTION_COLUMNS",
    "RESUME_POSITIONS",
    "UNAPPLIED",
    "UNAPPLIED_BEFORE_0012",
    "already_counted_sql",
    "apply_rollup_sql",
    "delete_flushes_sql",
    "flush_ids_sql",
    "mark_applied_sql",
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
    "commit_seq",
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
    "writer_no",
    "committed_at",
    "content_sha256",
    "chain_sha256",
)

# The ledger's columns with their types, for the commit's conditional insert
# (`store.conditional_insert`); committed_at is the server's clock.
COMMIT_COLUMNS: Final = (
    ("commit_seq", "UInt64"),
    ("flush_seq", "UInt64"),
    ("topic", "String"),
    ("partition", "UInt32"),
    ("first_offset", "UInt64"),
    ("last_offset", "UInt64"),
    ("messages", "UInt32"),
    ("counted", "UInt32"),
    ("duplicates", "UInt32"),
    ("rejected", "UInt32"),
    ("worker", "String"),
    ("writer_no", "UInt32"),
    ("committed_at", "DateTime64(3, 'UTC')"),
    ("content_sha256", "String"),
    ("chain_sha256", "String"),
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


_FLUSH_FILTER: Final = "WHERE flush_seq = {flush_seq:UInt64}\n"

# A fold or a mark happens only while the flush is not marked applied yet: a writer that
# comes back after another folded its flush for it (it was silent) folds nothing again.
_NOT_APPLIED: Final = (
    "(SELECT count() FROM metering.flush_applied WHERE flush_seq = {flush_seq:UInt64}) = 0"
)


def apply_rollup_sql(rollup: str, flush_seq: int, *, guard: str | None = None) -> str:
    """The INSERT ... SELECT folding one flush into one rollup, its settings in the text.

    With `guard` (a condition, see `store.writers.lease_allows`), the fold inserts only
    while the flush is not marked applied and the guard holds when the server runs it.

    Settings in the statement, not per call: the embedded client applies per-call
    settings with a snapshot query and a SET and a restore per setting around every
    statement, about ten extra queries per rollup per flush.
    """
    settings = {
        **APPLY_SETTINGS,
        "insert_deduplication_token": f"'flush-{int(flush_seq)}-{rollup}'",
    }
    clause = ", ".join(f"{name} = {value}" for name, value in settings.items())
    select = APPLY_ROLLUPS[rollup]
    if guard is not None:
        if _FLUSH_FILTER not in select:
            raise RuntimeError(f"APPLY_ROLLUPS[{rollup!r}] changed its WHERE")
        select = select.replace(
            _FLUSH_FILTER,
            _FLUSH_FILTER.rstrip("\n") + f"\n  AND {_NOT_APPLIED}\n  AND {guard}\n",
        )
    return f"INSERT INTO metering.{rollup}\nSETTINGS {clause}{select}"


MARK_APPLIED: Final = "metering.flush_applied"


def mark_applied_sql(guard: str) -> str:
    """Step 6, conditional like the folds: marked only while `guard` holds."""
    return (
        "INSERT INTO metering.flush_applied (flush_seq, applied_at)\n"
        "SELECT {flush_seq:UInt64}, now64(3)\n"
        f"WHERE {_NOT_APPLIED} AND {guard}"
    )


IS_APPLIED: Final = (
    "SELECT count() FROM metering.flush_applied WHERE flush_seq = {flush_seq:UInt64}"
)

MAX_COMMITTED_SEQ: Final = "SELECT max(commit_seq) FROM metering.flush_ledger"
MAX_FLUSH_SEQ: Final = "SELECT max(flush_seq) FROM metering.flush_ledger"

# Committed flushes not yet folded into every rollup, in commit order, with how long
# ago each committed (server clock): those committed after {after} (every flush up to
# it is known to be folded) and up to {head}. A live writer folds its own flush within
# a moment of its commit; one unfolded for longer is stuck (its writer died or stalls).
UNAPPLIED: Final = """
SELECT commit_seq, any(flush_seq) AS flush,
       dateDiff('millisecond', max(committed_at), now64(3)) AS age_ms
FROM metering.flush_ledger
WHERE commit_seq > {after:UInt64} AND commit_seq <= {head:UInt64}
  AND flush_seq NOT IN (
      SELECT flush_seq FROM metering.flush_applied
      WHERE flush_seq IN (
          SELECT flush_seq FROM metering.flush_ledger WHERE commit_seq > {after:UInt64}
      )
  )
GROUP BY commit_seq
ORDER BY commit_seq
"""

# The same before migration 0012 (no commit_seq yet): flush numbers were the order.
UNAPPLIED_BEFORE_0012: Final = """
SELECT DISTINCT flush_seq FROM metering.flush_ledger
WHERE flush_seq NOT IN (SELECT flush_seq FROM metering.flush_applied)
ORDER BY flush_seq
"""

# Staged rows of flushes that never committed, with the first offset each holds per
# partition: a flush is refused for good once the ledger resumes one of its partitions
# past that offset (another flush counted there), and only then are its rows deleted.
ORPHANS: Final = """
SELECT flush_seq, topic, partition, min(offset)
FROM
(
    SELECT flush_seq, toString(topic) AS topic, partition, offset
    FROM metering.counted_events
    WHERE flush_seq NOT IN (SELECT flush_seq FROM metering.flush_ledger)
    UNION ALL
    SELECT flush_seq, toString(topic) AS topic, partition, offset
    FROM metering.rejections_log
    WHERE flush_seq NOT IN (SELECT flush_seq FROM metering.flush_ledger)
)
GROUP BY flush_seq, topic, partition
ORDER BY flush_seq, topic, partition
"""


def _flush_list(flush_seqs: Sequence[int]) -> str:
    if not flush_seqs:
        raise ValueError("no flushes named")
    return ", ".join(str(int(seq)) for seq in flush_seqs)


def delete_flushes_sql(table: str, flush_seqs: Sequence[int]) -> str:
    """Delete the staged rows of uncommitted flushes (never of a committed one)."""
    if table not in ("counted_events", "rejections_log"):
        raise ValueError(f"not a staging table: {table}")
    return (
        f"DELETE FROM metering.{table} WHERE flush_seq IN ({_flush_list(flush_seqs)})\n"
        "  AND flush_seq NOT IN (SELECT flush_seq FROM metering.flush_ledger)\n"
        "SETTINGS lightweight_deletes_sync = 2"
    )


RESUME_POSITIONS: Final = """
SELECT topic, partition, max(last_offset) + 1
FROM metering.flush_ledger
GROUP BY topic, partition
"""

# The commit: append the flush's rows at commit_seq {commit_seq}, only if no row has
# that number or a later one (`store.conditional_insert`; token "commit-<n>").
COMMIT_CONDITION: Final = (
    "(SELECT count() FROM metering.flush_ledger WHERE commit_seq >= {commit_seq:UInt64}) = 0"
)

# Who holds commit_seq {commit_seq} (read back after the commit).
COMMITS_AT: Final = """
SELECT DISTINCT flush_seq, writer_no FROM metering.flush_ledger
WHERE commit_seq = {commit_seq:UInt64}
"""

# Everything committed after {after}, in commit order (the minmax index on commit_seq
# makes it read the newest granules only): how a writer catches up with the others.
COMMITS_SINCE: Final = """
SELECT commit_seq, flush_seq, writer_no, topic, partition, first_offset, last_offset,
       chain_sha256
FROM metering.flush_ledger
WHERE commit_seq > {after:UInt64}
ORDER BY commit_seq, topic, partition
"""

# The two 64-bit halves of each committed id, as little-endian reads of the id's 16
# big-endian bytes (RFC 4122 order), which is what `streams.seen_ids.id_halves`
# computes in Python: the dedupe filter is loaded from these, a page of commits at a time.
COMMITTED_ID_HALVES: Final = """
SELECT reinterpretAsUInt64(substring(UUIDStringToNum(toString(event_id)), 1, 8)) AS high,
       reinterpretAsUInt64(substring(UUIDStringToNum(toString(event_id)), 9, 8)) AS low
FROM metering.counted_events
WHERE flush_seq IN (
    SELECT flush_seq FROM metering.flush_ledger
    WHERE commit_seq >= {first:UInt64} AND commit_seq < {stop:UInt64}
)
"""


def flush_ids_sql(flush_seqs: Sequence[int]) -> str:
    """The id halves (as `COMMITTED_ID_HALVES`) of the named committed flushes."""
    return (
        "SELECT reinterpretAsUInt64(substring(UUIDStringToNum(toString(event_id)), 1, 8)) "
        "AS high,\n"
        "       reinterpretAsUInt64(substring(UUIDStringToNum(toString(event_id)), 9, 8)) "
        "AS low\n"
        f"FROM metering.counted_events WHERE flush_seq IN ({_flush_list(flush_seqs)})"
    )


FLUSH_RANGE: Final = (
    "SELECT uniqExact(commit_seq), min(commit_seq), max(commit_seq) FROM metering.flush_ledger"
)

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

# Which writer committed last in a partition (for messages that name it).
LAST_WRITER_OF: Final = """
SELECT writer_no FROM metering.flush_ledger
WHERE topic = {topic:String} AND partition = {partition:UInt32}
ORDER BY commit_seq DESC LIMIT 1
"""

# The last commit and its chain hash, in one read ('' before migration 0008).
LEDGER_HEAD: Final = """
SELECT commit_seq, chain_sha256 FROM metering.flush_ledger
ORDER BY commit_seq DESC LIMIT 1
"""
