"""Every statement about writers and leases, in one place for review (`Registry` and
`Leases` run them; the tables are in store/sql/0012_store_arbitration.sql)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "BEAT_COLUMNS",
    "BEAT_TABLE",
    "CORRECTIONS_LEASE",
    "LAST_WRITER_NO",
    "LEASE_COLUMNS",
    "LEASE_HOLDER",
    "LEASE_STATE",
    "WRITERS",
    "WRITER_COLUMNS",
    "WRITER_ID_OF",
    "lease_allows",
]

CORRECTIONS_LEASE: Final = "corrections"

WRITER_COLUMNS: Final = (
    ("writer_no", "UInt32"),
    ("writer_id", "String"),
    ("name", "String"),
    ("host", "String"),
    ("pid", "UInt32"),
    ("release", "String"),
    ("consumer_group", "String"),
    ("started_at", "DateTime64(3, 'UTC')"),
)

LAST_WRITER_NO: Final = "SELECT max(writer_no) FROM metering.writers"

WRITER_ID_OF: Final = "SELECT writer_id FROM metering.writers WHERE writer_no = {writer_no:UInt32}"

# Every registered writer with its last heartbeat, ages on the server's clock. A writer
# that never beat shows its age since it registered.
WRITERS: Final = """
SELECT w.writer_no, w.name, w.host, w.pid, w.release, w.consumer_group, w.started_at,
       if(h.beats = 0, w.started_at, h.last_beat) AS last_beat,
       dateDiff('millisecond', last_beat, now64(3)) AS age_ms,
       if(h.beats = 0, 'registered', h.state) AS state,
       h.partitions, h.flushes
FROM metering.writers AS w
LEFT JOIN
(
    SELECT writer_no, count() AS beats, max(beat_at) AS last_beat,
           argMax(state, beat_at) AS state, argMax(partitions, beat_at) AS partitions,
           argMax(flushes, beat_at) AS flushes
    FROM metering.writer_heartbeats
    GROUP BY writer_no
) AS h ON h.writer_no = w.writer_no
WHERE {only:UInt32} = 0 OR w.writer_no = {only:UInt32}
ORDER BY w.writer_no
"""

BEAT_TABLE: Final = "metering.writer_heartbeats"
BEAT_COLUMNS: Final = ("writer_no", "state", "partitions", "flushes")

# The newest row of a lease: its term, holder and whether that term was released.
LEASE_STATE: Final = """
SELECT term, writer_no, released
FROM metering.store_leases
WHERE name = {name:String}
ORDER BY term DESC, released DESC
LIMIT 1
"""

LEASE_HOLDER: Final = """
SELECT writer_no FROM metering.store_leases
WHERE name = {name:String} AND term = {term:UInt64} AND released = 0
LIMIT 1
"""

LEASE_COLUMNS: Final = (
    ("name", "String"),
    ("term", "UInt64"),
    ("writer_no", "UInt32"),
    ("released", "UInt8"),
    ("at", "DateTime64(3, 'UTC')"),
)


def lease_allows(name: str, term: int) -> str:
    """A condition (SQL, for a WHERE) that holds while lease `name` is free, or is held
    under `term` (0: by nobody, so only a free lease allows)."""
    if not name.isidentifier():
        raise ValueError(f"not a lease name: {name!r}")
    return (
        "(SELECT count() = 0 OR argMax(released, (term, released)) = 1 "
        f"OR argMax(term, (term, released)) = {int(term)} "
        f"FROM metering.store_leases WHERE name = '{name}') = 1"
    )
