"""Readable logs on a terminal, JSON logs for shippers, and a progress line that does not
flood a log file; the Kafka clients' start-up transients held back while new, reported
once they last; the worker's flush lines shown by its bar on a terminal."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError

from metering.logs import (
    HumanFormatter,
    JsonFormatter,
    StartupTransients,
    configure_logging,
    log_format,
    shown_in_progress,
    transient_seconds,
)
from metering.progress import Progress
from metering.worker_progress import flush_figures, show_worker_progress
from streams.metrics import Metrics


def _record() -> logging.LogRecord:
    record = logging.LogRecord("govmeter.sink", logging.INFO, "", 0, "flush committed", None, None)
    record.created = 1_796_162_000.25  # 2026-12-01T21:53:20.250Z
    record.flush_seq = 4
    record.step_seconds = {"lookup": 0.01}
    return record


def test_json_lines_keep_their_shape() -> None:
    entry = json.loads(JsonFormatter().format(_record()))
    assert entry == {
        "ts": "2026-12-01T21:53:20.250+00:00",
        "level": "info",
        "logger": "govmeter.sink",
        "msg": "flush committed",
        "flush_seq": 4,
        "step_seconds": {"lookup": 0.01},
    }


def test_human_lines_read_as_a_sentence_with_fields() -> None:
    line = HumanFormatter().format(_record())
    assert line == (
        '21:53:20.250 info    sink      flush committed  flush_seq=4 step_seconds={"lookup":0.01}'
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("json", "json"), ("human", "human"), ("JSON", "json")]
)
def test_the_format_is_chosen_by_the_environment(value: str, expected: str) -> None:
    assert log_format({"METERING_LOG_FORMAT": value}) == expected


def test_auto_is_json_when_stderr_is_not_a_terminal() -> None:
    assert log_format({}) == "json"  # pytest captures stderr: not a terminal


def test_an_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match="METERING_LOG_FORMAT='xml': must be auto, json or human"):
        log_format({"METERING_LOG_FORMAT": "xml"})


def test_without_a_terminal_progress_prints_rarely_and_once_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0, 25.0, 26.0])
    monkeypatch.setattr("metering.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = Progress("replay", total=6000, stream=out)  # started at 0
    for _ in range(5):  # at 1, 2, 11, 12, 25 s
        progress.advance(1000)
    progress.done()  # at 26 s
    assert out.getvalue().splitlines() == [
        "replay: 3,000 events, 273/s, 11.0s, ETA 11s",
        "replay: 5,000 events, 200/s, 25.0s, ETA 5s",
        "replay: 5,000 events, 192/s, 26.0s",
    ]


# --- start-up transients of the Kafka clients ------------------------------------------

COORDINATOR = "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"
GETPID = (
    "GETPID [rdkafka#producer-3] [thrd:main]: Failed to acquire idempotence PID from broker "
    "127.0.0.1:38627/1: Broker: Coordinator load in progress: retrying"
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log_record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, "", 0, msg, args or None, None)


@pytest.fixture
def root_at_info() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(level)


def test_a_start_up_transient_is_held_back_below_warning(root_at_info: None) -> None:
    clock = _Clock()
    transients = StartupTransients(30.0, clock=clock)
    for at in (0.0, 0.1, 12.0, 29.9):
        clock.now = 1000.0 + at
        record = _log_record(
            "aiokafka.consumer.group_coordinator",
            logging.ERROR,
            "Group Coordinator Request failed: %s",
            GroupCoordinatorNotAvailableError(),
        )
        assert record.getMessage() == COORDINATOR  # the line as aiokafka writes it
        assert transients.filter(record) is False  # not written at INFO
        assert (record.levelno, record.levelname) == (logging.DEBUG, "DEBUG")
        assert vars(record)["transient"] == "group coordinator not available"
    assert transients.held_back == {"group coordinator not available": 4}


def test_a_transient_that_lasted_30_seconds_is_reported_at_its_own_level(
    root_at_info: None,
) -> None:
    clock = _Clock()
    transients = StartupTransients(30.0, clock=clock)
    held = _log_record("aiokafka.consumer.group_coordinator", logging.ERROR, COORDINATOR)
    assert transients.filter(held) is False
    for at in (30.0, 31.5, 600.0):
        clock.now = 1000.0 + at
        record = _log_record("aiokafka.consumer.group_coordinator", logging.ERROR, COORDINATOR)
        assert transients.filter(record) is True
        assert (record.levelno, record.levelname) == (logging.ERROR, "ERROR")
        assert vars(record)["transient"] == "group coordinator not available"
        assert vars(record)["lasting_seconds"] == at
        assert vars(record)["held_back"] == 1
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["msg"], entry["lasting_seconds"]) == ("error", COORDINATOR, 600.0)


def test_a_transient_that_comes_back_later_in_the_run_is_reported_at_once(
    root_at_info: None,
) -> None:
    """The time runs from the first occurrence and is never reset: a broker restarted an
    hour into the run is no start-up transient."""
    clock = _Clock()
    transients = StartupTransients(30.0, clock=clock)
    assert not transients.filter(_log_record("govmeter.replay", logging.WARNING, GETPID))
    clock.now += 2.0  # cleared: nothing for an hour
    clock.now += 3600.0
    again = _log_record("govmeter.replay", logging.WARNING, GETPID)
    assert transients.filter(again) is True
    assert again.levelno == logging.WARNING
    assert vars(again)["transient"] == "idempotent producer id not available"


def test_each_transient_has_its_own_time(root_at_info: None) -> None:
    clock = _Clock()
    transients = StartupTransients(30.0, clock=clock)
    leader = "govmeter-app-__assignor-__leader"
    assert not transients.filter(
        _log_record(
            "aiokafka.cluster", logging.ERROR, "Topic %s not found in cluster metadata", leader
        )
    )
    clock.now += 40.0
    # Another transient first seen now is new, whatever the first one did.
    assert not transients.filter(_log_record("govmeter.replay", logging.WARNING, GETPID))
    # faust's line about the same topic shares the topic's time: 40 s, reported.
    faust_line = _log_record(
        "faust.assignor.partition_assignor", logging.WARNING, "Ignoring missing topic: %r", leader
    )
    assert transients.filter(faust_line) is True
    assert vars(faust_line)["transient"] == f"faust leader topic not created yet: {leader}"


@pytest.mark.parametrize(
    ("name", "level", "msg"),
    [
        # the events topic missing is no start-up transient: it was created before
        ("aiokafka.cluster", logging.ERROR, "Topic usage.events not found in cluster metadata"),
        (
            "aiokafka.consumer.group_coordinator",
            logging.ERROR,
            "Group Coordinator Request failed: [Error 7] RequestTimedOutError",
        ),
        (
            "aiokafka",
            logging.ERROR,
            "Unable connect to node with id 1: [Errno 111] Connect call failed",
        ),
        ("govmeter.worker", logging.ERROR, "store step failed, retrying"),
        ("govmeter.replay", logging.WARNING, "FAIL [rdkafka#producer-1]: Connection refused"),
        # critical is never held back, even for a known message
        ("aiokafka.consumer.group_coordinator", logging.CRITICAL, COORDINATOR),
        # an info line is not looked at
        ("aiokafka.consumer.group_coordinator", logging.INFO, COORDINATOR),
        # a known message from a logger it does not come from
        ("govmeter.sink", logging.ERROR, COORDINATOR),
    ],
)
def test_an_unrelated_record_is_untouched(
    name: str, level: int, msg: str, root_at_info: None
) -> None:
    record = _log_record(name, level, msg)
    before = dict(vars(record))
    assert StartupTransients(30.0, clock=_Clock()).filter(record) is True
    assert vars(record) == before


def test_a_malformed_call_is_left_to_the_handler(root_at_info: None) -> None:
    record = _log_record("govmeter.replay", logging.WARNING, "%s and %s", "one")
    assert StartupTransients(30.0, clock=_Clock()).filter(record) is True


def test_with_the_root_at_debug_a_held_back_transient_is_written_at_debug() -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        record = _log_record("govmeter.replay", logging.WARNING, GETPID)
        assert StartupTransients(30.0, clock=_Clock()).filter(record) is True
        assert json.loads(JsonFormatter().format(record))["level"] == "debug"
    finally:
        root.setLevel(level)


def test_zero_seconds_reports_every_transient_at_its_level(root_at_info: None) -> None:
    record = _log_record("govmeter.replay", logging.WARNING, GETPID)
    assert StartupTransients(0.0, clock=_Clock()).filter(record) is True
    assert (record.levelno, vars(record)["lasting_seconds"], vars(record)["held_back"]) == (
        logging.WARNING,
        0.0,
        0,
    )


@pytest.mark.parametrize(("value", "expected"), [("", 30.0), ("0", 0.0), (" 45.5 ", 45.5)])
def test_the_transient_seconds_come_from_the_environment(value: str, expected: float) -> None:
    assert transient_seconds({"METERING_LOG_TRANSIENT_SECONDS": value}) == expected
    assert transient_seconds({}) == 30.0


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_bad_transient_seconds_are_named(value: str) -> None:
    with pytest.raises(ValueError, match="METERING_LOG_TRANSIENT_SECONDS="):
        transient_seconds({"METERING_LOG_TRANSIENT_SECONDS": value})


# --- configure_logging end to end: which lines reach stderr ----------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("faust", "mode", "aiokafka", "kafka", "clickhouse_connect", "chdb")
    libraries = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in libraries.items():
        logging.getLogger(name).setLevel(saved)


def _configured(monkeypatch: pytest.MonkeyPatch, log_format_name: str) -> io.StringIO:
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setenv("METERING_LOG_FORMAT", log_format_name)
    monkeypatch.delenv("METERING_LOG_TRANSIENT_SECONDS", raising=False)
    configure_logging()
    return stream


def _log_a_start(flushes: int = 2) -> None:
    logging.getLogger("aiokafka.consumer.group_coordinator").error(COORDINATOR)
    logging.getLogger("govmeter.replay").warning(GETPID)
    logging.getLogger("govmeter.worker").info("worker consuming", extra={"topic": "t"})
    for seq in range(1, flushes + 1):
        logging.getLogger("govmeter.sink").info("flush committed", extra={"flush_seq": seq})
    logging.getLogger("aiokafka.cluster").error("Topic usage.events not found in cluster metadata")


@pytest.mark.parametrize("log_format_name", ["json", "human"])
def test_a_configured_process_holds_back_transients_only(
    monkeypatch: pytest.MonkeyPatch, logging_restored: None, log_format_name: str
) -> None:
    stream = _configured(monkeypatch, log_format_name)
    _log_a_start()
    text = stream.getvalue()
    assert COORDINATOR not in text and "idempotence PID" not in text
    assert text.count("flush committed") == 2
    assert "worker consuming" in text
    assert "Topic usage.events not found in cluster metadata" in text


def test_while_a_bar_shows_the_flushes_human_lines_leave_them_out(
    monkeypatch: pytest.MonkeyPatch, logging_restored: None
) -> None:
    stream = _configured(monkeypatch, "human")
    with shown_in_progress("govmeter.sink", "flush committed"):
        _log_a_start()
        logging.getLogger("govmeter.other").info("flush committed")  # another logger's
    lines = stream.getvalue().splitlines()
    assert [line.split(maxsplit=3)[2:] for line in lines if "flush committed" in line] == [
        ["other", "flush committed"]
    ]
    assert any("worker consuming" in line for line in lines)
    _log_a_start(flushes=1)  # the bar is gone: the lines are back
    assert stream.getvalue().count("sink      flush committed") == 1


def test_while_a_bar_shows_the_flushes_json_lines_keep_them(
    monkeypatch: pytest.MonkeyPatch, logging_restored: None
) -> None:
    stream = _configured(monkeypatch, "json")
    with shown_in_progress("govmeter.sink", "flush committed"):
        _log_a_start()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["flush_seq"] for e in entries if e["msg"] == "flush committed"] == [1, 2]


def test_the_worker_bar_shows_the_flushes_and_takes_their_lines(
    monkeypatch: pytest.MonkeyPatch, logging_restored: None
) -> None:
    stream = _configured(monkeypatch, "human")
    metrics = Metrics()

    async def lag() -> dict[tuple[str, int], int]:
        return {("t", 0): 10}

    async def run() -> None:
        bar = asyncio.create_task(show_worker_progress(metrics, lag, every=0.01))
        await asyncio.sleep(0.05)
        metrics.events_in.inc(20_000)
        metrics.flushes.inc()
        metrics.counted.inc(19_990)
        metrics.duplicates.inc(10)
        metrics.last_flush_seconds = 0.25
        logging.getLogger("govmeter.sink").info("flush committed", extra={"flush_seq": 1})
        await asyncio.sleep(0.1)
        bar.cancel()
        await asyncio.gather(bar, return_exceptions=True)

    asyncio.run(run())
    text = stream.getvalue()
    assert "flushes=1 counted=20.0k dup=10 rejected=0 last=0.25s" in text
    assert "flush committed" not in text
    assert re.search(r"\rworker: 20,000 messages, [\d,]+/s, [\d.]+s\n$", text)  # `done`
    logging.getLogger("govmeter.sink").info("flush committed", extra={"flush_seq": 2})
    assert "flush committed  flush_seq=2" in stream.getvalue()


def test_flush_figures_are_empty_before_the_first_flush() -> None:
    metrics = Metrics()
    assert flush_figures(metrics) == ""
    metrics.flushes.inc(1200)
    metrics.counted.inc(18_000_000)
    metrics.rejected_by_reason["schema_invalid"] += 7
    metrics.last_flush_seconds = 1.234
    assert flush_figures(metrics) == "flushes=1.20k counted=18.0M dup=0 rejected=7 last=1.23s"


def test_a_note_follows_the_plain_lines_but_not_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 11.0, 12.0])
    monkeypatch.setattr("metering.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = Progress("worker", stream=out, unit="messages")
    progress.note("flushes=1")
    progress.advance(1000)  # at 11 s
    progress.done()  # at 12 s
    assert out.getvalue().splitlines() == [
        "worker: 1,000 messages, 91/s, 11.0s; flushes=1",
        "worker: 1,000 messages, 83/s, 12.0s",
    ]
