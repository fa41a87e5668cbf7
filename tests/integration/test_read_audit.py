"""Who read what: the reads of the reporter and of agency users on the local server are
listed by `metering audit reads`, from the server's query log, and outlive a restart
(the engine keeps system.query_log in memory; a view copies it to disk)."""

from __future__ import annotations

import base64
import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.harness import CORPUS, MeteringRun

pytestmark = pytest.mark.integration


def _read(run: MeteringRun, sql: str, user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        run.store.url + "/", data=sql.encode(), headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def _audit(run: MeteringRun, *args: str) -> list[dict[str, Any]]:
    today = datetime.now(UTC).date().isoformat()
    result = run.metering("audit", "reads", "--since", today, "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_the_reads_of_the_reporter_and_an_agency_are_listed_and_outlive_a_restart(
    run: MeteringRun,
) -> None:
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    [top] = run.query(
        "SELECT agency_id, count() AS n FROM metering.agency_daily "
        "GROUP BY agency_id ORDER BY n DESC, agency_id LIMIT 1"
    )
    agency = str(top["agency_id"])
    applied = run.metering("access", "agency-user", "--agency", agency, "--apply")
    assert applied.returncode == 0, applied.stderr
    [line] = [line for line in applied.stdout.splitlines() if "shown once" in line]
    password = line.rsplit(" ", 1)[1]
    run.store.stop()
    run.store.start()
    user = "govmeter_agency_" + agency.replace("-", "_")

    assert _audit(run) == []  # the writer's own queries are not reads of this audit
    _read(run, "SELECT sum(messages) FROM metering.agency_daily", user, password)
    _read(run, "SELECT count() FROM metering.agency_monthly_rollup", user, password)
    _read(
        run,
        "SELECT count() FROM metering.tenant_daily_rollup",
        "reporter",
        run.store.reporter_password(),
    )
    _read(run, "SELECT 1", "reporter", run.store.reporter_password())  # no metering data

    reads = _audit(run)
    assert [(r["user"], r["agency"]) for r in reads] == [
        (user, agency),
        (user, agency),
        ("reporter", "all"),
    ]
    assert "metering.agency_daily" in reads[0]["tables"]
    assert reads[1]["tables"] == ["metering.agency_monthly_rollup"]
    assert reads[2]["tables"] == ["metering.tenant_daily_rollup"]
    times = [r["event_time"] for r in reads]
    assert times == sorted(times)
    assert len({r["query_id"] for r in reads}) == 3

    # --agency: the agency's own reads and the reads of all agencies; another agency
    # sees the reporter's read only.
    assert _audit(run, "--agency", agency) == reads
    assert [r["user"] for r in _audit(run, "--agency", "zz-no-such-agency")] == ["reporter"]

    table = run.metering("audit", "reads", "--since", times[0][:10])
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(user) == 2 and table.stdout.count("reporter") == 1

    run.store.stop()
    run.store.start()
    assert _audit(run) == reads
