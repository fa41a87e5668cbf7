"""Relay packages: what a processor writes round-trips; anything malformed or forged is refused.

Each refusal case starts from a genuine package (`encode_package` of classified
messages) and breaks one thing, so the test fails if that one check is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest

from schemas.events import UsageEvent
from schemas.rejections import Rejection, classify
from streams.batch import ClassifiedBatch, SourceMessage
from streams.metrics import Metrics
from streams.packages import (
    PACKAGE_VERSION,
    PackageError,
    PackageReason,
    decode_package,
    encode_package,
)
from streams.positions import Positions
from streams.relay import (
    PACKAGE_MAX_BYTES,
    LedgerGapError,
    ProcessorPipeline,
    StoreOwnerPipeline,
)
from streams.sink import ClickHouseSink, FlushResult

TOPIC = "usage.events"


def _event(n: int, **changes: Any) -> bytes:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": f"7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b{n:02d}",
        "occurred_at": "2026-11-02T14:03:12.345Z",
        "tenant": "chatgpt-gov",
        "agency_id": "fed-gsa",
        "agency_level": "federal",
        "user_id": f"u-{n}",
        "conversation_id": "c-1",
        "model": "gpt-4o",
        "tokens_in": 10 * n,
        "tokens_out": n,
    }
    event.update(changes)
    return orjson.dumps(event)


def _outcomes(partition: int = 2) -> list[tuple[SourceMessage, UsageEvent | Rejection]]:
    raws = [_event(1), b"{broken", _event(2), _event(3, tokens_in="12")]
    return [
        (SourceMessage(TOPIC, partition, 40 + i, None, raw), classify(raw))
        for i, raw in enumerate(raws)
    ]


def _genuine() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(encode_package(_outcomes()))
    return document


def test_a_package_round_trips_exactly() -> None:
    outcomes = _outcomes()
    raw = encode_package(outcomes)
    document = orjson.loads(raw)
    assert {k: v for k, v in document.items() if k != "items"} == {
        "v": PACKAGE_VERSION,
        "topic": TOPIC,
        "partition": 2,
        "first_offset": 40,
        "last_offset": 43,
        "events": 2,
        "rejections": 2,
    }
    decoded = decode_package(raw)
    assert [(s.topic, s.partition, s.offset) for s, _ in decoded] == [
        (TOPIC, 2, 40),
        (TOPIC, 2, 41),
        (TOPIC, 2, 42),
        (TOPIC, 2, 43),
    ]
    assert [o for _, o in decoded] == [o for _, o in outcomes]
    first = decoded[0][1]
    assert isinstance(first, UsageEvent)
    assert first.occurred_at == datetime(2026, 11, 2, 14, 3, 12, 345000, tzinfo=UTC)
    assert [s.size for s, o in decoded if isinstance(o, Rejection)] == [
        7,
        len(_event(3, tokens_in="12")),
    ]


def test_a_version_1_package_of_an_older_processor_is_still_read() -> None:
    document = _genuine()
    for key in ("first_offset", "last_offset", "events", "rejections"):
        del document[key]
    document["v"] = 1
    # Older processors wrote timestamps with +00:00.
    document["items"][0][4] = "2026-11-02T14:03:12.345000+00:00"
    decoded = decode_package(orjson.dumps(document))
    assert [o for _, o in decoded] == [o for _, o in _outcomes()]


def _refused(raw: bytes) -> PackageError:
    with pytest.raises(PackageError) as raised:
        decode_package(raw)
    return raised.value


def _broken(change: Callable[[dict[str, Any]], None]) -> bytes:
    document = _genuine()
    change(document)
    return orjson.dumps(document)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda document: document.pop(key)


def _swap_items(document: dict[str, Any]) -> None:
    items = document["items"]
    items[1], items[2] = items[2], items[1]


def _repeat_item(document: dict[str, Any]) -> None:
    document["items"].insert(1, list(document["items"][0]))


def _drop_item(document: dict[str, Any]) -> None:
    del document["items"][2]


EVENT = 2  # offset, kind, then the event fields: index of schema_version in an item
FIELD = {name: EVENT + i for i, name in enumerate(UsageEvent.model_fields)}


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        (_set(("v",), 3), "unsupported_version", "field v must be one of [1, 2]"),
        (_set(("v",), True), "unsupported_version", "field v"),
        (_set(("extra",), 1), "unknown_field", "unknown fields ['extra']"),
        (_delete("events"), "missing_field", "missing fields ['events']"),
        (_delete("items"), "missing_field", "missing fields ['items']"),
        (_set(("topic",), 7), "wrong_type", "topic must be a non-empty string"),
        (_set(("partition",), "2"), "wrong_type", "partition must be an integer >= 0"),
        (_set(("partition",), -1), "wrong_type", "partition must be an integer >= 0"),
        (_set(("items",), []), "wrong_type", "items must be a non-empty array"),
        (_set(("items", 1), "r"), "wrong_type", "items[1] must be an array"),
        (_set(("items", 1, 0), "41"), "wrong_type", "items[1]: the offset must be an integer"),
        (_set(("items", 1, 1), "x"), "wrong_type", "items[1]: kind must be 'e' or 'r'"),
        (
            _swap_items,
            "offsets_out_of_order",
            "items[2]: offsets must increase (offset 41 after 42)",
        ),
        (
            _repeat_item,
            "offsets_out_of_order",
            "items[1]: offsets must increase (offset 40 after 40)",
        ),
        (_set(("events",), 3), "counts_mismatch", "events says 3, holds 2"),
        (_set(("rejections",), 1), "counts_mismatch", "rejections says 1, holds 2"),
        (_set(("first_offset",), 39), "counts_mismatch", "first_offset says 39, holds 40"),
        (_drop_item, "counts_mismatch", "events says 2, holds 1"),
        (_set(("events",), "2"), "wrong_type", "must be integers >= 0"),
        (
            _set(("items", 0, FIELD["tokens_in"]), "10"),
            "invalid_event",
            "items[0]: invalid ['tokens_in']",
        ),
        (_set(("items", 0, FIELD["tokens_in"]), 2_000_000), "invalid_event", "['tokens_in']"),
        (
            _set(("items", 0, FIELD["occurred_at"]), "2026-11-02 14:03"),
            "invalid_event",
            "['occurred_at']",
        ),
        (_set(("items", 0, FIELD["event_id"]), "not-a-uuid"), "invalid_event", "['event_id']"),
        (
            _set(("items", 0, FIELD["agency_level"]), "galactic"),
            "invalid_event",
            "['agency_level']",
        ),
        (_set(("items", 0, FIELD["schema_version"]), 2), "invalid_event", "['schema_version']"),
        (
            lambda d: d["items"][0].append("extra"),
            "wrong_type",
            "an event item holds 12 fields, not 13",
        ),
        (_set(("items", 1, 2), "because"), "invalid_rejection", "items[1]: reason must be one of"),
        (_set(("items", 1, 3), 5), "invalid_rejection", "detail must be a string"),
        (_set(("items", 1, 3), "x" * 1001), "invalid_rejection", "at most 1000 characters"),
        (_set(("items", 1, 6), -1), "invalid_rejection", "size must be an integer >= 0"),
        (lambda d: d["items"][1].pop(), "wrong_type", "a rejection item holds 7 values, not 6"),
    ],
)
def test_a_malformed_or_forged_package_is_refused_with_its_reason(
    change: Callable[[dict[str, Any]], None], reason: str, detail: str
) -> None:
    refused = _refused(_broken(change))
    assert refused.reason == PackageReason(reason)
    assert detail in refused.detail, refused.detail
    assert str(refused).startswith(f"flush package refused ({reason}): ")


def test_non_json_and_non_objects_are_refused() -> None:
    assert _refused(b"\x00\xffnot json").reason is PackageReason.INVALID_JSON
    assert _refused(b"[1, 2]").reason is PackageReason.WRONG_TYPE
    assert _refused(b"").reason is PackageReason.INVALID_JSON


def test_a_refused_event_names_fields_never_values() -> None:
    secret = "the text of a user's message"
    refused = _refused(_broken(_set(("items", 0, FIELD["user_id"]), secret * 10)))
    assert refused.reason is PackageReason.INVALID_EVENT
    assert secret not in str(refused)


# ---------------------------------------------------------------------------------
# The store owner refuses a package whole and counts none of it


class _Sink:
    def __init__(self) -> None:
        self.batches: list[ClassifiedBatch] = []

    async def flush(self, batch: ClassifiedBatch) -> FlushResult:
        self.batches.append(batch)
        return FlushResult(
            len(self.batches), batch.messages, len(batch.valid), 0, len(batch.rejected)
        )


def _relayed(offset: int, raw: bytes) -> SourceMessage:
    return SourceMessage("usage.events.flushes", 0, offset, b"2", raw)


def test_the_store_owner_counts_genuine_packages_and_none_of_a_refused_one() -> None:
    sink, metrics = _Sink(), Metrics()
    owner = StoreOwnerPipeline(cast(ClickHouseSink, sink), Positions(), metrics, events_topic=TOPIC)
    forged_topic = _broken(_set(("topic",), "other.events"))
    forged_counts = _broken(_set(("events",), 5))
    genuine = encode_package(_outcomes())
    result = asyncio.run(
        owner.handle(
            [
                _relayed(0, b"not json"),
                _relayed(1, forged_topic),
                _relayed(2, forged_counts),
                _relayed(3, genuine),
            ]
        )
    )
    assert result is not None
    [batch] = sink.batches
    assert batch.messages == 4
    assert [v.source.offset for v in batch.valid] == [40, 42]
    assert [r.source.offset for r in batch.rejected] == [41, 43]
    assert dict(metrics.packages_rejected) == {
        "invalid_json": 1,
        "unknown_topic": 1,
        "counts_mismatch": 1,
    }
    assert metrics.events_in.value == 4
    assert owner.positions.next_offset(TOPIC, 2) == 44


def test_a_batch_of_refused_packages_flushes_nothing() -> None:
    sink, metrics = _Sink(), Metrics()
    owner = StoreOwnerPipeline(cast(ClickHouseSink, sink), Positions(), metrics, events_topic=TOPIC)
    assert asyncio.run(owner.handle([_relayed(0, b"{}"), _relayed(1, b"[]")])) is None
    assert sink.batches == []
    assert dict(metrics.packages_rejected) == {"unsupported_version": 1, "wrong_type": 1}
    assert owner.positions.next_offset(TOPIC, 2) is None


def test_a_large_batch_of_one_partition_goes_out_as_packages_under_the_size_limit() -> None:
    """20,000 events with long ids on one partition (about 6 MB of package): every
    package under the budget, and decoded in order they are exactly the messages."""
    long = "x" * 120
    raws = [
        _event(
            n % 100,
            event_id=f"7d3f0f4e-5b8e-4a53-9d55-{n:012d}",
            user_id=f"{long}-{n}",
            conversation_id=long,
        )
        if n % 50
        else b"{broken"
        for n in range(20_000)
    ]
    messages = [SourceMessage(TOPIC, 3, 1000 + n, None, raw) for n, raw in enumerate(raws)]
    published: list[tuple[bytes, bytes]] = []

    async def publish(packages: Any) -> None:
        published.extend(packages)

    class NoLetters:
        async def publish(self, letters: Any) -> None:
            return None

    pipeline = ProcessorPipeline(NoLetters(), publish, Metrics())
    asyncio.run(pipeline.handle(messages))

    sizes = [len(value) for _, value in published]
    assert sum(sizes) > 5 * PACKAGE_MAX_BYTES  # the batch did need splitting
    assert max(sizes) <= PACKAGE_MAX_BYTES
    assert {key for key, _ in published} == {b"3"}
    decoded = [item for _, value in published for item in decode_package(value)]
    assert [source.offset for source, _ in decoded] == [m.offset for m in messages]
    expected = [classify(m.value) for m in messages]
    assert [outcome for _, outcome in decoded] == expected


def test_the_store_owner_flushes_whenever_its_event_limit_is_admitted() -> None:
    """Seven packages of three messages read at once, at most five events a flush:
    flushes of six, six, six and three messages (whole packages), in offset order."""
    sink, metrics = _Sink(), Metrics()
    owner = StoreOwnerPipeline(
        cast(ClickHouseSink, sink), Positions(), metrics, events_topic=TOPIC,
        max_events_per_flush=5,
    )  # fmt: skip
    packages = []
    for number in range(7):
        raws = [_event(3 * number + i) for i in range(3)]
        outcomes = [
            (SourceMessage(TOPIC, 1, 3 * number + i, None, raw), classify(raw))
            for i, raw in enumerate(raws)
        ]
        packages.append(_relayed(number, encode_package(outcomes)))
    result = asyncio.run(owner.handle(packages))
    assert [batch.messages for batch in sink.batches] == [6, 6, 6, 3]
    offsets = [v.source.offset for batch in sink.batches for v in batch.valid]
    assert offsets == list(range(21))
    assert result == FlushResult(4, 3, 3, 0, 0)
    assert owner.positions.next_offset(TOPIC, 1) == 21


def _package_of(partition: int, offsets: list[int]) -> bytes:
    outcomes = [
        (SourceMessage(TOPIC, partition, offset, None, _event(offset)), classify(_event(offset)))
        for offset in offsets
    ]
    return encode_package(outcomes)


def test_the_store_owner_accepts_a_jump_only_when_the_broker_has_no_record_in_it() -> None:
    """Offsets 3-4 and 8 hold no committed record (markers, an aborted record); the
    broker has a record at 12, which no package carried."""
    asked: list[tuple[int, int]] = []

    async def first_readable(topic: str, partition: int, start: int, up_to: int) -> int | None:
        asked.append((start, up_to))
        return 12 if start >= 11 else up_to

    sink = _Sink()
    owner = StoreOwnerPipeline(
        cast(ClickHouseSink, sink), Positions({(TOPIC, 1): 3}), Metrics(), events_topic=TOPIC,
        first_readable=first_readable,
    )  # fmt: skip
    packages = [_relayed(0, _package_of(1, [5, 6, 7])), _relayed(1, _package_of(1, [9, 10]))]
    asyncio.run(owner.handle(packages))
    [batch] = sink.batches
    [partition_range] = batch.ranges.values()
    # the range starts at the ledger's 3, not at the first message; 8 lies inside it
    assert (partition_range.first_offset, partition_range.last_offset) == (3, 10)
    assert (partition_range.messages, batch.skipped_offsets) == (5, 3)
    assert asked == [(3, 5), (8, 9)]

    with pytest.raises(LedgerGapError, match="committed record at 12"):
        asyncio.run(owner.handle([_relayed(2, _package_of(1, [13]))]))
    assert len(sink.batches) == 1
