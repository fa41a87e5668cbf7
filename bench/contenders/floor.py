"""Row 1, the floor: a bare kafka-python loop that reads the topic and decodes every value.

`python -m bench.contenders.floor --bootstrap B --topic T --group G --expect N`
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import orjson
from kafka import KafkaConsumer

from bench.contenders.markers import DONE, FIRST, READY, emit

__all__ = ["main"]


def consume(bootstrap: str, topic: str, group: str, expect: int) -> int:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    emit(READY)
    seen = members = 0
    loads = orjson.loads
    try:
        while seen < expect:
            batches = consumer.poll(timeout_ms=1000, max_records=20_000)
            for records in batches.values():
                for record in records:
                    document = loads(record.value)
                    members += len(document)
                    if not seen:
                        emit(FIRST)
                    seen += 1
        emit(DONE, messages=seen, members=members)
    finally:
        consumer.close(autocommit=False)
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    args = p.parse_args(argv)
    consume(args.bootstrap, args.topic, args.group, args.expect)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
