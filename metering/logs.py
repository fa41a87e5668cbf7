"""Logs on stderr: JSON lines for log shippers, readable lines for people.

`METERING_LOG_FORMAT` chooses: `json` (one JSON object a line, the fields of `extra`
at the top level), `human` (time, level, logger, message, then key=value), or `auto`
(the default: human on a terminal, JSON anywhere else). Log calls pass metadata in
`extra`, never content. Human lines go through tqdm, so they print above a live
progress bar instead of through it.

`METERING_LOG_WRITER`, when set, is added to every line as `writer`: the supervisor of
`metering worker --processes N` sets it to each writer's name, so their interleaved
lines can be told apart.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Final, Literal

import orjson
from tqdm import tqdm

__all__ = ["HumanFormatter", "JsonFormatter", "configure_logging", "log_format"]

LOG_FORMAT_ENV: Final = "METERING_LOG_FORMAT"
LOG_WRITER_ENV: Final = "METERING_LOG_WRITER"

_STANDARD: Final = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }
    writer = os.environ.get(LOG_WRITER_ENV)
    if writer:
        fields.setdefault("writer", writer)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


class HumanFormatter(logging.Formatter):
    """`21:53:18.042 info  sink  flush committed  flush_seq=4 messages=20000 ...` (UTC)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        name = record.name.removeprefix("govmeter.")
        parts = [f"{when} {record.levelname.lower():<7} {name:<9} {record.getMessage()}"]
        fields = " ".join(f"{key}={_short(value)}" for key, value in _fields(record).items())
        if fields:
            parts.append(fields)
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"error={record.exc_info[0].__name__}")
        return "  ".join(parts)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= 200 else text[:197] + "..."


class _AboveProgressBars(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a log line must never stop the worker
            self.handleError(record)


def log_format(env: dict[str, str] | None = None) -> Literal["json", "human"]:
    """The format METERING_LOG_FORMAT asks for (auto: human on a terminal)."""
    chosen = (env if env is not None else os.environ).get(LOG_FORMAT_ENV, "auto").lower()
    if chosen in ("json", "human"):
        return "json" if chosen == "json" else "human"
    if chosen != "auto":
        raise ValueError(f"{LOG_FORMAT_ENV}={chosen!r}: must be auto, json or human")
    return "human" if sys.stderr.isatty() else "json"


def configure_logging(level: str = "INFO") -> None:
    handler: logging.Handler
    if log_format() == "human":
        handler = _AboveProgressBars()
        handler.setFormatter(HumanFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The stream libraries log message reprs at debug level; keep them quiet.
    for noisy in ("faust", "mode", "aiokafka", "kafka", "clickhouse_connect", "chdb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
