"""Who writes this store: every writer registers when it starts and beats while it runs.

A writer's number is claimed like a ledger commit (`store.conditional_insert`): the
last number + 1, only if nobody has it yet. It makes the writer's flush numbers its
own (`store.writers.flush_numbers`), and every message that names another writer reads its row here:
its host, pid and since when, and how long ago it last beat (on the server's clock).

Heartbeats say which writers are live; nothing that decides a count depends on them.
They decide only when a lease of a silent writer may be taken over (`store.writers.
leases`) and what `metering writers` shows.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from clickhouse_connect.driver.client import Client

from store.conditional_insert import insert_if
from store.writers import sql

__all__ = [
    "Registry",
    "WriterIdentity",
    "WriterInfo",
]

_REGISTER_TRIES: Final = 1000


@dataclass(frozen=True)
class WriterIdentity:
    """What a writer says of itself when it registers."""

    name: str
    host: str
    pid: int
    release: str
    consumer_group: str


@dataclass(frozen=True)
class WriterInfo:
    writer_no: int
    name: str
    host: str
    pid: int
    release: str
    consumer_group: str
    started_at: datetime
    last_beat_age: float  # seconds, on the server's clock
    state: str  # registered, live, stopped
    partitions: tuple[str, ...]
    flushes: int

    def live(self, timeout: float) -> bool:
        """Beating, and last heard from within `timeout` seconds, and not known to be
        gone (a process of this host's name whose pid is not running here is gone)."""
        if self.state not in ("registered", "live") or self.last_beat_age >= timeout:
            return False
        return not self.gone_from_this_host()

    def gone_from_this_host(self) -> bool:
        """Registered from this host, and its pid is no process here (not this one).

        Only ever a shortcut to a verdict the timeout reaches anyway: a process of
        another host that happens to share this host's name is at worst taken for
        gone early, and what depends on it (a lease takeover) is safe then too."""
        if self.host != socket.gethostname() or self.pid == os.getpid() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def status(self, timeout: float) -> str:
        if self.state == "stopped":
            return "stopped"
        return "live" if self.live(timeout) else "silent"

    def describe(self) -> str:
        started = self.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"writer {self.writer_no} '{self.name}' (host {self.host}, pid {self.pid}, "
            f"since {started} UTC, last heartbeat {self.last_beat_age:.1f} s ago)"
        )


class Registry:
    """The store's writers. Not thread-safe: one per client and thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def register(self, identity: WriterIdentity) -> int:
        """Claim the next writer number for `identity`; returns it."""
        writer_id = uuid.uuid4().hex
        for _ in range(_REGISTER_TRIES):
            last = int(self.client.query(sql.LAST_WRITER_NO).result_rows[0][0] or 0)
            number = last + 1
            row = {
                "writer_no": number,
                "writer_id": writer_id,
                "name": identity.name,
                "host": identity.host,
                "pid": identity.pid,
                "release": identity.release,
                "consumer_group": identity.consumer_group,
            }
            insert_if(
                self.client,
                "metering.writers",
                sql.WRITER_COLUMNS,
                [row],
                token=f"writer-{number}",
                condition=(
                    "(SELECT count() FROM metering.writers WHERE writer_no >= {number:UInt32}) = 0"
                ),
                parameters={"number": number},
                computed={"started_at": "now64(3)"},
            )
            holder = self.client.query(
                sql.WRITER_ID_OF, parameters={"writer_no": number}
            ).result_rows
            if holder and str(holder[0][0]) == writer_id:
                return number
        raise RuntimeError(f"no writer number after {_REGISTER_TRIES} tries")

    def beat(
        self, writer_no: int, state: str, partitions: Sequence[str] = (), flushes: int = 0
    ) -> None:
        self.client.insert(
            sql.BEAT_TABLE,
            [[writer_no, state, list(partitions), flushes]],
            column_names=list(sql.BEAT_COLUMNS),
        )

    def writers(self) -> list[WriterInfo]:
        return self._read(0)

    def get(self, writer_no: int) -> WriterInfo | None:
        if writer_no <= 0:
            return None
        found = self._read(writer_no)
        return found[0] if found else None

    def describe(self, writer_no: int) -> str:
        """A writer as messages name it; writer 0 predates registration."""
        if writer_no == 0:
            return "a writer of an older release (before writers registered)"
        info = self.get(writer_no)
        return info.describe() if info is not None else f"writer {writer_no} (not registered)"

    def _read(self, only: int) -> list[WriterInfo]:
        rows = self.client.query(sql.WRITERS, parameters={"only": only}).result_rows
        return [
            WriterInfo(
                writer_no=int(r[0]),
                name=str(r[1]),
                host=str(r[2]),
                pid=int(r[3]),
                release=str(r[4]),
                consumer_group=str(r[5]),
                started_at=_utc(r[6]),
                last_beat_age=max(0.0, int(r[8]) / 1000),
                state=str(r[9]),
                partitions=tuple(str(p) for p in (r[10] or ())),
                flushes=int(r[11] or 0),
            )
            for r in rows
        ]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
