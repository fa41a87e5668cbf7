"""`metering certify`: the golden corpus certifies clean for 2026-10 with the golden
figures, before and after billing; a deleted counted event makes it name the
inequality."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from tests.integration.harness import CORPUS, MeteringRun, expected

pytestmark = pytest.mark.integration

OCTOBER = "2026-10"


@pytest.fixture(scope="module")
def counted(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> MeteringRun:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("certify"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    return run


def _certify(run: MeteringRun, *extra: str) -> tuple[int, str, str]:
    result = run.metering("certify", "--month", OCTOBER, *extra)
    return result.returncode, result.stdout, result.stderr


def _recorded_digest(run: MeteringRun, stderr: str, body: str) -> None:
    match = re.search(r"sha256 ([0-9a-f]{64})", stderr)
    assert match is not None, stderr
    assert match[1] == hashlib.sha256(body.encode()).hexdigest()
    rows = run.query(f"SELECT body FROM metering.certificates WHERE sha256 = '{match[1]}'")
    assert [row["body"] for row in rows] == [body]


def test_the_corpus_certifies_with_the_golden_figures(counted: MeteringRun) -> None:
    golden = expected()
    october = [r for r in golden["monthly_totals"] if str(r["month"]).startswith(OCTOBER)]
    code, out, err = _certify(counted)
    assert code == 0, out + err
    cert: dict[str, Any] = json.loads(out)
    _recorded_digest(counted, err, out)
    assert cert["complete"] is True and cert["inequalities"] == []
    partitions = cert["partitions"]
    assert sum(p["messages"] for p in partitions) == golden["lines"]
    assert sum(p["counted"] for p in partitions) == golden["valid_counted"]
    assert sum(p["duplicates"] for p in partitions) == golden["duplicates"]
    reasons: dict[str, int] = {}
    for p in partitions:
        for reason, n in p["rejected_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert reasons == golden["rejected"]
    for measure in ("messages", "tokens_in", "tokens_out"):
        total = sum(int(r[measure]) for r in october)
        assert cert["totals"][measure] == {
            "counted": total,
            "rollups": total,
            "billed": "not billed",
        }
    assert cert["billing"] == {"status": "not billed"}

    bill = counted.metering("bill", "--month", OCTOBER, "--format", "json")
    assert bill.returncode == 0, bill.stderr
    code, out, err = _certify(counted)
    assert code == 0, out + err
    billed = json.loads(out)
    assert billed["totals"]["messages"]["billed"] == sum(int(r["messages"]) for r in october)
    assert billed["billing"]["status"] == "billed"
    assert billed["billing"]["arrived_after_first_billing"] == 0

    code, page, err = _certify(counted, "--format", "html")
    assert code == 0, err
    assert page.startswith("<!DOCTYPE html>") and '<html lang="en">' in page
    assert page.count("<caption>") == 4
    _recorded_digest(counted, err, page)


def test_a_deleted_counted_event_is_named(counted: MeteringRun) -> None:
    event_id = counted.query(
        "SELECT toString(event_id) AS id FROM metering.counted_events "
        "WHERE toStartOfMonth(occurred_at) = '2026-10-01' ORDER BY event_id LIMIT 1"
    )[0]["id"]
    # As the writer: it may delete counted rows (the staged rows of flushes that never
    # committed), so a writer gone wrong could; certify names what is missing.
    client = counted.store.client()
    try:
        client.command(
            f"ALTER TABLE metering.counted_events DELETE WHERE event_id = '{event_id}'",
            settings={"mutations_sync": 2},
        )
    finally:
        client.close()
    golden = expected()
    code, out, err = _certify(counted)
    assert code == 1, out + err
    cert = json.loads(out)
    assert cert["complete"] is False
    assert cert["inequalities"][0] == (
        f"store: the ledger counted {golden['valid_counted']} events, counted_events holds "
        f"{golden['valid_counted'] - 1} rows of committed flushes"
    )
    assert f"NOT complete: {cert['inequalities'][0]}" in err
