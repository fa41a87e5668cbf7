"""The canonical flush content hash and the chain (`store.ledger.chain`): fixed values
for a fixed tiny flush, so a change of the definition cannot pass unnoticed."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

from store.ledger.chain import (
    ChainedEvent,
    ChainedRange,
    ChainedRejection,
    chain_sha256,
    content_lines,
    content_sha256,
    epoch_milliseconds,
)

EVENTS = [
    ChainedEvent(
        "b0000000-0000-4000-8000-000000000002",
        epoch_milliseconds(datetime(2026, 10, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        "chatgpt-gov",
        "fed-gsa",
        "federal",
        "user-\u00e9",
        "gpt-4o",
        "chat",
        10,
        20,
        "usage.events",
        0,
        7,
    ),
    ChainedEvent(
        "a0000000-0000-4000-8000-000000000001",
        1_790_000_000_000,
        "chatgpt-gov",
        "state-ca",
        "state",
        "u1",
        "gpt-4o",
        "search",
        1,
        2,
        "usage.events",
        1,
        3,
    ),
]
REJECTIONS = [ChainedRejection("invalid_json", None, None, "usage.events", 0, 8, 5)]
RANGES = [
    ChainedRange("usage.events", 1, 3, 3, 1, 1, 0, 0),
    ChainedRange("usage.events", 0, 6, 8, 3, 1, 1, 1),
]


def test_canonical_text_is_sorted_compact_ascii_json_lines() -> None:
    assert content_lines(EVENTS, REJECTIONS, RANGES) == [
        "govmeter-flush-v1\n",
        'E["a0000000-0000-4000-8000-000000000001",1790000000000,"chatgpt-gov","state-ca",'
        '"state","u1","gpt-4o","search",1,2,"usage.events",1,3]\n',
        'E["b0000000-0000-4000-8000-000000000002",1790856000123,"chatgpt-gov","fed-gsa",'
        '"federal","user-\\u00e9","gpt-4o","chat",10,20,"usage.events",0,7]\n',
        'R["invalid_json",null,null,"usage.events",0,8,5]\n',
        'L["usage.events",0,6,8,3,1,1,1]\n',
        'L["usage.events",1,3,3,1,1,0,0]\n',
    ]


def test_golden_content_and_chain_hash() -> None:
    content = content_sha256(EVENTS, REJECTIONS, RANGES)
    assert (
        content
        == hashlib.sha256("".join(content_lines(EVENTS, REJECTIONS, RANGES)).encode()).hexdigest()
    )
    assert content == GOLDEN_CONTENT
    assert chain_sha256("", content) == hashlib.sha256(content.encode()).hexdigest()
    assert chain_sha256("", content) == GOLDEN_CHAIN


def test_order_of_input_does_not_matter_and_every_field_does() -> None:
    content = content_sha256(EVENTS, REJECTIONS, RANGES)
    assert content_sha256(EVENTS[::-1], REJECTIONS, RANGES[::-1]) == content
    changed = [replace(EVENTS[0], tokens_in=11), *EVENTS[1:]]
    assert content_sha256(changed, REJECTIONS, RANGES) != content
    assert content_sha256(EVENTS, [], RANGES) != content


def test_epoch_milliseconds_floors_to_the_stored_precision() -> None:
    assert epoch_milliseconds(datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC)) == 0
    assert epoch_milliseconds(datetime(1970, 1, 1, 0, 0, 1, 1999, tzinfo=UTC)) == 1001


GOLDEN_CONTENT = "adb8c454c976288dfcc8a28e1797901cf642491653790c7d4373daa32ef8dae5"
GOLDEN_CHAIN = "82a7cf62a033e72593a5b42ae2379ebdde4010caa153934672ff69b9fba6c3f1"
