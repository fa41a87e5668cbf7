"""Replay's configuration: the codec (flag and environment) and librdkafka's connection names."""

from __future__ import annotations

import pytest

from metering.cli import _parser, _settings
from metering.replay import CODECS, librdkafka_options
from metering.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _no_codec_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("METERING_REPLAY_COMPRESSION", "metering_replay_compression"):
        monkeypatch.delenv(name, raising=False)


def test_no_compression_by_default() -> None:
    assert load_settings().replay_compression == "none"


@pytest.mark.parametrize("codec", CODECS)
def test_every_kafka_codec_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    monkeypatch.setenv("METERING_REPLAY_COMPRESSION", codec)
    assert load_settings().replay_compression == codec


def test_an_unknown_codec_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_REPLAY_COMPRESSION", "brotli")
    with pytest.raises(SettingsError, match="METERING_REPLAY_COMPRESSION"):
        load_settings()


def test_the_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_REPLAY_COMPRESSION", "gzip")
    args = _parser().parse_args(["replay", "--compression", "zstd", "events.jsonl"])
    assert _settings(args).replay_compression == "zstd"
    args = _parser().parse_args(["replay", "events.jsonl"])
    assert _settings(args).replay_compression == "gzip"


def test_the_flag_takes_kafka_codecs_only() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["replay", "--compression", "brotli", "events.jsonl"])


def test_plaintext_connection_options() -> None:
    settings = load_settings(kafka_bootstrap_servers=" a:9092, b:9093 ")
    assert librdkafka_options(settings) == {
        "bootstrap.servers": "a:9092,b:9093",
        "security.protocol": "plaintext",
    }


def test_sasl_and_tls_connection_options() -> None:
    settings = load_settings(
        kafka_bootstrap_servers="a:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="metering",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile="/etc/ca.pem",
    )
    assert librdkafka_options(settings) == {
        "bootstrap.servers": "a:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "metering",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
    }
