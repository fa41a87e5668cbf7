"""The golden corpus through the whole path: replay -> real Kafka -> worker -> chDB views."""

from __future__ import annotations

import pytest

from tests.integration.harness import CORPUS, MeteringRun, expected

pytestmark = pytest.mark.integration

VIEW_COLUMNS = {
    "agency_daily": [
        "day",
        "tenant",
        "agency_id",
        "agency_level",
        "messages",
        "tokens_in",
        "tokens_out",
        "active_users",
    ],
    "agency_monthly": [
        "month",
        "tenant",
        "agency_id",
        "agency_level",
        "messages",
        "tokens_in",
        "tokens_out",
        "active_users",
    ],
    "monthly_totals": [
        "month",
        "tenant",
        "agencies",
        "active_users",
        "messages",
        "tokens_in",
        "tokens_out",
    ],
}


_MERGED = (
    "sum(messages) AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out, "
    "uniqExactMerge(users) AS users"
)
_RAW = (
    "count() AS messages, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out, "
    "uniqExact(user_id) AS users"
)
_MONTH = "toString(toStartOfMonth(toDate(occurred_at))) AS month"
REPORT_ROLLUPS_AND_RAW = {
    f"SELECT toString(month) AS month, tenant, agency_id, agency_level, {_MERGED} "
    "FROM metering.agency_monthly_rollup GROUP BY ALL ORDER BY ALL": (
        f"SELECT {_MONTH}, tenant, agency_id, toString(agency_level) AS agency_level, {_RAW} "
        "FROM metering.counted_events GROUP BY ALL ORDER BY ALL"
    ),
    f"SELECT toString(month) AS month, tenant, model, agency_id, {_MERGED} "
    "FROM metering.model_monthly_rollup GROUP BY ALL ORDER BY ALL": (
        f"SELECT {_MONTH}, tenant, toString(model) AS model, agency_id, {_RAW} "
        "FROM metering.counted_events GROUP BY ALL ORDER BY ALL"
    ),
    f"SELECT toString(day) AS day, tenant, uniqExactMerge(agencies) AS agencies, {_MERGED} "
    "FROM metering.tenant_daily_rollup GROUP BY ALL ORDER BY ALL": (
        "SELECT toString(toDate(occurred_at)) AS day, tenant, uniqExact(agency_id) AS agencies, "
        f"{_RAW} FROM metering.counted_events GROUP BY ALL ORDER BY ALL"
    ),
}


def _normalised(rows: list[dict[str, object]], view: str) -> list[dict[str, object]]:
    columns = VIEW_COLUMNS[view]
    return [{c: row[c] for c in columns} for row in rows]


@pytest.mark.parametrize("intake", ["batch", "agent"])
def test_corpus_counts_exactly_once_in_its_utc_window(run: MeteringRun, intake: str) -> None:
    golden = expected()
    run.env["METERING_INTAKE"] = intake
    run.replay(CORPUS)
    result = run.worker(until_idle=1.0)
    assert result.returncode == 0, result.stderr[-3000:]

    views = run.views()
    for view in VIEW_COLUMNS:
        assert list(views[view][0]) == VIEW_COLUMNS[view], view
        assert _normalised(views[view], view) == _normalised(golden[view], view), view

    assert run.rejected_by_reason() == golden["rejected"]
    counted = run.query("SELECT count() AS n FROM metering.counted_events")[0]["n"]
    assert counted == golden["valid_counted"]
    ledger = run.query(
        "SELECT sum(messages) AS m, sum(counted) AS c, sum(duplicates) AS d, "
        "sum(rejected) AS r FROM metering.flush_ledger"
    )[0]
    assert ledger == {
        "m": golden["lines"],
        "c": golden["valid_counted"],
        "d": golden["duplicates"],
        "r": sum(golden["rejected"].values()),
    }

    # The report rollups, each folded per flush on its own, equal the raw record.
    for rollup, raw in REPORT_ROLLUPS_AND_RAW.items():
        assert run.query(rollup) == run.query(raw), rollup

    letters = run.dead_letters()
    assert len(letters) == sum(golden["rejected"].values())

    # No message content anywhere: worker logs, the dead-letter topic, any table.
    markers = [m.encode() for m in golden["content_markers"]]
    assert markers, "the corpus must carry content markers"
    logs = "\n".join(run.logs).encode()
    tables = [
        row["name"]
        for row in run.query("SELECT name FROM system.tables WHERE database = 'metering'")
    ]
    dumps = b"\n".join(
        run.metering("query", f"SELECT * FROM metering.`{t}`", "--format", "csv").stdout.encode()
        for t in tables
    )
    for marker in markers:
        assert marker not in logs
        assert all(marker not in letter for letter in letters)
        assert marker not in dumps


def test_replaying_the_log_again_changes_nothing_but_rejections(run: MeteringRun) -> None:
    golden = expected()
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    first = run.views()

    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0

    assert run.views() == first
    assert run.rejected_by_reason() == {k: 2 * v for k, v in golden["rejected"].items()}
