"""The day's headline per tenant, read from the contract views."""

from __future__ import annotations

from datetime import date

from metering.open_store import open_for_reading
from metering.query import format_result
from metering.settings import Settings

__all__ = ["print_headline"]

HEADLINE_SQL = """
SELECT day, tenant,
       uniqExact(agency_id) AS agencies,
       uniqExactMerge(users) AS active_users,
       sum(messages) AS messages,
       sum(tokens_in) AS tokens_in,
       sum(tokens_out) AS tokens_out
FROM metering.agency_daily_rollup
WHERE day = {day:Date}
GROUP BY day, tenant
ORDER BY tenant
"""

REJECTED_SQL = """
SELECT reason, count() AS rejected FROM metering.rejected_events GROUP BY reason ORDER BY reason
"""


def print_headline(settings: Settings, day: date | None) -> int:
    client = open_for_reading(settings)
    if day is None:
        latest = client.query("SELECT max(day) FROM metering.agency_daily").result_rows[0][0]
        if latest is None or str(latest) == "1970-01-01":
            print("no counted usage yet")
            return 0
        day = latest
    result = client.query(HEADLINE_SQL, parameters={"day": day})
    print(f"Headline for {day} (UTC): distinct agencies and users per tenant")
    print(format_result(list(result.column_names), [tuple(r) for r in result.result_rows], "table"))
    rejected = client.query(REJECTED_SQL)
    if rejected.result_rows:
        print()
        print(
            format_result(
                list(rejected.column_names), [tuple(r) for r in rejected.result_rows], "table"
            )
        )
    return 0
