"""The msgspec fast path gives exactly the values of the pydantic model, or steps aside.

Every case is judged three ways against the full classifier (`classify_fully`,
pydantic the judge): alone (`fast_validate`, one by one), inside a batch large enough
that the column checks and the numpy timestamp reader run (`decide_columns`), and as a
whole flush (`classify_batch` against `assemble_batch` of the full classifier's
outcomes: the same valid events, duplicates, rejections with the same reason and
detail, and ranges).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from schemas.event_columns import EVENT_FIELDS, EventColumns, epoch_ms_of
from schemas.events import UsageEvent
from schemas.fast_path import decide_columns, fast_validate
from schemas.rejections import Reason, Rejection, classify_fully
from streams.batch import ClassifiedBatch, SourceMessage, assemble_batch, classify_batch

CORPUS = Path(__file__).resolve().parents[1] / "replay" / "corpus.jsonl"

BASE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10",
    "occurred_at": "2026-11-02T14:03:12.345Z",
    "tenant": "chatgpt-gov",
    "agency_id": "fed-gsa",
    "agency_level": "federal",
    "user_id": "u-1",
    "conversation_id": "c-1",
    "model": "gpt-4o",
    "tokens_in": 10,
    "tokens_out": 20,
}
# Enough plain rows of each timestamp shape that the batch takes the numpy reader.
FILLER = 40


def corpus_lines() -> list[bytes]:
    return [line.rstrip(b"\r") for line in CORPUS.read_bytes().split(b"\n") if line]


def variant(**changes: object) -> bytes:
    document = dict(BASE)
    for key, value in changes.items():
        if value is ...:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


def model_values(event: UsageEvent) -> dict[str, object]:
    """The model's values as the columns hold them."""
    values = event.model_dump()
    values.pop("schema_version")
    values["occurred_at_ms"] = epoch_ms_of(values.pop("occurred_at"))
    return values


def row_values(columns: EventColumns, row: int) -> dict[str, object]:
    return {name: column[row] for name, column in zip(EVENT_FIELDS, columns.columns(), strict=True)}


def assert_decides_alike(raws: list[bytes]) -> int:
    """Every row the fast path decides equals the model's event; returns how many."""
    decision = decide_columns(raws)
    assert sorted(decision.rows + decision.undecided) == list(range(len(raws)))
    assert decision.rows == sorted(decision.rows)
    for row, index in enumerate(decision.rows):
        full = classify_fully(raws[index])
        assert isinstance(full, UsageEvent), (raws[index][:200], full)
        assert row_values(decision.columns, row) == model_values(full), raws[index][:200]
        assert decision.columns.event(row).model_dump() == full.model_dump()
    return len(decision.rows)


def assert_alone_alike(raw: bytes) -> bool:
    """`fast_validate` alone: None, or the model's event."""
    fast = fast_validate(raw)
    if fast is None:
        return False
    full = classify_fully(raw)
    assert isinstance(full, UsageEvent), (raw[:200], full)
    assert fast.model_dump() == full.model_dump()
    return True


def messages_of(raws: list[bytes], partitions: int = 3) -> list[SourceMessage]:
    return [
        SourceMessage("usage.events", index % partitions, 100 + index, None, raw)
        for index, raw in enumerate(raws)
    ]


def batch_view(batch: ClassifiedBatch) -> dict[str, object]:
    return {
        "valid": [(v.source, v.event.model_dump()) for v in batch.valid],
        "duplicates": [(d.source, d.event.model_dump()) for d in batch.in_batch_duplicates],
        "rejected": [(r.source, r.rejection) for r in batch.rejected],
        "ranges": batch.ranges,
    }


def assert_batch_alike(raws: list[bytes]) -> None:
    """classify_batch equals the flush the full classifier alone gives."""
    messages = messages_of(raws)
    ordered = sorted(messages, key=lambda m: (m.topic, m.partition, m.offset))
    reference = assemble_batch([(m, classify_fully(m.value)) for m in ordered])
    assert batch_view(classify_batch(reversed(messages))) == batch_view(reference)


def with_filler(cases: list[bytes]) -> list[bytes]:
    """The cases among plain events of both timestamp shapes (numpy reads those)."""
    filler = [
        variant(event_id=f"00000000-0000-4000-8000-{n:012d}", occurred_at=stamp)
        for n in range(FILLER)
        for stamp in ("2026-11-02T14:03:12.345Z", "2026-11-02T09:03:12.345-05:00")
    ]
    return filler[:FILLER] + cases + filler[FILLER:]


# -- the golden corpus ---------------------------------------------------------------


def test_fast_path_agrees_on_every_corpus_line_and_decides_the_plain_valid_ones() -> None:
    lines = corpus_lines()
    plain_valid = sum(
        1 for raw in lines if isinstance(classify_fully(raw), UsageEvent) and b"\\u" not in raw
    )
    assert sum(assert_alone_alike(raw) for raw in lines) == plain_valid
    assert assert_decides_alike(lines) == plain_valid
    assert_batch_alike(lines)


# -- cases ------------------------------------------------------------------------------

CASES = [
    variant(),
    variant(feature="file-analysis", extra={"nested": [1, 2]}),
    variant(feature=""),
    variant(feature=...),
    variant(feature=None),
    variant(feature=7),
    variant(schema_version=True),
    variant(schema_version="1"),
    variant(schema_version=1.0),
    variant(schema_version=2),
    variant(schema_version=None),
    variant(schema_version=...),
    variant(tokens_in="12"),
    variant(tokens_in=True),
    variant(tokens_in=12.0),
    variant(tokens_in=-1),
    variant(tokens_in=0, tokens_out=0),
    variant(tokens_in=1_000_000, tokens_out=1_000_000),
    variant(tokens_out=1_000_001),
    variant(tokens_in=2**63),
    variant(tokens_in=2**64),
    variant(tokens_in=10**30),
    variant(tokens_out=None),
    variant(agency_level="county"),
    variant(agency_level="Federal"),
    variant(agency_level="state"),
    variant(agency_level="local"),
    variant(agency_id="-x"),
    variant(agency_id="x-"),
    variant(agency_id="a" * 64),
    variant(agency_id="a" * 65),
    variant(agency_id="fed\ngsa"),
    variant(agency_id="fed-gsa\n"),
    variant(agency_id=""),
    variant(tenant="Chatgpt"),
    variant(tenant="t" * 64),
    variant(tenant="t" * 65),
    variant(tenant="-"),
    variant(tenant="chatgpt\ngov"),
    variant(tenant="chatgpt-gov\n"),
    variant(tenant=""),
    variant(tenant=["chatgpt-gov"]),
    variant(user_id=""),
    variant(user_id="u"),
    variant(user_id="u" * 128),
    variant(user_id="u" * 129),
    variant(user_id="ü" * 128),
    variant(user_id="ü" * 129),
    variant(user_id="😀" * 128),
    variant(user_id="😀" * 129),
    variant(user_id='line\nbreak\ttab "quoted" back\\slash /'),
    variant(user_id="\x7f\x00\x1f"),
    variant(user_id='],["x"],['),
    variant(user_id=12),
    variant(conversation_id="c" * 128),
    variant(conversation_id="c" * 129),
    variant(conversation_id=...),
    variant(model="m" * 64),
    variant(model="m" * 65),
    variant(model=""),
    variant(content=None),
    variant(prompt="x"),
    variant(messages=[]),
    variant(text=""),
    variant(completion={}),
    variant(meta={"content": "x"}),
    variant(event_id="7D3F0F4E-5B8E-4A53-9D55-3F1C2A9E8B10"),
    variant(event_id="7D3F0F4E5B8E4A539D553F1C2A9E8B10"),
    variant(event_id="7d3f0f4e5b8e4a539d553f1c2a9e8b10"),
    variant(event_id="7d3f0f4e-5b8e-4a53-9d55-3F1C2A9E8B10"),
    variant(event_id="12345678-1234-1234-1234-123456789012"),
    variant(event_id="{7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10}"),
    variant(event_id="urn:uuid:7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10"),
    variant(event_id="7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b1g"),
    variant(event_id="7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10\n"),
    variant(event_id="not-a-uuid"),
    variant(event_id=""),
    json.dumps(BASE).encode()[:-1] + b', "tokens_in": 99}',
    json.dumps(BASE).encode()[:-1] + b', "tokens_in": "99"}',
    json.dumps(BASE).encode()[:-1] + b', "event_id": "not-a-uuid"}',
    b'{"event_id": "x", ' + json.dumps(BASE).encode()[1:],
    json.dumps(BASE).encode()[:-1] + b', "content": "x", "content": null}',
    json.dumps(BASE).encode()[:-1] + b', "\\u0063ontent": "x"}',
    json.dumps(dict(BASE, user_id="caf\u00e9")).encode(),  # \u00e9: left to the full path
    json.dumps(dict(BASE, user_id="café"), ensure_ascii=False).encode(),
    json.dumps(dict(BASE, user_id="u\\/1")).encode(),
    variant(note="caf\xe9").replace(b"caf\\u00e9", b"caf\xe9"),  # not UTF-8
    b"[1, 2]",
    b"null",
    b'"text"',
    b"{}",
    b"",
    b" ",
    b"\xff\xfe",
    b"\xef\xbb\xbf" + json.dumps(BASE).encode(),
    json.dumps(BASE).encode() + b" trailing",
    json.dumps(BASE).encode() + b"   ",
    json.dumps(BASE).encode() + b"\n",
    json.dumps(BASE, indent=2).encode(),
    variant(pad="p" * (65_536 - len(variant(pad="")))),
    variant(pad="p" * (65_537 - len(variant(pad="")))),
]


def _stamps() -> list[str]:
    """Timestamps at every edge of the calendar, the clock, the offset and the range."""
    stamps = [
        "2026-11-02T14:03:12.345Z",
        "2026-11-02T14:03:12Z",
        "2026-11-02T14:03:12.3Z",
        "2026-11-02T14:03:12.34Z",
        "2026-11-02T14:03:12.3456Z",
        "2026-11-02T14:03:12.999999Z",
        "2026-11-02T23:59:59.9999999Z",
        "2026-11-02T14:03:12.123456789+05:45",
        "2026-11-02T14:03:12.1234567891Z",
        "2026-11-02T14:03:12",
        "2026-11-02T14:03:12.345",
        "2026-11-02",
        "2026-11-02t14:03:12.345z",
        "2026-11-02 14:03:12.345Z",
        "2026-11-02T14:03:12.345+00:00",
        "2026-11-02T14:03:12.345-00:00",
        "2026-11-02T14:03:12.345+23:59",
        "2026-11-02T14:03:12.345-23:59",
        "2026-11-02T14:03:12.345+24:00",
        "2026-11-02T14:03:12.345+05:60",
        "2026-11-02T14:03:12.345*05:00",
        "2026-11-02T14:03:12.345+0500",
        "2026-11-02T14:03:12,345Z",
        "2026-11-02T24:00:00.000Z",
        "2026-11-02T23:60:00.000Z",
        "2026-11-02T23:59:60.000Z",
        "2026-11-02T23:59:59.999Z",
        "2026-11-02T00:00:00.000Z",
        "2026-00-02T00:00:00.000Z",
        "2026-13-02T00:00:00.000Z",
        "2026-11-00T00:00:00.000Z",
        "2026-1a-02T00:00:00.000Z",
        "2026-11-02T00:00:0a.000Z",
        "2026/11/02T00:00:00.000Z",
        "\uff12026-11-02T00:00:00.000Z",  # a fullwidth digit
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:00:00.000Z",
        "1970-01-01T00:30:00.000+01:00",
        "1969-12-31T23:30:00.000-01:00",
        "1969-12-31T23:59:59.999+00:00",
        "2149-06-05T23:59:59.999Z",
        "2149-06-06T00:00:00.000Z",
        "2149-06-05T23:30:00.000-01:00",
        "2149-06-06T00:30:00.000+01:00",
        "9999-12-31T23:59:59.999Z",
        "9999-12-31T23:00:00.000-05:00",
        "0000-01-01T00:00:00.000Z",
        "0001-01-01T00:30:00.000+01:00",
        "0001-01-01T00:00:00.000-01:00",
    ]
    for year in (2000, 2026, 2028, 2100):
        for month in range(1, 13):
            for day in (28, 29, 30, 31, 32):
                stamps.append(f"{year}-{month:02d}-{day:02d}T12:00:00.000Z")
                stamps.append(f"{year}-{month:02d}-{day:02d}T23:30:00.000-05:00")
    return stamps


STAMPS = _stamps()
ALL_CASES = CASES + [variant(occurred_at=stamp) for stamp in STAMPS]


@pytest.mark.parametrize("raw", ALL_CASES)
def test_fast_path_alone_agrees_with_the_full_classifier(raw: bytes) -> None:
    assert_alone_alike(raw)
    assert_decides_alike([raw])


def test_fast_path_in_a_batch_agrees_with_the_full_classifier_on_every_case() -> None:
    raws = with_filler(ALL_CASES)
    # Plain rows, the valid cases and every valid timestamp: all decided by the fast path
    # except spellings it leaves to the full classifier (escapes, undecodable bytes).
    decided = assert_decides_alike(raws)
    assert decided == sum(
        1
        for raw in raws
        if isinstance(classify_fully(raw), UsageEvent)
        and b"\\u" not in raw
        and not raw.startswith(b"\xef\xbb\xbf")
    )
    assert_batch_alike(raws)


def test_timestamps_of_both_usual_shapes_are_read_by_numpy_as_the_model_reads_them() -> None:
    # Every instant of a leap day, an offset crossing midnight, both range edges.
    start = datetime(2028, 2, 28, 22, 0, tzinfo=UTC)
    stamps: list[str] = []
    for minutes in range(0, 60 * 28, 7):
        moment = start + timedelta(minutes=minutes, milliseconds=minutes * 13 % 1000)
        stamps.append(moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        for hours in (-10, -3.5, 5.75, 14):
            zone = timezone(timedelta(hours=hours))
            stamps.append(moment.astimezone(zone).isoformat(timespec="milliseconds"))
    raws = [variant(occurred_at=stamp) for stamp in stamps]
    assert assert_decides_alike(raws) == len(raws)


def test_fast_path_decides_a_plain_valid_event() -> None:
    assert fast_validate(variant()) is not None
    assert len(decide_columns([variant()]).rows) == 1


def test_nothing_decided_of_nothing() -> None:
    decision = decide_columns([])
    assert (len(decision.columns), decision.rows, decision.undecided) == (0, [], [])


# -- generated mutations --------------------------------------------------------------

_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    1_000_000,
    1_000_001,
    2**64,
    1.0,
    12.5,
    "",
    "1",
    "x",
    "federal",
    "state",
    "chat",
    "a" * 64,
    "a" * 65,
    "a" * 129,
    "ü",
    "😀",
    "a\nb",
    "-a",
    "a-",
    "A",
    [],
    {},
    [1],
    {"content": 1},
    "2026-11-02T14:03:12.345Z",
    "2026-11-02T14:03:12.345+05:30",
    "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10",
    "7D3F0F4E5B8E4A539D553F1C2A9E8B10",
]
_NAMES = [*BASE, "feature", "content", "prompt", "extra", "Tokens_in", "tokens_in "]


def _mutated(rng: random.Random, serial: int) -> bytes:
    document: dict[str, Any] = dict(
        BASE, event_id=f"00000000-0000-4000-8000-{rng.randrange(serial + 1):012d}"
    )
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        name = rng.choice(_NAMES)
        action = rng.random()
        if action < 0.15:
            document.pop(name, None)
        elif action < 0.55:
            document[name] = rng.choice(_VALUES)
        elif name == "occurred_at" or action < 0.8:
            stamp = list(str(document.get("occurred_at") or BASE["occurred_at"]))
            at = rng.randrange(len(stamp))
            stamp[at] = rng.choice("0123456789-+:.TZtz 9")
            document["occurred_at"] = "".join(stamp)
        else:
            text = str(document.get(name, "v"))
            document[name] = text + rng.choice(("\n", '"', "\\", "\x7f", "é", "x" * 60))
    raw = json.dumps(document, ensure_ascii=rng.random() < 0.5).encode()
    if rng.random() < 0.05:  # a repeated key: the last one counts
        raw = raw[:-1] + b', "tokens_in": ' + rng.choice((b"5", b'"5"', b"-5")) + b"}"
    if rng.random() < 0.03:
        raw = raw[: rng.randrange(len(raw))]
    return raw


@pytest.mark.parametrize("seed", range(6))
def test_generated_mutations_agree_with_the_full_classifier(seed: int) -> None:
    rng = random.Random(f"fast-path/{seed}")
    raws = [_mutated(rng, serial) for serial in range(600)]
    assert_decides_alike(raws)
    assert_batch_alike(raws)


def test_a_timestamp_past_the_last_year_datetime_holds_is_a_schema_violation() -> None:
    # astimezone overflows on 9999-12-31 west of UTC: a rejection, never a crash.
    for stamp in ("9999-12-31T23:00:00.000-05:00", "0001-01-01T00:30:00+01:00"):
        outcome = classify_fully(variant(occurred_at=stamp))
        assert outcome == Rejection(
            Reason.SCHEMA_VIOLATION,
            "occurred_at: Value error, must lie between 1970-01-01 and 2149-06-05 (UTC)",
            BASE["event_id"],
            BASE["agency_id"],
        )
