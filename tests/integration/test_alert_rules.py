"""The alerts and the dashboard of infra/prometheus/ against a real worker's /metrics.

tests/alert_rules.py lists the metric families the rules and the dashboard use, with
their types and labels; tests/unit/test_alert_rules.py holds the files to that list.
Here the list is held to real scrapes: of a worker (before any traffic, and after the
golden corpus), and of the supervisor of `metering worker --processes 2` (a `writer`
label on every sample, `govmeter_writer_up`). Then promtool runs the rules over series
made from the worker's two scrapes: the content and rejected-share alerts fire, the
others do not; over the idle scrape alone, none does.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.alert_rules import (
    EXPORTED,
    PROMTOOL_MISSING,
    REJECTION_REASONS,
    RULES,
    WRITER_LABEL,
    alert_rules,
    promtool,
)
from tests.integration.harness import CORPUS, FAST_REBALANCE_ENV, MeteringRun, expected
from tests.integration.harness import free_port as _free_port

pytestmark = pytest.mark.integration

_TYPE = re.compile(r"^#\s*TYPE\s+([A-Za-z_:][\w:]*)\s+(\S+)\s*$")
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?\s*$")
_LABEL = re.compile(r'([A-Za-z_]\w*)="((?:\\.|[^"\\])*)"\s*,?\s*')
_TEMPLATE = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")

INSTANCE, JOB = "worker:9464", "govmeter"


@dataclass
class Scrape:
    kinds: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.samples.get(name, [])

    def total(self, name: str) -> float:
        return sum(value for _, value in self.values(name))


def parse(text: str) -> Scrape:
    """Prometheus text format: TYPE lines and samples (labels unescaped enough for ours)."""
    scrape = Scrape()
    for line in text.splitlines():
        typed = _TYPE.match(line)
        if typed is not None:
            scrape.kinds[typed.group(1)] = typed.group(2)
            continue
        if not line or line.startswith("#"):
            continue
        sample = _SAMPLE.match(line)
        assert sample is not None, f"not a sample line: {line!r}"
        name, body, value = sample.groups()
        labels = dict(_LABEL.findall(body or ""))
        scrape.samples.setdefault(name, []).append((labels, float(value)))
    return scrape


def _get(url: str) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()
    except OSError:
        return None


def scrape_until(
    port: int, ready: Callable[[Scrape], bool], what: str, timeout: float = 120
) -> Scrape:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        text = _get(f"http://127.0.0.1:{port}/metrics")
        if text is not None:
            last = text
            scrape = parse(text)
            if ready(scrape):
                return scrape
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s; last scrape:\n{last[-3000:]}")


def consecutive_free_ports(count: int) -> int:
    """A port such that it and the `count - 1` after it are free (the supervisor
    serves the first, writer i the first plus i)."""
    for _ in range(50):
        first = _free_port()
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


def check_families(scrape: Scrape, *, supervisor: bool) -> None:
    """Every family the rules and the dashboard use, with its type and exactly its labels
    (plus the writer's from a supervisor); those exported from the start have samples."""
    for name, family in EXPORTED.items():
        if family.supervisor_only and not supervisor:
            assert name not in scrape.kinds, name
            continue
        assert scrape.kinds.get(name) == family.kind, (name, scrape.kinds.get(name))
        labels = family.labels | ({WRITER_LABEL} if supervisor else set())
        for sample_labels, _ in scrape.values(name):
            assert set(sample_labels) == labels, (name, sample_labels)
        if family.samples == "always":
            assert scrape.values(name), f"{name} has no sample"
    reasons = {labels["reason"] for labels, _ in scrape.values("govmeter_events_rejected_total")}
    assert reasons == REJECTION_REASONS


def _start(run: MeteringRun, args: list[str], env: dict[str, str], log: IO[str]) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker", *args],
        env={**run.env, **env},
        cwd=run.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen[str], log_path: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise
    assert code == 0, log_path.read_text()[-3000:]


def test_a_worker_exports_what_the_alerts_use_and_they_fire_on_its_series(
    run: MeteringRun, tmp_path: Path
) -> None:
    golden = expected()
    port = _free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = _start(run, [], {"METERING_HEALTH_PORT": str(port)}, log)
        try:
            idle = scrape_until(port, lambda s: True, "the worker's /metrics")
            run.replay(CORPUS)
            busy = scrape_until(
                port,
                lambda s: (
                    s.total("govmeter_events_counted_total") == golden["valid_counted"]
                    and len(s.values("govmeter_consumer_lag")) == 3
                ),
                "the corpus counted",
            )
        finally:
            _stop(process, log_path)

    for scrape in (idle, busy):
        check_families(scrape, supervisor=False)
    assert all(value == 0 for _, value in idle.values("govmeter_events_rejected_total"))
    rejected = {
        labels["reason"]: value for labels, value in busy.values("govmeter_events_rejected_total")
    }
    assert rejected == {reason: golden["rejected"].get(reason, 0) for reason in REJECTION_REASONS}
    # Families the alerts need once something happened: declared (TYPE) from the start,
    # no sample in a healthy run; the alerts on them handle a series that appears.
    for name in ("govmeter_offsets_expired_total", "govmeter_store_errors_by_cause_total"):
        assert busy.values(name) == []

    _promtool_over(idle, busy, tmp_path)


def _series(scrape: Scrape) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, samples in scrape.samples.items():
        for labels, value in samples:
            every = {**labels, "instance": INSTANCE, "job": JOB}
            body = ",".join(f'{key}="{every[key]}"' for key in sorted(every))
            found[f"{name}{{{body}}}"] = value
    return found


def _render(template: str, labels: dict[str, str]) -> str:
    text = _TEMPLATE.sub(lambda m: labels[m.group(1)], template)
    assert "{{" not in text, template
    return text


def _promtool_over(idle: Scrape, busy: Scrape, tmp_path: Path) -> None:
    """promtool over the scrapes as series at one-minute scrapes: the idle scrape for
    ten minutes, then the busy one; and the idle scrape alone."""
    before, after = _series(idle), _series(busy)
    moved = [
        {
            "series": key,
            "values": (f"{before[key]!r}x9" if key in before else "_x10") + f" {after[key]!r}x30",
        }
        for key in sorted(before.keys() | after.keys())
    ]
    still = [{"series": key, "values": f"{value!r}x40"} for key, value in sorted(before.items())]
    rules = alert_rules()
    firing: dict[str, list[dict[str, str]]] = {
        "GovmeterContentSent": [{"instance": INSTANCE, "job": JOB, "reason": "content_not_allowed"}]
    }
    assert busy.total("govmeter_events_rejected_total") > 0.01 * busy.total(
        "govmeter_events_in_total"
    )
    firing["GovmeterRejectedShareHigh"] = [{}]
    if busy.total("govmeter_flush_seconds_last") > 10:  # a slow machine
        firing["GovmeterFlushSlow"] = [{"instance": INSTANCE, "job": JOB}]
    # 10 minutes after the counts moved, a rate over 10 minutes is under 1/s per reason
    assert all(value < 500 for _, value in busy.values("govmeter_events_rejected_total"))

    def expect(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
        every = {**labels, **rule["labels"]}
        return {
            "exp_labels": every,
            "exp_annotations": {
                key: _render(value, every) for key, value in rule["annotations"].items()
            },
        }

    document = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "a real worker, idle, then after the golden corpus",
                "interval": "1m",
                "input_series": moved,
                "alert_rule_test": [
                    {
                        "eval_time": "12m",
                        "alertname": rule["alert"],
                        "exp_alerts": [
                            expect(rule, labels) for labels in firing.get(rule["alert"], [])
                        ],
                    }
                    for rule in rules
                ],
            },
            {
                "name": "a real worker, idle",
                "interval": "1m",
                "input_series": still,
                "alert_rule_test": [
                    {"eval_time": "12m", "alertname": rule["alert"], "exp_alerts": []}
                    for rule in rules
                ],
            },
        ],
    }
    path = tmp_path / "scraped.test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    binary = promtool()
    if binary is None:
        pytest.fail(PROMTOOL_MISSING, pytrace=False)
    result = subprocess.run(
        [binary, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_supervisor_exports_them_with_a_writer_label_and_writer_up(
    run: MeteringRun, tmp_path: Path
) -> None:
    run.replay(CORPUS)
    port = consecutive_free_ports(3)
    writers = {"alerts-1", "alerts-2"}
    log_path = tmp_path / "supervisor.log"

    def settled(scrape: Scrape) -> bool:
        up = {labels["writer"]: value for labels, value in scrape.values("govmeter_writer_up")}
        lag = scrape.values("govmeter_consumer_lag")
        return (
            up == dict.fromkeys(writers, 1.0)
            and len(lag) == 3
            and all(value == 0 for _, value in lag)
        )

    with log_path.open("w") as log:
        process = _start(
            run,
            ["--processes", "2"],
            {
                **FAST_REBALANCE_ENV,
                "METERING_WORKER_NAME": "alerts",
                "METERING_HEALTH_PORT": str(port),
            },
            log,
        )
        try:
            scrape = scrape_until(port, settled, "both writers up, the corpus consumed", 180)
        finally:
            _stop(process, log_path)

    check_families(scrape, supervisor=True)
    for name in EXPORTED:
        for labels, _ in scrape.values(name):
            assert labels[WRITER_LABEL] in writers, (name, labels)
    for name in ("govmeter_events_in_total", "govmeter_flushes_total"):
        assert {labels[WRITER_LABEL] for labels, _ in scrape.values(name)} == writers, name
    # each partition's lag once, from the writer that has it: sums do not double
    partitions = [labels["partition"] for labels, _ in scrape.values("govmeter_consumer_lag")]
    assert sorted(partitions) == ["0", "1", "2"]
