"""Transactions through the scale-out roles: a processor relays, the store owner writes.

The processor reads read_committed and relays records only, so every transaction
marker and aborted record is a jump between two packages of a partition; the owner
must accept exactly those jumps (the broker confirms no committed record lies in
them) and its ledger ranges must still tile each partition from offset 0.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.harness import MeteringRun
from tests.integration.test_codecs import create_events_topic
from tests.integration.test_transactions import SMALL_BATCHES, assert_exact, make_steps, produce

pytestmark = pytest.mark.integration


def _role(run: MeteringRun, role: str, until_idle: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker", "--role", role,
         "--until-idle", str(until_idle)],
        env={
            **run.env,
            **SMALL_BATCHES,
            "METERING_RELAY_TOPIC": run.env["METERING_EVENTS_TOPIC"] + ".relay",
        },
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def test_transactions_relayed_by_a_processor_are_exact(run: MeteringRun) -> None:
    topic = create_events_topic(run)
    steps = make_steps(seed=31, transactions=30)
    produce(run, topic, steps)

    processor = _role(run, "processor", until_idle=2.0)
    owner = _role(run, "store-owner", until_idle=4.0)
    processed, _ = processor.communicate(timeout=240)
    owned, _ = owner.communicate(timeout=240)
    assert processor.returncode == 0, processed[-3000:]
    assert owner.returncode == 0, owned[-3000:]
    assert "refusing to count around missing messages" not in owned

    assert_exact(run, steps, topic, ledger_at_end=False)
