"""The worker's /metrics and /healthz, scraped during a real run over the golden corpus."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.harness import CORPUS, MeteringRun, expected
from tests.integration.harness import free_port as _free_port

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.status, response.read().decode()


def _metric(text: str, name: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    return None


def test_metrics_endpoint_shows_the_exact_counts(run: MeteringRun) -> None:
    golden = expected()
    run.replay(CORPUS)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker"],
        env={**run.env, "METERING_HEALTH_PORT": str(port)},
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline:
            try:
                _, text = _get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.5)
                continue
            if _metric(text, "govmeter_events_counted_total") == golden["valid_counted"]:
                break
            time.sleep(0.5)
        assert _metric(text, "govmeter_events_counted_total") == golden["valid_counted"], text
        assert _metric(text, "govmeter_events_in_total") == golden["lines"]
        assert _metric(text, "govmeter_events_duplicate_total") == golden["duplicates"]
        for reason, count in golden["rejected"].items():
            assert f'govmeter_events_rejected_total{{reason="{reason}"}} {count}' in text
        assert _metric(text, "govmeter_store_errors_total") == 0
        topic = run.env["METERING_EVENTS_TOPIC"]
        lag_lines = sorted(
            line for line in text.splitlines() if line.startswith("govmeter_consumer_lag{")
        )
        assert lag_lines == [
            f'govmeter_consumer_lag{{topic="{topic}",partition="{p}"}} 0' for p in range(3)
        ]
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-2000:]
    for marker in golden["content_markers"]:
        assert marker not in output
