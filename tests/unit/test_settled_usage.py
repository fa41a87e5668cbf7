"""`bill` reads a period's quantities only at a moment with nothing half-applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

import metering.billing.statements as statements
from metering.billing.statements import BillingError, Usage, read_settled_usage
from metering.periods import Period, month
from store import connect
from store.migrations import apply_migrations


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = connect(f"chdb://{tmp_path / 'ch'}")
    apply_migrations(store)
    yield store
    store.close()


def _period() -> Period:
    return month("2026-10")


def _commit_flush(client: Client, seq: int, *, applied: bool) -> None:
    client.command(
        "INSERT INTO metering.flush_ledger (flush_seq, topic, partition, first_offset, "
        f"last_offset, messages, writer_no) VALUES ({seq}, 'usage.events', 0, {seq * 10}, "
        f"{seq * 10 + 9}, 10, 1)"
    )
    if applied:
        client.command(f"INSERT INTO metering.flush_applied (flush_seq) VALUES ({seq})")


def _commit_correction(client: Client, seq: int, correction_id: str) -> None:
    client.command(
        "INSERT INTO metering.corrections (correction_id, correction_seq, status) "
        f"VALUES ('{correction_id}', {seq}, 'applied')"
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def test_a_quiet_store_is_read_once(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    _commit_flush(client, 1, applied=True)
    reads: list[Period] = []
    real = statements.read_usage

    def counting(c: Client, period: Period) -> Usage:
        reads.append(period)
        return real(c, period)

    monkeypatch.setattr(statements, "read_usage", counting)
    clock = _Clock()
    usage = read_settled_usage(client, _period(), clock=clock, sleep=clock.sleep)
    assert usage.months == ()
    assert (len(reads), clock.sleeps) == (1, 0)


def test_a_flush_committed_during_the_read_makes_it_read_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Period] = []
    real = statements.read_usage

    def racing(c: Client, period: Period) -> Usage:
        reads.append(period)
        if len(reads) == 1:  # a worker commits and folds a flush while the bill reads
            _commit_flush(c, 1, applied=True)
        return real(c, period)

    monkeypatch.setattr(statements, "read_usage", racing)
    clock = _Clock()
    read_settled_usage(client, _period(), clock=clock, sleep=clock.sleep)
    assert (len(reads), clock.sleeps) == (2, 1)


def test_a_correction_applied_during_the_read_makes_it_read_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Period] = []
    real = statements.read_usage

    def racing(c: Client, period: Period) -> Usage:
        reads.append(period)
        if len(reads) == 1:  # committed and rebuilt between the two looks
            _commit_correction(c, 1, "c-1")
            c.command(
                "INSERT INTO metering.corrections_applied (correction_seq, correction_id) "
                "VALUES (1, 'c-1')"
            )
        return real(c, period)

    monkeypatch.setattr(statements, "read_usage", racing)
    clock = _Clock()
    read_settled_usage(client, _period(), clock=clock, sleep=clock.sleep)
    assert (len(reads), clock.sleeps) == (2, 1)


def test_pending_flushes_and_corrections_wait_then_say_what_to_do(client: Client) -> None:
    _commit_flush(client, 1, applied=False)
    _commit_correction(client, 1, "c-unbuilt")
    clock = _Clock()
    with pytest.raises(BillingError) as refused:
        read_settled_usage(
            client, _period(), wait_seconds=3, pause_seconds=0.5, clock=clock, sleep=clock.sleep
        )
    assert str(refused.value) == (
        "1 committed flush(es) not yet folded into the rollups and correction(s) c-unbuilt "
        "committed but not yet rebuilt after 3 s; start the worker once (its recovery "
        "finishes them), then bill again"
    )
    assert clock.sleeps == 6
