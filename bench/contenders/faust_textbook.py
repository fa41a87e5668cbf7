"""Row 3, the baseline: the same aggregation written the textbook faust way.

One agent iterates the stream event by event (`async for value in stream`), validates
each value with pydantic (`UsageEvent.model_validate_json`), and keeps per
(day, tenant, agency, level) counts and token sums in a faust Table and the distinct
users in a faust SetTable (both changelogged to Kafka, as faust tables are). Once the
expected number of events went through, the tables are written to ClickHouse (chDB,
its own store path) and the app stops.

`python -m bench.contenders.faust_textbook --bootstrap B --topic T --group G
--partitions P --expect N --store PATH`
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import faust

from bench.contenders.chstore import ensure_bench_table, insert_rows, open_store
from bench.contenders.markers import DONE, FIRST, READY, emit
from schemas.events import UsageEvent

__all__ = ["main"]


def _app(bootstrap: str, group: str, partitions: int) -> faust.App:
    return faust.App(
        group,
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        logging_config=None,
        loghandlers=[],
    )


async def run(args: argparse.Namespace) -> None:
    app = _app(args.bootstrap, args.group, args.partitions)
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    # key "day|tenant|agency_id|agency_level" -> [messages, tokens_in, tokens_out]
    totals = app.Table("totals", default=lambda: [0, 0, 0], partitions=args.partitions)
    users = app.SetTable("users", partitions=args.partitions)
    finished = asyncio.Event()
    seen = 0

    async def meter(stream: Any) -> None:
        nonlocal seen
        async for value in stream:
            event = UsageEvent.model_validate_json(value)
            key = (
                f"{event.occurred_at.date().isoformat()}|{event.tenant}|"
                f"{event.agency_id}|{event.agency_level}"
            )
            messages, tokens_in, tokens_out = totals[key]
            totals[key] = [messages + 1, tokens_in + event.tokens_in, tokens_out + event.tokens_out]
            users[key].add(event.user_id)
            if not seen:
                emit(FIRST)
            seen += 1
            if seen >= args.expect:
                finished.set()

    app.agent(topic, name="bench.meter")(meter)
    await app.start()
    emit(READY)
    await finished.wait()
    rows = []
    for key, (messages, tokens_in, tokens_out) in list(totals.items()):
        day, tenant, agency_id, level = key.split("|")
        rows.append(
            [
                date.fromisoformat(day),
                tenant,
                agency_id,
                level,
                messages,
                tokens_in,
                tokens_out,
                len(users[key]),
                1,
            ]
        )
    client = open_store(Path(args.store))
    try:
        ensure_bench_table(client)
        insert_rows(client, rows)
    finally:
        client.close()
    emit(DONE, messages=seen, rows=len(rows))
    await app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--store", required=True)
    asyncio.run(run(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
