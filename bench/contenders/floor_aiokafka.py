"""Row 1b: the same floor on aiokafka, the client faust (and so our worker) consumes with.

`python -m bench.contenders.floor_aiokafka --bootstrap B --topic T --group G --expect N`
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaConsumer

from bench.contenders.markers import DONE, FIRST, READY, emit

__all__ = ["main"]


async def consume(
    bootstrap: str, topic: str, group: str, expect: int, skip_invalid: bool = False
) -> int:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    emit(READY)
    seen = members = 0
    loads = orjson.loads
    try:
        while seen < expect:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batches.values():
                for record in records:
                    try:
                        members += len(loads(record.value))
                    except (orjson.JSONDecodeError, TypeError):
                        if not skip_invalid:
                            raise
                    if not seen:
                        emit(FIRST)
                    seen += 1
        emit(DONE, messages=seen, members=members)
    finally:
        await consumer.stop()
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument(
        "--skip-invalid", action="store_true", help="count lines that are not JSON objects too"
    )
    args = p.parse_args(argv)
    asyncio.run(consume(args.bootstrap, args.topic, args.group, args.expect, args.skip_invalid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
