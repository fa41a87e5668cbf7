"""Logs on stderr: JSON lines for log shippers, readable lines for people.

`METERING_LOG_FORMAT` chooses: `json` (one JSON object a line, the fields of `extra`
at the top level), `human` (time, level, logger, message, then key=value), or `auto`
(the default: human on a terminal, JSON anywhere else). Log calls pass metadata in
`extra`, never content. Human lines go through tqdm, so they print above a live
progress bar instead of through it; while a bar shows what some lines say (the
worker's bar shows its flushes), those lines are left out of the human output only
(`shown_in_progress`), never out of the JSON lines.

`METERING_LOG_WRITER`, when set, is added to every line as `writer`: the supervisor of
`metering worker --processes N` sets it to each writer's name, so their interleaved
lines can be told apart.

Start-up transients: a broker that has just started creates its coordinators'
topics on first use, and until they are loaded the Kafka clients log errors and
warnings they then retry past (`TRANSIENTS`). Each such message is logged at debug
while it is new: for `METERING_LOG_TRANSIENT_SECONDS` (30 by default) after the
process first logged it. From then on every occurrence has its own level again, with
`transient` (what it is), `lasting_seconds` (since it first appeared) and `held_back`
(the occurrences logged at debug before): a coordinator still unavailable after 30 s,
or one lost later in the run, is reported; one that clears within 30 s is not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import orjson
from tqdm import tqdm

__all__ = [
    "TRANSIENTS",
    "TRANSIENT_SECONDS",
    "HumanFormatter",
    "JsonFormatter",
    "StartupTransients",
    "Transient",
    "configure_logging",
    "log_format",
    "shown_in_progress",
    "transient_seconds",
]

LOG_FORMAT_ENV: Final = "METERING_LOG_FORMAT"
LOG_WRITER_ENV: Final = "METERING_LOG_WRITER"
TRANSIENT_SECONDS_ENV: Final = "METERING_LOG_TRANSIENT_SECONDS"
# Long enough for a fresh broker to create and load its coordinators' topics (about a
# second on a laptop, seconds on a loaded cluster), short enough that an outage shows
# while someone is still looking at the start.
TRANSIENT_SECONDS: Final = 30.0

_STANDARD: Final = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass(frozen=True)
class Transient:
    """A message of a Kafka client that a broker's start causes and the client retries.

    `logger` is a logger name or its prefix (`aiokafka` covers `aiokafka.cluster`),
    or None for any logger (librdkafka's lines come through the logger each command
    hands confluent-kafka). A `topic` group in `pattern` is part of what is timed: two
    missing topics are two transients.
    """

    kind: str
    logger: str | None
    pattern: re.Pattern[str]

    def key(self, record: logging.LogRecord) -> str | None:
        if self.logger is not None and not (
            record.name == self.logger or record.name.startswith(self.logger + ".")
        ):
            return None
        found = self.pattern.search(record.getMessage())
        if found is None:
            return None
        topic = found.groupdict().get("topic")
        return self.kind if topic is None else f"{self.kind}: {topic}"


# faust's leader-election topic of the app (`<group>-app-__assignor-__leader` with the
# batch intake): the broker creates it on the first metadata request that names it.
_LEADER_TOPIC: Final = r"(?P<topic>[^\s']+-__assignor-__leader)"

TRANSIENTS: Final = (
    # aiokafka's group coordinator lookup, retried every retry_backoff_ms: the broker
    # creates __consumer_offsets on the first lookup, then loads it.
    Transient(
        "group coordinator not available",
        "aiokafka",
        re.compile(
            r"^Group Coordinator Request failed: \[Error 1[45]\] "
            r"(GroupCoordinatorNotAvailableError|GroupLoadInProgressError)"
        ),
    ),
    Transient(
        "faust leader topic not created yet",
        "aiokafka",
        re.compile(
            rf"^Topic {_LEADER_TOPIC} (not found in cluster metadata"
            r"|is not available during auto-create initialization)$"
        ),
    ),
    Transient(
        "faust leader topic not created yet",
        "faust",
        re.compile(rf"^Ignoring missing topic: '{_LEADER_TOPIC}'$"),
    ),
    # librdkafka's idempotent producer (`metering replay`) asks the transaction
    # coordinator for a producer id; __transaction_state is created on that request.
    Transient(
        "idempotent producer id not available",
        None,
        re.compile(
            r"Failed to acquire idempotence PID from broker .*: "
            r"Broker: Coordinator (load in progress|not available)"
        ),
    ),
)


class StartupTransients(logging.Filter):
    """A handler's filter: `TRANSIENTS` at debug while new, at their level once lasting.

    Only warnings and errors are looked at (critical is never held back). A record
    held back is changed to debug and passed on only when the root logger lets debug
    through. The time of a transient runs from the first time this process logged
    it, and is not reset when it stops: a transient that comes back later in the run
    (a broker restarted, a coordinator moved) is reported at once.
    """

    def __init__(
        self,
        seconds: float = TRANSIENT_SECONDS,
        transients: tuple[Transient, ...] = TRANSIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.seconds = seconds
        self._transients = transients
        self._clock = clock
        self._first: dict[str, float] = {}
        self.held_back: Counter[str] = Counter()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno < logging.CRITICAL:
            return True
        try:
            key = next((k for t in self._transients if (k := t.key(record)) is not None), None)
        except Exception:  # a malformed call: let the handler report it as it would
            return True
        if key is None:
            return True
        now = self._clock()
        with self._lock:
            first = self._first.setdefault(key, now)
            lasting = now - first
            if lasting < self.seconds:
                self.held_back[key] += 1
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                record.transient = key
                return logging.getLogger().isEnabledFor(logging.DEBUG)
            held_back = self.held_back[key]
        record.transient = key
        record.lasting_seconds = round(lasting, 1)
        record.held_back = held_back
        return True


_shown: Counter[tuple[str, str]] = Counter()
_shown_lock = threading.Lock()


@contextlib.contextmanager
def shown_in_progress(logger: str, msg: str) -> Iterator[None]:
    """While a live progress bar shows what `msg` lines of `logger` say, leave them out
    of the human output (JSON lines keep them: they are the record)."""
    with _shown_lock:
        _shown[(logger, msg)] += 1
    try:
        yield
    finally:
        with _shown_lock:
            _shown[(logger, msg)] -= 1
            if _shown[(logger, msg)] <= 0:
                del _shown[(logger, msg)]


def _not_shown_in_progress(record: logging.LogRecord) -> bool:
    return not _shown or (record.name, str(record.msg)) not in _shown


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


def log_format(env: Mapping[str, str] | None = None) -> Literal["json", "human"]:
    """The format METERING_LOG_FORMAT asks for (auto: human on a terminal)."""
    chosen = (env if env is not None else os.environ).get(LOG_FORMAT_ENV, "auto").lower()
    if chosen in ("json", "human"):
        return "json" if chosen == "json" else "human"
    if chosen != "auto":
        raise ValueError(f"{LOG_FORMAT_ENV}={chosen!r}: must be auto, json or human")
    return "human" if sys.stderr.isatty() else "json"


def transient_seconds(env: Mapping[str, str] | None = None) -> float:
    """How long METERING_LOG_TRANSIENT_SECONDS holds a start-up transient at debug."""
    text = (env if env is not None else os.environ).get(TRANSIENT_SECONDS_ENV, "").strip()
    if not text:
        return TRANSIENT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(
            f"{TRANSIENT_SECONDS_ENV}={text!r}: must be a number of seconds, 0 or more "
            "(0 logs every start-up transient at its own level)"
        )
    return seconds


def configure_logging(level: str = "INFO") -> None:
    handler: logging.Handler
    if log_format() == "human":
        handler = _AboveProgressBars()
        handler.setFormatter(HumanFormatter())
        handler.addFilter(_not_shown_in_progress)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    handler.addFilter(StartupTransients(transient_seconds()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The stream libraries log message reprs at debug level; keep them quiet.
    for noisy in ("faust", "mode", "aiokafka", "kafka", "clickhouse_connect", "chdb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
