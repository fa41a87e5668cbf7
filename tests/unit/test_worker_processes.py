"""`metering worker --processes`: how the count is read, what the writers are started
with, and the writer's name on every log line."""

from __future__ import annotations

import logging
import os

import orjson
import pytest

from metering.cli import _worker_argv, _worker_processes
from metering.logs import HumanFormatter, JsonFormatter
from metering.settings import Settings, SettingsError
from metering.worker_processes import child_arguments, run_worker_processes


def test_the_count_comes_from_the_flag_then_the_environment_then_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METERING_WORKER_PROCESSES", raising=False)
    assert _worker_processes(None) == 1
    monkeypatch.setenv("METERING_WORKER_PROCESSES", "3")
    assert _worker_processes(None) == 3
    assert _worker_processes("2") == 2
    assert _worker_processes("auto") == len(os.sched_getaffinity(0))
    assert _worker_processes(" AUTO ") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", ""])
def test_a_count_that_is_not_one_to_64_names_the_flag(value: str) -> None:
    with pytest.raises(SettingsError, match=r"--processes: .* is not a number of processes"):
        _worker_processes(value)


def test_a_bad_environment_count_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_WORKER_PROCESSES", "many")
    with pytest.raises(SettingsError, match=r"METERING_WORKER_PROCESSES: 'many'"):
        _worker_processes(None)


def test_writers_repeat_the_command_line_with_one_process_each() -> None:
    argv = ["--quiet", "worker", "--until-idle", "2", "--processes", "3", "--partitions", "6"]
    assert _worker_argv(argv) == [
        "worker",
        "--until-idle",
        "2",
        "--processes",
        "3",
        "--partitions",
        "6",
    ]
    assert child_arguments(_worker_argv(argv)) == [
        "worker", "--until-idle", "2", "--partitions", "6", "--processes", "1",
    ]  # fmt: skip
    assert child_arguments(["worker", "--processes=auto"]) == ["worker", "--processes", "1"]


def test_an_embedded_store_refuses_several_writers() -> None:
    settings = Settings(CLICKHOUSE_URL="chdb:///tmp/store")  # type: ignore[call-arg]
    with pytest.raises(SettingsError, match=r"embedded store, which one process opens"):
        run_worker_processes(settings, 2, ["worker"])


def _record() -> logging.LogRecord:
    record = logging.LogRecord("govmeter.sink", logging.INFO, "", 0, "flush committed", None, None)
    record.flush_seq = 7
    return record


def test_every_line_names_its_writer_when_the_supervisor_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METERING_LOG_WRITER", raising=False)
    plain = orjson.loads(JsonFormatter().format(_record()))
    assert "writer" not in plain
    monkeypatch.setenv("METERING_LOG_WRITER", "host-1-2")
    named = orjson.loads(JsonFormatter().format(_record()))
    assert (named["writer"], named["flush_seq"], named["msg"]) == ("host-1-2", 7, "flush committed")
    assert HumanFormatter().format(_record()).endswith("flush_seq=7 writer=host-1-2")
