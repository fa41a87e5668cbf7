"""`metering config --check`: every problem at once, named by its variable; secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.config_check import check_configuration, main, mask_url
from metering.kafka_retention import Gap, expired_gaps, retention_warnings, watching_expiry
from metering.settings import Settings, load_settings

GOOD_KEY = "ab" * 32


def _good(tmp_path: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
        "CLICKHOUSE_URL": f"chdb://{tmp_path}/store",
    }


def test_a_good_configuration_has_no_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_configuration(_good(tmp_path)) == []
    monkeypatch.chdir(tmp_path)
    assert check_configuration({}) == []  # the defaults: the local server on 127.0.0.1:8123


def test_only_the_given_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERING_TOPIC_PARTITIONS", "0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "nonsense")
    assert check_configuration(_good(tmp_path)) == []


def test_several_bad_settings_are_reported_together_with_their_names(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {
        "CLICKHOUSE_URL": f"chdb://{blocker}/store",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092,kafka-2,kafka-3:99999,",
        "METERING_TOPIC_PARTITIONS": "zero",
        "METERING_EVENTS_TOPIC": "usage events",
        "METERING_PSEUDONYM_KEY": "too-short",
    }
    problems = check_configuration(env)
    names = [problem.split(":", 1)[0] for problem in problems]
    assert sorted(names) == sorted(
        [
            "METERING_EVENTS_TOPIC",
            "METERING_TOPIC_PARTITIONS",
            "CLICKHOUSE_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_BOOTSTRAP_SERVERS",
            "METERING_PSEUDONYM_KEY",
        ]
    )
    text = "\n".join(problems)
    assert "'kafka-2' is not host:port" in text
    assert "'kafka-3:99999' has no valid port" in text
    assert "entry 4 is empty" in text
    assert f"{blocker} is not a directory" in text
    assert "secrets.token_hex(32)" in text
    assert "too-short" not in text


def test_a_store_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"CLICKHOUSE_URL": f"chdb://{blocker}/store"}
    assert [p.split(":", 1)[0] for p in check_configuration(env)] == ["CLICKHOUSE_URL"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://u:p@clickhouse", "has no port"),
        ("https://:8443", "has no host"),
        ("http://u:p@clickhouse:http", "does not parse"),
        ("ftp://clickhouse:21", "must start with chdb://"),
    ],
)
def test_server_urls_need_a_host_and_a_port(url: str, expected: str) -> None:
    [problem] = check_configuration({"CLICKHOUSE_URL": url})
    assert problem.startswith("CLICKHOUSE_URL: ")
    assert expected in problem


def test_bracketed_ipv6_bootstrap_entries_are_accepted() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "[::1]:9092", "CLICKHOUSE_URL": "http://h:8123"}
    assert check_configuration(env) == []


def test_mask_url() -> None:
    assert (
        mask_url("http://metering:s3cr3t@clickhouse:8123") == "http://metering:***@clickhouse:8123"
    )
    assert mask_url("https://clickhouse:8443/?user=m&password=s3cr3t") == (
        "https://clickhouse:8443/?user=m&password=***"
    )
    assert mask_url("chdb://./var/clickhouse") == "chdb://./var/clickhouse"
    assert mask_url("http://reader@clickhouse:8123") == "http://reader@clickhouse:8123"


def test_check_prints_the_effective_configuration_with_the_password_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "CLICKHOUSE_URL": "http://metering:s3cr3t@clickhouse:8123",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "METERING_PSEUDONYM_KEY": GOOD_KEY,
    }
    assert main(["config", "--check"], env) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "CLICKHOUSE_URL=http://metering:***@clickhouse:8123" in lines
    assert "KAFKA_BOOTSTRAP_SERVERS=kafka:9092" in lines
    assert "METERING_EVENTS_TOPIC=usage.events  (default)" in lines
    assert "METERING_PSEUDONYM_KEY=*** (64 bytes)" in lines
    assert "s3cr3t" not in out
    assert GOOD_KEY not in out


def test_check_prints_each_problem_on_its_line_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "CLICKHOUSE_URL": "http://metering:s3cr3t@clickhouse",
        "METERING_BATCH_MAX_SECONDS": "0",
    }
    assert main(["config", "--check"], env) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("METERING_BATCH_MAX_SECONDS: ")
    assert lines[1].startswith("CLICKHOUSE_URL: has no port")
    assert lines[2] == "metering config: 2 problem(s)"
    assert "s3cr3t" not in captured.err


@pytest.mark.parametrize("url", ["chdb://", "chdb://memory", "chdb://:memory:"])
def test_an_in_memory_store_is_refused_for_a_store_writing_worker(url: str) -> None:
    expected = (
        f"CLICKHOUSE_URL: {url} is an in-memory store: everything a worker counts into it is "
        "lost when the worker exits. Give the store a directory (chdb://./var/clickhouse) or "
        "a server (http://127.0.0.1:8123), or set METERING_ALLOW_EPHEMERAL_STORE=1 for a "
        "throwaway run"
    )
    assert check_configuration({"CLICKHOUSE_URL": url}) == [expected]
    allowed = {"CLICKHOUSE_URL": url, "METERING_ALLOW_EPHEMERAL_STORE": "1"}
    assert check_configuration(allowed) == []


def test_the_worker_refuses_an_in_memory_store_before_it_touches_anything(
    tmp_path: Path,
) -> None:
    from metering.settings import SettingsError
    from metering.worker import run_worker

    # A broker address nothing listens on: reaching Kafka would fail differently.
    settings = load_settings(clickhouse_url="chdb://memory", kafka_bootstrap_servers="127.0.0.1:9")
    with pytest.raises(SettingsError) as refused:
        run_worker(settings, until_idle=0.1)
    assert str(refused.value).splitlines() == [
        "invalid configuration:",
        "  CLICKHOUSE_URL: chdb://memory is an in-memory store: everything a worker counts "
        "into it is lost when the worker exits. Give the store a directory "
        "(chdb://./var/clickhouse) or a server (http://127.0.0.1:8123), or set "
        "METERING_ALLOW_EPHEMERAL_STORE=1 for a throwaway run",
    ]


# ---------------------------------------------------------------------------------
# the retention guard: the events topic must keep events as long as they may be late


def _settings(**values: object) -> Settings:
    return load_settings(**values)


def test_a_retention_shorter_than_the_promised_lateness_is_warned_with_both_numbers() -> None:
    settings = _settings(events_topic="usage.events", max_lateness_days=35)
    [warning] = retention_warnings(settings, {"retention.ms": "86400000", "retention.bytes": "-1"})
    assert warning == (
        "METERING_EVENTS_TOPIC=usage.events: retention.ms=86400000 (1 days) is shorter than "
        "METERING_MAX_LATENESS_DAYS=35 (3024000000 ms): Kafka deletes events before a late one "
        "can be counted, or while a worker is down for that long; raise the topic's "
        "retention.ms to at least 3024000000 (kafka-configs.sh --alter --entity-type topics "
        "--entity-name usage.events --add-config retention.ms=3024000000), or set "
        "METERING_MAX_LATENESS_DAYS to the lateness the deployment really promises"
    )
    assert retention_warnings(settings, {"retention.ms": "3024000000"}) == []
    assert retention_warnings(settings, {"retention.ms": "-1"}) == []
    assert retention_warnings(_settings(max_lateness_days=1), {"retention.ms": "86400000"}) == []


def test_size_retention_and_compaction_are_warned_too() -> None:
    settings = _settings()
    warnings = retention_warnings(
        settings,
        {"retention.ms": "-1", "retention.bytes": "1073741824", "cleanup.policy": "compact,delete"},
    )
    assert [w.split(":", 1)[1].split(" ")[1] for w in warnings] == [
        "retention.bytes=1073741824",
        "cleanup.policy=compact,delete",
    ]


def test_a_topic_the_worker_will_create_is_judged_by_its_retention_setting() -> None:
    assert retention_warnings(_settings(), None) == []  # 1008 hours = 42 days >= 35
    [warning] = retention_warnings(_settings(topic_retention_hours=24), None)
    assert warning.startswith(
        "METERING_TOPIC_RETENTION_HOURS=24 (1 days) is shorter than "
        "METERING_MAX_LATENESS_DAYS=35 (3024000000 ms): the events topic usage.events does "
        "not exist yet"
    )
    assert warning.endswith("raise METERING_TOPIC_RETENTION_HOURS to at least 840")
    assert retention_warnings(_settings(topic_retention_hours=-1), None) == []


def test_config_check_prints_retention_warnings_and_still_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked: list[str] = []

    def configs(settings: Settings, topic: str) -> dict[str, str] | None:
        asked.append(topic)
        return {"retention.ms": "604800000"}

    env = {"CLICKHOUSE_URL": "http://clickhouse:8123", "METERING_EVENTS_TOPIC": "gov.events"}
    assert main(["config", "--check"], env, topic_configs=configs) == 0
    assert asked == ["gov.events"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: METERING_EVENTS_TOPIC=gov.events: retention.ms=604800000 (7 days) is shorter "
        "than METERING_MAX_LATENESS_DAYS=35 (3024000000 ms): Kafka deletes events before a "
        "late one can be counted, or while a worker is down for that long; raise the topic's "
        "retention.ms to at least 3024000000 (kafka-configs.sh --alter --entity-type topics "
        "--entity-name gov.events --add-config retention.ms=3024000000), or set "
        "METERING_MAX_LATENESS_DAYS to the lateness the deployment really promises"
    ]

    def unreachable(settings: Settings, topic: str) -> dict[str, str] | None:
        raise ConnectionError("no broker")

    assert main(["config", "--check"], env, topic_configs=unreachable) == 0
    assert capsys.readouterr().err == (
        "warning: KAFKA_BOOTSTRAP_SERVERS: could not read the configuration of the events "
        "topic METERING_EVENTS_TOPIC=gov.events (ConnectionError); its retention was not "
        "compared with METERING_MAX_LATENESS_DAYS\n"
    )


def test_gaps_are_partitions_whose_earliest_offset_passed_the_ledger() -> None:
    resume = {("usage.events", 0): 100, ("usage.events", 1): 50, ("other", 2): 5}
    gaps = expired_gaps(resume, "usage.events", {0: 130, 1: 50, 2: 7})
    assert gaps == [Gap("usage.events", 0, 100, 130)]  # partition 2: nothing counted yet
    assert gaps[0].describe() == "usage.events[0] offsets 100..129 (30 message(s))"


def test_the_pipeline_earliest_offset_reports_a_gap_before_resuming_past_it() -> None:
    import asyncio

    reported: list[Gap] = []
    nexts = {("t", 0): 10, ("t", 1): 3}

    async def earliest(topic: str, partition: int) -> int:
        return {0: 25, 1: 3, 2: 9}[partition]

    async def report(gap: Gap) -> None:
        reported.append(gap)

    async def run() -> list[int]:
        watched = watching_expiry(earliest, lambda t, p: nexts.get((t, p)), report)
        return [await watched("t", p) for p in (0, 1, 2)]

    assert asyncio.run(run()) == [25, 3, 9]
    assert reported == [Gap("t", 0, 10, 25)]
