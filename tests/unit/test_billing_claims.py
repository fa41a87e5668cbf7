"""Billing claims on an embedded store: one run per period and version, the other waits.

The two-process race itself runs in tests/integration/test_billing_and_reports.py;
here each interleaving is played step by step against the real engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from metering.billing import runs
from metering.billing.runs import BillingBusyError, bill_statement, claim_version, latest_run
from metering.billing.statements import BillingError, Statement, StatementLine
from metering.periods import month
from store import connect
from store.migrations import apply_migrations

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path}/ch")
    apply_migrations(store)
    try:
        yield store
    finally:
        store.close()


def _statement(messages: int = 5) -> Statement:
    line = StatementLine(
        period="2026-11",
        month=date(2026, 11, 1),
        tenant="chatgpt-enterprise",
        agency_id="fed-nasa",
        agency_level="federal",
        messages=messages,
        tokens_in=100,
        tokens_out=50,
        active_users=2,
        plan="per_active_user_month",
        billable_units=2,
        charge_usd=Decimal("120.00"),
        list_value_usd=Decimal("0.01"),
        models=(("gpt-4o", 100, 50),),
    )
    return Statement(month("2026-11"), (line,), "book-sha")


def _count(client: Client, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def test_of_two_claims_on_one_version_exactly_one_holds_it(client: Client) -> None:
    first = claim_version(client, "2026-11", 1)
    with pytest.raises(BillingBusyError) as busy:
        claim_version(client, "2026-11", 1)
    assert busy.value.holder == first
    assert str(busy.value).startswith(
        f"2026-11: another `metering bill` holds version 1 (claim {first.claim_id[:12]} by "
    )
    assert _count(client, "SELECT count() FROM metering.billing_claims") == 1
    # Another version or period is another claim.
    assert claim_version(client, "2026-11", 2).attempt == 1
    assert claim_version(client, "2026-12", 1).attempt == 1


def test_the_deduplication_token_decides_when_both_insert_before_either_reads(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both runs saw no claim; both insert; only the first insert is stored, and the
    # second run reads back the first run's claim.
    claims_seen = runs._claims
    winner = claim_version(client, "2026-11", 1)
    calls = {"n": 0}

    def blind_then_real(c: Client, period: str, version: int) -> list[tuple[runs.Claim, datetime]]:
        calls["n"] += 1
        return [] if calls["n"] == 1 else claims_seen(c, period, version)

    monkeypatch.setattr(runs, "_claims", blind_then_real)
    with pytest.raises(BillingBusyError) as busy:
        claim_version(client, "2026-11", 1)
    assert busy.value.holder.claim_id == winner.claim_id
    assert _count(client, "SELECT count() FROM metering.billing_claims") == 1


def test_a_claim_older_than_the_lease_is_taken_over_with_the_next_attempt(client: Client) -> None:
    dead = claim_version(client, "2026-11", 1)
    taken = claim_version(client, "2026-11", 1, lease_seconds=0.0)
    assert (taken.attempt, dead.attempt) == (2, 1)
    # The dead holder, back to life, may no longer write: its claim is not the latest.
    with pytest.raises(BillingError, match="was taken over after its lease expired"):
        runs._write(
            client, runs._new_run(month("2026-11"), _statement(), None, NOW), _statement(), dead
        )
    assert _count(client, "SELECT count() FROM metering.billing_lines") == 0
    assert latest_run(client, "2026-11") is None


def test_a_run_that_finds_the_version_claimed_waits_then_compares_again(client: Client) -> None:
    holder = claim_version(client, "2026-11", 1)
    ticks = {"now": 0.0}

    def sleep(seconds: float) -> None:
        # While this run waits, the holder records version 1 with the same statement.
        ticks["now"] += seconds
        if latest_run(client, "2026-11") is None:
            run = runs._new_run(month("2026-11"), _statement(), None, NOW)
            runs._write(client, run, _statement(), holder)

    outcome = bill_statement(client, _statement(), now=NOW, clock=lambda: ticks["now"], sleep=sleep)
    assert outcome.status == "unchanged"
    assert outcome.waited_for == holder
    assert outcome.run is not None and outcome.run.run_id == "2026-11-v1"
    assert _count(client, "SELECT count() FROM metering.billing_runs") == 1
    assert _count(client, "SELECT count() FROM metering.billing_lines") == 1


def test_a_run_that_waits_too_long_refuses_naming_the_holder(client: Client) -> None:
    holder = claim_version(client, "2026-11", 1)
    ticks = {"now": 0.0}

    def sleep(seconds: float) -> None:
        ticks["now"] += seconds

    with pytest.raises(BillingBusyError) as busy:
        bill_statement(
            client,
            _statement(),
            now=NOW,
            wait_seconds=3,
            clock=lambda: ticks["now"],
            sleep=sleep,
        )
    message = str(busy.value)
    assert message.startswith(
        f"2026-11: another `metering bill` holds version 1 ({holder.describe()})."
    )
    assert "It has not recorded version 1 within 3 s; this run recorded nothing." in message
    assert _count(client, "SELECT count() FROM metering.billing_lines") == 0
    assert ticks["now"] == 3.0


def test_a_restatement_claims_the_next_version(client: Client) -> None:
    first = bill_statement(client, _statement(5), now=NOW)
    second = bill_statement(client, _statement(6), now=NOW)
    assert (first.status, second.status) == ("recorded", "restated")
    assert second.run is not None and second.run.run_id == "2026-11-v2"
    claims = client.query(
        "SELECT version, attempt FROM metering.billing_claims ORDER BY version"
    ).result_rows
    assert [tuple(row) for row in claims] == [(1, 1), (2, 1)]
