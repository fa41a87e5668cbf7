"""Raw tables expire after the configured days; rollups never do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metering.settings import SettingsError, load_settings
from store import connect
from store.migrations import apply_migrations
from store.retention import apply_retention


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    store = connect(f"chdb://{tmp_path / 'ch'}")
    apply_migrations(store)
    yield store
    store.close()


def _create(client: Any, table: str) -> str:
    return str(client.query(f"SHOW CREATE TABLE {table}").result_rows[0][0])


def test_raw_tables_get_the_ttl_and_rollups_none(client: Any) -> None:
    apply_retention(client, 90)
    apply_retention(client, 90)  # idempotent
    assert "TTL toDateTime(ingested_at) + toIntervalDay(90)" in _create(
        client, "metering.counted_events"
    )
    assert "TTL toDateTime(received_at) + toIntervalDay(90)" in _create(
        client, "metering.rejections_log"
    )
    for rollup in ("metering.agency_daily_rollup", "metering.model_daily_rollup"):
        assert "TTL" not in _create(client, rollup)


def test_retention_shorter_than_the_backdating_window_is_refused() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(raw_retention_days=30)
    assert "METERING_RAW_RETENTION_DAYS" in str(raised.value)
