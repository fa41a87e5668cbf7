"""Settings: CONTRACT section 4 defaults, environment overrides, all errors at once."""

from __future__ import annotations

import pytest

from metering.settings import SettingsError, load_settings

ENV_NAMES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "METERING_EVENTS_TOPIC",
    "METERING_DLQ_TOPIC",
    "CLICKHOUSE_URL",
    "METERING_CONSUMER_GROUP",
    "METERING_TOPIC_PARTITIONS",
    "METERING_BATCH_MAX_EVENTS",
    "METERING_BATCH_MAX_SECONDS",
    "METERING_BATCH_MIN_SECONDS",
    "METERING_DEDUPE_FILTER_MB",
    "METERING_STORE_RETRY_MAX_SECONDS",
    "METERING_WORKER_NAME",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_contract_defaults() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.events_topic == "usage.events"
    assert settings.dlq_topic == "usage.events.dlq"
    assert settings.clickhouse_url == "http://127.0.0.1:8123"


def test_environment_overrides_each_contract_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("METERING_EVENTS_TOPIC", "gov.usage")
    monkeypatch.setenv("METERING_DLQ_TOPIC", "gov.usage.dlq")
    monkeypatch.setenv("CLICKHOUSE_URL", "http://metering:pw@clickhouse:8123")
    monkeypatch.setenv("METERING_TOPIC_PARTITIONS", "12")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "kafka-1:9093,kafka-2:9093"
    assert settings.events_topic == "gov.usage"
    assert settings.dlq_topic == "gov.usage.dlq"
    assert settings.clickhouse_url == "http://metering:pw@clickhouse:8123"
    assert settings.topic_partitions == 12


@pytest.mark.parametrize(
    "url", ["chdb://./var/clickhouse", "chdb:///tmp/ch", "http://h:8123", "https://u:p@h:8443"]
)
def test_known_store_schemes_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", url)
    assert load_settings().clickhouse_url == url


def test_flags_override_the_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METERING_EVENTS_TOPIC", "from-env")
    monkeypatch.setenv("CLICKHOUSE_URL", "chdb:///from/env")
    settings = load_settings(events_topic="from-flag", clickhouse_url=None)
    assert settings.events_topic == "from-flag"
    assert settings.clickhouse_url == "chdb:///from/env"


def test_bad_url_and_bad_partition_count_are_reported_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "ftp://clickhouse:21")
    monkeypatch.setenv("METERING_TOPIC_PARTITIONS", "0")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    lines = message.splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 3
    assert lines[1].startswith("  CLICKHOUSE_URL: ")
    assert "chdb://" in lines[1]
    assert lines[2].startswith("  METERING_TOPIC_PARTITIONS: ")
    assert "greater than or equal to 1" in lines[2]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METERING_TOPIC_PARTITIONS", "six"),
        ("METERING_TOPIC_PARTITIONS", "1025"),
        ("METERING_EVENTS_TOPIC", "usage events"),
        ("METERING_DLQ_TOPIC", ""),
        ("KAFKA_BOOTSTRAP_SERVERS", ""),
        ("CLICKHOUSE_URL", "./var/clickhouse"),
        ("METERING_BATCH_MAX_SECONDS", "0"),
        ("METERING_BATCH_MIN_SECONDS", "-0.1"),
        ("METERING_DEDUPE_FILTER_MB", "100"),
    ],
)
def test_each_bad_setting_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"  {name}: ")


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)
