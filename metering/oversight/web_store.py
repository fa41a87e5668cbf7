"""Who the oversight page reads the store as, and what it reads.

`metering serve` never reads as the writer. A visitor who does not log in sees the
public page, read as the read-only `reporter` user (CLICKHOUSE_REPORTER_USER,
CLICKHOUSE_REPORTER_PASSWORD, else the local server's own `reporter.password` when
CLICKHOUSE_URL is the local server). An agency user who logs in (HTTP Basic auth with
its ClickHouse user `govmeter_agency_<id>` and password) is read as that very user: the
password is checked by ClickHouse when the page connects, and ClickHouse's row filters
keep every query to that agency's rows, whatever the page asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from metering.periods import Period
from metering.settings import Settings
from schemas.errors import ServiceError
from schemas.events import AGENCY_ID

__all__ = [
    "AGENCY_USER_PREFIX",
    "LoginRefused",
    "StoreEndpoint",
    "Viewer",
    "WebStoreError",
    "agency_of_user",
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
            return f"public page (read-only user {self.user})"
        return f"agency {self.agency} (user {self.user})"


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
