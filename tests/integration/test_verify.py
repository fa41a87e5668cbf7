"""`metering verify`: the golden corpus verifies clean; one edited counted event names
its flush, one extra rollup state names its agency-day."""

from __future__ import annotations

import pytest

from tests.integration.harness import CORPUS, MeteringRun

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def counted(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> MeteringRun:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("verify"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    return run


def _mutate(run: MeteringRun, statement: str) -> None:
    """An edit of a counted value: no network user may make it (the writer has no ALTER
    UPDATE), so it is made as the owner of the data directory."""
    run.store.as_owner(statement)


def _forge(run: MeteringRun, statement: str) -> None:
    """A row the writer itself could add (it appends to every metering table)."""
    client = run.store.client()
    try:
        client.command(statement)
    finally:
        client.close()


def test_a_counted_store_verifies_and_an_edit_names_its_flush(counted: MeteringRun) -> None:
    clean = counted.metering("verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 not chained" in clean.stdout
    assert clean.stdout.rstrip().endswith("verified")
    assert counted.metering("verify", "--month", "2026-10").returncode == 0

    row = counted.query(
        "SELECT toString(event_id) AS id, flush_seq FROM metering.counted_events "
        "ORDER BY event_id LIMIT 1"
    )[0]
    event_id, seq = row["id"], int(row["flush_seq"])
    _mutate(
        counted,
        f"ALTER TABLE metering.counted_events UPDATE tokens_in = tokens_in + 1 "
        f"WHERE event_id = '{event_id}'",
    )
    try:
        edited = counted.metering("verify")
        assert edited.returncode == 1, edited.stdout
        commit = counted.query(
            f"SELECT any(commit_seq) AS c FROM metering.flush_ledger WHERE flush_seq = {seq}"
        )[0]["c"]
        assert (
            f"FIRST FLUSH THAT DIFFERS: flush {seq} (commit {commit}): content hash differs"
            in edited.stdout
        )
        assert "also: flush" not in edited.stdout  # only that flush
    finally:
        _mutate(
            counted,
            f"ALTER TABLE metering.counted_events UPDATE tokens_in = tokens_in - 1 "
            f"WHERE event_id = '{event_id}'",
        )
    assert counted.metering("verify").returncode == 0


def test_an_extra_rollup_state_names_its_agency_day(counted: MeteringRun) -> None:
    target = counted.query(
        "SELECT toString(day) AS day, tenant, agency_id FROM metering.agency_daily "
        "ORDER BY day, tenant, agency_id LIMIT 1"
    )[0]
    _forge(
        counted,
        "INSERT INTO metering.agency_daily_rollup SELECT day, tenant, agency_id, "
        "agency_level, 1, 0, 0, uniqExactState(toString('')) FROM metering.agency_daily_rollup "
        f"WHERE day = '{target['day']}' AND tenant = '{target['tenant']}' "
        f"AND agency_id = '{target['agency_id']}' GROUP BY day, tenant, agency_id, agency_level "
        "LIMIT 1",
    )
    result = counted.metering("verify")
    assert result.returncode == 1, result.stdout
    assert (
        f"FIRST AGENCY-DAY THAT DIFFERS: agency-day {target['day']} "
        f"{target['tenant']}/{target['agency_id']}"
    ) in result.stdout
    assert "messages counted" in result.stdout
    assert "every chained flush's content and chain hash recomputes" in result.stdout
