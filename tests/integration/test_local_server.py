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
from clickhouse_driver.errors import Error as NativeError

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
    server: StoreServer, sql: str, user: str | None = None, password: str | None = None
) -> tuple[int, str]:
    """`sql` over HTTP as `user` (the writer by default; "" sends no credentials)."""
    if user is None:
        user, password = "govmeter_writer", server.writer_password()
    headers = {}
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(server.url + "/", data=sql.encode(), headers=headers)
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
    assert _http(server, "CREATE DATABASE IF NOT EXISTS metering")[0] == 200
    table = "metering.durability_test"
    assert _http(server, f"CREATE TABLE {table} (n UInt64) ENGINE = MergeTree ORDER BY n")[0] == 200
    for start in range(0, 5000, 1000):
        sql = f"INSERT INTO {table} SELECT number FROM numbers({start}, 1000)"
        assert _http(server, sql)[0] == 200
    server.kill()
    server.start()
    assert _http(server, f"SELECT count(), sum(n) FROM {table}") == (
        200,
        f"5000\t{sum(range(5000))}\n",
    )


def test_the_native_protocol_answers_on_the_tcp_port(tmp_path: Path) -> None:
    server = StoreServer.start_in(tmp_path / "ch")
    client = NativeClient(
        host="127.0.0.1",
        port=int(server.env["CLICKHOUSE_TCP_PORT"]),
        user="govmeter_writer",
        password=server.writer_password(),
    )
    try:
        assert client.execute("SELECT 40 + 2, currentUser()")[0] == (42, "govmeter_writer")
    finally:
        client.disconnect()


def test_stop_is_prompt_with_an_idle_keep_alive_connection_open(tmp_path: Path) -> None:
    import clickhouse_connect

    server = StoreServer.start_in(tmp_path / "ch")
    client = clickhouse_connect.get_client(
        host="127.0.0.1",
        port=int(server.env["CLICKHOUSE_HTTP_PORT"]),
        username="govmeter_writer",
        password=server.writer_password(),
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


_ENGINE_LOGIN_FACTS = r"""
import base64, os, sys, tempfile, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logins = []

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        logins.append(base64.b64decode(token).decode())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=http.serve_forever, daemon=True).start()
here = sys.argv[1]
with open(os.path.join(here, "config.xml"), "w") as config:
    config.write(
        "<clickhouse><users_config>users.xml</users_config>"
        "<http_authentication_servers><login>"
        f"<uri>http://127.0.0.1:{http.server_port}/</uri><max_tries>1</max_tries>"
        "</login></http_authentication_servers></clickhouse>")
with open(os.path.join(here, "users.xml"), "w") as users:
    users.write(
        "<clickhouse><profiles><default/></profiles><quotas><default/></quotas><users>"
        "<default><http_authentication><server>login</server><scheme>basic</scheme>"
        f"</http_authentication><networks><ip>{sys.argv[2]}</ip></networks>"
        "<profile>default</profile><quota>default</quota></default></users></clickhouse>")

# 4. Importing chdb in an empty directory signs in without asking the authenticator.
with tempfile.TemporaryDirectory() as empty:
    os.chdir(empty)
    from chdb import _chdb
os.chdir(here)
print(f"import-logins-{len(logins)}")

# 5. One call with several statements signs in once: as default, no password, from
#    loopback (allowed from 127.0.0.1, refused from elsewhere before the password is asked).
result = _chdb.query("SELECT 1; SELECT 2; SELECT 3", "TSV", path=os.path.join(here, "data"))
print("statements-ran" if result.bytes().split() == [b"1", b"2", b"3"] else "not-ran")
print("one-login-default-no-password" if logins == ["default:"] else f"logins-{len(logins)}")
"""


def test_the_engine_signs_its_session_in_once_as_default_from_loopback(tmp_path: Path) -> None:
    """Why `default` is checked by the server process's authenticator: no network rule
    or password tells the engine's session from a loopback client, but it signs in only
    once per call, before its first statement."""
    seen = {}
    for network in ("127.0.0.1", "192.0.2.1"):
        here = tmp_path / network
        here.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", _ENGINE_LOGIN_FACTS, str(here), network],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        seen[network] = result.stdout.split()
    assert seen == {
        "127.0.0.1": ["import-logins-0", "statements-ran", "one-login-default-no-password"],
        "192.0.2.1": ["import-logins-0", "not-ran", "logins-0"],
    }, seen


def _refused(status: int, body: str) -> bool:
    return status in (401, 403, 516) and (
        "AUTHENTICATION_FAILED" in body or "REQUIRED_PASSWORD" in body
    )


def test_no_network_login_as_default_over_http_or_the_native_protocol(tmp_path: Path) -> None:
    server = StoreServer.start_in(tmp_path / "ch")
    assert _http(server, "CREATE DATABASE IF NOT EXISTS metering")[0] == 200
    table = "metering.login_test"
    assert _http(server, f"CREATE TABLE {table} (n UInt64) ENGINE = MergeTree ORDER BY n")[0] == 200
    assert _http(server, f"INSERT INTO {table} VALUES (1)")[0] == 200
    rewrite = f"ALTER TABLE {table} UPDATE n = n + 7 WHERE 1 SETTINGS mutations_sync = 2"

    # HTTP: no credentials (curl --data-binary), default with no, an empty or any
    # password, in the Authorization header, the URL's parameters or ClickHouse's headers.
    attempts = [
        (server.url + "/", {}),
        (server.url + "/?user=default", {}),
        (server.url + "/?user=default&password=", {}),
        (server.url + "/?user=default&password=x", {}),
        (server.url + "/", {"X-ClickHouse-User": "default", "X-ClickHouse-Key": ""}),
        (server.url + "/", {"Authorization": "Basic " + base64.b64encode(b"default:").decode()}),
        (server.url + "/", {"Authorization": "Basic " + base64.b64encode(b"default:x").decode()}),
    ]
    for url, headers in attempts:
        for sql in ("SELECT 1", rewrite):
            request = urllib.request.Request(url, data=sql.encode(), headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    outcome = (response.status, response.read().decode())
            except urllib.error.HTTPError as error:
                outcome = (error.code, error.read().decode())
            assert _refused(*outcome), (url, headers, sql, outcome)

    # The native protocol (clickhouse-driver speaks it: the handshake, then the login).
    port = int(server.env["CLICKHOUSE_TCP_PORT"])
    for login in ({}, {"user": "default"}, {"user": "default", "password": "x"}):
        client = NativeClient(host="127.0.0.1", port=port, **login)
        try:
            with pytest.raises(NativeError) as refused:
                client.execute("SELECT 1")
            assert refused.value.code == 516, (login, refused.value)  # AUTHENTICATION_FAILED
        finally:
            client.disconnect()

    assert _http(server, f"SELECT sum(n) FROM {table}") == (200, "1\n")
    log = (server.server_dir / "clickhouse.log").read_text(errors="replace")
    assert log.count("the engine signed in as default") == 1
    users = (server.server_dir / "users.xml").read_text()
    assert server.writer_password() not in users and "<password>" not in users
    for name in ("writer.password", "reporter.password", "users.xml", "config.d/engine-login.xml"):
        assert (server.server_dir / name).stat().st_mode & 0o077 == 0, name


def test_the_writer_password_can_come_from_the_environment(
    tmp_path: Path, kafka_env: dict[str, str]
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path)
    run.store.stop()
    run.store.env["CLICKHOUSE_WRITER_PASSWORD"] = "chosen-writer-password"
    run.store.start()
    assert not (run.store.server_dir / "writer.password").exists()  # the generated one goes
    given = {"CLICKHOUSE_WRITER_PASSWORD": "chosen-writer-password"}
    assert run.metering("migrate", extra_env=given).returncode == 0
    check = run.metering("config", "--check", extra_env=given)
    assert (
        "store login: the local server's writer govmeter_writer, password "
        "CLICKHOUSE_WRITER_PASSWORD" in check.stdout
    )
    assert "chosen-writer-password" not in check.stdout + check.stderr
    missing = run.metering("query", "SELECT 1")
    assert missing.returncode != 0
    assert "writer.password" in missing.stderr and "does not exist" in missing.stderr


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


# What the writer may not do, each refused by ClickHouse for want of a grant.
WRITER_REFUSED = (
    "ALTER TABLE metering.counted_events UPDATE tokens_in = tokens_in + 7 WHERE 1",
    "ALTER TABLE metering.agency_daily_rollup UPDATE messages = messages + 1 WHERE 1",
    "ALTER TABLE metering.counted_events DROP COLUMN conversation_id",
    "ALTER TABLE metering.counted_events MODIFY COLUMN tokens_in UInt64",
    "DROP DATABASE metering",
    "DROP TABLE metering.counted_events",
    "DROP TABLE metering.flush_ledger",
    "DROP VIEW metering.agency_daily",
    "TRUNCATE TABLE metering.flush_ledger",
    "RENAME TABLE metering.flush_ledger TO metering.old_ledger",
    "DELETE FROM metering.flush_ledger WHERE 1",
    "DELETE FROM metering.corrections WHERE 1",
    "CREATE OR REPLACE VIEW metering.agency_daily AS SELECT 1 AS messages",
    "CREATE DATABASE elsewhere",
    "CREATE USER intruder IDENTIFIED WITH no_password",
    "CREATE ROLE intruders",
    "CREATE ROW POLICY everything ON metering.counted_events USING 1 TO ALL",
    "GRANT SELECT ON metering.counted_events TO reporter",
    "SELECT name FROM system.users",
    "SELECT count() FROM system.query_log",
    "INSERT INTO govmeter_audit.read_audit (query_id) VALUES ('forged')",
    "DROP TABLE govmeter_audit.read_audit",
    "KILL QUERY WHERE 1",
    "SYSTEM STOP LISTEN HTTP",
)


def test_the_writer_counts_but_cannot_rewrite_drop_or_manage_access(counted: MeteringRun) -> None:
    run = counted
    golden = expected()
    before = run.views()
    for sql in WRITER_REFUSED:
        status, body = _http(run.store, sql)
        assert status != 200 and "ACCESS_DENIED" in body, (sql, status, body[:300])
    assert run.views() == before
    assert before["agency_daily"] == golden["agency_daily"]
    # Files only for its backups: the file() function reaches an empty directory of its
    # own, not the server's users files; BACKUP only the backups directory.
    users = run.store.server_dir / "users.xml"
    users_before = users.read_bytes()
    escape = run.workdir / "escaped.txt"
    for target in (str(users), "../users.xml", str(escape)):
        status, body = _http(
            run.store, f"INSERT INTO FUNCTION file('{target}', 'TSV', 'x String') VALUES ('x')"
        )
        assert status != 200, (target, body[:300])
    status, body = _http(run.store, f"BACKUP TABLE metering.writers TO File('{escape}')")
    assert status != 200, body[:300]
    assert users.read_bytes() == users_before
    assert not escape.exists()
    # What it needs: it migrated and counted this store; it reads the record of reads.
    assert _http(run.store, "SELECT count() FROM govmeter_audit.read_audit")[0] == 200
    assert _http(run.store, "SYSTEM FLUSH LOGS")[0] == 200


def test_the_writer_migrates_a_store_of_a_release_before_0012(run: MeteringRun) -> None:
    """The one DROP the writer may run: the old record of migrations, swapped for the
    view older releases stop at (store/migrations.py)."""
    assert run.metering("migrate").returncode == 0
    run.store.as_owner(
        "DROP VIEW metering.schema_migrations",
        "CREATE TABLE metering.schema_migrations (version UInt32, name String, "
        "checksum String, applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version",
    )
    migrated = run.metering("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert run.query(
        "SELECT engine FROM system.tables "
        "WHERE database = 'metering' AND name = 'schema_migrations'"
    ) == [{"engine": "View"}]


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
