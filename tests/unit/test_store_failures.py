"""The failure policy: which store and dead-letter failures are retried, which stop the worker.

Every ClickHouse error here is raised by clickhouse-connect itself: over HTTP against a
small local server that answers the way ClickHouse answers an error (status, the
X-ClickHouse-Exception-Code header, the exception text), against ports that refuse,
reset or never answer, and by the embedded engine on real statements.
"""

from __future__ import annotations

import asyncio
import errno
import http.server
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import clickhouse_connect
import pytest
from aiokafka import errors as kafka_errors
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from metering.health import WorkerHealth
from schemas.rejections import classify
from store.ledger import Ledger
from streams.batch import SourceMessage, assemble_batch
from streams.faults import InjectedStoreOutage
from streams.metrics import Metrics
from streams.sink import ClickHouseSink, DeadLetterFailureError, StoreFailureError
from streams.store_failures import (
    FATAL_ADVICE,
    TRANSIENT_CODES,
    Failure,
    classify_publish_error,
    classify_store_error,
    is_transient,
)

SCHEMA_ADVICE = "run `metering migrate` against CLICKHOUSE_URL"


# ---------------------------------------------------------------------------------
# Errors as clickhouse-connect raises them


class _ClickHouseLike(http.server.BaseHTTPRequestHandler):
    """Answers every request with the configured error, as ClickHouse's HTTP handler does."""

    answer: tuple[int, str | None, str] = (500, None, "")

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, code, body = self.answer
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        if code is not None:
            self.send_header("X-ClickHouse-Exception-Code", code)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _reply
    do_POST = _reply

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def clickhouse_answering() -> Iterator[Callable[[int, str | None, str], Exception]]:
    """`raised(status, code, body)`: the exception clickhouse-connect raises for that answer."""
    handler: type[_ClickHouseLike] = type("Handler", (_ClickHouseLike,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def raised(status: int, code: str | None, body: str) -> Exception:
        handler.answer = (status, code, body)
        try:
            clickhouse_connect.get_client(
                host="127.0.0.1", port=server.server_address[1], connect_timeout=2
            )
        except Exception as error:
            return error
        raise AssertionError("the client connected to a server that answers errors only")

    yield raised
    server.shutdown()
    server.server_close()


def _body(code: int, name: str, text: str) -> str:
    return f"Code: {code}. DB::Exception: {text}. ({name}) (version 25.8.2.29 (official build))"


@pytest.mark.parametrize(
    ("status", "code", "name", "text"),
    [
        (500, 252, "TOO_MANY_PARTS", "Too many parts (3001) in table 'metering.counted_events'"),
        (500, 159, "TIMEOUT_EXCEEDED", "Timeout exceeded: elapsed 30.1 seconds"),
        (503, 202, "TOO_MANY_SIMULTANEOUS_QUERIES", "Too many simultaneous queries"),
        (500, 394, "QUERY_WAS_CANCELLED", "Query was cancelled"),
        (500, 210, "NETWORK_ERROR", "Connection reset by peer, while writing to socket"),
        (500, 241, "MEMORY_LIMIT_EXCEEDED", "Memory limit (total) exceeded"),
        (500, 319, "UNKNOWN_STATUS_OF_INSERT", "Unknown status of insert"),
    ],
)
def test_server_errors_with_a_transient_code_are_retried(
    clickhouse_answering: Callable[[int, str | None, str], Exception],
    status: int,
    code: int,
    name: str,
    text: str,
) -> None:
    error = clickhouse_answering(status, str(code), _body(code, name, text))
    assert isinstance(error, DatabaseError)
    assert error.code == code
    failure = classify_store_error(error)
    assert (failure.transient, failure.cause, failure.advice) == (True, name, "")
    assert is_transient(error)


@pytest.mark.parametrize(
    ("status", "code", "name", "text", "advice"),
    [
        (
            401,
            516,
            "AUTHENTICATION_FAILED",
            "default: Authentication failed: password is incorrect",
            "check the user and password in CLICKHOUSE_URL",
        ),
        (
            404,
            60,
            "UNKNOWN_TABLE",
            "Unknown table expression 'metering.flush_ledger'",
            SCHEMA_ADVICE,
        ),
        (404, 47, "UNKNOWN_IDENTIFIER", "Missing columns: 'flush_seq'", SCHEMA_ADVICE),
        (404, 16, "NO_SUCH_COLUMN_IN_TABLE", "There is no column 'model' in table", SCHEMA_ADVICE),
        (403, 497, "ACCESS_DENIED", "metering: Not enough privileges", "grant it SELECT"),
        (507, 243, "NOT_ENOUGH_SPACE", "Cannot reserve 1.00 MiB", "disk is full"),
    ],
)
def test_server_errors_that_retrying_cannot_fix_are_fatal_with_what_to_do(
    clickhouse_answering: Callable[[int, str | None, str], Exception],
    status: int,
    code: int,
    name: str,
    text: str,
    advice: str,
) -> None:
    error = clickhouse_answering(status, str(code), _body(code, name, text))
    assert isinstance(error, DatabaseError) and error.code == code
    failure = classify_store_error(error)
    assert (failure.transient, failure.cause) == (False, name)
    assert advice in failure.advice


def test_an_unlisted_code_is_fatal_and_keeps_its_name(
    clickhouse_answering: Callable[[int, str | None, str], Exception],
) -> None:
    error = clickhouse_answering(400, "62", _body(62, "SYNTAX_ERROR", "Syntax error"))
    assert classify_store_error(error).cause == "SYNTAX_ERROR"
    error = clickhouse_answering(500, "49", _body(49, "LOGICAL_ERROR", "Logical error"))
    failure = classify_store_error(error)
    assert (failure.transient, failure.cause) == (False, "LOGICAL_ERROR")
    assert "restart the worker" in failure.advice


@pytest.mark.parametrize(
    ("status", "transient"), [(502, True), (504, True), (429, True), (403, False), (400, False)]
)
def test_errors_without_a_clickhouse_code_are_judged_by_http_status(
    clickhouse_answering: Callable[[int, str | None, str], Exception], status: int, transient: bool
) -> None:
    error = clickhouse_answering(status, None, "<html>proxy says no</html>")
    assert getattr(error, "code", "absent") is None
    assert classify_store_error(error).transient is transient
    assert classify_store_error(error).cause == f"HTTP {status}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connection_refused_is_transient() -> None:
    with pytest.raises(OperationalError) as raised:
        clickhouse_connect.get_client(host="127.0.0.1", port=_free_port(), connect_timeout=2)
    failure = classify_store_error(raised.value)
    assert (failure.transient, failure.cause) == (True, "ConnectionRefusedError")


def _serve_raw(behaviour: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            behaviour(connection)

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1]), listener


def test_a_server_that_never_answers_times_out_transiently() -> None:
    held: list[socket.socket] = []
    port, listener = _serve_raw(held.append)
    try:
        with pytest.raises(OperationalError) as raised:
            clickhouse_connect.get_client(
                host="127.0.0.1", port=port, connect_timeout=1, send_receive_timeout=1
            )
    finally:
        listener.close()
        for connection in held:
            connection.close()
    failure = classify_store_error(raised.value)
    assert (failure.transient, failure.cause) == (True, "TimeoutError")


def test_a_connection_reset_by_a_restarting_server_is_transient() -> None:
    def reset(connection: socket.socket) -> None:
        connection.recv(4096)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        connection.close()

    port, listener = _serve_raw(reset)
    try:
        with pytest.raises(OperationalError) as raised:
            clickhouse_connect.get_client(host="127.0.0.1", port=port, connect_timeout=2)
    finally:
        listener.close()
    failure = classify_store_error(raised.value)
    # A reset read as such, or as http.client's RemoteDisconnected (a ConnectionResetError).
    assert failure.transient is True
    assert failure.cause in ("ConnectionResetError", "RemoteDisconnected")


@pytest.fixture(scope="module")
def engine() -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn="chdb://:memory:", settings={"async_insert": 0})
    yield client
    client.close()


def test_the_embedded_engine_raises_the_same_codes(engine: Client) -> None:
    table = f"parts_{uuid.uuid4().hex[:8]}"
    engine.command(
        f"CREATE TABLE {table} (x UInt8) ENGINE = MergeTree ORDER BY x "
        "SETTINGS parts_to_throw_insert = 1, parts_to_delay_insert = 0"
    )
    engine.command(f"SYSTEM STOP MERGES {table}")
    engine.insert(table, [[1]], column_names=["x"])
    with pytest.raises(DatabaseError) as too_many:
        engine.insert(table, [[2]], column_names=["x"])
    assert (too_many.value.code, classify_store_error(too_many.value).transient) == (252, True)

    with pytest.raises(DatabaseError) as unknown:
        engine.query("SELECT flush_seq FROM metering_nowhere.flush_ledger")
    failure = classify_store_error(unknown.value)
    assert (failure.transient, failure.cause) == (False, "UNKNOWN_DATABASE")
    assert SCHEMA_ADVICE in failure.advice

    with pytest.raises(DatabaseError) as missing_column:
        engine.query(f"SELECT no_such_column FROM {table}")
    assert classify_store_error(missing_column.value).cause == "UNKNOWN_IDENTIFIER"


def test_an_insert_naming_a_column_the_table_lacks_is_a_schema_mismatch(engine: Client) -> None:
    table = f"narrow_{uuid.uuid4().hex[:8]}"
    engine.command(f"CREATE TABLE {table} (x UInt8) ENGINE = MergeTree ORDER BY x")
    with pytest.raises(Exception) as raised:
        engine.insert(table, [[1, 2]], column_names=["x", "y"])
    failure = classify_store_error(raised.value)
    assert (failure.transient, failure.cause) == (False, "UNRECOGNIZED_COLUMN")
    assert SCHEMA_ADVICE in failure.advice


def test_programming_errors_are_fatal_and_called_a_bug() -> None:
    errors: list[BaseException] = []
    empty: dict[str, int] = {}
    for broken in (lambda: cast(Any, None) + 1, lambda: empty["flush_seq"], lambda: int("x")):
        try:
            broken()
        except Exception as error:
            errors.append(error)
    assert [classify_store_error(e).cause for e in errors] == [
        "TypeError",
        "KeyError",
        "ValueError",
    ]
    assert all(not is_transient(e) and "a bug" in classify_store_error(e).advice for e in errors)


def test_plain_network_errors_are_transient() -> None:
    assert is_transient(InjectedStoreOutage("store unavailable (injected outage)"))
    assert is_transient(TimeoutError("timed out"))
    assert is_transient(OSError(errno.ECONNRESET, "reset"))
    assert classify_store_error(OSError(errno.ECONNRESET, "reset")).cause == "ConnectionResetError"
    unreachable = OSError(errno.EHOSTUNREACH, "no route to host")
    assert classify_store_error(unreachable) == Failure(True, "EHOSTUNREACH", "")
    assert not is_transient(OSError(errno.ENOENT, "no such file"))


def test_the_code_tables_do_not_overlap() -> None:
    assert set(TRANSIENT_CODES).isdisjoint(FATAL_ADVICE)
    assert {516, 60, 47, 16} <= set(FATAL_ADVICE)
    assert {252, 159, 209, 210, 394} <= set(TRANSIENT_CODES)


def test_dead_letter_publish_errors() -> None:
    judged = {
        name: classify_publish_error(error)
        for name, error in {
            "connection": kafka_errors.KafkaConnectionError("broker down"),
            "timeout": kafka_errors.KafkaTimeoutError(),
            "leader": kafka_errors.NotLeaderForPartitionError(),
            "authorization": kafka_errors.TopicAuthorizationFailedError(),
            "too_large": kafka_errors.MessageSizeTooLargeError(),
            "bug": TypeError("unsupported operand"),
        }.items()
    }
    assert {name: f.transient for name, f in judged.items()} == {
        "connection": True,
        "timeout": True,
        "leader": True,
        "authorization": False,
        "too_large": False,
        "bug": False,
    }
    assert "METERING_DLQ_TOPIC" in judged["authorization"].advice
    assert "max.message.bytes" in judged["too_large"].advice
    assert "a bug" in judged["bug"].advice


# ---------------------------------------------------------------------------------
# The sink's retry loop


class _Letters:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = list(failures or [])
        self.published: list[bytes] = []
        self.calls = 0

    async def publish(self, letters: Any) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.published.extend(letter.value for letter in letters)


def _sink(
    metrics: Metrics, client: Any = None, *, fatal_tries: int = 3, letters: Any = None
) -> ClickHouseSink:
    return ClickHouseSink(
        Ledger(cast(Client, client or object())),
        letters or _Letters(),
        writer_no=1,
        worker="test",
        fatal_tries=fatal_tries,
        retry_first_seconds=0.001,
        retry_max_seconds=0.002,
        metrics=metrics,
    )


def _failing(errors: list[Exception], result: str = "done") -> tuple[Callable[[], Any], list[int]]:
    calls = [0]

    async def attempt() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return attempt, calls


def _server_error(code: int, name: str) -> DatabaseError:
    return DatabaseError(_body(code, name, "x"), code=code, name=name)


def test_transient_store_failures_are_retried_until_they_pass_and_counted() -> None:
    metrics = Metrics()
    sink = _sink(metrics)
    attempt, calls = _failing([_server_error(252, "TOO_MANY_PARTS")] * 4 + [InjectedStoreOutage()])
    assert asyncio.run(sink._retry("commit flush", attempt)) == "done"
    sink.close()
    assert calls == [6]
    failures = metrics.store_failures
    assert (metrics.store_errors.value, failures.transient.value, failures.fatal.value) == (5, 5, 0)
    assert dict(failures.by_cause) == {
        ("TOO_MANY_PARTS", True): 4,
        ("InjectedStoreOutage", True): 1,
    }
    assert failures.last is not None and failures.last["cause"] == "InjectedStoreOutage"
    assert metrics.dead_letter_failures.total.value == 0


@pytest.mark.parametrize("tries", [1, 3, 5])
def test_a_fatal_store_failure_stops_after_the_configured_tries(tries: int) -> None:
    metrics = Metrics()
    sink = _sink(metrics, fatal_tries=tries)
    attempt, calls = _failing([_server_error(516, "AUTHENTICATION_FAILED")] * 10)
    with pytest.raises(StoreFailureError) as raised:
        asyncio.run(sink._retry("commit flush", attempt))
    sink.close()
    assert calls == [tries]
    assert (metrics.store_failures.fatal.value, metrics.store_failures.transient.value) == (
        tries,
        0,
    )
    message = str(raised.value)
    assert message.startswith(
        f"commit flush: the store failed {tries} time(s) with AUTHENTICATION_FAILED"
    )
    assert "check the user and password in CLICKHOUSE_URL" in message
    assert "resumes from the ledger" in message


def test_transient_failures_do_not_use_up_the_fatal_tries() -> None:
    metrics = Metrics()
    sink = _sink(metrics)
    outage, bug = InjectedStoreOutage(), TypeError("unsupported operand")
    attempt, calls = _failing([outage, bug, outage, bug, outage, outage, bug, outage])
    with pytest.raises(StoreFailureError, match="with TypeError, which retrying does not fix"):
        asyncio.run(sink._retry("apply rollups", attempt))
    sink.close()
    assert calls == [7]  # the third TypeError ends it
    assert (metrics.store_failures.transient.value, metrics.store_failures.fatal.value) == (4, 3)


def test_dead_letter_failures_are_counted_apart_from_the_store() -> None:
    metrics = Metrics()
    sink = _sink(metrics)
    attempt, calls = _failing([kafka_errors.KafkaConnectionError()] * 2)
    asyncio.run(sink._retry("publish dead letters", attempt, kind="dead_letters"))
    assert calls == [2 + 1]
    assert (metrics.dead_letter_failures.total.value, metrics.store_errors.value) == (2, 0)
    attempt, calls = _failing([kafka_errors.TopicAuthorizationFailedError()] * 5)
    with pytest.raises(DeadLetterFailureError) as raised:
        asyncio.run(sink._retry("publish dead letters", attempt, kind="dead_letters"))
    sink.close()
    assert calls == [3]
    assert "the dead-letter topic (METERING_DLQ_TOPIC) failed 3 time(s)" in str(raised.value)
    assert dict(metrics.dead_letter_failures.by_cause) == {
        ("KafkaConnectionError", True): 2,
        ("TopicAuthorizationFailedError", False): 3,
    }
    assert metrics.store_errors.value == 0


class _Result:
    def __init__(self, rows: list[list[Any]]) -> None:
        self.result_rows = rows


class _StoreWithoutLedgerColumn:
    """A client whose ledger table lacks a column: the commit insert is refused."""

    def __init__(self) -> None:
        self.inserted: list[str] = []
        self.commit_tries = 0

    def query(self, sql: str, parameters: Any = None) -> _Result:
        return _Result([])

    def command(self, sql: str, parameters: Any = None) -> None:
        if sql.startswith("INSERT INTO metering.flush_ledger"):
            self.commit_tries += 1
            raise DatabaseError(
                _body(16, "NO_SUCH_COLUMN_IN_TABLE", "No such column worker in table"),
                code=16,
                name="NO_SUCH_COLUMN_IN_TABLE",
            )
        self.inserted.append("rollup")

    def insert(self, table: str, rows: Any, column_names: Any, settings: Any = None) -> None:
        self.inserted.append(table)

    def insert_arrow(self, table: str, columns: Any, settings: Any = None) -> None:
        self.inserted.append(table)


VALID = (
    b'{"schema_version":1,"event_id":"7d3f0f4e-5b8e-4a53-9d55-3f1c2a9e8b10",'
    b'"occurred_at":"2026-11-02T14:03:12.345Z","tenant":"chatgpt-gov","agency_id":"fed-gsa",'
    b'"agency_level":"federal","user_id":"u1","conversation_id":"c1","model":"gpt-4o",'
    b'"tokens_in":10,"tokens_out":20}'
)


def _batch() -> Any:
    valid = SourceMessage("usage.events", 0, 0, None, VALID)
    broken = SourceMessage("usage.events", 0, 1, None, b"{not json")
    return assemble_batch([(m, classify(m.value)) for m in (valid, broken)])


def test_a_flush_whose_commit_meets_a_schema_mismatch_stops_without_committing() -> None:
    metrics, store, letters = Metrics(), _StoreWithoutLedgerColumn(), _Letters()
    sink = _sink(metrics, store, letters=letters)
    with pytest.raises(StoreFailureError) as raised:
        asyncio.run(sink.flush(_batch()))
    sink.close()
    assert store.commit_tries == 3
    assert store.inserted == ["metering.counted_events", "metering.rejections_log"]
    assert len(letters.published) == 1  # the dead letter went out before the commit
    assert metrics.flushes.value == 0 and metrics.counted.value == 0
    assert "commit flush: the store failed 3 time(s) with NO_SUCH_COLUMN_IN_TABLE" in str(
        raised.value
    )
    assert SCHEMA_ADVICE in str(raised.value)


def test_a_flush_retries_dead_letters_then_commits() -> None:
    class _Store(_StoreWithoutLedgerColumn):
        """Commits and folds succeed; the commit read back holds this flush."""

        committed: tuple[int, int] | None = None

        def command(self, sql: str, parameters: Any = None) -> None:
            if sql.startswith("INSERT INTO metering.flush_ledger"):
                row = json.loads(parameters["rows_json"].splitlines()[0])
                self.committed = (row["flush_seq"], row["writer_no"])
                self.inserted.append("metering.flush_ledger")
            else:
                self.inserted.append("rollup")

        def query(self, sql: str, parameters: Any = None) -> _Result:
            if "WHERE commit_seq = {commit_seq:UInt64}" in sql and self.committed:
                return _Result([list(self.committed)])
            if "FROM metering.flush_applied WHERE flush_seq" in sql:
                return _Result([[1]])
            if "FROM metering.store_leases" in sql:
                return _Result([[1]])  # the corrections lease is free
            return _Result([])

    metrics, store = Metrics(), _Store()
    letters = _Letters([kafka_errors.KafkaConnectionError(), kafka_errors.RequestTimedOutError()])
    sink = _sink(metrics, store, letters=letters)
    result = asyncio.run(sink.flush(_batch()))
    sink.close()
    assert (result.counted, result.rejected, result.commit_seq) == (1, 1, 1)
    assert letters.calls == 3 and len(letters.published) == 1
    assert metrics.dead_letter_failures.total.value == 2
    assert metrics.store_errors.value == 0
    assert store.inserted.count("metering.flush_ledger") == 1


# ---------------------------------------------------------------------------------
# /healthz and /metrics


class _Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_healthz_shows_store_and_dead_letter_failures_apart() -> None:
    metrics, clock = Metrics(), _Clock()
    health = WorkerHealth(metrics, retry_max_seconds=10, clock=clock)
    metrics.record_store_failure(classify_store_error(_server_error(252, "TOO_MANY_PARTS")), "x")
    health.observe()
    clock.now += 4
    metrics.record_dead_letter_failure(classify_publish_error(kafka_errors.KafkaTimeoutError()))
    health.observe()
    clock.now += 6
    state = health.state()
    last_store = cast(dict[str, object], state.pop("store_last_error"))
    last_letter = cast(dict[str, object], state.pop("dead_letter_last_error"))
    assert state == {
        "uptime_seconds": 10.0,
        "last_flush_age_seconds": None,
        "store_errors": 1,
        "store_transient_errors": 1,
        "store_fatal_errors": 0,
        "store_failing_seconds": 10.0,
        "dead_letter_errors": 1,
        "dead_letter_failing_seconds": 6.0,
        "offsets_expired": 0,
    }
    assert {k: last_store[k] for k in ("step", "cause", "transient")} == {
        "step": "x",
        "cause": "TOO_MANY_PARTS",
        "transient": True,
    }
    assert last_letter["cause"] == "KafkaTimeoutError"
    metrics.flushes.inc()
    clock.now += 1
    state = health.state()
    assert (state["store_failing_seconds"], state["dead_letter_failing_seconds"]) == (0.0, 0.0)


def test_metrics_text_lists_failures_by_cause_and_expired_offsets() -> None:
    metrics = Metrics()
    for error in (_server_error(252, "TOO_MANY_PARTS"), _server_error(252, "TOO_MANY_PARTS")):
        metrics.record_store_failure(classify_store_error(error), "commit flush")
    metrics.record_store_failure(classify_store_error(TypeError()), "commit flush")
    metrics.record_dead_letter_failure(classify_publish_error(kafka_errors.KafkaTimeoutError()))
    assert metrics.record_expired("usage.events", 2, 100, 130)
    assert not metrics.record_expired("usage.events", 2, 100, 130)  # the same gap, seen again
    assert metrics.record_expired("usage.events", 2, 200, 205)
    assert metrics.record_expired("usage.events", 2, 200, 210)  # more deleted since
    assert not metrics.record_expired("usage.events", 2, 200, 207)
    text = metrics.prometheus()
    block = text[
        text.index("# TYPE govmeter_store_errors_total") : text.index(
            "# TYPE govmeter_flush_seconds_last"
        )
    ]
    assert block == (
        "# TYPE govmeter_store_errors_total counter\n"
        "govmeter_store_errors_total 3\n"
        "# TYPE govmeter_store_transient_errors_total counter\n"
        "govmeter_store_transient_errors_total 2\n"
        "# TYPE govmeter_store_fatal_errors_total counter\n"
        "govmeter_store_fatal_errors_total 1\n"
        "# TYPE govmeter_store_errors_by_cause_total counter\n"
        'govmeter_store_errors_by_cause_total{cause="TOO_MANY_PARTS",transient="true"} 2\n'
        'govmeter_store_errors_by_cause_total{cause="TypeError",transient="false"} 1\n'
        "# TYPE govmeter_dead_letter_errors_total counter\n"
        "govmeter_dead_letter_errors_total 1\n"
        "# TYPE govmeter_dead_letter_errors_by_cause_total counter\n"
        'govmeter_dead_letter_errors_by_cause_total{cause="KafkaTimeoutError",transient="true"} 1\n'
        "# TYPE govmeter_offsets_expired_total counter\n"
        'govmeter_offsets_expired_total{topic="usage.events",partition="2"} 40\n'
    )
    summary = metrics.summary()
    assert summary["store_errors_by_cause"] == {"TOO_MANY_PARTS": 2, "TypeError": 1}
    assert summary["offsets_expired"] == {"usage.events[2]": 40}  # 100..129 and 200..209


def _constant(state: dict[str, object]) -> Callable[[], dict[str, object]]:
    return lambda: state


def test_healthz_is_503_when_dead_letters_fail_too_long() -> None:
    import json
    import urllib.error
    import urllib.request

    from metering.health import start_health_server

    states: list[dict[str, object]] = [
        {"store_failing_seconds": 0.0, "dead_letter_failing_seconds": 59.0},
        {"store_failing_seconds": 0.0, "dead_letter_failing_seconds": 61.0},
        {"store_failing_seconds": 61.0, "dead_letter_failing_seconds": 61.0},
    ]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(url: str) -> tuple[int, dict[str, object]]:
        try:
            with direct.open(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    async def run() -> list[tuple[int, object]]:
        answers = []
        for state in states:
            runner = await start_health_server(
                "127.0.0.1", 0, Metrics(), _constant(state), unhealthy_after_seconds=60
            )
            try:
                host, port = runner.addresses[0][:2]
                status, body = await asyncio.to_thread(get, f"http://{host}:{port}/healthz")
                answers.append((status, body["status"]))
            finally:
                await runner.cleanup()
        return answers

    assert asyncio.run(run()) == [
        (200, "ok"),
        (503, "dead_letters_unavailable"),
        (503, "store_unavailable"),
    ]
