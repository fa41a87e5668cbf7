"""A writer's heartbeat: a row in the store every few seconds, from a thread of its own
with a client of its own, so a busy flush never delays it and a paused or killed
process stops it (which is what "silent" means to the other writers).

The beat says which partitions the writer holds and how many flushes it committed, for
`metering writers`. A beat that fails is logged and tried again at the next one: the
heartbeat decides nothing about a count (`store.writers.registry`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from clickhouse_connect.driver.client import Client

from store.writers import Registry

__all__ = ["Heartbeat"]

log = logging.getLogger("govmeter.heartbeat")


class Heartbeat:
    def __init__(
        self,
        open_client: Callable[[], Client],
        writer_no: int,
        *,
        every: float,
        partitions: Callable[[], Sequence[str]] = tuple,
        flushes: Callable[[], int] = lambda: 0,
    ) -> None:
        self._open_client = open_client
        self._writer_no = writer_no
        self._every = every
        self._partitions = partitions
        self._flushes = flushes
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{writer_no}", daemon=True
        )
        self._client: Client | None = None
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and say so: the writer stopped (a clean exit, not a silence)."""
        self._stop.set()
        self._thread.join(timeout=self._every + 10)
        self._beat("stopped")
        if self._client is not None:
            self._client.close()
            self._client = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat("live")
            self._stop.wait(self._every)

    def _beat(self, state: str) -> None:
        try:
            if self._client is None:
                self._client = self._open_client()
            Registry(self._client).beat(
                self._writer_no, state, list(self._partitions()), self._flushes()
            )
        except Exception as error:  # the next beat tries again with a new client
            if not self._failing:
                log.warning(
                    "heartbeat not written; trying again",
                    extra={
                        "writer_no": self._writer_no,
                        "error": type(error).__name__,
                        "error_message": str(error)[:200],
                    },
                )
            self._failing = True
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None
            return
        if self._failing:
            log.info("heartbeat written again", extra={"writer_no": self._writer_no})
        self._failing = False
