"""Row 4: the same aggregation in quixstreams, with tumbling one-day windows.

Each value is validated with the project's pydantic model, the event time comes from
`occurred_at`, a stateful step (state per message key, i.e. per agency) marks the first
event of each user in a day, and a one-day tumbling window per agency sums messages,
tokens and first-of-day users. `.current()` emits the window's running totals on every
event (a one-day window of the last day never closes, so `.final()` would emit nothing);
a batching sink keeps the latest row per agency-day of each checkpoint and inserts it into
ClickHouse (chDB, its own store path), where a ReplacingMergeTree keeps the newest.

Runs in its own interpreter: quixstreams pins pydantic below the project's version.
`python -m bench.contenders.quix_windows --bootstrap B --topic T --group G --expect N
--store PATH --state-dir DIR`
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from quixstreams import Application, State
from quixstreams.dataframe.windows.aggregations import Count, Latest, Sum
from quixstreams.sinks import BatchingSink, SinkBatch

from bench.contenders.chstore import ensure_bench_table, insert_rows, open_store
from bench.contenders.markers import DONE, FIRST, READY, emit

__all__ = ["main"]


def _usage_event_model() -> Any:
    """`schemas.events.UsageEvent`, loaded from its file: the `schemas` package itself
    imports the project's other dependencies, which this interpreter does not have."""
    path = Path(__file__).resolve().parents[2] / "schemas" / "events.py"
    spec = importlib.util.spec_from_file_location("bench_usage_event", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the annotations through it
    spec.loader.exec_module(module)
    return module.UsageEvent


UsageEvent = _usage_event_model()

_DAY_MS = 86_400_000


class ClickHouseWindowSink(BatchingSink):  # type: ignore[misc]
    """At each checkpoint: the latest running totals per agency-day, in one insert."""

    def __init__(self, store: Path) -> None:
        super().__init__()
        self._store = store
        self._client: Any = None
        self.rows_written = 0

    def setup(self) -> None:
        self._client = open_store(self._store)
        ensure_bench_table(self._client)

    def write(self, batch: SinkBatch) -> None:
        latest: dict[tuple[str, int], list[Any]] = {}
        for item in batch:
            value = item.value
            start = value["start"]
            latest[(item.key, start)] = [
                datetime.fromtimestamp(start / 1000, UTC).date(),
                value["tenant"],
                item.key,
                value["agency_level"],
                value["messages"],
                value["tokens_in"],
                value["tokens_out"],
                value["active_users"],
                item.offset,  # an agency lives in one partition: offsets order its updates
            ]
        insert_rows(self._client, list(latest.values()))
        self.rows_written += len(latest)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _validate(value: bytes) -> dict[str, Any]:
    event = UsageEvent.model_validate_json(value)
    return {
        "ts": int(event.occurred_at.timestamp() * 1000),
        "tenant": event.tenant,
        "agency_level": event.agency_level,
        "user_id": event.user_id,
        "tokens_in": event.tokens_in,
        "tokens_out": event.tokens_out,
    }


def _first_of_day(value: dict[str, Any], state: State) -> dict[str, Any]:
    marker = f"{value['ts'] // _DAY_MS}|{value['user_id']}"
    if state.exists(marker):
        value["new_user"] = 0
    else:
        state.set(marker, 1)
        value["new_user"] = 1
    return value


def run(args: argparse.Namespace) -> int:
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, key_deserializer="str", value_deserializer="bytes")
    seen = 0

    def validate(value: bytes) -> dict[str, Any]:
        nonlocal seen
        if not seen:
            emit(FIRST)
        seen += 1
        return _validate(value)

    sdf = app.dataframe(topic)
    sdf = sdf.apply(validate)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
    sdf = sdf.apply(_first_of_day, stateful=True)
    sdf = (
        sdf.tumbling_window(timedelta(days=1))
        .agg(
            messages=Count(),
            tokens_in=Sum("tokens_in"),
            tokens_out=Sum("tokens_out"),
            active_users=Sum("new_user"),
            tenant=Latest("tenant"),
            agency_level=Latest("agency_level"),
        )
        .current()
    )
    sink = ClickHouseWindowSink(Path(args.store))
    sdf.sink(sink)
    emit(READY)
    try:
        app.run(count=args.expect, timeout=args.idle_timeout, collect=False)
        emit(DONE, messages=seen, rows_written=sink.rows_written)
    finally:
        sink.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--idle-timeout", type=float, default=60.0)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
