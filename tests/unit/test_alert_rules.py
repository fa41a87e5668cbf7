"""The Prometheus rules and the Grafana dashboard of infra/prometheus/.

promtool checks the rules and runs their unit tests (it must be installed: `make
promtool-setup`; these tests fail without it, they never skip). The rest checks what
promtool cannot: every alert has a case where it fires and one where it does not, the
rules, their test series and the dashboard use only metrics the worker exports with the
labels it gives them (tests/alert_rules.py, checked against real scrapes by
tests/integration/test_alert_rules.py), and docs/operations.md's table is the rules file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alert_rules import (
    DASHBOARD,
    EXPORTED,
    PROMTOOL_MISSING,
    REJECTION_REASONS,
    ROOT,
    RULES,
    RULES_TEST,
    SCRAPE_LABELS,
    WRITER_LABEL,
    alert_rules,
    dashboard_metric_names,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
    load_yaml,
    metric_names,
    promtool,
    rule_metric_names,
)

OPERATIONS = ROOT / "docs/operations.md"
SEVERITIES = {"page", "ticket"}
_SERIES = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?$")
_LABEL = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*"((?:\\.|[^"\\])*)"\s*(?:,|$)')


def _promtool() -> str:
    """promtool's path; the test fails (never skips) without it."""
    found = promtool()
    if found is None:
        pytest.fail(PROMTOOL_MISSING, pytrace=False)
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = _run(_promtool(), "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    document = load_yaml(RULES_TEST)
    assert document["rule_files"] == [RULES.name]
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts with no case where they fire"
    assert names - quiet == set(), "alerts with no case where they stay quiet"
    assert (fires | quiet) - names == set(), "tests of alerts the rules do not have"


def test_every_rule_is_an_alert_with_a_severity_and_what_to_do() -> None:
    rules = alert_rules()
    names = [rule.get("alert") for rule in rules]
    assert len(set(names)) == len(names), names
    for rule in rules:
        assert str(rule.get("alert", "")).startswith("Govmeter"), rule
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, rule["alert"]
        assert len(annotations["summary"]) > 20, rule["alert"]
        assert len(annotations["description"]) > 80, rule["alert"]


def test_the_rules_and_the_dashboard_use_only_exported_metrics() -> None:
    rules, dashboard = rule_metric_names(), dashboard_metric_names()
    assert rules - EXPORTED.keys() == set(), "rules use metrics the worker does not export"
    assert dashboard - EXPORTED.keys() == set(), "the dashboard uses unexported metrics"
    # the list has nothing else, so the integration test checks exactly what is used
    assert EXPORTED.keys() == rules | dashboard


def _parse_series(text: str) -> tuple[str, dict[str, str]]:
    match = _SERIES.match(text.strip())
    assert match is not None, text
    name, body = match.group(1), (match.group(2) or "").strip()
    labels: dict[str, str] = {}
    position = 0
    while position < len(body):
        label = _LABEL.match(body, position)
        assert label is not None, f"cannot read the labels of {text}"
        labels[label.group(1)] = label.group(2)
        position = label.end()
    return name, labels


def test_the_promtool_test_series_are_shaped_like_the_worker_metrics() -> None:
    seen: set[str] = set()
    for case in load_yaml(RULES_TEST)["tests"]:
        for series in case["input_series"]:
            name, labels = _parse_series(series["series"])
            seen.add(name)
            assert name in EXPORTED, f"{name} is not a metric the worker exports"
            family = EXPORTED[name]
            assert set(labels) >= SCRAPE_LABELS, series["series"]
            own = set(labels) - SCRAPE_LABELS
            if WRITER_LABEL not in family.labels:
                own.discard(WRITER_LABEL)  # the supervisor's, on any writer's sample
            assert own == family.labels, f"{series['series']}: labels {sorted(own)}"
            if "reason" in labels:
                assert labels["reason"] in REJECTION_REASONS, series["series"]
            if "partition" in labels:
                assert labels["partition"].isdigit(), series["series"]
    assert rule_metric_names() <= seen


def _table_rows(text: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^\| `(Govmeter\w+)` \|(.*)\|$", line)
        if match is not None:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def _one_line(expr: str) -> str:
    text = " ".join(expr.split())
    return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", text))


def test_the_operations_table_is_the_rules_file() -> None:
    text = OPERATIONS.read_text()
    assert "infra/prometheus/govmeter-rules.yml" in text
    rows = _table_rows(text)
    rules = alert_rules()
    assert list(rows) == [rule["alert"] for rule in rules]
    for rule in rules:
        expression, duration, severity, _ = rows[rule["alert"]]
        assert expression == f"`{_one_line(rule['expr'])}`", rule["alert"]
        assert duration == rule.get("for", "-"), rule["alert"]
        assert severity.split(",")[0] == rule["labels"]["severity"], rule["alert"]


def test_metric_names_finds_selected_metrics_only() -> None:
    assert metric_names(
        'sum by (reason) (rate(a_total{reason="x{y}", job=~"$job"}[$__rate_interval])) '
        "> 5 * sum without (writer) (rate(b_total[1d] offset 1d)) and on (reason) c > bool 1e3"
    ) == {"a_total", "b_total", "c"}
    assert metric_names("absent(up) or vector(0) unless d # e_total") == {"up", "d"}
    assert metric_names("deriv(sum(lag)[15m:1m]) > 0 and quantile_over_time(0.99, g[30m])") == {
        "lag",
        "g",
    }


def _dashboard_as_rules(tmp_path: Path) -> Path:
    """The dashboard's queries as recording rules, Grafana's variables filled in, so
    promtool parses them."""
    rules: list[dict[str, Any]] = []
    for index, expr in enumerate(dashboard_queries(load_dashboard())):
        filled = (
            expr.replace("$__rate_interval", "5m")
            .replace("$__range", "6h")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
        )
        assert "$" not in filled, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": filled})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_the_dashboard_queries_are_promql(tmp_path: Path) -> None:
    result = _run(_promtool(), "check", "rules", str(_dashboard_as_rules(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_has_its_panels() -> None:
    dashboard = load_dashboard()
    panels = {panel["title"]: panel for panel in dashboard_panels(dashboard)}
    for title in (
        "Consumer lag",
        "Flush latency",
        "Rejections by reason",
        "Writers up",
        "Store failures",
        "Dead-letter failures",
    ):
        assert panels[title].get("targets"), title
    # room for it, and no invented metric behind it
    backup = panels["Last backup age"]
    assert backup["type"] == "text" and "targets" not in backup
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert len(set(ids)) == len(ids)
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert DASHBOARD.parent == RULES.parent
