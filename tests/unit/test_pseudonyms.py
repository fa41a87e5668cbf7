"""Keyed pseudonyms: known answer, key separation, key validation, no leaks of the key."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import re

import pytest
from pydantic import SecretStr

from metering.pseudonyms import (
    PSEUDONYM_KEY_ENV,
    PseudonymKey,
    PseudonymKeyError,
    load_pseudonym_key,
    pseudonym,
    pseudonymize_event,
)

KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
OTHER_KEY = "a" * 31 + "b"


def test_known_answer_is_hmac_sha256_truncated_to_128_bits() -> None:
    raw = "jane.doe@agency.gov"
    expected = "u_" + hmac.new(KEY.encode(), raw.encode(), hashlib.sha256).hexdigest()[:32]
    assert pseudonym(raw, PseudonymKey(KEY)) == expected
    assert pseudonym(raw, SecretStr(KEY)) == expected
    assert re.fullmatch(r"u_[0-9a-f]{32}", expected)


def test_deterministic_per_key_and_different_across_keys() -> None:
    key, other = PseudonymKey(KEY), PseudonymKey(OTHER_KEY)
    assert key.pseudonym("user-1") == PseudonymKey(KEY).pseudonym("user-1")
    assert key.pseudonym("user-1") != key.pseudonym("user-2")
    assert key.pseudonym("user-1") != other.pseudonym("user-1")


def test_conversations_have_their_own_domain() -> None:
    key = PseudonymKey(KEY)
    user, conversation = key.pseudonym("42"), key.pseudonym("42", "conversation")
    assert conversation.startswith("c_")
    assert user[2:] != conversation[2:]


@pytest.mark.parametrize("value", ["", "x" * 31, "é" * 15])
def test_short_key_is_rejected_naming_the_variable(value: str) -> None:
    with pytest.raises(PseudonymKeyError) as raised:
        load_pseudonym_key({PSEUDONYM_KEY_ENV: value})
    message = str(raised.value)
    assert message.startswith(f"{PSEUDONYM_KEY_ENV} ")
    assert "secrets.token_hex(32)" in message
    assert value == "" or value not in message


def test_missing_key_is_rejected_naming_the_variable() -> None:
    with pytest.raises(PseudonymKeyError, match=PSEUDONYM_KEY_ENV):
        load_pseudonym_key({})


def test_key_of_exactly_32_bytes_is_accepted() -> None:
    assert load_pseudonym_key({PSEUDONYM_KEY_ENV: "k" * 32}).pseudonym("u").startswith("u_")


def test_the_secret_never_appears_in_repr_or_str() -> None:
    key = load_pseudonym_key({PSEUDONYM_KEY_ENV: KEY})
    for text in (repr(key), str(key), f"{key}", repr(key.secret), str(key.secret), repr([key])):
        assert KEY not in text
        assert KEY[:8] not in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_pseudonymize_event_replaces_ids_and_keeps_the_rest() -> None:
    key = PseudonymKey(KEY)
    event: dict[str, object] = {
        "event_id": "7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10",
        "agency_id": "dept-1",
        "user_id": "jane.doe@agency.gov",
        "conversation_id": "conv-9",
        "tokens_in": 10,
    }
    original = dict(event)
    result = pseudonymize_event(event, key)
    assert event == original
    assert result["user_id"] == key.pseudonym("jane.doe@agency.gov")
    assert result["conversation_id"] == key.pseudonym("conv-9", "conversation")
    assert {k: v for k, v in result.items() if k not in ("user_id", "conversation_id")} == {
        k: v for k, v in event.items() if k not in ("user_id", "conversation_id")
    }
    kept = pseudonymize_event(event, key, conversation_id=False)
    assert kept["conversation_id"] == "conv-9"
    assert kept["user_id"] == result["user_id"]


def test_pseudonymize_event_refuses_a_missing_user_id() -> None:
    with pytest.raises(ValueError, match="user_id"):
        pseudonymize_event({"conversation_id": "c"}, PseudonymKey(KEY))
