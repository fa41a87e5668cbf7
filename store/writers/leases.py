"""Named leases in the store: one writer at a time holds one, whatever host it runs on.

A lease is a sequence of terms. Taking it appends term t + 1 (a conditional insert:
only if no term t + 1 or later exists yet, token "lease-<name>-<t+1>"), and reading
term t + 1 back says who won. Releasing appends (t, released). A term that was never
released belongs to its holder until the holder is silent for longer than the writers'
timeout (its heartbeats stopped: killed, paused, cut off); then another writer may take
the next term over. A holder that comes back after that cannot do harm: every write it
makes under the lease is conditional on its term still being the newest
(`store.writers.sql.lease_allows`), and the server evaluates that condition.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from store.conditional_insert import insert_if
from store.writers import sql

__all__ = ["LeaseState", "Leases"]


@dataclass(frozen=True)
class LeaseState:
    term: int
    writer_no: int
    released: bool


class Leases:
    """The store's leases. Not thread-safe: one per client and thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def state(self, name: str) -> LeaseState | None:
        """The newest term of `name` (None: never taken)."""
        rows = self.client.query(sql.LEASE_STATE, parameters={"name": name}).result_rows
        if not rows:
            return None
        term, writer_no, released = rows[0]
        return LeaseState(int(term), int(writer_no), bool(released))

    def take(self, name: str, term: int, writer_no: int) -> bool:
        """Try to take `term` of `name` (the newest term + 1); True if this writer has it."""
        insert_if(
            self.client,
            "metering.store_leases",
            sql.LEASE_COLUMNS,
            [{"name": name, "term": term, "writer_no": writer_no, "released": 0}],
            token=f"lease-{name}-{term}",
            condition=(
                "(SELECT count() FROM metering.store_leases "
                "WHERE name = {name:String} AND term >= {term:UInt64}) = 0"
            ),
            parameters={"name": name, "term": term},
            computed={"at": "now64(3)"},
        )
        holder = self.client.query(
            sql.LEASE_HOLDER, parameters={"name": name, "term": term}
        ).result_rows
        return bool(holder) and int(holder[0][0]) == writer_no

    def release(self, name: str, term: int, writer_no: int) -> None:
        """Let go of `term` (harmless when a later term took it over meanwhile)."""
        insert_if(
            self.client,
            "metering.store_leases",
            sql.LEASE_COLUMNS,
            [{"name": name, "term": term, "writer_no": writer_no, "released": 1}],
            token=f"lease-{name}-{term}-released",
            condition="1",
            computed={"at": "now64(3)"},
        )
