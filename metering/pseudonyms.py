"""Keyed pseudonyms for producers: raw user ids never leave the producer.

A producer calls `pseudonymize_event` on each usage event before publishing it, so
the metering pipeline, its store and its reports only ever see `u_...` pseudonyms.

Why a keyed HMAC and not a plain hash
-------------------------------------
User ids are low-entropy: e-mail addresses in a handful of agency formats
(first.last@agency.gov), employee numbers, sequential account numbers. There are
perhaps a few million plausible candidates, and anyone can compute SHA-256 of every
one of them in seconds on a laptop (billions per second on a GPU). A plain hash,
or a hash with a salt stored next to the data, is therefore reversible by
enumeration: hash every candidate and look the stored values up. HMAC-SHA256 with
a secret key kept outside the data (in the producer's secret store, never in
Kafka or ClickHouse) stops this: without the key nobody can compute a single
candidate pseudonym, so holding the data alone reveals nothing about who is who.

Why 128 bits of output are enough
---------------------------------
A pseudonym is `u_` followed by the first 32 hex characters (128 bits) of the
HMAC. The only property counting needs from the truncation is that two different
users do not collide (a collision would merge them in the distinct-user counts).
By the birthday bound, even a billion distinct ids collide with probability about
n^2 / 2^129, roughly 1e-21. Truncation does not weaken the key: HMAC-SHA256
truncated to 128 bits is still a 128-bit pseudo-random function (NIST SP 800-107),
and recovering the 256-bit key from outputs remains infeasible. 34 characters also
fit the contract's 128-character limit for ids with room to spare.

Pseudonyms are deterministic per key: the same raw id always gives the same
pseudonym, across producers and days, so distinct counts stay exact. Changing the
key changes every pseudonym (see docs/operations.md on rotating it). Apply
`pseudonymize_event` exactly once per event: a second pass would pseudonymize the
pseudonym and split every user in two.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Final, Literal

from pydantic import SecretStr

from schemas.errors import InputError

__all__ = [
    "MIN_KEY_BYTES",
    "PSEUDONYM_KEY_ENV",
    "PseudonymKey",
    "PseudonymKeyError",
    "key_problem",
    "load_pseudonym_key",
    "pseudonym",
    "pseudonymize_event",
]

PSEUDONYM_KEY_ENV: Final = "METERING_PSEUDONYM_KEY"
MIN_KEY_BYTES: Final = 32
HEX_CHARS: Final = 32  # 128 bits of the HMAC-SHA256 output
MAKE_KEY_HINT: Final = 'python -c "import secrets; print(secrets.token_hex(32))"'

Kind = Literal["user", "conversation"]

# Users: HMAC over the raw id, nothing else. Conversations: a distinct domain, so
# that a user id and a conversation id spelled the same never share a pseudonym.
_PREFIX: Final[dict[str, str]] = {"user": "u_", "conversation": "c_"}
_DOMAIN: Final[dict[str, bytes]] = {"user": b"", "conversation": b"conversation\x00"}


class PseudonymKeyError(InputError):
    """The pseudonym key is missing or too short; the message names the variable."""


def key_problem(value: str | None) -> str | None:
    """Why `value` cannot be a pseudonym key, or None if it can."""
    if value is None or value == "":
        return f"is not set; make a key with: {MAKE_KEY_HINT}"
    size = len(value.encode("utf-8"))
    if size < MIN_KEY_BYTES:
        return (
            f"is {size} bytes long, at least {MIN_KEY_BYTES} are needed; "
            f"make a key with: {MAKE_KEY_HINT}"
        )
    return None


class PseudonymKey:
    """The secret behind every pseudonym; its value never appears in repr or str.

    The key material is the UTF-8 bytes of the configured string, as given (a
    64-character `secrets.token_hex(32)` string carries 256 random bits).
    """

    __slots__ = ("_base", "_secret")

    def __init__(self, secret: SecretStr | str) -> None:
        if isinstance(secret, str):
            secret = SecretStr(secret)
        problem = key_problem(secret.get_secret_value())
        if problem is not None:
            raise PseudonymKeyError(f"{PSEUDONYM_KEY_ENV} {problem}")
        self._secret = secret
        self._base = hmac.new(secret.get_secret_value().encode("utf-8"), digestmod=hashlib.sha256)

    @property
    def secret(self) -> SecretStr:
        return self._secret

    def pseudonym(self, raw_id: str, kind: Kind = "user") -> str:
        if not isinstance(raw_id, str) or raw_id == "":
            raise ValueError(f"{kind} id must be a non-empty string")
        mac = self._base.copy()
        mac.update(_DOMAIN[kind] + raw_id.encode("utf-8"))
        return _PREFIX[kind] + mac.hexdigest()[:HEX_CHARS]

    def __repr__(self) -> str:
        return "PseudonymKey('**********')"

    __str__ = __repr__


def load_pseudonym_key(env: Mapping[str, str] | None = None) -> PseudonymKey:
    """The key from METERING_PSEUDONYM_KEY (in `env`, default the process environment)."""
    source = os.environ if env is None else env
    return PseudonymKey(SecretStr(source.get(PSEUDONYM_KEY_ENV, "")))


def pseudonym(raw_id: str, key: PseudonymKey | SecretStr, kind: Kind = "user") -> str:
    """`u_` (or `c_` for conversations) and 32 hex characters of HMAC-SHA256(key, raw_id)."""
    return _as_key(key).pseudonym(raw_id, kind)


def pseudonymize_event(
    event: dict[str, object],
    key: PseudonymKey | SecretStr,
    *,
    conversation_id: bool = True,
) -> dict[str, object]:
    """A copy of a producer-side event with `user_id` (and `conversation_id`) pseudonymized.

    The input dict is not modified. A missing or non-string id raises ValueError: a
    producer should find that out before publishing, not from the dead-letter topic.
    """
    secret = _as_key(key)
    fields: list[tuple[str, Kind]] = [("user_id", "user")]
    if conversation_id:
        fields.append(("conversation_id", "conversation"))
    result = dict(event)
    for field, kind in fields:
        raw = event.get(field)
        if not isinstance(raw, str) or raw == "":
            raise ValueError(f"event field {field!r} must be a non-empty string")
        result[field] = secret.pseudonym(raw, kind)
    return result


def _as_key(key: PseudonymKey | SecretStr) -> PseudonymKey:
    return key if isinstance(key, PseudonymKey) else PseudonymKey(key)
