"""Corrections end to end, real Kafka and the local ClickHouse server: the golden corpus
counted, then `metering correct` voids one event (its user's only message of the
month), voids an agency's day, amends one event's agency and tokens; the same
correction published twice; a worker SIGKILLed at each step of the applier. Every view
equals a reference computed here from the corpus JSONL (checked first against the
golden expected.json), and bill, certify, verify and report agree."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from schemas.events import UsageEvent
from schemas.rejections import classify
from tests.integration.harness import CORPUS, MeteringRun, expected

pytestmark = pytest.mark.integration

OCTOBER = "2026-10"


@dataclass(frozen=True)
class Event:
    event_id: str
    day: str
    tenant: str
    agency_id: str
    agency_level: str
    user_id: str
    model: str
    tokens_in: int
    tokens_out: int


def _corpus() -> tuple[list[Event], Counter[str]]:
    """The counted events: valid lines, the first of each event_id (the reference
    reproduces the golden agency_daily, asserted below)."""
    events: dict[str, Event] = {}
    lines = [line for line in CORPUS.read_bytes().split(b"\n") if line.strip()]
    mentions: Counter[str] = Counter()
    for line in lines:
        outcome = classify(line)
        if not isinstance(outcome, UsageEvent):
            continue
        mentions[outcome.event_id] += 1
        if outcome.event_id not in events:
            events[outcome.event_id] = Event(
                outcome.event_id,
                outcome.occurred_at.date().isoformat(),
                outcome.tenant,
                outcome.agency_id,
                outcome.agency_level,
                outcome.user_id,
                outcome.model,
                outcome.tokens_in,
                outcome.tokens_out,
            )
    return list(events.values()), mentions


def _group(events: list[Event], key: Callable[[Event], tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    groups: dict[tuple[Any, ...], list[Event]] = defaultdict(list)
    for e in events:
        groups[key(e)].append(e)
    return sorted(
        (
            *k,
            len(rows),
            sum(r.tokens_in for r in rows),
            sum(r.tokens_out for r in rows),
            len({r.user_id for r in rows}),
        )
        for k, rows in groups.items()
    )


def _reference(events: list[Event]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "agency_daily": _group(events, lambda e: (e.day, e.tenant, e.agency_id, e.agency_level)),
        "agency_monthly": _group(
            events, lambda e: (e.day[:7], e.tenant, e.agency_id, e.agency_level)
        ),
        "monthly_totals": _group(events, lambda e: (e.day[:7], e.tenant)),
        "tenant_daily": _group(events, lambda e: (e.day, e.tenant)),
        "model_monthly": _group(events, lambda e: (e.day[:7], e.tenant, e.model, e.agency_id)),
    }


_MEASURES = "sum(messages), sum(tokens_in), sum(tokens_out), uniqExactMerge(users)"
_STORE = {
    "agency_daily": "SELECT toString(day) AS k0, tenant AS k1, agency_id AS k2, agency_level "
    "AS k3, messages AS m, tokens_in AS i, tokens_out AS o, active_users AS u "
    "FROM metering.agency_daily",
    "agency_monthly": "SELECT substring(toString(month), 1, 7) AS k0, tenant AS k1, agency_id "
    "AS k2, agency_level AS k3, messages AS m, tokens_in AS i, tokens_out AS o, "
    "active_users AS u FROM metering.agency_monthly",
    "monthly_totals": "SELECT substring(toString(month), 1, 7) AS k0, tenant AS k1, "
    "messages AS m, tokens_in AS i, tokens_out AS o, active_users AS u "
    "FROM metering.monthly_totals",
    "tenant_daily": f"SELECT toString(day) AS k0, tenant AS k1, {_MEASURES} "
    "FROM metering.tenant_daily_rollup GROUP BY day, tenant",
    "model_monthly": "SELECT substring(toString(month), 1, 7) AS k0, tenant AS k1, model AS k2,"
    f" agency_id AS k3, {_MEASURES} FROM metering.model_monthly_rollup "
    "GROUP BY month, tenant, model, agency_id",
}


def _views(run: MeteringRun) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for name, sql in _STORE.items():
        rows = run.query(sql)
        out[name] = sorted(
            (*(str(v) for v in list(r.values())[:-4]), *(int(v) for v in list(r.values())[-4:]))
            for r in rows
        )
    return out


def _correct(run: MeteringRun, *args: str) -> str:
    result = run.metering("correct", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _people(reason: str) -> tuple[str, ...]:
    return ("--reason", reason, "--requested-by", "ana.billing", "--approved-by", "ben.cfo")


@dataclass
class Counted:
    run: MeteringRun
    events: list[Event]
    mentions: Counter[str]


@pytest.fixture(scope="module")
def counted(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Counted:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("corrections"))
    run.replay(CORPUS)
    assert run.worker(until_idle=1.0).returncode == 0
    events, mentions = _corpus()
    return Counted(run, events, mentions)


def _only_message_of_its_month(c: Counted) -> Event:
    """An October event whose user sent nothing else that month in that tenant."""
    per_user = Counter((e.day[:7], e.tenant, e.user_id) for e in c.events)
    return next(
        e
        for e in c.events
        if e.day.startswith(OCTOBER)
        and per_user[(e.day[:7], e.tenant, e.user_id)] == 1
        and c.mentions[e.event_id] == 1
    )


def test_the_reference_reproduces_the_golden_figures(counted: Counted) -> None:
    golden = sorted(
        (str(r["day"]), r["tenant"], r["agency_id"], r["agency_level"], r["messages"],
         r["tokens_in"], r["tokens_out"], r["active_users"])
        for r in expected()["agency_daily"]
    )  # fmt: skip
    assert _reference(counted.events)["agency_daily"] == golden
    assert _views(counted.run) == _reference(counted.events)


def test_void_range_void_and_amend_then_bill_certify_verify_report(counted: Counted) -> None:
    run, events = counted.run, counted.events
    bill = run.metering("bill", "--month", OCTOBER, "--format", "json")
    assert bill.returncode == 0, bill.stderr
    first_run = json.loads(bill.stdout)["run_id"]

    lonely = _only_message_of_its_month(counted)
    # The agency-day with the most events, and an event elsewhere to amend.
    days = Counter((e.day, e.agency_id) for e in events if e.day.startswith(OCTOBER))
    (load_day, load_agency), _ = days.most_common(1)[0]
    target = next(
        e
        for e in events
        if counted.mentions[e.event_id] == 1
        and e.agency_id not in (load_agency, lonely.agency_id)
        and e.day.startswith(OCTOBER)
        and e.event_id != lonely.event_id
    )
    next_day = f"{load_day[:8]}{int(load_day[8:]) + 1:02d}"
    void_one = _correct(run, "void", "--event-id", lonely.event_id, *_people("sent twice"))
    void_range = _correct(
        run,
        "void",
        "--agency",
        load_agency,
        "--from",
        load_day,
        "--to",
        next_day,
        *_people("load test counted by mistake"),
    )
    amend_id = str(uuid.uuid4())
    for _ in range(2):  # a retry of the same correction: applied once
        assert (
            _correct(
                run,
                "amend",
                "--event-id",
                target.event_id,
                "--agency-id",
                "fed-gsa",
                "--agency-level",
                "federal",
                "--tokens-in",
                "7",
                "--tokens-out",
                "9",
                "--correction-id",
                amend_id,
                *_people("wrong agency"),
            )
            == amend_id
        )
    never = _correct(run, "void", "--event-id", str(uuid.uuid4()), *_people("no such event"))
    assert run.worker(until_idle=1.0).returncode == 0

    corrected = [
        replace(e, agency_id="fed-gsa", agency_level="federal", tokens_in=7, tokens_out=9)
        if e.event_id == target.event_id
        else e
        for e in events
        if e.event_id != lonely.event_id and not (e.agency_id == load_agency and e.day == load_day)
    ]
    assert _views(run) == _reference(corrected)
    # The lonely user is no longer active in the month.
    month_users = {(r[0], r[1]): r[-1] for r in _views(run)["monthly_totals"] if r[0] == OCTOBER}
    before = {(r[0], r[1]): r[-1] for r in _reference(events)["monthly_totals"]}
    assert month_users[(OCTOBER, lonely.tenant)] == before[(OCTOBER, lonely.tenant)] - 1

    decided = run.query(
        "SELECT correction_id, status, events_marked FROM metering.corrections "
        "ORDER BY correction_seq"
    )
    load_events = sum(1 for e in events if e.agency_id == load_agency and e.day == load_day)
    assert [(d["correction_id"], d["status"], int(d["events_marked"])) for d in decided] == [
        (void_one, "applied", 1),
        (void_range, "applied", load_events),
        (amend_id, "applied", 1),
        (never, "refused", 0),
    ]
    counted_rows = run.query("SELECT count() AS n FROM metering.counted_events")[0]["n"]
    assert int(counted_rows) == len(events)  # nothing deleted: marked

    bill = run.metering("bill", "--month", OCTOBER, "--format", "json")
    assert bill.returncode == 0, bill.stderr
    statement = json.loads(bill.stdout)
    assert statement["status"] == "restated"
    assert statement["restates_run_id"] == first_run
    assert statement["corrections_since_previous_run"] == [void_one, void_range, amend_id]
    october = [r for r in _reference(corrected)["monthly_totals"] if r[0] == OCTOBER]
    assert statement["totals"]["messages"] == sum(r[2] for r in october)

    certify = run.metering("certify", "--month", OCTOBER)
    assert certify.returncode == 0, certify.stdout + certify.stderr
    cert = json.loads(certify.stdout)
    assert cert["inequalities"] == []
    assert cert["corrections_applied"] == 3
    assert [c["correction_id"] for c in cert["corrections"]] == [void_one, void_range, amend_id]
    assert cert["totals"]["messages"]["billed"] == sum(r[2] for r in october)

    reconcile = run.metering("reconcile", "--month", OCTOBER)
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr

    verify = run.metering("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip().endswith("verified")

    for flag, figures in (([], corrected), (["--as-first-counted"], events)):
        report = run.metering(
            "report", "adoption", "--month", OCTOBER, "--format", "json",
            "--min-cell-users", "1", *flag,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        tenants = {t["tenant"]: t for t in json.loads(report.stdout)["tenants"]}
        want = {r[1]: r[2] for r in _reference(figures)["monthly_totals"] if r[0] == OCTOBER}
        assert {name: t["messages"] for name, t in tenants.items()} == want, flag


STEPS = [
    "after_marks",
    "after_commit",
    "after_delete_agency_monthly_rollup",
    "after_rebuild_tenant_daily_rollup",
    "after_applied",
]


def test_a_worker_killed_at_each_step_of_a_correction_applies_it_exactly_once(
    counted: Counted,
) -> None:
    run = counted.run
    done = {
        str(r["event_id"])
        for r in run.query("SELECT toString(event_id) AS event_id FROM metering.correction_marks")
    }
    # The state the previous test left (or the corpus when run alone).
    voided = {
        str(r["e"])
        for r in run.query(
            "SELECT toString(event_id) AS e FROM metering.counted_events "
            "WHERE event_id NOT IN (SELECT event_id FROM metering.corrected_events)"
        )
    }
    current = {
        str(r["e"]): r
        for r in run.query(
            "SELECT toString(event_id) AS e, agency_id, agency_level, tokens_in, tokens_out "
            "FROM metering.corrected_events WHERE correction_id != ''"
        )
    }
    events = [
        replace(
            e,
            agency_id=current[e.event_id]["agency_id"],
            agency_level=current[e.event_id]["agency_level"],
            tokens_in=int(current[e.event_id]["tokens_in"]),
            tokens_out=int(current[e.event_id]["tokens_out"]),
        )
        if e.event_id in current
        else e
        for e in counted.events
        if e.event_id not in voided
    ]
    candidates = [e for e in events if e.event_id not in done and counted.mentions[e.event_id] == 1]
    for step, victim in zip(STEPS, candidates[: len(STEPS)], strict=True):
        correction = _correct(
            run, "amend", "--event-id", victim.event_id, "--tokens-out", "1", *_people(step)
        )
        killed = run.worker(
            until_idle=1.0, extra_env={"METERING_FAULT_CORRECTION_CRASH": f"{step}@1"}
        )
        assert killed.returncode == -9, (step, killed.stderr[-2000:])
        assert run.worker(until_idle=1.0).returncode == 0
        events = [replace(e, tokens_out=1) if e.event_id == victim.event_id else e for e in events]
        assert _views(run) == _reference(events), step
        applied = run.query(
            "SELECT count() AS n FROM metering.corrections_applied "
            f"WHERE correction_id = '{correction}'"
        )
        assert int(applied[0]["n"]) == 1, step
    verify = run.metering("verify")
    assert verify.returncode == 0, verify.stdout
