"""Transactions through the scale-out roles: a processor relays, the store owner writes.

The processor reads read_committed and relays records only, so every transaction
marker and aborted record is a jump between two packages of a partition; the owner
must accept exactly those jumps (the broker confirms no committed record lies in
them) and its ledger ranges must still tile each partition from offset 0.
"""

from __future__ import annotations

import pytest

from tests.integration.harness import MeteringRun
from tests.integration.test_codecs import create_events_topic
from tests.integration.test_scale_out import start_role
from tests.integration.test_transactions import assert_exact, make_steps, produce

pytestmark = pytest.mark.integration


def test_transactions_relayed_by_a_processor_are_exact(run: MeteringRun) -> None:
    topic = create_events_topic(run)
    steps = make_steps(seed=31, transactions=30)
    produce(run, topic, steps)

    processor = start_role(run, "processor", until_idle=2.0)
    owner = start_role(run, "store-owner", until_idle=4.0)
    processed, _ = processor.communicate(timeout=240)
    owned, _ = owner.communicate(timeout=240)
    assert processor.returncode == 0, processed[-3000:]
    assert owner.returncode == 0, owned[-3000:]
    assert "refusing to count around missing messages" not in owned

    assert_exact(run, steps, topic, ledger_at_end=False)
