"""The replay key: msgspec's fast path gives the key orjson's full decode gives.

`key_for` reads only the agency_id with msgspec and leaves every other line to orjson.
The reference below is the previous definition (decode the whole line with orjson). They
must agree on the golden corpus (valid and invalid events of every kind), on a seeded
stream of mutated lines, and on hand-picked edge cases; the one documented difference is
a number beyond the float range, which orjson refuses and msgspec reads.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import orjson
import pytest

from metering.replay import key_for, read_lines

CORPUS = Path(__file__).resolve().parents[1] / "replay" / "corpus.jsonl"


def reference_key(line: bytes) -> bytes | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict):
        agency = document.get("agency_id")
        if isinstance(agency, str):
            return agency.encode("utf-8")
    return None


def test_every_corpus_line_gets_the_reference_key() -> None:
    lines = list(read_lines(CORPUS))
    assert len(lines) > 3000
    assert {key_for(line) for line in lines} - {None}  # the corpus has keys
    assert [key_for(line) for line in lines] == [reference_key(line) for line in lines]


_ALPHABET = b'{}[]":,.-+eE0123456789 \t\\/ubnrtfalsetrue\x00\x01\x7f\xc3\xa9\xff'


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    base = list(read_lines(CORPUS))[:500]
    out = []
    for _ in range(count):
        line = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(line) + 1)
            byte = _ALPHABET[rng.randrange(len(_ALPHABET))]
            roll = rng.random()
            if roll < 0.4:
                line[at : at + 1] = bytes([byte])
            elif roll < 0.7:
                line.insert(at, byte)
            else:
                del line[at : at + 1]
        out.append(bytes(line))
    return out


def _beyond_float_range(line: bytes) -> bool:
    """The documented difference: a number orjson refuses as too large for a float."""
    found: list[bool] = []

    def number(text: str) -> float:
        value = float(text)
        found.append(math.isinf(value))
        return value

    def constant(text: str) -> float:
        raise ValueError(text)  # NaN and Infinity are not JSON

    try:
        json.loads(line, parse_float=number, parse_int=number, parse_constant=constant)
    except ValueError:
        return False
    return any(found)


def test_mutated_lines_get_the_reference_key() -> None:
    lines = _mutations(seed=13, count=30_000)
    different = [
        line
        for line in lines
        if key_for(line) != reference_key(line) and not _beyond_float_range(line)
    ]
    assert different == []
    # The mutations reach both sides: many keep a key, many lose it.
    keyed = sum(1 for line in lines if key_for(line) is not None)
    assert 0.2 * len(lines) < keyed < 0.9 * len(lines)


@pytest.mark.parametrize(
    "line",
    [
        b'{"agency\\u005fid":"a"}',  # an escaped field name
        b'{"agency_id":"a\\u00e9"}',
        b'{"agency_id":"\\ud83d\\ude00"}',  # a surrogate pair
        b'{"agency_id":"\\ud800"}',  # a lone surrogate
        b'{"agency_id":"a","x":"\\ud800"}',
        b'{"agency_id":"a","x":"\xff"}',  # invalid UTF-8 in a skipped field
        b'{"agency_id":"a","x":"\xc3\xa9"}',
        b'\xef\xbb\xbf{"agency_id":"a"}',  # a byte order mark
        b'{"agency_id":"a"}\x00',
        b' \t\r{"agency_id":"a"} ',
        b'{"agency_id":"a","x":"\x1f"}',  # a raw control character
        b'{"agency_id":"a","x":01}',
        b'{"agency_id":"a","x":.1}',
        b'{"agency_id":"a","x":NaN}',
        b'{"agency_id":"a","x":Infinity}',
        b'{"agency_id":"a","x":123456789012345678901234567890}',
        b'{"agency_id":"a","x":1e308}',
        b'{"agency_id":"a","x":1.5e-400}',
        b'{"agency_id":"a","x":"\\U0041"}',
        b'{"agency_id":"a","x":[1,]}',
        b'{"agency_id":"a",}',
        b'{"agency_id":"a","agency_id":"b"}',  # the last one wins in both
        b'{"agency_id":"a","agency_id":null}',
        b'{"agency_id":"a","agency_id":1}',
        b'{"agency_id":"a","x":{"agency_id":"b"}}',
        b'{"Agency_id":"a"}',
        b"{}",
        b"null",
        b'{"agency_id":"a","x":' + b"[" * 500 + b"]" * 500 + b"}",
        b'{"agency_id":"a","x":' + b"[" * 1023 + b"]" * 1023 + b"}",  # deeper than msgspec
        b'{"agency_id":"a","x":' + b"[" * 1100 + b"]" * 1100 + b"}",  # deeper than orjson
    ],
)
def test_edge_cases_get_the_reference_key(line: bytes) -> None:
    assert key_for(line) == reference_key(line)


@pytest.mark.parametrize(
    "line",
    [
        b'{"agency_id":"a","x":1e999}',
        b'{"agency_id":"a","x":-1E400}',
        b'{"agency_id":"a","x":' + b"1" * 400 + b"}",
    ],
)
def test_a_number_beyond_the_float_range_keeps_its_key(line: bytes) -> None:
    # Valid JSON text (RFC 8259 sets no limit), refused by orjson: msgspec keys it.
    assert reference_key(line) is None
    assert _beyond_float_range(line)
    assert key_for(line) == b"a"


class _RecordingProducer:
    """Stands in for confluent-kafka's Producer: records what `Publisher._send` hands it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None]] = []

    def produce(self, topic: str, value: bytes, key: str | None, *_: object) -> None:
        self.sent.append((value, None if key is None else key.encode()))

    def poll(self, timeout: float) -> int:
        return 0


def test_the_publishers_inlined_key_is_key_for() -> None:
    # `Publisher._send` inlines the fast path of `key_for`: every line it sends must get
    # the same key, and empty lines none at all.
    from metering.replay import Publisher

    lines = [*read_lines(CORPUS), *_mutations(seed=29, count=5_000), b"\xc3\xa9", b"{}"]
    publisher = object.__new__(Publisher)
    producer = _RecordingProducer()
    publisher.topic = "t"
    publisher.queued = 0
    publisher._producer = producer  # type: ignore[assignment]
    block = [line for pair in zip(lines, [b""] * len(lines), strict=True) for line in pair]
    assert publisher._send([block[:7], block[7:]], None) == len(lines)
    assert producer.sent == [(line, key_for(line)) for line in lines]
