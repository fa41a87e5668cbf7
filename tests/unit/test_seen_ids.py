"""The committed-id filter never misses an id, stays near its false-positive rate, and
loads from the store exactly the ids of committed flushes; staged columns round-trip."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metering.settings import SettingsError, load_settings
from schemas.events import UsageEvent
from store import connect
from store.ledger import Ledger
from store.migrations import apply_migrations
from streams.batch import SourceMessage, ValidMessage
from streams.seen_ids import SeenIdFilter, id_halves, load_from_store
from streams.sink import counted_events_table


def _random_ids(rng: random.Random, n: int) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def _sequential_ids(start: int, n: int) -> list[str]:
    # Ids that differ in their last bits only: the hash must still spread them.
    return [str(uuid.UUID(int=(0x0192F3C4 << 96) + start + i)) for i in range(n)]


def test_halves_are_the_big_endian_bytes_read_as_two_little_endian_words() -> None:
    event_id = "00112233-4455-6677-8899-aabbccddeeff"
    halves = id_halves([event_id])
    assert halves.shape == (1, 2)
    assert int(halves[0, 0]) == int.from_bytes(bytes.fromhex("0011223344556677"), "little")
    assert int(halves[0, 1]) == int.from_bytes(bytes.fromhex("8899aabbccddeeff"), "little")
    assert id_halves([]).shape == (0, 2)


def test_every_added_id_is_maybe_seen() -> None:
    rng = random.Random(11)
    added = _random_ids(rng, 50_000) + _sequential_ids(0, 50_000)
    seen = SeenIdFilter(1)
    for start in range(0, len(added), 7_000):
        seen.add_ids(added[start : start + 7_000])
    assert seen.ids_added == 100_000
    assert bool(seen.maybe_seen(id_halves(added)).all())


def test_false_positives_stay_near_the_bloom_rate() -> None:
    rng = random.Random(12)
    seen = SeenIdFilter(1)  # 2**23 bits
    seen.add_ids(_random_ids(rng, 200_000))
    probes = _random_ids(rng, 100_000) + _sequential_ids(10**9, 100_000)
    false_positives = int(seen.maybe_seen(id_halves(probes)).sum())
    expected = len(probes) * (1 - math.exp(-3 * 200_000 / 2**23)) ** 3  # about 66
    assert expected < 70
    assert false_positives <= 3 * expected


def test_an_empty_filter_clears_everything() -> None:
    seen = SeenIdFilter(1)
    assert int(seen.maybe_seen(id_halves(_random_ids(random.Random(1), 1_000))).sum()) == 0
    assert seen.maybe_seen(id_halves([])).shape == (0,)


@pytest.mark.parametrize("size", [0, 3, 48])
def test_sizes_other_than_powers_of_two_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="METERING_DEDUPE_FILTER_MB"):
        SeenIdFilter(size)


def test_setting_names_the_variable_and_the_fix() -> None:
    with pytest.raises(SettingsError, match="METERING_DEDUPE_FILTER_MB") as error:
        load_settings(dedupe_filter_mb=48)
    assert "power of two" in str(error.value)
    assert load_settings(dedupe_filter_mb=0).dedupe_filter_mb == 0
    assert load_settings().dedupe_filter_mb == 64


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    store = connect(f"chdb://{tmp_path / 'ch'}")
    apply_migrations(store)
    yield store
    store.close()


def _event(event_id: str, **changes: Any) -> ValidMessage:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": "2026-11-02T23:59:59.999Z",
        "tenant": "chatgpt-gov",
        "agency_id": "fed-gsa",
        "agency_level": "federal",
        "user_id": "u-1",
        "conversation_id": "c-1",
        "model": "gpt-4o",
        "tokens_in": 10,
        "tokens_out": 20,
    }
    fields.update(changes)
    event = UsageEvent.model_validate(fields)
    return ValidMessage(SourceMessage("events", 2, 40, None, b""), event)


def _stage(client: Any, events: list[ValidMessage], seq: int, now: datetime) -> None:
    client.insert_arrow("metering.counted_events", counted_events_table(events, seq, now))


def _commit(client: Any, seq: int) -> None:
    client.command(
        "INSERT INTO metering.flush_ledger (flush_seq, topic, partition, first_offset, "
        "last_offset, messages, counted, duplicates, rejected, worker, writer_no, "
        f"committed_at) VALUES ({seq}, 'events', 0, 0, 0, 0, 0, 0, 0, 'test', 1, now())"
    )


def test_staged_columns_read_back_exactly(client: Any) -> None:
    now = datetime(2026, 11, 3, 8, 0, 0, 123000, tzinfo=UTC)
    events = [
        _event("00000000-0000-4000-8000-000000000001"),
        _event(
            "ffffffff-ffff-4fff-bfff-ffffffffffff",
            occurred_at="1970-01-01T00:00:00Z",
            agency_level="local",
            user_id="ü-λ-1",
            model="o3",
            feature="search",
            tokens_in=1_000_000,
            tokens_out=0,
        ),
    ]
    _stage(client, events, 7, now)
    rows = client.query(
        "SELECT toString(event_id), toString(occurred_at), tenant, agency_id, agency_level, "
        "user_id, conversation_id, model, feature, tokens_in, tokens_out, topic, partition, "
        "offset, flush_seq, toString(ingested_at) FROM metering.counted_events "
        "ORDER BY event_id"
    ).result_rows
    assert [tuple(row) for row in rows] == [
        (
            "00000000-0000-4000-8000-000000000001", "2026-11-02 23:59:59.999",
            "chatgpt-gov", "fed-gsa", "federal", "u-1", "c-1", "gpt-4o", "chat",
            10, 20, "events", 2, 40, 7, "2026-11-03 08:00:00.123",
        ),
        (
            "ffffffff-ffff-4fff-bfff-ffffffffffff", "1970-01-01 00:00:00.000",
            "chatgpt-gov", "fed-gsa", "local", "ü-λ-1", "c-1", "o3", "search",
            1_000_000, 0, "events", 2, 40, 7, "2026-11-03 08:00:00.123",
        ),
    ]  # fmt: skip


def test_the_store_filter_holds_committed_ids_only(client: Any) -> None:
    rng = random.Random(13)
    now = datetime(2026, 11, 3, tzinfo=UTC)
    committed = _random_ids(rng, 300) + _sequential_ids(0, 300)
    orphans = _random_ids(rng, 300)
    for seq, start in enumerate(range(0, len(committed), 150), start=1):
        _stage(client, [_event(i) for i in committed[start : start + 150]], seq, now)
        _commit(client, seq)
    _stage(client, [_event(i) for i in orphans], 99, now)  # never committed

    seen = load_from_store(Ledger(client), 1, flushes_per_page=3)  # pages 1-3 and 4
    assert seen.ids_added == len(committed)
    in_memory = SeenIdFilter(1)
    in_memory.add_ids(committed)
    assert np.array_equal(seen._words, in_memory._words)
    assert int(seen.maybe_seen(id_halves(orphans)).sum()) == 0


def test_an_empty_store_loads_an_empty_filter(client: Any) -> None:
    assert load_from_store(Ledger(client), 1).ids_added == 0
