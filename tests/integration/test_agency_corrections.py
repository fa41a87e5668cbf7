"""Agency users read the corrections of their own events, filtered by the engine as the
rollups are (store/local_server/config.py `agency_filters`): the golden corpus counted,
then one event amended from agency A to agency B, another event of A voided and a day
of agency C voided; agency users for A, B, C and an agency without corrections (D).
Each reads exactly its corrections, marks and applied rows (by id and count), none of
another agency's, and no setting or table function widens that."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.harness import CORPUS, MeteringRun

pytestmark = pytest.mark.integration

PEOPLE = ("--reason", "test", "--requested-by", "ana.billing", "--approved-by", "ben.cfo")


def _http(run: MeteringRun, sql: str, user: str, password: str) -> tuple[int, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        run.store.url + "/", data=sql.encode(), headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _rows(run: MeteringRun, sql: str, user: str, password: str) -> list[tuple[str, ...]]:
    status, body = _http(run, sql + " FORMAT TSV", user, password)
    assert status == 200, (sql, body[:500])
    return [tuple(line.split("\t")) for line in body.splitlines()]


def _correct(run: MeteringRun, *args: str) -> str:
    result = run.metering("correct", *args, *PEOPLE)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass
class Corrected:
    run: MeteringRun
    agencies: dict[str, str]  # "A".."D" -> agency id
    passwords: dict[str, str]  # agency id -> its user's password
    amend: str  # correction ids
    void_event: str
    void_day: str
    moved: str  # event ids
    voided: str
    day_events: list[str]  # the events of C's voided day


def _user(agency: str) -> str:
    return "govmeter_agency_" + agency.replace("-", "_")


@pytest.fixture(scope="module")
def corrected(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Corrected:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("agency-corrections"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    busiest = [
        str(r["agency_id"])
        for r in run.query(
            "SELECT agency_id, count() AS n FROM metering.counted_events "
            "GROUP BY agency_id ORDER BY n DESC, agency_id LIMIT 4"
        )
    ]
    agencies = dict(zip("ABCD", busiest, strict=True))
    a, b, c = agencies["A"], agencies["B"], agencies["C"]
    counted_once = (
        "event_id IN (SELECT event_id FROM metering.counted_events GROUP BY event_id "
        "HAVING count() = 1)"
    )
    moved, voided = (
        str(r["id"])
        for r in run.query(
            f"SELECT toString(event_id) AS id FROM metering.counted_events WHERE agency_id = '{a}' "
            f"AND {counted_once} ORDER BY event_id LIMIT 2"
        )
    )
    [level] = run.query(
        f"SELECT any(toString(agency_level)) AS level FROM metering.counted_events "
        f"WHERE agency_id = '{b}'"
    )
    [day] = run.query(
        f"SELECT toString(toDate(occurred_at)) AS day, count() AS n FROM metering.counted_events "
        f"WHERE agency_id = '{c}' GROUP BY day ORDER BY n DESC, day LIMIT 1"
    )
    day_events = sorted(
        str(r["id"])
        for r in run.query(
            f"SELECT toString(event_id) AS id FROM metering.counted_events "
            f"WHERE agency_id = '{c}' AND toDate(occurred_at) = '{day['day']}'"
        )
    )
    amend = _correct(
        run, "amend", "--event-id", moved, "--agency-id", b, "--agency-level", str(level["level"])
    )
    void_event = _correct(run, "void", "--event-id", voided)
    following = run.query(f"SELECT toString(toDate('{day['day']}') + 1) AS d")[0]["d"]
    void_day = _correct(
        run, "void", "--agency", c, "--from", str(day["day"]), "--to", str(following)
    )
    assert run.worker(until_idle=1.0).returncode == 0
    passwords = {}
    for agency in busiest:
        applied = run.metering("access", "agency-user", "--agency", agency, "--apply")
        assert applied.returncode == 0, applied.stderr
        [line] = [line for line in applied.stdout.splitlines() if "shown once" in line]
        passwords[agency] = line.rsplit(" ", 1)[1]
    run.store.stop()
    run.store.start()
    return Corrected(
        run, agencies, passwords, amend, void_event, void_day, moved, voided, day_events
    )


def test_the_corrections_were_applied(corrected: Corrected) -> None:
    decided = corrected.run.query(
        "SELECT correction_id, status, events_marked FROM metering.corrections "
        "ORDER BY correction_seq"
    )
    assert [(d["correction_id"], d["status"], int(d["events_marked"])) for d in decided] == [
        (corrected.amend, "applied", 1),
        (corrected.void_event, "applied", 1),
        (corrected.void_day, "applied", len(corrected.day_events)),
    ]
    assert len(corrected.day_events) > 1


def test_each_agency_reads_exactly_the_corrections_of_its_own_events(corrected: Corrected) -> None:
    c = corrected
    a, b, day_agency, none = (c.agencies[k] for k in "ABCD")
    expected: dict[str, dict[str, Any]] = {
        # A: its event moved away (before), and its event voided
        a: {
            "corrections": [c.amend, c.void_event],
            "marks": sorted([(c.moved, c.amend), (c.voided, c.void_event)]),
        },
        # B: the event moved to it (after)
        b: {"corrections": [c.amend], "marks": [(c.moved, c.amend)]},
        # C: the range of its day, every event of it
        day_agency: {
            "corrections": [c.void_day],
            "marks": sorted((event, c.void_day) for event in c.day_events),
        },
        none: {"corrections": [], "marks": []},
    }
    for agency, want in expected.items():
        user, password = _user(agency), c.passwords[agency]
        corrections = _rows(
            c.run,
            "SELECT correction_id FROM metering.corrections ORDER BY correction_seq",
            user,
            password,
        )
        assert [row[0] for row in corrections] == want["corrections"], agency
        marks = _rows(
            c.run,
            "SELECT toString(event_id), correction_id FROM metering.correction_marks "
            "ORDER BY toString(event_id), correction_id",
            user,
            password,
        )
        assert marks == want["marks"], agency
        applied = _rows(
            c.run,
            "SELECT correction_id FROM metering.corrections_applied ORDER BY correction_seq",
            user,
            password,
        )
        assert [row[0] for row in applied] == want["corrections"], agency
        counts = _rows(
            c.run,
            "SELECT (SELECT count() FROM metering.corrections), "
            "(SELECT count() FROM metering.correction_marks), "
            "(SELECT count() FROM metering.corrections_applied)",
            user,
            password,
        )
        assert counts == [tuple(str(len(want[k])) for k in ("corrections", "marks", "corrections"))]
        own = _rows(
            c.run, "SELECT DISTINCT agency_id FROM metering.correction_agencies", user, password
        )
        assert own in ([(agency,)], []), agency
    # The reporter reads them all, as before.
    reporter = c.run.store.reporter_password()
    everything = _rows(c.run, "SELECT count() FROM metering.correction_marks", "reporter", reporter)
    assert everything == [(str(len(c.day_events) + 2),)]


def test_no_setting_or_table_function_widens_an_agencys_corrections(corrected: Corrected) -> None:
    c = corrected
    b = c.agencies["B"]
    user, password = _user(b), c.passwords[b]
    for sql in (
        "SELECT count() FROM metering.corrections "
        "SETTINGS additional_table_filters = {'metering.corrections': '1'}",
        "SELECT count() FROM metering.correction_marks "
        "SETTINGS additional_table_filters = {'metering.correction_marks': '1'}",
        "SELECT count() FROM metering.corrections SETTINGS readonly = 0",
        "SELECT count() FROM metering.corrections SETTINGS optimize_move_to_prewhere = 0",
    ):
        status, body = _http(c.run, sql, user, password)
        assert status != 200 and "READONLY" in body, (sql, body[:300])
    for sql in (
        "SELECT count() FROM metering.corrected_events",
        "SELECT count() FROM metering.counted_events",
        "SELECT count() FROM metering.flush_ledger",
        "INSERT INTO metering.correction_agencies (correction_seq, agency_id) VALUES (3, 'x')",
    ):
        status, body = _http(c.run, sql, user, password)
        assert status != 200 and ("ACCESS_DENIED" in body or "READONLY" in body), (sql, body)
    # Read another way, the rows are the same: through merge(), a view of a subquery, a
    # join, or with a condition naming the other agencies.
    for sql in (
        "SELECT count() FROM merge('metering', '^correction_marks$')",
        "SELECT count() FROM (SELECT * FROM metering.correction_marks)",
        "SELECT count() FROM metering.correction_marks AS m "
        "LEFT JOIN metering.corrections AS k ON k.correction_seq = m.correction_seq",
        f"SELECT count() FROM metering.correction_marks WHERE agency_id != '{b}' "
        f"OR agency_id = '{b}'",
    ):
        status, body = _http(c.run, sql, user, password)
        assert (status, body) == (200, "1\n"), (sql, body[:300])
    # B cannot learn of C's voided day, even by its id.
    status, body = _http(
        c.run,
        f"SELECT count() FROM metering.corrections WHERE correction_id = '{c.void_day}'",
        user,
        password,
    )
    assert (status, body) == (200, "0\n")
    # The counts the agency reads in its rollups are unchanged by the filters.
    status, body = _http(c.run, "SELECT count() > 0 FROM metering.agency_daily", user, password)
    assert (status, body) == (200, "1\n")


def test_marks_tell_each_agency_why_its_numbers_changed(corrected: Corrected) -> None:
    c = corrected
    a, b = c.agencies["A"], c.agencies["B"]
    # A sees its event's mark with B as the agency it now counts for; B sees the same.
    for agency in (a, b):
        rows = _rows(
            c.run,
            f"SELECT agency_id, action FROM metering.correction_marks WHERE event_id = '{c.moved}'",
            _user(agency),
            c.passwords[agency],
        )
        assert rows == [(b, "amend")], agency
    per_agency = Counter(
        str(r["agency_id"])
        for r in c.run.query("SELECT agency_id FROM metering.correction_agencies")
    )
    assert per_agency == {
        a: 2,
        b: 1,
        c.agencies["C"]: len(c.day_events),
    }
