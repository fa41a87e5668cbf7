"""The alert rules and the dashboard of infra/prometheus/, and the metrics they may use.

`EXPORTED` is what the rules, their promtool tests and the dashboard may rely on: each
metric family of the worker's /metrics they use, with its type and its labels (besides
`instance` and `job`, which Prometheus adds when it scrapes, and `writer`, which the
supervisor of `metering worker --processes N` adds to every writer's samples).
tests/integration/test_alert_rules.py checks the list against real scrapes of a worker
and of a supervisor; tests/unit/test_alert_rules.py checks the files against the list.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR: Final = ROOT / "infra/prometheus"
RULES: Final = PROMETHEUS_DIR / "govmeter-rules.yml"
RULES_TEST: Final = PROMETHEUS_DIR / "govmeter-rules.test.yml"
DASHBOARD: Final = PROMETHEUS_DIR / "govmeter-dashboard.json"

SCRAPE_LABELS: Final = frozenset({"instance", "job"})
WRITER_LABEL: Final = "writer"

PROMTOOL_MISSING: Final = (
    "promtool is not on PATH. Install it with `make promtool-setup` (as root: Debian's "
    "prometheus package, without starting its server; see infra/prometheus/install-promtool), "
    "or put the promtool of Prometheus 2.x on PATH."
)


@dataclass(frozen=True)
class Family:
    kind: str  # "counter" or "gauge"
    labels: frozenset[str]
    # "always": a sample from the first scrape on; "assigned": once the worker has
    # partitions and the broker's offsets; "event": only after what it counts happened
    # (its TYPE line is there from the start)
    samples: str
    supervisor_only: bool = False


def _family(kind: str, *labels: str, samples: str = "always") -> Family:
    return Family(kind, frozenset(labels), samples)


EXPORTED: Final[dict[str, Family]] = {
    "govmeter_events_in_total": _family("counter"),
    "govmeter_events_counted_total": _family("counter"),
    "govmeter_events_duplicate_total": _family("counter"),
    # every reason at zero from the start (streams/metrics.py)
    "govmeter_events_rejected_total": _family("counter", "reason"),
    "govmeter_flushes_total": _family("counter"),
    "govmeter_store_errors_total": _family("counter"),
    "govmeter_store_errors_by_cause_total": _family(
        "counter", "cause", "transient", samples="event"
    ),
    "govmeter_dead_letter_errors_total": _family("counter"),
    "govmeter_dead_letter_errors_by_cause_total": _family(
        "counter", "cause", "transient", samples="event"
    ),
    "govmeter_offsets_expired_total": _family("counter", "topic", "partition", samples="event"),
    "govmeter_flush_seconds_last": _family("gauge"),
    "govmeter_consumer_lag": _family("gauge", "topic", "partition", samples="assigned"),
    "govmeter_consumer_lag_available": _family("gauge"),
    "govmeter_writer_up": Family("gauge", frozenset({WRITER_LABEL}), "always", True),
}

# Rejection reasons the worker exports (schemas.rejections.Reason).
REJECTION_REASONS: Final = frozenset(
    {
        "too_large",
        "invalid_json",
        "content_not_allowed",
        "unsupported_schema_version",
        "schema_violation",
    }
)

# -- metric names in PromQL ---------------------------------------------------------------

_STRING: Final = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_COMMENT: Final = re.compile(r"#[^\n]*")
_MATCHERS: Final = re.compile(r"\{[^}]*\}")
_RANGE: Final = re.compile(r"\[[^\]]*\]")
_GROUPING: Final = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_TOKEN: Final = re.compile(r"\d[\w.]*|[A-Za-z_:][\w:]*|\S")
_KEYWORDS: Final = frozenset(
    {
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "atan2",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers followed by `{` or
    used bare, not function or aggregation names (followed by `(`), keywords, label
    names (in matchers and in by/without/on/ignoring lists) or durations."""
    text = _STRING.sub('""', expr)
    text = _COMMENT.sub(" ", text)
    text = _MATCHERS.sub(" {} ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    tokens = _TOKEN.findall(text)
    names: set[str] = set()
    for index, token in enumerate(tokens):
        if not (token[0].isalpha() or token[0] in "_:"):
            continue
        if token.lower() in _KEYWORDS:
            continue
        if index + 1 < len(tokens) and tokens[index + 1] == "(":
            continue
        names.add(token)
    return names


# -- the files ---------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of the rules file, in order."""
    rules: list[dict[str, Any]] = []
    for group in load_yaml(RULES)["groups"]:
        rules.extend(group["rules"])
    return rules


def rule_metric_names() -> set[str]:
    return {name for rule in alert_rules() for name in metric_names(rule["expr"])}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel's targets."""
    return [
        target["expr"]
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def dashboard_metric_names() -> set[str]:
    dashboard = load_dashboard()
    names = {name for expr in dashboard_queries(dashboard) for name in metric_names(expr)}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            names.update(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", text))
    return names


def promtool() -> str | None:
    return shutil.which("promtool")
