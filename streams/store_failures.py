"""Which failures of a flush step are worth waiting out, and what to say about the rest.

The sink retries a failed step with backoff. That is right for a store that is
restarting, overloaded or briefly unreachable: the same step with the same flush
number and deduplication tokens succeeds once the store is back. It is wrong for a
store that refuses the worker (bad password, missing grants) or whose schema does not
match this version, and for a bug: retrying those forever only hides them behind a
healthy-looking process. So every failure is classified:

  transient  retried with backoff for as long as it takes (counted, shown in /healthz)
  fatal      retried METERING_STORE_FATAL_TRIES times in case it was misjudged, then
             the worker stops with a message naming the cause and what to do

What clickhouse-connect raises (driver/exceptions.py, _backend/http_sync.py,
_backend/httpcommon.py, _backend/chdb_backend.py) and how it is judged:

  * a transport failure of the HTTP client (connection refused or reset, a read
    timeout, a server that closed the connection while restarting) is an
    `OperationalError` without a ClickHouse code, raised from urllib3: transient;
  * a server error is a `DatabaseError` (an `OperationalError` when it came back on a
    429/503/504 response after the client's own retries) with `code`, the number in
    the X-ClickHouse-Exception-Code header; the embedded engine raises the same class
    with the code parsed from its message. Transient exactly when the code is in
    TRANSIENT_CODES below; every other code is fatal;
  * an error response without a code (a proxy in front of the server) is judged by
    its HTTP status: 429, 502, 503 and 504 are transient;
  * the client's own check of an insert's column names against the table
    ("Unrecognized column ...", a `ProgrammingError`) is a schema mismatch: fatal;
  * anything else that is not a ClickHouse error is fatal unless it is a
    `ConnectionError` or `TimeoutError` (the injected outage of `streams.faults` is a
    `ConnectionError`): a TypeError in a flush step is a bug, and waiting fixes no bug.

Dead-letter publishing goes to Kafka, not the store, and is judged apart
(`classify_publish_error`): a broker error that Kafka marks retriable, or a timeout,
is transient; an authorization failure or a message the broker refuses is fatal.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Final

from clickhouse_connect.driver import exceptions as ch

__all__ = [
    "FATAL_ADVICE",
    "TRANSIENT_CODES",
    "Failure",
    "classify_publish_error",
    "classify_store_error",
    "is_transient",
]

# ClickHouse error codes (src/Common/ErrorCodes.cpp; names checked with errorCodeToName
# on the bundled engine) that describe a store which is busy, restarting or briefly
# cut off, never a request that is wrong. Retrying a flush step is safe for every one
# of them: each insert carries its flush's deduplication token, so a repeat of an
# insert that did land (UNKNOWN_STATUS_OF_INSERT, a timeout after the write) is dropped.
TRANSIENT_CODES: Final[dict[int, str]] = {
    # The server is overloaded or slow: it says so and sheds the statement.
    159: "TIMEOUT_EXCEEDED",  # ran past max_execution_time while the server was busy
    160: "TOO_SLOW",  # estimated to run past max_execution_time at the current speed
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",  # max_concurrent_queries reached
    203: "NO_FREE_CONNECTION",  # the server's own connection pool is exhausted
    241: "MEMORY_LIMIT_EXCEEDED",  # the server's total memory is taken by other queries
    439: "CANNOT_SCHEDULE_TASK",  # the server's thread pools are full
    745: "SERVER_OVERLOADED",
    762: "HTTP_CONNECTION_LIMIT_REACHED",
    # Inserts arrive faster than merges: ClickHouse pushes back until merges catch up.
    252: "TOO_MANY_PARTS",
    # The network between the server and something it needs, or the session itself.
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    373: "SESSION_IS_LOCKED",  # a previous statement of the HTTP session still runs
    # The server is shutting down or restarting: running statements are cancelled.
    394: "QUERY_WAS_CANCELLED",
    236: "ABORTED",
    733: "TABLE_IS_BEING_RESTARTED",
    # A replicated deployment waiting for Keeper or for replicas to come back.
    225: "NO_ZOOKEEPER",
    999: "KEEPER_EXCEPTION",
    242: "TABLE_IS_READ_ONLY",  # a replica lost its Keeper session; it reconnects
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    289: "REPLICA_IS_NOT_IN_QUORUM",
    279: "ALL_CONNECTION_TRIES_FAILED",
    519: "NO_REMOTE_SHARD_AVAILABLE",
    # The insert may or may not have landed; the deduplication token makes a retry safe.
    319: "UNKNOWN_STATUS_OF_INSERT",
}

_SCHEMA = (
    "the store's schema does not match this version of govmeter: run `metering migrate` "
    "against CLICKHOUSE_URL with this version, and check that nobody dropped or altered "
    "a metering table"
)
_CREDENTIALS = (
    "the store refused the worker's credentials: check the user and password in "
    "CLICKHOUSE_URL (http://user:password@host:8123)"
)
_GRANTS = (
    "the store's user in CLICKHOUSE_URL lacks a right the worker needs: grant it SELECT, "
    "INSERT and ALTER DELETE on metering.* (or use the writer user)"
)

# Codes that are fatal for a reason worth naming, with what to do. Any code missing
# from both tables is fatal too, with the generic advice.
FATAL_ADVICE: Final[dict[int, tuple[str, str]]] = {
    516: ("AUTHENTICATION_FAILED", _CREDENTIALS),
    192: ("UNKNOWN_USER", _CREDENTIALS),
    194: ("REQUIRED_PASSWORD", _CREDENTIALS),
    497: ("ACCESS_DENIED", _GRANTS),
    291: ("DATABASE_ACCESS_DENIED", _GRANTS),
    164: ("READONLY", _GRANTS),
    60: ("UNKNOWN_TABLE", _SCHEMA),
    81: ("UNKNOWN_DATABASE", _SCHEMA),
    47: ("UNKNOWN_IDENTIFIER", _SCHEMA),
    16: ("NO_SUCH_COLUMN_IN_TABLE", _SCHEMA),
    10: ("NOT_FOUND_COLUMN_IN_BLOCK", _SCHEMA),
    8: ("THERE_IS_NO_COLUMN", _SCHEMA),
    20: ("NUMBER_OF_COLUMNS_DOESNT_MATCH", _SCHEMA),
    53: ("TYPE_MISMATCH", _SCHEMA),
    243: (
        "NOT_ENOUGH_SPACE",
        "the ClickHouse server's disk is full: free space or grow the volume, then restart",
    ),
    62: (
        "SYNTAX_ERROR",
        "the server did not understand a statement of the worker: a server older than "
        "this version supports, or a bug (report it with this log line)",
    ),
}

_BUG = "a bug in govmeter, not a store problem: report it with this log line"
_UNKNOWN = (
    "retrying did not help: read the error above, fix the store or the configuration, "
    "then restart the worker (it resumes from the ledger)"
)

_TRANSIENT_HTTP_STATUSES: Final = frozenset({429, 502, 503, 504})
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_TRANSIENT_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
    }
)


@dataclass(frozen=True)
class Failure:
    """One failed attempt, judged."""

    transient: bool
    cause: str  # short and stable (a metric label): "TOO_MANY_PARTS", "TypeError", ...
    advice: str  # what to do; empty for a transient failure


def is_transient(error: BaseException) -> bool:
    """True when retrying the same store call later can succeed without anyone acting."""
    return classify_store_error(error).transient


def classify_store_error(error: BaseException) -> Failure:
    """Judge one failed store call (clickhouse-connect over HTTP or the embedded engine)."""
    if isinstance(error, ch.Error):
        return _clickhouse(error)
    if isinstance(error, ConnectionError | TimeoutError):
        return Failure(True, type(error).__name__, "")
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return Failure(True, errno.errorcode.get(error.errno or 0, type(error).__name__), "")
    return Failure(False, type(error).__name__, _BUG)


def _clickhouse(error: ch.Error) -> Failure:
    code = error.code
    if code is not None:
        if code in TRANSIENT_CODES:
            return Failure(True, TRANSIENT_CODES[code], "")
        name, advice = FATAL_ADVICE.get(code, (error.name or f"code {code}", _UNKNOWN))
        return Failure(False, name, advice)
    status = _HTTP_STATUS.search(str(error))
    if status is not None:  # an error response that carries no ClickHouse code
        number = int(status.group(1))
        if number in _TRANSIENT_HTTP_STATUSES:
            return Failure(True, f"HTTP {number}", "")
        if number in (401, 403):
            return Failure(False, f"HTTP {number}", _CREDENTIALS)
        return Failure(False, f"HTTP {number}", _UNKNOWN)
    if isinstance(error, ch.OperationalError):
        # No response at all: the HTTP client could not complete the exchange
        # (connection refused or reset, a timeout, the server closed the connection).
        return Failure(True, _transport_cause(error), "")
    if isinstance(error, ch.ProgrammingError) and str(error).startswith("Unrecognized column"):
        # The client compares an insert's column names with the table's own columns
        # before sending it (_backend/orchestration.py): the table lacks a column.
        return Failure(False, "UNRECOGNIZED_COLUMN", _SCHEMA)
    if isinstance(error, ch.ProgrammingError | ch.DataError | ch.InterfaceError):
        return Failure(False, type(error).__name__, _BUG)
    return Failure(False, type(error).__name__, _UNKNOWN)


def _transport_cause(error: BaseException) -> str:
    """The innermost cause's class (NewConnectionError, ReadTimeoutError, ...)."""
    seen: set[int] = set()
    current: BaseException = error
    while id(current) not in seen:
        seen.add(id(current))
        inner = current.__cause__ or current.__context__
        if inner is None:
            break
        current = inner
    return type(current).__name__


def classify_publish_error(error: BaseException) -> Failure:
    """Judge one failed dead-letter publish (the faust producer, i.e. aiokafka)."""
    if isinstance(error, ConnectionError | TimeoutError):
        return Failure(True, type(error).__name__, "")
    name = type(error).__name__
    if getattr(error, "retriable", False) or name == "KafkaTimeoutError":
        # aiokafka marks broker errors a retry can fix (leader moved, broker down,
        # request timed out); KafkaTimeoutError is the producer giving up waiting.
        return Failure(True, name, "")
    if "Authorization" in name:
        return Failure(
            False,
            name,
            "the worker's Kafka user may not write the dead-letter topic: grant it WRITE "
            "on METERING_DLQ_TOPIC, or point METERING_DLQ_TOPIC at a topic it may write",
        )
    if name == "MessageSizeTooLargeError":
        return Failure(
            False,
            name,
            "the broker refuses a dead-letter copy as too large: raise max.message.bytes "
            "of the METERING_DLQ_TOPIC topic (a copy holds up to 64 KiB of original "
            "bytes, JSON-escaped)",
        )
    if type(error).__module__.startswith(("aiokafka", "kafka")):
        return Failure(False, name, _UNKNOWN)
    return Failure(False, name, _BUG)
