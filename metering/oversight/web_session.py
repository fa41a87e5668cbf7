"""Sign-in sessions of `metering serve`, kept in the server's memory only.

A session is a random token (32 bytes, URL-safe) in a cookie, mapped here to the
ClickHouse user and password it signed in with: every page is read as that user, so
the password must stay with the server (never in the cookie). A session ends after
IDLE_SECONDS without a request, MAX_SECONDS after sign-in, at sign-out, or when the
server stops; then the visitor signs in again. At most LIMIT sessions are kept: a new
one beyond that ends the oldest.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from metering.oversight.web_store import Viewer

__all__ = ["COOKIE", "COOKIE_TLS", "IDLE_SECONDS", "LIMIT", "MAX_SECONDS", "Sessions"]

# `__Host-`: the browser keeps such a cookie only when Secure, for Path=/, without Domain.
COOKIE: Final = "govmeter_session"
COOKIE_TLS: Final = "__Host-govmeter_session"
IDLE_SECONDS: Final = 3600
MAX_SECONDS: Final = 8 * 3600
LIMIT: Final = 10_000


@dataclass
class _Session:
    viewer: Viewer
    started: float
    seen: float


class Sessions:
    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_seconds: float = MAX_SECONDS,
        limit: int = LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle, self._max, self._limit, self._clock = idle_seconds, max_seconds, limit, clock
        self._sessions: dict[str, _Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, viewer: Viewer) -> str:
        now = self._clock()
        for token in [t for t, s in self._sessions.items() if self._ended(s, now)]:
            del self._sessions[token]
        while len(self._sessions) >= self._limit:
            del self._sessions[next(iter(self._sessions))]  # the oldest (insertion order)
        token = secrets.token_urlsafe(32)
        self._sessions[token] = _Session(viewer, now, now)
        return token

    def viewer(self, token: str) -> Viewer | None:
        """The session's viewer, or None when there is none or it ended."""
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self._clock()
        if self._ended(session, now):
            del self._sessions[token]
            return None
        session.seen = now
        return session.viewer

    def end(self, token: str) -> None:
        self._sessions.pop(token, None)

    def _ended(self, session: _Session, now: float) -> bool:
        return now - session.seen >= self._idle or now - session.started >= self._max
