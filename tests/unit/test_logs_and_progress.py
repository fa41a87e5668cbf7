"""Readable logs on a terminal, JSON logs for shippers, and a progress line that does not
flood a log file."""

from __future__ import annotations

import io
import json
import logging

import pytest

from metering.logs import HumanFormatter, JsonFormatter, log_format
from metering.progress import Progress


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
