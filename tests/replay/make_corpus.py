#!/usr/bin/env python3
"""Build the golden replay corpus and its expected rollups.

Writes, next to this file:

* ``corpus.jsonl``  -- the raw event log (bytes, one message per line; it holds
  invalid UTF-8 on purpose, so read it in binary mode);
* ``expected.json`` -- what the pipeline must produce after replaying it.

The expectation comes only from this script's own bookkeeping: every line is
built here together with its intended fate (valid, or rejected with one
reason), and the rollups are a plain aggregation of the valid lines that win
deduplication (first valid occurrence of an event_id in file order, UUIDs
compared in lower case). No project code is imported.

Deterministic: same seed, same bytes. Run ``python tests/replay/make_corpus.py``.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 20261101
HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.jsonl"
EXPECTED = HERE / "expected.json"

MAX_MESSAGE_BYTES = 64 * 1024  # "over 64 KiB" means > 65,536 bytes
REASONS = (
    "too_large",
    "invalid_json",
    "content_not_allowed",
    "unsupported_schema_version",
    "schema_violation",
)

N_BULK = 3400  # seeded valid events, spread over the four days
N_LATE = 60  # valid events for the first two days, appended at the very end
FIRST_DAY = datetime(2026, 10, 30, tzinfo=UTC)
N_DAYS = 4  # 2026-10-30 .. 2026-11-02: crosses the Oct -> Nov boundary

rng = random.Random(SEED)

# --------------------------------------------------------------------------
# bookkeeping


@dataclass
class Line:
    raw: bytes
    kind: str  # "valid", "rejected" or "blank" (an empty line, not replayed)
    note: str
    reason: str | None = None
    # for valid lines: the normalised facts the rollups are built from
    event_id: str | None = None  # canonical (lower-case) UUID
    day: date | None = None  # UTC day of occurred_at
    tenant: str | None = None
    agency_id: str | None = None
    agency_level: str | None = None
    user_id: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    expect_duplicate: bool = False  # intended as a re-send; checked at the end
    instant: datetime | None = None  # stored UTC instant (bulk lines only)
    markers: list[str] = field(default_factory=list)


LOG: list[Line] = []
_marker_seq = 0


def new_marker() -> str:
    """A unique string that may only ever appear inside a content field."""
    global _marker_seq
    _marker_seq += 1
    return f"SECRET-CONTENT-{_marker_seq}-do-not-store"


def new_id() -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def dump(obj: Any, style: str = "default") -> bytes:
    """Serialise one message; a few styles so not every line looks alike."""
    if style == "compact":
        text = json.dumps(obj, separators=(",", ":"))
    elif style == "shuffled" and isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        text = json.dumps(dict(items))
    elif style == "utf8":
        text = json.dumps(obj, ensure_ascii=False)
    else:
        text = json.dumps(obj)
    return text.encode("utf-8")


# --------------------------------------------------------------------------
# the world: tenants, agencies, users, models

GOV, ENT = "chatgpt-gov", "chatgpt-enterprise"

FEDERAL = [
    "fed-gsa",
    "fed-va",
    "fed-hhs",
    "fed-dod-disa",
    "fed-doe",
    "fed-usda",
    "fed-nasa",
    "fed-opm",
    "fed-treasury",
    "fed-dhs-cisa",
    "fed-ssa",
    "fed-epa",
]
STATE = [
    "state-ca-dmv",
    "state-tx-hhsc",
    "state-ny-its",
    "state-wa-doh",
    "state-fl-dcf",
    "state-il-doit",
    "state-pa-dhs",
    "state-oh-das",
    "state-ga-gta",
    "state-nc-dit",
    "state-mi-dtmb",
    "state-va-vita",
    "state-co-oit",
    "state-ut-dts",
]
LOCAL = [
    "local-nyc-oti",
    "local-la-ita",
    "local-chicago-doit",
    "local-austin-311",
    "local-seattle-its",
    "local-boston-doit",
    "local-denver-tech",
    "local-sf-dt",
    "local-phoenix-ito",
    "local-miami-dade-its",
    "local-king-county",
    "local-cook-county",
    "local-fairfax-dit",
]
AGENCY_64 = "state-" + "x" * 50 + "-edge-64"  # longest legal agency_id
assert len(AGENCY_64) == 64
AGENCY_1 = "7"  # shortest legal agency_id
PROBE = "local-tz-probe"  # receives only the hand-written timestamp edge cases

LEVEL: dict[str, str] = {}
for _a in FEDERAL:
    LEVEL[_a] = "federal"
for _a in [*STATE, AGENCY_64]:
    LEVEL[_a] = "state"
for _a in [*LOCAL, AGENCY_1, PROBE]:
    LEVEL[_a] = "local"

# agencies present in both tenants (same agency_level in each)
BOTH = {"fed-gsa", "fed-va", "state-ca-dmv", "state-tx-hhsc", "local-nyc-oti", "local-austin-311"}
ENTERPRISE_ONLY = {
    "fed-nasa",
    "state-il-doit",
    "state-co-oit",
    "state-ut-dts",
    "local-sf-dt",
    "local-seattle-its",
    "local-king-county",
    AGENCY_1,
}
PAIRS: list[tuple[str, str]] = []  # (tenant, agency_id) used by the bulk
for _a in [*FEDERAL, *STATE, *LOCAL, AGENCY_64, AGENCY_1]:
    if _a in BOTH:
        PAIRS += [(GOV, _a), (ENT, _a)]
    elif _a in ENTERPRISE_ONLY:
        PAIRS.append((ENT, _a))
    else:
        PAIRS.append((GOV, _a))

MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "gpt-5", "gpt-5-mini"]
MODEL_64 = "ft:gpt-4o-2024-08-06:agency-fine-tune:" + "m" * 26  # longest legal model
assert len(MODEL_64) == 64
FEATURES = ["chat", "chat", "chat", "voice", "canvas", "deep_research", "file_search"]

# 300 pseudonymous users, each with a home (tenant, agency); every pair gets one
USERS: list[tuple[str, str, str]] = []  # (user_id, tenant, agency_id)
for _i in range(300):
    _t, _a = PAIRS[_i] if _i < len(PAIRS) else rng.choice(PAIRS)
    USERS.append((f"u-{rng.getrandbits(48):012x}", _t, _a))
USERS_BY_PAIR: dict[tuple[str, str], list[str]] = defaultdict(list)
USERS_BY_TENANT: dict[str, list[str]] = defaultdict(list)
for _u, _t, _a in USERS:
    USERS_BY_PAIR[(_t, _a)].append(_u)
    USERS_BY_TENANT[_t].append(_u)
PAIR_WEIGHTS = [rng.choice([1, 1, 2, 3, 5, 8]) for _ in PAIRS]

OFFSETS = ["+01:00", "+02:00", "+05:30", "+09:00", "-04:00", "-05:00", "-07:00", "-10:00", "+00:00"]

# --------------------------------------------------------------------------
# building events


def fmt_ts(instant: datetime, offset: str, digits: int) -> tuple[str, datetime]:
    """Render a UTC instant with the given offset ("Z" or "+hh:mm") and number
    of fractional digits; return the text and the instant as stored (ms)."""
    assert instant.tzinfo is UTC
    micros = instant.microsecond
    frac = f"{micros:06d}"[:digits]
    shown = instant.replace(microsecond=int(frac.ljust(6, "0")) if digits else 0)
    stored = shown.replace(microsecond=shown.microsecond // 1000 * 1000)
    if offset == "Z":
        local, suffix = shown, "Z"
    else:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])) * sign
        local, suffix = shown + delta, offset
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if digits else "") + suffix
    return text, stored


def event(
    tenant: str,
    agency_id: str,
    user_id: str,
    occurred_at: str,
    tokens_in: int,
    tokens_out: int,
    *,
    model: str | None = None,
    feature: str | None = None,
    event_id: str | None = None,
    conversation_id: str | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id or new_id(),
        "occurred_at": occurred_at,
        "tenant": tenant,
        "agency_id": agency_id,
        "agency_level": LEVEL[agency_id],
        "user_id": user_id,
        "conversation_id": conversation_id or f"conv-{rng.getrandbits(64):016x}",
        "model": model or rng.choice(MODELS),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
    }
    if feature is not None:
        obj["feature"] = feature
    return obj


def valid(
    obj: dict[str, Any],
    day: date | None,
    note: str,
    *,
    raw: bytes | None = None,
    style: str = "default",
    duplicate: bool = False,
) -> Line:
    return Line(
        raw=raw if raw is not None else dump(obj, style),
        kind="valid",
        note=note,
        event_id=obj["event_id"].lower(),
        day=day,
        tenant=obj["tenant"],
        agency_id=obj["agency_id"],
        agency_level=obj["agency_level"],
        user_id=obj["user_id"],
        tokens_in=obj["tokens_in"],
        tokens_out=obj["tokens_out"],
        expect_duplicate=duplicate,
    )


def rejected(raw: bytes | str, reason: str, note: str, markers: list[str] | None = None) -> Line:
    assert reason in REASONS
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    return Line(raw=raw, kind="rejected", reason=reason, note=note, markers=markers or [])


def base(**overrides: Any) -> dict[str, Any]:
    """A valid event (fresh event_id) for a random bulk user, to be broken."""
    user, tenant, agency = rng.choice(USERS)
    obj = event(
        tenant, agency, user, "2026-11-01T12:00:00Z", rng.randint(1, 999), rng.randint(1, 999)
    )
    obj.update(overrides)
    return obj


def random_tokens() -> tuple[int, int]:
    r = rng.random()
    if r < 0.01:
        return 0, rng.randint(0, 50)
    if r < 0.02:
        return rng.randint(1, 50), 0
    if r < 0.03:
        return rng.randint(5000, 120_000), rng.randint(100, 16_000)
    return rng.randint(1, 4000), rng.randint(1, 2500)


def bulk_event(start: datetime, span: timedelta) -> Line:
    tenant, agency = rng.choices(PAIRS, weights=PAIR_WEIGHTS)[0]
    if rng.random() < 0.9:
        user = rng.choice(USERS_BY_PAIR[(tenant, agency)])
    else:  # someone helping out another agency of the same tenant
        user = rng.choice(USERS_BY_TENANT[tenant])
    instant = start + timedelta(microseconds=rng.randrange(int(span.total_seconds() * 1e6)))
    offset = "Z" if rng.random() < 0.8 else rng.choice(OFFSETS)
    digits = rng.choice([0, 0, 0, 3, 3, 3, 3, 1, 2, 4, 5, 6])
    text, stored = fmt_ts(instant, offset, digits)
    if digits > 3 and stored.strftime("%H:%M:%S.%f") == "23:59:59.999000":
        # keep rounding-vs-truncation of sub-ms digits irrelevant to the day
        text, stored = fmt_ts(instant, offset, 3)
    tin, tout = random_tokens()
    feature = None if rng.random() < 0.5 else rng.choice(FEATURES)
    obj = event(tenant, agency, user, text, tin, tout, feature=feature)
    if rng.random() < 0.03:
        obj["client"] = {"app": "web", "build": f"{rng.randint(100, 999)}"}
    style = rng.choice(["default", "default", "compact", "shuffled"])
    line = valid(obj, stored.date(), "bulk", style=style)
    line.instant = stored
    return line


# --------------------------------------------------------------------------
# 1. seeded bulk, roughly in time order with some local disorder

bulk = [bulk_event(FIRST_DAY, timedelta(days=N_DAYS)) for _ in range(N_BULK)]
bulk.sort(key=lambda ln: ln.instant or FIRST_DAY)
for _i in range(0, len(bulk) - 1):
    if rng.random() < 0.15:  # producers batch and retry: small local reordering
        _j = min(len(bulk) - 1, _i + rng.randint(1, 8))
        bulk[_i], bulk[_j] = bulk[_j], bulk[_i]
LOG.extend(bulk)


def insert_random(line: Line, lo: int = 0, hi: int | None = None) -> int:
    hi = len(LOG) if hi is None else min(hi, len(LOG))
    pos = rng.randint(lo, hi)
    LOG.insert(pos, line)
    return pos


def position(line: Line) -> int:
    return next(i for i, ln in enumerate(LOG) if ln is line)


# --------------------------------------------------------------------------
# 2. crafted valid events

# 2a. timestamp edge cases: (occurred_at as sent, UTC day it belongs to)
TIMESTAMP_CASES = [
    ("2026-10-31T20:30:00-05:00", "2026-11-01"),  # local Oct 31, UTC November
    ("2026-11-01T00:30:00+02:00", "2026-10-31"),  # local Nov 1, UTC October
    ("2026-11-01T23:59:59.999+00:00", "2026-11-01"),
    ("2026-11-02T00:00:00.000Z", "2026-11-02"),
    ("2026-10-31T23:59:59.999Z", "2026-10-31"),
    ("2026-11-01T00:00:00Z", "2026-11-01"),
    ("2026-10-31T19:00:00-05:00", "2026-11-01"),  # exactly midnight UTC
    ("2026-10-31T18:59:59.999-05:00", "2026-10-31"),
    ("2026-11-01T05:29:59.999+05:30", "2026-10-31"),
    ("2026-11-01T05:30:00+05:30", "2026-11-01"),
    ("2026-11-01T13:59:59+14:00", "2026-10-31"),
    ("2026-10-31T12:00:00-12:00", "2026-11-01"),
    ("2026-11-02T09:00:00+09:00", "2026-11-02"),
    ("2026-11-02T08:59:59.5+09:00", "2026-11-01"),
    ("2026-10-30T00:00:00+00:00", "2026-10-30"),
    ("2026-10-31T00:00:00.000+01:00", "2026-10-30"),
    ("2026-10-30T21:15:00-03:00", "2026-10-31"),
    # fractional seconds, 1 to 6 digits; sub-ms digits never move the day here
    ("2026-11-01T00:00:00.5Z", "2026-11-01"),
    ("2026-11-01T00:00:00.25Z", "2026-11-01"),
    ("2026-10-31T23:59:59.125Z", "2026-10-31"),
    ("2026-10-31T23:59:59.9984Z", "2026-10-31"),
    ("2026-10-31T23:59:59.99812Z", "2026-10-31"),
    ("2026-10-31T23:59:59.998765Z", "2026-10-31"),
    ("2026-11-01T08:59:59.9981+09:00", "2026-10-31"),
    ("2026-10-31T19:00:00.000001-05:00", "2026-11-01"),
    ("2026-11-02T23:59:59.998999Z", "2026-11-02"),
]
probe_users = [f"probe-{i}" for i in range(5)]
for _i, (_ts, _day) in enumerate(TIMESTAMP_CASES):
    # all of them in one small agency, so its daily rows pin the day logic ...
    _obj = event(GOV, PROBE, probe_users[_i % 5], _ts, 100 + _i, 10 + _i, model="gpt-4o")
    insert_random(valid(_obj, date.fromisoformat(_day), f"timestamp edge {_ts}"))
    # ... and a copy in a regular agency as part of normal traffic
    _u, _t, _a = rng.choice(USERS)
    _obj = event(_t, _a, _u, _ts, rng.randint(1, 900), rng.randint(1, 900))
    insert_random(valid(_obj, date.fromisoformat(_day), f"timestamp edge {_ts} (regular agency)"))

# 2b. field boundary values that are valid
EDGE_TS, EDGE_DAY = "2026-11-01T15:00:00Z", date(2026, 11, 1)
FIELD_EDGES: list[tuple[str, dict[str, Any]]] = [
    ("tokens_in 0, tokens_out 0", {"tokens_in": 0, "tokens_out": 0}),
    ("tokens_in 1,000,000", {"tokens_in": 1_000_000, "tokens_out": 1}),
    ("tokens_out 1,000,000", {"tokens_in": 1, "tokens_out": 1_000_000}),
    ("tokens both 1,000,000", {"tokens_in": 1_000_000, "tokens_out": 1_000_000}),
    ("model of 64 characters", {"model": MODEL_64}),
    ("conversation_id of 128 characters", {"conversation_id": "c" * 128}),
    ("conversation_id of 1 character", {"conversation_id": "c"}),
]
for _desc, _kw in FIELD_EDGES:
    _u, _t, _a = rng.choice(USERS)
    _obj = event(_t, _a, _u, EDGE_TS, 10, 10)
    _obj.update(_kw)
    insert_random(valid(_obj, EDGE_DAY, _desc))

for _user, _desc in [
    ("U" * 128, "user_id of 128 characters"),
    ("x", "user_id of 1 character"),
    ("agent-Ab12", "user_id differing only in case (1/2): opaque, distinct users"),
    ("agent-ab12", "user_id differing only in case (2/2)"),
]:
    _obj = event(GOV, "state-ny-its", _user, "2026-10-31T10:00:00Z", 5, 6)
    insert_random(valid(_obj, date(2026, 10, 31), _desc))

# non-ASCII user_id: once as raw UTF-8, once \u-escaped -- the same user
_obj = event(ENT, "local-seattle-its", "usuario-se\u00f1or-42", "2026-11-02T08:00:00Z", 7, 8)
insert_random(valid(_obj, date(2026, 11, 2), "non-ASCII user_id, raw UTF-8", style="utf8"))
_obj = event(ENT, "local-seattle-its", "usuario-se\u00f1or-42", "2026-11-02T09:00:00Z", 9, 10)
insert_random(valid(_obj, date(2026, 11, 2), "non-ASCII user_id, \\u escaped"))

# unknown extra fields are ignored
EXTRA_FIELDS: list[dict[str, Any]] = [
    {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
    {"client": {"app": "ios", "version": "1.2026.300"}, "region": "us-gov-west-1"},
    {"x_debug": None},
    {"schema_minor": 3, "tags": ["pilot", "tier-2"]},
    {"session_ms": 123456.5, "retried": True},
]
for _extra in EXTRA_FIELDS:
    _u, _t, _a = rng.choice(USERS)
    _obj = event(_t, _a, _u, "2026-10-30T16:45:00Z", 42, 43, feature="chat")
    _obj.update(_extra)
    insert_random(valid(_obj, date(2026, 10, 30), f"unknown extra fields {sorted(_extra)}"))

# insignificant JSON whitespace around and inside the object
_u, _t, _a = rng.choice(USERS)
_obj = event(_t, _a, _u, "2026-11-01T11:11:11Z", 11, 12)
insert_random(
    valid(
        _obj,
        date(2026, 11, 1),
        "JSON whitespace padding",
        raw=b"  " + json.dumps(_obj, indent=None, separators=(" , ", " : ")).encode() + b" \t ",
    )
)

# a valid message of exactly 64 KiB (65,536 bytes) -- not over the limit
_u, _t, _a = rng.choice(USERS)
_obj = event(_t, _a, _u, "2026-11-01T12:34:56.789Z", 64, 64)
_obj["attachment_hash"] = ""
_obj["attachment_hash"] = "h" * (MAX_MESSAGE_BYTES - len(dump(_obj)))
assert len(dump(_obj)) == MAX_MESSAGE_BYTES
insert_random(valid(_obj, date(2026, 11, 1), "exactly 65,536 bytes: valid"))

# the shortest and longest legal agency_id
for _agency in (AGENCY_1, AGENCY_64):
    _u = rng.choice(USERS_BY_PAIR[(ENT if _agency == AGENCY_1 else GOV, _agency)])
    _obj = event(ENT if _agency == AGENCY_1 else GOV, _agency, _u, "2026-11-02T01:02:03Z", 3, 4)
    insert_random(valid(_obj, date(2026, 11, 2), f"agency_id of {len(_agency)} characters"))

# --------------------------------------------------------------------------
# 3. rejected lines, one expected reason each


def sized(obj: dict[str, Any], pad_field: str, total: int, char: str = "p") -> bytes:
    obj[pad_field] = ""
    base_len = len(dump(obj, "utf8"))
    count, rest = divmod(total - base_len, len(char.encode()))
    obj[pad_field] = char * count + "p" * rest
    raw = dump(obj, "utf8")
    assert len(raw) == total
    return raw


BAD: list[Line] = []

# too_large (checked first, whatever else the message holds)
BAD.append(
    rejected(
        sized(base(), "padding", MAX_MESSAGE_BYTES + 1),
        "too_large",
        "valid-looking event padded to 65,537 bytes",
    )
)
BAD.append(
    rejected(
        sized(base(), "padding", 66_000), "too_large", "valid-looking event padded to 66,000 bytes"
    )
)
BAD.append(
    rejected(
        sized(base(), "note", 65_538, char="\u00e9"),
        "too_large",
        "65,538 bytes but only ~32.8k characters (limit is on bytes)",
    )
)
_m = new_marker()
_obj = base(schema_version=2)
_obj["prompt"] = ""
_obj["prompt"] = f"{_m} " + "Summarise the attached procurement memo. " * 1800
_raw = dump(_obj)
assert len(_raw) > 70 * 1024
BAD.append(rejected(_raw, "too_large", "70 KiB object with a top-level prompt", [_m]))
BAD.append(rejected(b"{" + b"x" * 72_000, "too_large", "72 KB of non-JSON"))
_raw = json.dumps([base() for _ in range(250)]).encode()
assert len(_raw) > MAX_MESSAGE_BYTES
BAD.append(rejected(_raw, "too_large", "JSON array over 64 KiB"))

# invalid_json (the message does not parse as strict JSON in UTF-8)


def not_utf8(raw: bytes) -> bytes:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    raise AssertionError(f"meant to be invalid UTF-8: {raw[:80]!r}")


_good = dump(base())
BAD += [
    rejected(_good[: len(_good) // 2], "invalid_json", "truncated object"),
    rejected(_good[:-1] + b",}", "invalid_json", "trailing comma"),
    rejected(_good.replace(b'"', b"'"), "invalid_json", "single quotes"),
    rejected(b"hello world", "invalid_json", "bare words"),
    rejected(b"schema_version=1 tokens_in=12", "invalid_json", "key=value text"),
    rejected(
        _good.replace(b'"tokens_in": ', b'"tokens_in": NaN, "was": '), "invalid_json", "NaN value"
    ),
    rejected(
        dump(base()).replace(b'"tokens_out": ', b'"tokens_out": Infinity, "was": '),
        "invalid_json",
        "Infinity value",
    ),
    rejected(b"     ", "invalid_json", "a line of only spaces"),
    rejected(b"\t \t", "invalid_json", "a line of only tabs and spaces"),
    rejected(
        not_utf8(dump(base(user_id="caf\u00e9"), "utf8").replace("\u00e9".encode(), b"\xe9")),
        "invalid_json",
        "invalid UTF-8: Latin-1 byte in a string",
    ),
    rejected(
        not_utf8(dump(base(user_id="u-AA")).replace(b"u-AA", b"u-\xff\xfe")),
        "invalid_json",
        "invalid UTF-8: 0xFF 0xFE",
    ),
    rejected(
        not_utf8(dump(base(model="mm")).replace(b'"mm"', b'"\xe2\x82"')),
        "invalid_json",
        "invalid UTF-8: truncated multi-byte sequence",
    ),
    rejected(_good + _good, "invalid_json", "two objects on one line"),
    rejected(
        dump(base(tokens_in=12)).replace(b'"tokens_in": 12', b'"tokens_in": 012'),
        "invalid_json",
        "number with a leading zero",
    ),
    rejected(
        dump(base(user_id="usr-TAB")).replace(b"usr-TAB", b"usr\tTAB"),
        "invalid_json",
        "raw control character inside a string",
    ),
    rejected(b"{", "invalid_json", "lone brace"),
    rejected(_good + b" // sent by batch 7", "invalid_json", "trailing comment"),
]

# content_not_allowed (an object with a top-level content field); unique markers
for _key in ("content", "prompt", "completion", "text"):
    _m = new_marker()
    _obj = base()
    _obj[_key] = f"{_m}: draft a response to the constituent letter about benefits."
    BAD.append(rejected(dump(_obj, "shuffled"), "content_not_allowed", f"top-level {_key}", [_m]))
_m1, _m2 = new_marker(), new_marker()
_obj = base()
_obj["messages"] = [
    {"role": "user", "content": f"{_m1} what is the filing deadline?"},
    {"role": "assistant", "content": f"{_m2} the deadline is April 15."},
]
BAD.append(rejected(dump(_obj), "content_not_allowed", "top-level messages", [_m1, _m2]))
_m = new_marker()
BAD.append(
    rejected(
        dump(base(schema_version=2, content=f"{_m} v2 payload")),
        "content_not_allowed",
        "content together with schema_version 2 (content is checked first)",
        [_m],
    )
)
_m = new_marker()
BAD.append(
    rejected(
        dump(base(tokens_in="12", completion=f"{_m} the answer")),
        "content_not_allowed",
        "completion together with a mistyped tokens_in",
        [_m],
    )
)
_m = new_marker()
_obj = {"schema_version": 1, "text": f"{_m} only content, nothing else"}
BAD.append(rejected(dump(_obj), "content_not_allowed", "text in an otherwise empty object", [_m]))

# unsupported_schema_version (present and not the integer 1)
for _sv, _desc in [
    (2, "2"),
    (0, "0"),
    ("1", 'the string "1"'),
    (1.5, "1.5"),
    (True, "true"),
    (-1, "-1"),
    (None, "null"),
]:
    BAD.append(
        rejected(
            dump(base(schema_version=_sv)), "unsupported_schema_version", f"schema_version {_desc}"
        )
    )
_obj = base(schema_version=2)
del _obj["event_id"]
_obj["tokens_in"] = "lots"
BAD.append(
    rejected(
        dump(_obj),
        "unsupported_schema_version",
        "schema_version 2 that also breaks v1 rules (version is checked first)",
    )
)


# schema_violation (everything else that breaks section 1)
def without(key: str) -> dict[str, Any]:
    obj = base()
    del obj[key]
    return obj


SCHEMA_VIOLATIONS: list[tuple[Any, str]] = [
    ([base()], "JSON array"),
    ("chatgpt-gov usage event", "JSON string"),
    (None, "JSON null"),
    (42, "JSON number"),
    (True, "JSON true"),
    ({}, "empty object"),
    (without("schema_version"), "missing schema_version"),
    (without("event_id"), "missing event_id"),
    (without("occurred_at"), "missing occurred_at"),
    (without("tenant"), "missing tenant"),
    (without("agency_id"), "missing agency_id"),
    (without("agency_level"), "missing agency_level"),
    (without("user_id"), "missing user_id"),
    (without("conversation_id"), "missing conversation_id"),
    (without("model"), "missing model"),
    (without("tokens_in"), "missing tokens_in"),
    (without("tokens_out"), "missing tokens_out"),
    (base(event_id="not-a-uuid"), "event_id not a UUID"),
    (base(event_id="3f2c9a7e-1b4d-4c8e-9f0a-2d6b8e1c5a7"), "event_id one hex digit short"),
    (base(event_id="3f2c9a7e-1b4d-4c8e-9f0a-2d6b8e1c5a7g"), "event_id with a non-hex digit"),
    (base(event_id=""), "event_id empty"),
    (base(event_id=12345), "event_id a number"),
    (base(tokens_in="12"), 'tokens_in "12" (string)'),
    (base(tokens_in=True), "tokens_in true"),
    (base(tokens_in=12.0), "tokens_in 12.0"),
    (base(tokens_in=-1), "tokens_in -1"),
    (base(tokens_in=None), "tokens_in null"),
    (base(tokens_out=1_000_001), "tokens_out 1000001"),
    (base(tokens_out=-5), "tokens_out -5"),
    (base(tokens_out=[1]), "tokens_out a list"),
    (base(occurred_at="2026-11-01T10:00:00"), "occurred_at without offset"),
    (base(occurred_at="2026-11-01"), "occurred_at date only"),
    (base(occurred_at="yesterday at noon"), "occurred_at garbage"),
    (base(occurred_at=""), "occurred_at empty"),
    (base(occurred_at=1793534400), "occurred_at a number (epoch seconds)"),
    (base(occurred_at="2026-13-01T10:00:00Z"), "occurred_at month 13"),
    (base(occurred_at="2026-11-31T10:00:00Z"), "occurred_at November 31"),
    (base(occurred_at="2026-11-01T25:00:00Z"), "occurred_at hour 25"),
    (base(occurred_at="2026-11-01T10:00Z"), "occurred_at without seconds (RFC 3339 needs them)"),
    (base(occurred_at="20261101T100000Z"), "occurred_at in ISO 8601 basic format"),
    (base(occurred_at="2026-11-01T10:00:00+0200"), "occurred_at offset without colon"),
    (base(agency_level="county"), "agency_level county"),
    (base(agency_level="Federal"), "agency_level with upper case"),
    (base(tenant="ChatGPT-Gov"), "tenant with upper case"),
    (base(tenant=""), "tenant empty"),
    (base(tenant="chatgpt_gov"), "tenant with underscore"),
    (base(tenant="t" * 65), "tenant 65 characters"),
    (base(tenant=7), "tenant as a number"),
    (base(agency_id="-fed-gsa"), "agency_id starting with -"),
    (base(agency_id="a" * 65), "agency_id 65 characters"),
    (base(agency_id="fed.gsa"), "agency_id with a dot"),
    (base(agency_id=""), "agency_id empty"),
    (base(user_id=""), "user_id empty"),
    (base(user_id="u" * 129), "user_id 129 characters"),
    (base(user_id=1234), "user_id a number"),
    (base(conversation_id=""), "conversation_id empty"),
    (base(conversation_id="c" * 129), "conversation_id 129 characters"),
    (base(model="m" * 65), "model 65 characters"),
    (base(model=""), "model empty"),
    (base(feature=None), "feature null"),
    (base(feature=3), "feature a number"),
]
for _obj, _desc in SCHEMA_VIOLATIONS:
    BAD.append(rejected(dump(_obj), "schema_violation", _desc))

# scatter the rejected lines through the first ~90% of the log
for _ln in BAD:
    insert_random(_ln, hi=int(len(LOG) * 0.9))

# --------------------------------------------------------------------------
# 4. event_id claims and duplicates

# 4a. a rejected line does not claim its event_id: the later valid line counts
BREAKS: list[tuple[str, dict[str, Any]]] = [
    ("schema_violation", {"tokens_in": "40"}),
    ("unsupported_schema_version", {"schema_version": 2}),
    ("schema_violation", {"occurred_at": "2026-11-01T09:00:00"}),
]
for _reason, _break in BREAKS:
    _u, _t, _a = rng.choice(USERS)
    _good_obj = event(_t, _a, _u, "2026-11-01T09:00:00Z", 40, 41)
    _bad_obj = dict(_good_obj, **_break)
    _bad = rejected(dump(_bad_obj), _reason, "rejected first; its event_id is re-sent valid later")
    _pos = insert_random(_bad, hi=len(LOG) // 2)
    insert_random(
        valid(_good_obj, date(2026, 11, 1), "valid re-send of an id first seen rejected"),
        lo=_pos + 1,
        hi=_pos + 50,
    )
# ... same for content_not_allowed (a marker-bearing rejection)
_m = new_marker()
_u, _t, _a = rng.choice(USERS)
_good_obj = event(_t, _a, _u, "2026-10-31T09:00:00Z", 50, 51)
_bad = rejected(
    dump(dict(_good_obj, prompt=f"{_m} please rewrite")),
    "content_not_allowed",
    "content first; its event_id is re-sent without content later",
    [_m],
)
_pos = insert_random(_bad, hi=len(LOG) // 2)
insert_random(
    valid(_good_obj, date(2026, 10, 31), "valid re-send of an id first seen with content"),
    lo=_pos + 1,
    hi=_pos + 20,
)

# 4b. a counted event_id re-used by a later broken line: that line is rejected
#     (validation comes first), not a duplicate
for _src in rng.sample(bulk[:1000], 2):
    _obj = json.loads(_src.raw)
    _obj["tokens_out"] = "many"
    _bad = rejected(dump(_obj), "schema_violation", "broken line re-using a counted event_id")
    insert_random(_bad, lo=position(_src) + 1, hi=position(_src) + 300)

# 4c. duplicates: identical re-sends, adjacent and ~2,000 lines later
_pool = list(bulk)
rng.shuffle(_pool)
_adjacent, _far, _changed, _triple = _pool[:40], _pool[40:80], _pool[80:95], _pool[95:100]


def resend(
    src: Line, raw: bytes | None = None, note: str = "identical re-send", **changes: Any
) -> Line:
    """A later copy of a bulk event; the first occurrence keeps counting."""
    obj = json.loads(src.raw)
    obj.update(changes)
    dup = valid(
        obj,
        src.day,
        note,
        raw=raw if raw is not None else (src.raw if not changes else dump(obj)),
        duplicate=True,
    )
    dup.day = None  # a duplicate contributes nothing; its own day is irrelevant
    return dup


for _src in _adjacent:
    LOG.insert(position(_src) + 1, resend(_src, note="identical re-send, adjacent"))
for _src in _far:
    _p = position(_src) + 2000 + rng.randint(-50, 50)
    LOG.insert(min(_p, len(LOG)), resend(_src, note="identical re-send, ~2,000 lines later"))
for _src in _triple:
    _p = position(_src)
    LOG.insert(_p + 1, resend(_src, note="re-send #2, adjacent"))
    LOG.insert(min(_p + 1500, len(LOG)), resend(_src, note="re-send #3, ~1,500 lines later"))

# same event_id, other fields changed (same tenant and agency_id, hence the
# same Kafka key and partition, so "first in the log" is well defined)
for _k, _src in enumerate(_changed):
    _orig = json.loads(_src.raw)
    _changes: dict[str, Any] = [
        {"tokens_in": _orig["tokens_in"] + 1000, "tokens_out": 0},
        {"user_id": "someone-else-entirely"},
        {
            "occurred_at": "2026-10-30T00:00:01Z"
            if _src.day != date(2026, 10, 30)
            else "2026-11-02T12:00:00Z"
        },
        {"model": "gpt-5", "feature": "voice", "conversation_id": "conv-retry"},
        {"tokens_in": 1_000_000, "tokens_out": 1_000_000, "retry": 3},
    ][_k % 5]
    _p = position(_src) + rng.choice([1, 3, 250, 2000])
    LOG.insert(
        min(_p, len(LOG)),
        resend(_src, note=f"same event_id, changed {sorted(_changes)}", **_changes),
    )

# the same UUID in upper case is the same event_id
_src = _pool[100]
_obj = json.loads(_src.raw)
_obj["event_id"] = _obj["event_id"].upper()
LOG.insert(
    position(_src) + 700, resend(_src, raw=dump(_obj), note="re-send with the UUID in upper case")
)
# ... and the other way round: first sent in upper case (counts), then lower case
_u, _t, _a = rng.choice(USERS)
_id = new_id()
_first = valid(
    event(_t, _a, _u, "2026-10-30T07:07:07Z", 70, 71, event_id=_id.upper()),
    date(2026, 10, 30),
    "UUID sent in upper case first: counts",
)
_pos = insert_random(_first, hi=len(LOG) // 3)
_dup = valid(
    event(_t, _a, _u, "2026-10-30T07:07:07Z", 70, 71, event_id=_id),
    None,  # a duplicate belongs to no day
    "same UUID in lower case later: duplicate",
    duplicate=True,
)
LOG.insert(_pos + 900, _dup)
# mixed case
_src = _pool[101]
_obj = json.loads(_src.raw)
_eid = _obj["event_id"]
_obj["event_id"] = "".join(c.upper() if i % 2 else c for i, c in enumerate(_eid))
LOG.insert(
    position(_src) + 5, resend(_src, raw=dump(_obj), note="re-send with the UUID in mixed case")
)

# --------------------------------------------------------------------------
# 5. out of order: late events for the first two days at the very end, plus
#    a few re-sends of early events

late = [bulk_event(FIRST_DAY, timedelta(days=2)) for _ in range(N_LATE)]
for _ln in late:
    _ln.note = "late event for an earlier day"
LOG.extend(late)
for _src in _pool[102:107]:
    LOG.append(resend(_src, note="re-send at the very end"))
LOG.insert(position(late[3]) + 1, resend(late[3], note="re-send of a late event, adjacent"))

# two empty lines (not messages; replay skips them)
LOG.insert(1234, Line(raw=b"", kind="blank", note="empty line"))
LOG.insert(2345, Line(raw=b"", kind="blank", note="empty line"))

# --------------------------------------------------------------------------
# expectation


def expectation() -> dict[str, Any]:
    seen: set[str] = set()
    counted: list[Line] = []
    duplicates = 0
    rejected_by: Counter[str] = Counter({r: 0 for r in REASONS})
    markers: list[str] = []
    for ln in LOG:
        assert b"\n" not in ln.raw
        if ln.kind == "blank":
            continue
        markers += ln.markers
        # markers appear exactly in the lines that carry content, nowhere else
        assert (b"SECRET-CONTENT" in ln.raw) == bool(ln.markers), ln.note
        if ln.kind == "rejected":
            assert ln.reason is not None
            assert (len(ln.raw) > MAX_MESSAGE_BYTES) == (ln.reason == "too_large"), ln.note
            rejected_by[ln.reason] += 1
            continue
        assert len(ln.raw) <= MAX_MESSAGE_BYTES
        assert ln.event_id is not None
        if ln.event_id in seen:
            assert ln.expect_duplicate, f"unintended duplicate: {ln.note}"
            duplicates += 1
            continue
        assert not ln.expect_duplicate, f"intended duplicate counted: {ln.note}"
        seen.add(ln.event_id)
        counted.append(ln)

    daily: dict[tuple[str, str, str], dict[str, Any]] = {}
    monthly: dict[tuple[str, str, str], dict[str, Any]] = {}
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    level_of: dict[str, str] = {}
    for ev in counted:
        assert ev.day and ev.tenant and ev.agency_id and ev.agency_level and ev.user_id is not None
        assert level_of.setdefault(ev.agency_id, ev.agency_level) == ev.agency_level
        assert ev.tokens_in is not None and ev.tokens_out is not None
        day = ev.day.isoformat()
        month = ev.day.replace(day=1).isoformat()
        for table, key, head in (
            (daily, (day, ev.tenant, ev.agency_id), {"day": day}),
            (monthly, (month, ev.tenant, ev.agency_id), {"month": month}),
        ):
            row = table.setdefault(
                key,
                {
                    **head,
                    "tenant": ev.tenant,
                    "agency_id": ev.agency_id,
                    "agency_level": ev.agency_level,
                    "messages": 0,
                    "tokens_in": 0,
                    "tokens_out": 0,
                    "active_users": set(),
                },
            )
            row["messages"] += 1
            row["tokens_in"] += ev.tokens_in
            row["tokens_out"] += ev.tokens_out
            row["active_users"].add(ev.user_id)
        tot = totals.setdefault(
            (month, ev.tenant),
            {
                "month": month,
                "tenant": ev.tenant,
                "agencies": set(),
                "active_users": set(),
                "messages": 0,
                "tokens_in": 0,
                "tokens_out": 0,
            },
        )
        tot["agencies"].add(ev.agency_id)
        tot["active_users"].add(ev.user_id)
        tot["messages"] += 1
        tot["tokens_in"] += ev.tokens_in
        tot["tokens_out"] += ev.tokens_out

    def rows(table: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for key in sorted(table):
            row = dict(table[key])
            for k in ("active_users", "agencies"):
                if k in row:
                    row[k] = len(row[k])
            out.append(row)
        return out

    assert len(markers) == len(set(markers))
    return {
        "lines": sum(1 for ln in LOG if ln.kind != "blank"),
        "valid_counted": len(counted),
        "duplicates": duplicates,
        "rejected": dict(rejected_by),
        "agency_daily": rows(daily),
        "agency_monthly": rows(monthly),
        "monthly_totals": rows(totals),
        "content_markers": sorted(markers, key=lambda m: int(m.split("-")[2])),
    }


def main() -> None:
    expected = expectation()
    assert expected["lines"] == (
        expected["valid_counted"] + expected["duplicates"] + sum(expected["rejected"].values())
    )
    CORPUS.write_bytes(b"".join(ln.raw + b"\n" for ln in LOG))
    EXPECTED.write_text(json.dumps(expected, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    print(
        f"{CORPUS.name}: {expected['lines']} lines, {expected['valid_counted']} counted, "
        f"{expected['duplicates']} duplicates, rejected {expected['rejected']}"
    )


if __name__ == "__main__":
    main()
