"""The Arrow columns of a flush's counted events, from the valid events' columns.

All of `COUNTED_EVENT_COLUMNS` but the two the flush adds when it stages them
(`flush_seq`, `ingested_at`: see `streams.sink.counted_events_table`). Built once per
set of rows, on the classifying thread (`streams.batch.classify_batch`), so the flush
itself only sends them.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from streams.valid_events import ValidEvents

__all__ = ["UTC_MILLISECONDS", "counted_event_arrays"]

UTC_MILLISECONDS: Final = pa.timestamp("ms", tz="UTC")


def counted_event_arrays(valid: ValidEvents) -> dict[str, pa.Array]:
    """The columns of `valid` as the store stages them, in `COUNTED_EVENT_COLUMNS` order."""
    return valid.derive("counted_event_arrays", _arrays)


def _arrays(valid: ValidEvents) -> dict[str, pa.Array]:
    events = valid.events
    return {
        "event_id": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(16), len(valid), [None, pa.py_buffer(valid.id_bytes())]
        ),
        "occurred_at": pa.array(events.occurred_at_ms, UTC_MILLISECONDS),
        "tenant": pa.array(events.tenant, pa.string()),
        "agency_id": pa.array(events.agency_id, pa.string()),
        "agency_level": pa.array(events.agency_level, pa.string()),
        "user_id": pa.array(events.user_id, pa.string()),
        "conversation_id": pa.array(events.conversation_id, pa.string()),
        "model": pa.array(events.model, pa.string()),
        "feature": pa.array(events.feature, pa.string()),
        "tokens_in": pa.array(events.tokens_in, pa.uint32()),
        "tokens_out": pa.array(events.tokens_out, pa.uint32()),
        "topic": pa.array(valid.topics(), pa.string()),
        "partition": pa.array(valid.partitions(), pa.uint32()),
        "offset": pa.array(valid.offsets(), pa.uint64()),
    }
