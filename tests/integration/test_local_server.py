"""The local ClickHouse server of infra/clickhouse/: its scripts, its durability, its
users, readers while a worker counts, and the engine facts it rests on (each of which a
chdb upgrade could break: these tests fail loudly when one does)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clickhouse_driver import Client as NativeClient

from tests.integration.harness import (
    CORPUS,
    ROOT,
    MeteringRun,
    StoreServer,
    expected,
    free_port,
)

pytestmark = pytest.mark.integration

AGENCY_VIEWS_AND_TABLES = {
    "metering.agency_daily": "day",
    "metering.agency_monthly": "month",
    "metering.agency_daily_rollup": "day",
    "metering.model_daily_rollup": "day",
    "metering.agency_monthly_rollup": "month",
    "metering.model_monthly_rollup": "month",
}


def _http(
    server: StoreServer, sql: str, user: str = "default", password: str = ""
) -> tuple[int, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        server.url + "/", data=sql.encode(), headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "infra/clickhouse" / name)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_start_is_idempotent_and_stop_ends_only_its_own_server(tmp_path: Path) -> None:
    first = StoreServer.start_in(tmp_path / "a")
    second = StoreServer.start_in(tmp_path / "b")

    again = _script("start", first.env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("clickhouse: already running on " + first.url)
    assert (tmp_path / "a-server" / "clickhouse.log").is_file()

    stopped = _script("stop", first.env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("clickhouse: stopped (pid ")
    assert _http(second, "SELECT 1") == (200, "1\n")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(first.url + "/?query=SELECT%201", timeout=5)

    not_running = _script("stop", first.env)
    assert not_running.returncode == 0
    assert not_running.stdout.startswith("clickhouse: not running")


def test_a_busy_port_is_named_with_its_variable(tmp_path: Path) -> None:
    running = StoreServer.start_in(tmp_path / "a")
    clash = {
        "CLICKHOUSE_DATA_DIR": str(tmp_path / "b"),
        "CLICKHOUSE_HTTP_PORT": running.env["CLICKHOUSE_HTTP_PORT"],
        "CLICKHOUSE_TCP_PORT": str(free_port()),
    }
    result = _script("start", clash)
    assert result.returncode == 1
    assert f"CLICKHOUSE_HTTP_PORT={running.env['CLICKHOUSE_HTTP_PORT']} is in use" in result.stderr


def test_a_sigkilled_server_restarted_on_its_data_loses_nothing_committed(
    tmp_path: Path,
) -> None:
    server = StoreServer.start_in(tmp_path / "ch")
    assert _http(server, "CREATE DATABASE d")[0] == 200
    assert _http(server, "CREATE TABLE d.t (n UInt64) ENGINE = MergeTree ORDER BY n")[0] == 200
    for start in range(0, 5000, 1000):
        sql = f"INSERT INTO d.t SELECT number FROM numbers({start}, 1000)"
        assert _http(server, sql)[0] == 200
    server.kill()
    server.start()
    assert _http(server, "SELECT count(), sum(n) FROM d.t") == (200, f"5000\t{sum(range(5000))}\n")


def test_the_native_protocol_answers_on_the_tcp_port(tmp_path: Path) -> None:
    server = StoreServer.start_in(tmp_path / "ch")
    client = NativeClient(host="127.0.0.1", port=int(server.env["CLICKHOUSE_TCP_PORT"]))
    try:
        assert client.execute("SELECT 40 + 2, version()")[0][0] == 42
    finally:
        client.disconnect()


def test_stop_is_prompt_with_an_idle_keep_alive_connection_open(tmp_path: Path) -> None:
    import clickhouse_connect

    server = StoreServer.start_in(tmp_path / "ch")
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=int(server.env["CLICKHOUSE_HTTP_PORT"])
    )
    assert client.command("SELECT 1") == 1
    began = time.monotonic()
    server.stop()
    assert time.monotonic() - began < 4.5  # a held keep-alive made it about 5 s and a kill
    log = (server.server_dir / "clickhouse.log").read_text()
    assert "clickhouse: stopped" in log


_ENGINE_FACTS = r"""
import sys, threading, time, urllib.request
import chdb
from chdb import _chdb

# 1. chdb.connect cannot start listeners: only the one-shot entry point can.
try:
    chdb.connect(sys.argv[1] + "/connect").query("SYSTEM START LISTEN HTTP")
    print("connect-started")
except Exception as error:
    print("connect-refused" if "start_servers_callback" in str(error) else f"other: {error}")

# 2. The one-shot call serves for as long as it runs; its format is the HTTP default.
def keep() -> None:
    _chdb.query(
        "SYSTEM START LISTEN HTTP; SELECT sleepEachRow(1) FROM numbers(3) "
        "SETTINGS max_block_size = 1", "TSV", path=sys.argv[1] + "/data")

thread = threading.Thread(target=keep)
thread.start()
for _ in range(100):
    try:
        body = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{sys.argv[2]}/", data=b"SELECT 1, 'a'"), timeout=2).read()
        break
    except OSError:
        time.sleep(0.1)
print("default-format-tsv" if body == b"1\ta\n" else f"format: {body!r}")
thread.join()

# 3. The listeners start once per process.
try:
    answer = _chdb.query("SYSTEM START LISTEN HTTP; SELECT 1", "TSV", path=sys.argv[1] + "/data")
    print("second-start-worked" if str(answer).strip() == "1" else "second-start-refused")
except Exception:
    print("second-start-refused")
"""


def test_the_engine_facts_the_local_server_rests_on(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "config.xml").write_text(
        f"<clickhouse><http_port>{port}</http_port><tcp_port>{free_port()}</tcp_port>"
        "<listen_host>127.0.0.1</listen_host></clickhouse>"
    )
    result = subprocess.run(
        [sys.executable, "-c", _ENGINE_FACTS, str(tmp_path), str(port)],
        cwd=tmp_path,  # config.xml is read from the working directory
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.split() == [
        "connect-refused",
        "default-format-tsv",
        "second-start-refused",
    ], result.stdout + result.stderr[-2000:]


@pytest.fixture(scope="module")
def counted(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> MeteringRun:
    """The corpus counted once, with a user for one agency; shared by the user tests."""
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("users"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    return run


def _agency_with_most_rows(run: MeteringRun) -> str:
    rows = run.query(
        "SELECT agency_id, count() AS n FROM metering.agency_daily "
        "GROUP BY agency_id ORDER BY n DESC, agency_id LIMIT 1"
    )
    return str(rows[0]["agency_id"])


def _apply_agency_user(run: MeteringRun, agency: str) -> str:
    result = run.metering("access", "agency-user", "--agency", agency, "--apply")
    assert result.returncode == 0, result.stderr
    assert "restart it for the user to take effect" in result.stdout
    [password_line] = [line for line in result.stdout.splitlines() if "shown once" in line]
    password = password_line.rsplit(" ", 1)[1]
    user_file = run.store.server_dir / "users.d" / f"govmeter_agency_{agency.replace('-', '_')}.xml"
    assert password not in user_file.read_text()  # only its sha256 is stored
    run.store.stop()
    run.store.start()
    return password


def test_an_agency_user_reads_exactly_its_own_rows_and_nothing_else(counted: MeteringRun) -> None:
    run = counted
    agency = _agency_with_most_rows(run)
    password = _apply_agency_user(run, agency)
    user = f"govmeter_agency_{agency.replace('-', '_')}"

    for name, key in AGENCY_VIEWS_AND_TABLES.items():
        columns = "agency_id, toString(" + key + ")"
        sql = f"SELECT {columns} FROM {name} ORDER BY {columns} FORMAT TSV"
        mine = _http(run.store, sql, user, password)
        assert mine[0] == 200, (name, mine)
        everyone = _http(
            run.store,
            f"SELECT {columns} FROM {name} WHERE agency_id = '{agency}' "
            f"ORDER BY {columns} FORMAT TSV",
        )
        assert mine[1] == everyone[1], name
        assert mine[1].count("\n") == everyone[1].count("\n") and mine[1], name
        assert {line.split("\t")[0] for line in mine[1].splitlines()} == {agency}, name

    # monthly_totals, read through the filtered rollup: the agency's own totals.
    totals = _http(
        run.store,
        "SELECT agencies, messages FROM metering.monthly_totals ORDER BY month, tenant",
        user,
        password,
    )
    own = _http(
        run.store,
        "SELECT uniqExact(agency_id), sum(messages) FROM metering.agency_monthly "
        f"WHERE agency_id = '{agency}' GROUP BY month, tenant ORDER BY month, tenant",
    )
    assert totals == own

    for forbidden in (
        "SELECT count() FROM metering.counted_events",
        "SELECT count() FROM metering.flush_ledger",
        "SELECT count() FROM metering.tenant_daily_rollup",
        "SELECT name FROM system.users",
        "INSERT INTO metering.agency_daily_rollup (tenant) VALUES ('x')",
        "CREATE TABLE metering.mine (a UInt8) ENGINE = Memory",
    ):
        status, body = _http(run.store, forbidden, user, password)
        assert status != 200, forbidden
        assert "ACCESS_DENIED" in body or "READONLY" in body, (forbidden, body)
    status, body = _http(
        run.store, "SELECT count() FROM metering.agency_daily SETTINGS readonly = 0", user, password
    )
    assert status != 200 and "READONLY" in body
    status, body = _http(run.store, "SELECT 1", user, "wrong-password")
    assert status != 200 and "AUTHENTICATION_FAILED" in body


def test_the_reporter_reads_every_view_and_writes_nothing(counted: MeteringRun) -> None:
    run = counted
    password = run.store.reporter_password()
    golden = expected()
    status, body = _http(
        run.store, "SELECT sum(messages) FROM metering.agency_daily", "reporter", password
    )
    assert (status, int(body)) == (200, sum(row["messages"] for row in golden["agency_daily"]))
    for view in ("agency_monthly", "monthly_totals", "rejected_events"):
        assert (
            _http(run.store, f"SELECT count() FROM metering.{view}", "reporter", password)[0] == 200
        )
    status, body = _http(
        run.store,
        "INSERT INTO metering.flush_applied (flush_seq) VALUES (999999)",
        "reporter",
        password,
    )
    assert status != 200 and ("READONLY" in body or "ACCESS_DENIED" in body), body
    assert password not in (run.store.server_dir / "users.xml").read_text()  # sha256 only
    assert run.query(
        "SELECT count() AS n FROM metering.flush_applied WHERE flush_seq = 999999"
    ) == [{"n": 0}]


def test_readers_see_numbers_grow_while_a_worker_counts(run: MeteringRun) -> None:
    lines = CORPUS.read_bytes().splitlines(keepends=True)
    first, second = run.workdir / "first.jsonl", run.workdir / "second.jsonl"
    first.write_bytes(b"".join(lines[0::2]))  # the corpus ends with its bad lines: interleave
    second.write_bytes(b"".join(lines[1::2]))
    run.metering("migrate")
    worker = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker"],
        env=run.env,
        cwd=run.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sums: list[int] = []
        for part in (first, second):
            run.replay(part)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                result = run.metering(
                    "query",
                    "SELECT sum(messages) AS n FROM metering.agency_daily",
                    "--format",
                    "csv",
                )
                assert result.returncode == 0, result.stderr  # readable while it counts
                value = int(result.stdout.splitlines()[-1] or 0)
                status, body = _http(run.store, "SELECT sum(messages) FROM metering.agency_daily")
                assert status == 200
                if value and (not sums or value > sums[-1]) and int(body) >= value:
                    sums.append(value)
                    break
                time.sleep(0.3)
        assert len(sums) == 2 and sums[0] < sums[1], sums
        assert worker.poll() is None, "the worker must still be running"
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr[-3000:]
    golden = expected()
    total = sum(row["messages"] for row in golden["agency_daily"])
    assert run.query("SELECT sum(messages) AS n FROM metering.agency_daily") == [{"n": total}]


def test_a_store_outage_is_a_sigkill_of_the_server_and_counts_stay_exact(
    run: MeteringRun,
) -> None:
    golden = expected()
    run.replay(CORPUS)
    run.metering("migrate")
    worker = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker", "--until-idle", "2"],
        env={
            **run.env,
            "METERING_BATCH_MAX_EVENTS": "300",
            "METERING_STORE_RETRY_MAX_SECONDS": "1",
        },
        cwd=run.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill the store once counting has begun
            status, body = _http(run.store, "SELECT count() FROM metering.flush_ledger")
            if status == 200 and int(body) > 0:
                break
            time.sleep(0.05)
        run.store.kill()
        time.sleep(3)  # the worker meets a dead store for a while
        assert worker.poll() is None, "a store outage must not stop the worker"
        run.store.start()
        _, stderr = worker.communicate(timeout=240)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr[-3000:]
    assert "store step failed, retrying" in stderr
    views = run.views()
    for view in ("agency_daily", "agency_monthly", "monthly_totals"):
        assert views[view] == golden[view], view
    assert run.rejected_by_reason() == golden["rejected"]
