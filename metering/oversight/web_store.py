"""Who the oversight page reads the store as, and what it reads.

`metering serve` never reads as the writer. Every page is read as the ClickHouse user
the visitor signed in with (a sign-in form, or HTTP Basic auth on each request): the
password is checked by ClickHouse when the page connects, as that very user.
  * An agency's user `govmeter_agency_<id>`: ClickHouse's row filters keep every query
    to that agency's rows, whatever the page asks for.
  * An oversight user: the read-only `reporter` (CLICKHOUSE_REPORTER_USER), or a user
    `--oversight-user` names; it sees every agency.
The server itself reads as the reporter (CLICKHOUSE_REPORTER_PASSWORD, else the local
server's own `reporter.password` when CLICKHOUSE_URL is the local server) for its start
check, `/healthz` and, with `--public` only, the published aggregate an anonymous
visitor sees.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from metering.periods import Period
from metering.settings import Settings, SettingsError
from schemas.errors import ServiceError
from schemas.events import AGENCY_ID

__all__ = [
    "AGENCY_USER_PREFIX",
    "LoginRefused",
    "StoreEndpoint",
    "Viewer",
    "WebStoreError",
    "agency_of_user",
    "check_oversight_users",
    "data_months",
    "period_agencies",
]

AGENCY_USER_PREFIX: Final = "govmeter_agency_"

# ClickHouse's error codes for a user or password it does not accept.
_AUTH_CODES: Final = ("Code: 516", "AUTHENTICATION_FAILED", "Code: 192", "UNKNOWN_USER")


class WebStoreError(ServiceError):
    """The page cannot read the store; the message says what to do."""


class LoginRefused(WebStoreError):
    """ClickHouse did not accept the user and password given."""


def agency_of_user(user: str) -> str | None:
    """`govmeter_agency_fed_gsa` -> `fed-gsa` (agency ids never contain `_`); else None."""
    if not user.startswith(AGENCY_USER_PREFIX):
        return None
    agency = user.removeprefix(AGENCY_USER_PREFIX).replace("_", "-")
    return agency if AGENCY_ID.fullmatch(agency) else None


@dataclass(frozen=True)
class Viewer:
    """A ClickHouse user the page reads as: the reporter, or one agency's user."""

    user: str
    password: str = field(repr=False)
    agency: str | None = None  # the agency an agency user is limited to

    def describe(self) -> str:
        if self.agency is None:
            return f"every agency (oversight user {self.user})"
        return f"agency {self.agency} (user {self.user})"


def check_oversight_users(names: Iterable[str], settings: Settings) -> frozenset[str]:
    """The users `--oversight-user` names, besides the reporter; SettingsError for one
    that is an agency's user or the store's writer."""
    from store.local_server.config import SERVER_USER, WRITER_USER

    writer = urlsplit(settings.clickhouse_url).username or "default"
    users = set()
    for name in names:
        if not name or name != name.strip():
            raise SettingsError(
                f"--oversight-user {name!r} is not a ClickHouse user name: give the name alone"
            )
        if name.startswith(AGENCY_USER_PREFIX):
            raise SettingsError(
                f"--oversight-user {name} is an agency's user: agency users sign in as "
                "themselves and see their own agency only; name an oversight user instead"
            )
        if name in (writer, "default", WRITER_USER, SERVER_USER):
            raise SettingsError(
                f"--oversight-user {name} is the store's writer or its default user, and "
                "metering serve never reads as them: create a read-only ClickHouse user "
                "(readonly = 1, SELECT on the metering views) for the oversight office"
            )
        users.add(name)
    return frozenset(users)


@dataclass(frozen=True)
class StoreEndpoint:
    """The ClickHouse server of CLICKHOUSE_URL, without the URL's own credentials."""

    scheme: str
    host: str
    port: int
    reporter: Viewer

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreEndpoint:
        url = settings.clickhouse_url
        if url.startswith("chdb://"):
            raise WebStoreError(
                "metering serve reads a ClickHouse server as its read-only reporter user, and "
                f"CLICKHOUSE_URL={url} is the in-process engine, which has no users. Start the "
                "local server (infra/clickhouse/start) and set CLICKHOUSE_URL=http://127.0.0.1:8123"
            )
        parts = urlsplit(url)
        if parts.hostname is None:
            raise WebStoreError(f"CLICKHOUSE_URL has no host: {parts.scheme}://...")
        port = parts.port or (8443 if parts.scheme == "https" else 8123)
        password = _reporter_password(settings)
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            reporter=Viewer(settings.reporter_user, password),
        )

    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def connect(self, viewer: Viewer) -> Client:
        """A client reading as `viewer`; LoginRefused when ClickHouse refuses the login."""
        try:
            client: Client = clickhouse_connect.get_client(
                host=self.host,
                port=self.port,
                username=viewer.user,
                password=viewer.password,
                secure=self.scheme == "https",
                connect_timeout=10,
                send_receive_timeout=120,
                autogenerate_session_id=False,
            )
        except Exception as error:
            text = str(error)
            if any(code in text for code in _AUTH_CODES):
                raise LoginRefused(f"ClickHouse refused the login of {viewer.user}") from None
            first = text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
            raise WebStoreError(
                f"cannot read the ClickHouse server at {self.describe()} as {viewer.user}: {first}"
            ) from None
        return client


def _reporter_password(settings: Settings) -> str:
    given = settings.reporter_password
    if given is not None and given.get_secret_value():
        return given.get_secret_value()
    from store.local_server import local_server_at

    local = local_server_at(settings.clickhouse_url)
    if local is not None:
        return local.reporter_password()
    raise WebStoreError(
        f"CLICKHOUSE_REPORTER_PASSWORD is not set and CLICKHOUSE_URL is not the local server "
        f"(whose reporter.password would be read): give the password of the read-only user "
        f"{settings.reporter_user} (CLICKHOUSE_REPORTER_USER)"
    )


_MONTHS_SQL: Final = """
SELECT min(month), max(month)
FROM metering.agency_monthly_rollup
WHERE {agency:String} = '' OR agency_id = {agency:String}
"""

_AGENCIES_SQL: Final = """
SELECT DISTINCT agency_id
FROM metering.agency_monthly_rollup
WHERE month >= {start:Date} AND month < {end:Date}
ORDER BY agency_id
"""


def data_months(client: Client, agency: str | None) -> tuple[date, date] | None:
    """The first and the last month with counted usage the viewer may see, or None."""
    parameters: dict[str, Any] = {"agency": agency or ""}
    first, last = client.query(_MONTHS_SQL, parameters=parameters).result_rows[0]
    if not isinstance(first, date) or not isinstance(last, date) or last.year <= 1970:
        return None
    return first, last


def period_agencies(client: Client, period: Period) -> list[str]:
    """Agency ids with usage in the period (ids are never suppressed; figures are)."""
    parameters = {"start": period.start, "end": period.end}
    return [str(row[0]) for row in client.query(_AGENCIES_SQL, parameters=parameters).result_rows]
