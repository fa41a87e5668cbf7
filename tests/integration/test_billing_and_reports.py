"""Billing, reconciliation and oversight reports on the golden corpus, end to end.

The corpus is replayed to a real Kafka broker once for this module and counted by the
worker into chDB; every command then runs as a subprocess (`python -m
metering.cli ...`) after the worker has exited. Only the billing test
adds an event (a late one, in October 2026); the report tests read November 2026, or
compare periods that include October with the store's own raw figures.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.accessibility.browser import chromium as find_or_install_chromium
from tests.accessibility.browser import headless
from tests.integration.harness import CORPUS, ROOT, MeteringRun, expected

pytestmark = pytest.mark.integration

PRICE_BOOK = ROOT / "metering/billing/pricebook.toml"
QUANTITIES = [
    "tenant",
    "agency_id",
    "agency_level",
    "messages",
    "tokens_in",
    "tokens_out",
    "active_users",
]
LATE_EVENT = {
    "schema_version": 1,
    "event_id": "5b0f6a52-1d4e-4c8e-9a57-0c9b2f1e7a01",
    "occurred_at": "2026-10-20T12:00:00Z",
    "tenant": "chatgpt-enterprise",
    "agency_id": "fed-nasa",
    "agency_level": "federal",
    "user_id": "u-late-billing-0001",
    "conversation_id": "c-late-billing-1",
    "model": "gpt-4o",
    "tokens_in": 1000,
    "tokens_out": 500,
}


@pytest.fixture(scope="module")
def corpus(kafka_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> MeteringRun:
    run = MeteringRun.fresh(kafka_env, tmp_path_factory.mktemp("billing"))
    run.replay(CORPUS)
    result = run.worker(until_idle=1.0)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def reporting(run: MeteringRun, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "metering.cli", *args],
        env=run.env,
        cwd=run.workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    run.logs.append(result.stdout + result.stderr)
    return result


def bill(run: MeteringRun, *args: str) -> tuple[dict[str, Any], str]:
    result = reporting(run, "bill", *args, "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


def golden_monthly(month: str) -> list[dict[str, Any]]:
    rows = [r for r in expected()["agency_monthly"] if r["month"] == month]
    return sorted(rows, key=lambda r: (r["tenant"], r["agency_id"], r["agency_level"]))


def list_value(models: list[dict[str, Any]], month: str) -> Decimal:
    """The price book's list-value rule, recomputed here from the file itself."""
    entries = tomllib.loads(PRICE_BOOK.read_text(), parse_float=Decimal)["models"]
    total = Decimal(0)
    for used in models:
        matches = [e for e in entries if e.get("model") == used["model"]] or [
            e for e in entries if used["model"].startswith(e.get("model_prefix", "\0"))
        ]
        longest = max(len(e.get("model_prefix", "")) for e in matches)
        in_force = [
            e
            for e in matches
            if len(e.get("model_prefix", "")) == longest
            and e["effective_from"].isoformat() <= month
        ]
        price = max(in_force, key=lambda e: e["effective_from"])
        total += (
            used["tokens_in"] * price["input_per_million_usd"]
            + used["tokens_out"] * price["output_per_million_usd"]
        ) / Decimal(1_000_000)
    return total.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def check_statement(statement: dict[str, Any], month: str) -> None:
    lines = statement["lines"]
    assert [{k: line[k] for k in QUANTITIES} for line in lines] == [
        {k: row[k] for k in QUANTITIES} for row in golden_monthly(month)
    ]
    for line in lines:
        assert line["month"] == month
        assert sum(m["tokens_in"] for m in line["models"]) == line["tokens_in"]
        assert sum(m["tokens_out"] for m in line["models"]) == line["tokens_out"]
        assert Decimal(line["list_value_usd"]) == list_value(line["models"], month), line[
            "agency_id"
        ]
        if line["tenant"] == "chatgpt-enterprise":
            assert line["billable_units"] == line["active_users"]
            assert Decimal(line["charge_usd"]) == 60 * line["active_users"]
    totals = statement["totals"]
    assert Decimal(totals["charge_usd"]) == sum(Decimal(li["charge_usd"]) for li in lines)
    assert totals["messages"] == sum(r["messages"] for r in golden_monthly(month))


def test_statements_runs_restatement_and_reconciliation(
    corpus: MeteringRun, tmp_path: Path
) -> None:
    # With --strict, a model the price book does not know stops billing, naming the model
    # and the file (without it the model's list value is unpriced: see the end of the file).
    book = tmp_path / "pricebook.toml"
    book.write_text(PRICE_BOOK.read_text().replace('model = "gpt-5"\n', 'model = "gpt-5x"\n'))
    refused = reporting(corpus, "bill", "--month", "2026-10", "--price-book", str(book), "--strict")
    assert refused.returncode == 1
    assert f"{book}: no list price for model 'gpt-5' (used in 2026-10)" in refused.stderr

    october, stderr = bill(corpus, "--month", "2026-10")
    assert october["status"] == "recorded" and october["run_id"] == "2026-10-v1"
    assert "recorded run 2026-10-v1 (version 1)" in stderr
    check_statement(october, "2026-10-01")
    gov = [li for li in october["lines"] if li["tenant"] == "chatgpt-gov"]
    # GSA OneGov: 1.00 per agency per fiscal year, charged in its first active month.
    assert {(li["billable_units"], li["charge_usd"]) for li in gov} == {(1, "1.00")}
    assert october["totals"]["charge_usd"] == "7594.00"  # 126 seats x 60.00 + 34 agencies x 1.00

    november, _ = bill(corpus, "--month", "2026-11")
    check_statement(november, "2026-11-01")
    gov = [li for li in november["lines"] if li["tenant"] == "chatgpt-gov"]
    assert {(li["billable_units"], li["charge_usd"]) for li in gov} == {(0, "0.00")}

    again, stderr = bill(corpus, "--month", "2026-10")
    assert again["status"] == "unchanged" and again["run_id"] == "2026-10-v1"
    assert "unchanged since run 2026-10-v1" in stderr
    assert again["lines"] == october["lines"]
    assert again["input_sha256"] == october["input_sha256"]

    reconciled = reporting(corpus, "reconcile", "--month", "2026-10")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "OK: events counted = rollup totals = billed quantities for 2026-10" in reconciled.stdout
    golden_totals = {
        r["tenant"]: r for r in expected()["monthly_totals"] if r["month"] == "2026-10-01"
    }
    for tenant, totals in golden_totals.items():
        for measure in ("messages", "tokens_in", "tokens_out"):
            value = totals[measure]
            assert re.search(
                rf"{tenant}\s+{measure}\s+{value}\s+{value}\s+{value}\s+equal", reconciled.stdout
            ), (tenant, measure)
        users = totals["active_users"]
        assert re.search(
            rf"{tenant}\s+active_users\s+{users}\s+{users}\s+-\s+equal", reconciled.stdout
        )

    # A late event for October arrives after October was billed.
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps(LATE_EVENT) + "\n")
    corpus.replay(late)
    assert corpus.worker(until_idle=1.0).returncode == 0

    behind = reporting(corpus, "reconcile", "--month", "2026-10")
    assert behind.returncode == 1
    assert "DIFFERENT chatgpt-enterprise/fed-nasa messages: events 9, rollups 9, billed 8" in (
        behind.stdout
    )
    assert "NOT RECONCILED" in behind.stdout

    restated, stderr = bill(corpus, "--month", "2026-10")
    assert restated["status"] == "restated"
    assert (restated["run_id"], restated["version"], restated["restates_run_id"]) == (
        "2026-10-v2",
        2,
        "2026-10-v1",
    )
    assert "restated 2026-10: run 2026-10-v2 (version 2) replaces 2026-10-v1" in stderr
    assert "charge delta +60.00 USD" in stderr
    (change,) = restated["changes"]
    assert change == {
        "tenant": "chatgpt-enterprise",
        "agency_id": "fed-nasa",
        "agency_level": "federal",
        "status": "changed",
        "changes": {
            "messages": [8, 9],
            "tokens_in": [27439, 28439],
            "tokens_out": [21173, 21673],
            "active_users": [6, 7],
            "billable_units": [6, 7],
            "charge_usd": ["360.00", "420.00"],
            "list_value_usd": change["changes"]["list_value_usd"],
        },
        "charge_delta_usd": "60.00",
        "list_value_delta_usd": change["list_value_delta_usd"],
    }
    old_value, new_value = map(Decimal, change["changes"]["list_value_usd"])
    assert new_value - old_value == Decimal(change["list_value_delta_usd"])
    nasa = next(li for li in restated["lines"] if li["agency_id"] == "fed-nasa")
    assert Decimal(nasa["list_value_usd"]) == list_value(nasa["models"], "2026-10-01") == new_value
    unchanged = [li for li in restated["lines"] if li["agency_id"] != "fed-nasa"]
    assert unchanged == [li for li in october["lines"] if li["agency_id"] != "fed-nasa"]
    assert restated["totals"]["charge_usd"] == "7654.00"

    reconciled = reporting(corpus, "reconcile", "--month", "2026-10")
    assert reconciled.returncode == 0, reconciled.stdout
    assert "billed (run 2026-10-v2)" in reconciled.stdout
    assert "0 differences" in reconciled.stdout

    runs = corpus.query(
        "SELECT run_id, version, restates_run_id, price_book_sha256, input_sha256, lines, "
        "toString(charge_usd) AS charge FROM metering.billing_runs "
        "WHERE period = '2026-10' ORDER BY version"
    )
    digest = hashlib.sha256(PRICE_BOOK.read_bytes()).hexdigest()
    assert [
        (r["run_id"], r["restates_run_id"], r["price_book_sha256"], r["charge"]) for r in runs
    ] == [
        ("2026-10-v1", "", digest, "7594"),
        ("2026-10-v2", "2026-10-v1", digest, "7654"),
    ]
    assert runs[0]["input_sha256"] == october["input_sha256"] != runs[1]["input_sha256"]


def report(run: MeteringRun, *args: str) -> dict[str, Any]:
    result = reporting(run, "report", "adoption", *args, "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_adoption_report_matches_the_golden_rollups(corpus: MeteringRun) -> None:
    document = report(corpus, "--month", "2026-11", "--min-cell-users", "1")
    golden = {r["tenant"]: r for r in expected()["monthly_totals"] if r["month"] == "2026-11-01"}
    assert [t["tenant"] for t in document["tenants"]] == sorted(golden)
    for tenant in document["tenants"]:
        totals = golden[tenant["tenant"]]
        for measure in ("agencies", "active_users", "messages", "tokens_in", "tokens_out"):
            assert tenant[measure] == totals[measure], (tenant["tenant"], measure)
        rows = [r for r in golden_monthly("2026-11-01") if r["tenant"] == tenant["tenant"]]
        by_level: dict[str, int] = defaultdict(int)
        for row in rows:
            by_level[row["agency_level"]] += row["messages"]
        assert {r["agency_level"]: r["messages"] for r in tenant["by_level"]} == by_level
        top = sorted(rows, key=lambda r: (-r["messages"], r["agency_id"]))[:10]
        assert [
            (r["agency_id"], r["messages"], r["active_users"]) for r in tenant["top_agencies"]
        ] == [(r["agency_id"], r["messages"], r["active_users"]) for r in top]
        assert sum(m["messages"] for m in tenant["by_model"]) == totals["messages"]
        assert sum(d["tokens_in"] for d in tenant["by_day"]) == totals["tokens_in"]
        assert [d["day"] for d in tenant["by_day"]] == ["2026-11-01", "2026-11-02"]


def test_small_cells_are_suppressed_exactly(corpus: MeteringRun) -> None:
    full = report(corpus, "--month", "2026-11", "--min-cell-users", "1")
    document = report(corpus, "--month", "2026-11", "--min-cell-users", "5")
    assert document["min_cell_users"] == 5
    gov, enterprise = (
        next(t for t in document["tenants"] if t["tenant"] == name)
        for name in ("chatgpt-gov", "chatgpt-enterprise")
    )
    # November, 5 users: only local-boston-doit (4 users) is below; the agencies split the
    # tenant total, so the smallest other agency (5 users, 8 messages) goes with it.
    golden = golden_monthly("2026-11-01")
    assert [r["agency_id"] for r in golden if r["active_users"] < 5] == ["local-boston-doit"]
    assert gov["agencies_not_ranked"] == 2 and enterprise["agencies_not_ranked"] == 0
    assert all(not row["suppressed"] for row in gov["top_agencies"] + enterprise["top_agencies"])
    for tenant in (gov, enterprise):
        assert not tenant["suppressed"]
        assert all(not row["suppressed"] for row in tenant["by_level"] + tenant["by_day"])
    # By model: the 64-character fine-tuned model has one user in one agency.
    marks = {
        t["tenant"]: {m["model"]: m["suppression"] for m in t["by_model"] if m["suppressed"]}
        for t in document["tenants"]
    }
    unsuppressed = {t["tenant"]: t["by_model"] for t in full["tenants"]}
    fine_tuned = "ft:gpt-4o-2024-08-06:agency-fine-tune:" + "m" * 26
    for tenant, models in unsuppressed.items():
        small = [m for m in models if m["active_users"] < 5]
        if not small:
            assert marks[tenant] == {}
            continue
        assert [m["model"] for m in small] == [fine_tuned]
        others = sorted(
            (m for m in models if m["model"] != fine_tuned),
            key=lambda m: (m["active_users"], m["messages"], m["model"]),
        )
        assert marks[tenant] == {fine_tuned: "primary", others[0]["model"]: "complementary"}
        hidden = next(
            m
            for t in document["tenants"]
            if t["tenant"] == tenant
            for m in t["by_model"]
            if m["model"] == fine_tuned
        )
        assert hidden["messages"] is None and hidden["active_users"] is None
        assert hidden["token_share_pct"] is None
    assert any(marks.values()), "the corpus has a model used by fewer than 5 users"

    table = reporting(corpus, "report", "adoption", "--month", "2026-11", "--min-cell-users", "5")
    assert table.returncode == 0, table.stderr
    assert "local-boston-doit" not in table.stdout and "local-denver-tech" not in table.stdout
    assert (
        "chatgpt-gov: top 10 agencies by messages (2 with fewer than 5 active users not ranked)"
        in (table.stdout)
    )
    row = next(line for line in table.stdout.splitlines() if line.startswith(fine_tuned))
    assert row.split()[1:] == ["1", "<5", "s", "s", "s"]


def test_active_users_over_a_quarter_are_distinct_not_summed(corpus: MeteringRun) -> None:
    document = report(corpus, "--fiscal-quarter", "2027Q1", "--min-cell-users", "1")
    raw = {
        r["tenant"]: r["users"]
        for r in corpus.query(
            "SELECT tenant, uniqExact(user_id) AS users FROM metering.counted_events "
            "WHERE occurred_at >= '2026-10-01' AND occurred_at < '2027-01-01' GROUP BY tenant"
        )
    }
    monthly: dict[str, int] = defaultdict(int)
    for row in expected()["monthly_totals"]:
        monthly[row["tenant"]] += row["active_users"]
    for tenant in document["tenants"]:
        assert tenant["active_users"] == raw[tenant["tenant"]]
        assert tenant["active_users"] < monthly[tenant["tenant"]]
    assert document["period"] == {
        "label": "FY2027Q1",
        "kind": "fiscal_quarter",
        "first_day": "2026-10-01",
        "last_day": "2026-12-31",
        "timezone": "UTC",
    }
    quarter, _ = bill(corpus, "--fiscal-quarter", "2027Q1", "--dry-run")
    assert quarter["status"] == "not_recorded" and quarter["run_id"] is None
    gsa = next(
        li
        for li in quarter["lines"]
        if (li["tenant"], li["agency_id"]) == ("chatgpt-enterprise", "fed-gsa")
    )
    assert gsa["billable_units"] > gsa["active_users"]  # seat-months vs distinct users
    assert Decimal(gsa["charge_usd"]) == 60 * gsa["billable_units"]
    assert corpus.query(
        "SELECT count() AS n FROM metering.billing_runs WHERE period = 'FY2027Q1'"
    ) == [{"n": 0}]


def test_agency_scope_shows_that_agency_only(corpus: MeteringRun, tmp_path: Path) -> None:
    others = {r["agency_id"] for r in expected()["agency_monthly"]} - {"fed-gsa"}
    document = report(corpus, "--month", "2026-11", "--agency", "fed-gsa", "--min-cell-users", "1")
    assert document["agency"] == "fed-gsa"
    golden = {r["tenant"]: r for r in golden_monthly("2026-11-01") if r["agency_id"] == "fed-gsa"}
    assert {
        t["tenant"]: (t["agencies"], t["messages"], t["active_users"]) for t in document["tenants"]
    } == {tenant: (1, row["messages"], row["active_users"]) for tenant, row in golden.items()}
    outputs = [json.dumps(document)]
    for fmt in ("table", "csv", "html"):
        result = reporting(
            corpus,
            "report",
            "adoption",
            "--month",
            "2026-11",
            "--agency",
            "fed-gsa",
            "--format",
            fmt,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    for output in outputs:
        assert "fed-gsa" in output
        for agency in others - {"7"}:  # "7" is also a digit of many numbers
            assert agency not in output, agency
    refused = reporting(corpus, "report", "adoption", "--month", "2026-11", "--agency", "FED GSA")
    assert refused.returncode == 1 and "is not an agency id" in refused.stderr


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium from Debian's `chromium` package, installed here if missing."""
    return find_or_install_chromium()


def test_html_report_renders_in_headless_chromium(
    corpus: MeteringRun, chromium: str, tmp_path: Path
) -> None:
    page = tmp_path / "adoption.html"
    result = reporting(
        corpus, "report", "adoption", "--month", "2026-11", "--format", "html", "--out", str(page)
    )
    assert result.returncode == 0, result.stderr
    assert f"to {page}" in result.stdout

    dom = headless(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    golden = {r["tenant"]: r for r in expected()["monthly_totals"] if r["month"] == "2026-11-01"}
    for tenant, totals in golden.items():
        section = html[html.index(f'data-tenant="{tenant}"') :]
        for measure in ("agencies", "active_users", "messages", "tokens_in", "tokens_out"):
            value = f"{totals[measure]:,}"
            assert f'data-measure="{measure}">{value}<' in section, (tenant, measure)
    assert html.count("<svg") == 8  # four charts per tenant
    top = max(golden_monthly("2026-11-01"), key=lambda r: r["messages"])
    assert f'data-value="{top["messages"]}"' in html and top["agency_id"] in html

    shot = tmp_path / "adoption.png"
    screenshot = headless(
        chromium,
        tmp_path / "profile",
        "--window-size=1300,2400",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    assert screenshot.returncode == 0, screenshot.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 60_000  # charts and tables, not a blank page


# ---------------------------------------------------------------------------------
# A new model must not block billing (December 2026: no other test reads it)


def _december_event(
    n: int, tenant: str, agency: str, level: str, model: str, tin: int, tout: int
) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"3c9d2f0a-6b1e-4d7a-9c35-5e8f1a2b7c{n:02d}",
            "occurred_at": f"2026-12-0{n}T15:00:00Z",
            "tenant": tenant,
            "agency_id": agency,
            "agency_level": level,
            "user_id": f"u-december-{n}",
            "conversation_id": f"c-december-{n}",
            "model": model,
            "tokens_in": tin,
            "tokens_out": tout,
        }
    )


def test_a_model_missing_from_the_price_book_is_billed_with_exact_charges(
    corpus: MeteringRun, tmp_path: Path
) -> None:
    new_model = "gpt-6-preview"
    events = tmp_path / "december.jsonl"
    events.write_text(
        "\n".join(
            [
                _december_event(
                    1, "chatgpt-enterprise", "state-dec", "state", "gpt-4o", 400_000, 100_000
                ),
                _december_event(
                    2, "chatgpt-enterprise", "state-dec", "state", new_model, 300_000, 20_000
                ),
                _december_event(
                    3, "chatgpt-gov", "fed-dec-pilot", "federal", new_model, 1_000, 500
                ),
            ]
        )
        + "\n"
    )
    corpus.replay(events)
    assert corpus.worker(until_idle=1.0).returncode == 0

    strict = reporting(corpus, "bill", "--month", "2026-12", "--strict")
    assert strict.returncode == 1
    assert f"{PRICE_BOOK}: no list price for model '{new_model}' (used in 2026-12)" in strict.stderr

    december, stderr = bill(corpus, "--month", "2026-12")
    assert (december["status"], december["run_id"]) == ("recorded", "2026-12-v1")
    warning = (
        f"warning: {PRICE_BOOK}: no list price for model '{new_model}' (used in 2026-12); "
        "there is no default price: add a [[models]] entry with `model` or `model_prefix` and "
        f"have it reviewed before billing. The list value of '{new_model}' in 2026-12 "
        "(301,000 tokens in, 20,500 out, 2 line(s)) is shown as unpriced"
    )
    assert warning in stderr
    assert [
        (
            li["tenant"],
            li["agency_id"],
            li["messages"],
            li["active_users"],
            li["billable_units"],
            li["charge_usd"],
            li["list_value_usd"],
            li["unpriced_models"],
        )
        for li in december["lines"]
    ] == [
        # 2 seats x 60.00; list value 0.4 M in x 2.50 + 0.1 M out x 10.00 (gpt-4o only)
        ("chatgpt-enterprise", "state-dec", 2, 2, 2, "120.00", "2.00", [new_model]),
        # first active month of the fiscal year: 1.00; its only model is unpriced
        ("chatgpt-gov", "fed-dec-pilot", 1, 1, 1, "1.00", "0.00", [new_model]),
    ]
    assert december["totals"]["charge_usd"] == "121.00"
    assert december["totals"]["list_value_usd"] == "2.00"
    assert december["unpriced"] == [
        {
            "model": new_model,
            "month": "2026-12-01",
            "tokens_in": 301_000,
            "tokens_out": 20_500,
            "lines": 2,
            "reason": f"{PRICE_BOOK}: no list price for model '{new_model}' (used in 2026-12); "
            "there is no default price: add a [[models]] entry with `model` or `model_prefix` "
            "and have it reviewed before billing",
        }
    ]
    reconciled = reporting(corpus, "reconcile", "--month", "2026-12")
    assert reconciled.returncode == 0, reconciled.stdout

    # Once the price book lists the model, the period is restated: same charges, the
    # list value now includes it (5.00 in, 20.00 out per million).
    book = tmp_path / "pricebook.toml"
    book.write_text(
        PRICE_BOOK.read_text()
        + f'\n[[models]]\nmodel = "{new_model}"\ninput_per_million_usd = 5.00\n'
        "output_per_million_usd = 20.00\neffective_from = 2026-12-01\n"
    )
    restated, stderr = bill(corpus, "--month", "2026-12", "--price-book", str(book))
    assert (restated["status"], restated["run_id"]) == ("restated", "2026-12-v2")
    assert "warning:" not in stderr
    assert [
        (li["charge_usd"], li["list_value_usd"], li["unpriced_models"]) for li in restated["lines"]
    ] == [
        ("120.00", "3.90", []),  # 2.00 + 0.3 M x 5.00 + 0.02 M x 20.00
        ("1.00", "0.02", []),  # 0.005 + 0.010 = 0.015, half to even: 0.02
    ]
    assert [
        (c["agency_id"], c["charge_delta_usd"], c["list_value_delta_usd"])
        for c in restated["changes"]
    ] == [
        ("state-dec", "0.00", "1.90"),
        ("fed-dec-pilot", "0.00", "0.02"),
    ]


# ---------------------------------------------------------------------------------
# Two `metering bill` runs for one period at once (FY2027: no other test bills it)


def test_two_bill_runs_at_once_record_one_run_and_lose_no_line(corpus: MeteringRun) -> None:
    command = [sys.executable, "-m", "metering.cli", "bill", "--fiscal-year", "2027"]
    # Each run holds its claim 5 s before writing, so the two certainly overlap.
    env = {**corpus.env, "METERING_FAULT_BILL_PAUSE_AFTER_CLAIM": "5"}
    processes = [
        subprocess.Popen(
            [*command, "--format", "json"],
            env=env,
            cwd=corpus.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.communicate(timeout=300), p.returncode) for p in processes]
    for (_, stderr), code in results:
        assert code == 0, stderr[-3000:]
    outputs = [json.loads(out) for (out, _), _ in results]
    recorded = [o for o in outputs if o["status"] == "recorded"]
    waited = [o for o in outputs if o["status"] == "unchanged"]
    assert (len(recorded), len(waited)) == (1, 1)
    assert recorded[0]["run_id"] == waited[0]["run_id"] == "FY2027-v1"
    assert recorded[0]["lines"] == waited[0]["lines"]
    loser_stderr = next(err for (_, err), _ in results if "waited for it" in err)
    [claim] = corpus.query(
        "SELECT claim_id, claimed_by, version, attempt FROM metering.billing_claims "
        "WHERE period = 'FY2027'"
    )
    assert (claim["version"], claim["attempt"]) == (1, 1)
    assert (
        f"another `metering bill` held version 1 of FY2027 (claim {claim['claim_id'][:12]} "
        f"by {claim['claimed_by']} at "
    ) in loser_stderr
    assert "unchanged since run FY2027-v1 (version 1" in loser_stderr
    # One run row; its lines are exactly one per (tenant, agency) of the fiscal year.
    assert corpus.query(
        "SELECT run_id, version, lines FROM metering.billing_runs WHERE period = 'FY2027'"
    ) == [{"run_id": "FY2027-v1", "version": 1, "lines": len(recorded[0]["lines"])}]
    [keys] = corpus.query(
        "SELECT count() AS n FROM (SELECT DISTINCT tenant, agency_id, agency_level "
        "FROM metering.agency_monthly WHERE month >= '2026-10-01' AND month < '2027-10-01')"
    )
    [stored] = corpus.query(
        "SELECT count() AS n, uniqExact(tenant, agency_id, agency_level) AS keys "
        "FROM metering.billing_lines WHERE run_id = 'FY2027-v1'"
    )
    assert stored == {"n": keys["n"], "keys": keys["n"]}
    assert len(recorded[0]["lines"]) == keys["n"]
