"""Agency-scoped, read-only ClickHouse access: the SQL for one agency's user.

The SQL is emitted as reviewed text (and tested as golden text): a settings profile
with readonly = 1, a role with SELECT on the contract views and the tables behind
them, one user per agency with an hourly quota, and row policies on `agency_id`.

How the row policies work together (ClickHouse semantics):
  * once a table has any row policy, a user that no policy names sees none of its
    rows; `govmeter_all_rows` (PERMISSIVE, USING 1, TO ALL) keeps every other user
    (worker, billing, analysts) seeing all rows;
  * each agency user also gets a RESTRICTIVE policy `agency_id = '<id>'` named for
    the user itself: restrictive policies are ANDed with the permissive ones, and a
    policy on the user (not on a role) cannot be shed with SET ROLE;
  * plain views run with the reader's rights (SQL SECURITY INVOKER is the default
    for them), so the policies apply when `metering.agency_monthly` etc. are read;
  * the corrections of the agency's own events (`CORRECTION_TABLES`) are filtered the
    same way, with the row filters of the local server (`store.local_server.config.
    agency_filters`): a filter's subquery runs with the reader's rights, so it reads
    `metering.correction_agencies` through the agency's own policy there too.
"""

from __future__ import annotations

import re
from typing import Final

from schemas.errors import InputError
from schemas.events import AGENCY_ID
from store.local_server.config import agency_filters

__all__ = [
    "AGENCY_ID",
    "BASE_TABLES",
    "CORRECTION_TABLES",
    "PASSWORD_PLACEHOLDER",
    "VIEWS",
    "AccessError",
    "agency_user_name",
    "agency_user_sql",
    "sql_statements",
]

VIEWS: Final = ("metering.agency_daily", "metering.agency_monthly", "metering.monthly_totals")
BASE_TABLES: Final = (
    "metering.agency_daily_rollup",
    "metering.model_daily_rollup",
    "metering.agency_monthly_rollup",
    "metering.model_monthly_rollup",
    "metering.counted_events",
)
# The agency's corrections (migrations 0010 and 0014), each with its own row filter.
CORRECTION_TABLES: Final = (
    "metering.corrections",
    "metering.correction_marks",
    "metering.corrections_applied",
    "metering.correction_agencies",
)
# Printed where the password hash goes when none is given: not a credential.
PASSWORD_PLACEHOLDER: Final = "<sha256 hex of the password>"  # noqa: S105
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")

PROFILE: Final = "govmeter_agency_readonly"
ROLE: Final = "govmeter_agency_reader"
ALL_ROWS_POLICY: Final = "govmeter_all_rows"

# Hourly quota per agency user: generous for dashboards, a stop for runaway scripts.
QUOTA_QUERIES: Final = 1_000
QUOTA_RESULT_ROWS: Final = 100_000_000
QUOTA_READ_ROWS: Final = 10_000_000_000
QUOTA_EXECUTION_SECONDS: Final = 3_600


class AccessError(InputError):
    """An agency id or password hash that cannot be used."""


def agency_user_name(agency_id: str) -> str:
    """`fed-gsa` -> `govmeter_agency_fed_gsa` (agency ids never contain `_`: one-to-one)."""
    _check_agency(agency_id)
    return "govmeter_agency_" + agency_id.replace("-", "_")


def _check_agency(agency_id: str) -> None:
    if AGENCY_ID.fullmatch(agency_id) is None:
        raise AccessError(
            f"{agency_id!r} is not an agency id: 1 to 64 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )


def agency_user_sql(agency_id: str, password_sha256: str | None = None) -> str:
    user = agency_user_name(agency_id)
    if password_sha256 is None:
        password = PASSWORD_PLACEHOLDER
    elif _SHA256_HEX.fullmatch(password_sha256) is None:
        raise AccessError("the password hash must be 64 lower-case hex digits (sha256)")
    else:
        password = password_sha256
    tables = ",\n       ".join(BASE_TABLES)
    corrections = ",\n       ".join(CORRECTION_TABLES)
    grants = "\n".join(
        f"GRANT SELECT ON {name} TO {ROLE};" for name in (*VIEWS, *BASE_TABLES, *CORRECTION_TABLES)
    )
    filters = agency_filters(agency_id)
    correction_policies = "\n".join(
        f"CREATE ROW POLICY IF NOT EXISTS {user}\n    ON {name}\n"
        f"    AS RESTRICTIVE FOR SELECT USING ({filters[name]}) TO {user};"
        for name in CORRECTION_TABLES
    )
    return f"""\
-- Read-only ClickHouse access for agency {agency_id}: user {user}.
-- Emitted by `metering access agency-user --agency {agency_id}`. Review it, then run it
-- on the ClickHouse server as a user allowed to manage access (or pass --apply).
-- The embedded store (chdb://) has no access control: this needs a server.

-- 1. Shared by every agency user; IF NOT EXISTS makes a repeat a no-op.

-- SELECT only, no setting can be changed (readonly = 1); long or huge queries stop.
CREATE SETTINGS PROFILE IF NOT EXISTS {PROFILE}
    SETTINGS readonly = 1, max_execution_time = 300, max_memory_usage = 10000000000;

-- What an agency reader may read: the contract views and the tables behind them.
CREATE ROLE IF NOT EXISTS {ROLE};
{grants}

-- A table with any row policy hides all its rows from users no policy names. This
-- policy keeps every other user (worker, billing, analysts) seeing every row.
-- Review it if these tables already have row policies of your own.
CREATE ROW POLICY IF NOT EXISTS {ALL_ROWS_POLICY}
    ON {tables}
    AS PERMISSIVE FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS {ALL_ROWS_POLICY}
    ON {corrections}
    AS PERMISSIVE FOR SELECT USING 1 TO ALL;

-- 2. The agency's user.

CREATE USER IF NOT EXISTS {user}
    IDENTIFIED WITH sha256_hash BY '{password}'
    SETTINGS PROFILE '{PROFILE}';
GRANT {ROLE} TO {user};

-- At most this much per hour (execution_time in seconds).
CREATE QUOTA IF NOT EXISTS {user}
    FOR INTERVAL 1 hour MAX queries = {QUOTA_QUERIES}, result_rows = {QUOTA_RESULT_ROWS},
    read_rows = {QUOTA_READ_ROWS}, execution_time = {QUOTA_EXECUTION_SECONDS}
    TO {user};

-- Only this agency's rows, in every table behind the views. RESTRICTIVE: ANDed with
-- {ALL_ROWS_POLICY}. Named for the user, not a role, so SET ROLE cannot shed it.
CREATE ROW POLICY IF NOT EXISTS {user}
    ON {tables}
    AS RESTRICTIVE FOR SELECT USING agency_id = '{agency_id}' TO {user};

-- The corrections of the agency's own events: a range correction of the agency, or one
-- that dealt with an event the agency had before it, has after it, or was first
-- counted for (metering.correction_agencies, filled by the worker from the committed
-- record). A policy's subquery runs with the reader's rights and policies.
{correction_policies}
"""


def sql_statements(sql: str) -> list[str]:
    """Statements end with `;` at the end of a line; `--` comment lines are dropped."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in re.split(r";\s*(?:\n|$)", "\n".join(lines)) if part.strip()]
