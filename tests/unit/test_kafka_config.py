"""Kafka security settings reach every client the same way."""

from __future__ import annotations

import ssl

import faust
import pytest

from metering.kafka_config import faust_options, kafka_python_options
from metering.settings import SettingsError, load_settings


def test_plaintext_is_the_default() -> None:
    settings = load_settings(kafka_bootstrap_servers="a:9092, b:9093")
    assert kafka_python_options(settings) == {
        "bootstrap_servers": ["a:9092", "b:9093"],
        "security_protocol": "PLAINTEXT",
    }
    assert faust_options(settings) == {}


def test_sasl_scram_over_tls_is_passed_through() -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="metering",
        kafka_sasl_password="s3cret-value",
    )
    options = kafka_python_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "metering"
    assert options["sasl_plain_password"] == "s3cret-value"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert "s3cret-value" not in repr(settings)


def test_sasl_without_credentials_names_what_is_missing() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(kafka_security_protocol="SASL_PLAINTEXT")
    message = str(raised.value)
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert name in message


def test_topic_replication_and_retention_have_contract_friendly_defaults() -> None:
    settings = load_settings()
    assert settings.topic_replication_factor == 1
    # 42 days: longer than the 35-day backdating window of billing peers.
    assert settings.topic_retention_hours == 1008
