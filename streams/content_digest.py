"""The counted-event lines of a flush's canonical content text, built from columns.

`store.ledger.chain` defines the text (one line per counted event, sorted by event id:
"E" + compact ASCII JSON of 13 fields). Building it line by line costs a JSON encoding
per event. Here Arrow joins the columns the flush stages anyway (`streams.
staged_columns`) into the lines, element-wise, and takes them in event-id order: no
Python per event. That is exact only while no string needs a JSON escape, so the join
is used only when every byte of every string column is printable ASCII other than `"`
and `\\` (then `json.dumps` writes each string as it is, between quotes). Otherwise
one orjson call encodes every row, used only when its output provably equals the
standard library's; and failing that the lines are built by `store.ledger.chain`
itself.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from store.ledger.chain import ChainedEvent, content_lines
from streams.staged_columns import counted_event_arrays
from streams.valid_events import ValidEvents

__all__ = ["counted_event_lines"]

_ROW_SEPARATOR: Final = b"],["
_QUOTE: Final = 0x22
_BACKSLASH: Final = 0x5C


def counted_event_lines(valid: ValidEvents) -> bytes:
    """The "E" lines of `store.ledger.chain.content_lines`, as ASCII bytes."""
    return valid.derive("counted_event_lines", _lines)


def _lines(valid: ValidEvents) -> bytes:
    if not len(valid):
        return b""
    joined = _joined_by_arrow(valid)
    if joined is not None:
        return joined
    return _lines_by_rows(valid)


def _joined_by_arrow(valid: ValidEvents) -> bytes | None:
    """The lines joined column-wise by Arrow; None if a string would need an escape."""
    arrays = counted_event_arrays(valid)
    event_id = pa.array(valid.events.event_id, pa.string())
    text = {
        name: arrays[name]
        for name in (
            "tenant",
            "agency_id",
            "agency_level",
            "user_id",
            "model",
            "feature",
            "topic",
        )
    }
    if not _plain(event_id) or not all(_plain(column) for column in text.values()):
        return None
    number = {
        "occurred_at": pc.cast(arrays["occurred_at"].cast(pa.int64()), pa.string()),
        **{
            name: pc.cast(arrays[name], pa.string())
            for name in ("tokens_in", "tokens_out", "partition", "offset")
        },
    }
    # E["<id>",<ms>,"<tenant>","<agency>","<level>","<user>","<model>","<feature>",
    #   <tokens_in>,<tokens_out>,"<topic>",<partition>,<offset>]
    pieces: list[pa.Array | pa.Scalar] = [
        pa.scalar('E["'),
        event_id,
        pa.scalar('",'),
        number["occurred_at"],
        pa.scalar(',"'),
    ]
    for name in ("tenant", "agency_id", "agency_level", "user_id", "model"):
        pieces += [text[name], pa.scalar('","')]
    pieces += [
        text["feature"], pa.scalar('",'), number["tokens_in"], pa.scalar(","),
        number["tokens_out"], pa.scalar(',"'), text["topic"], pa.scalar('",'),
        number["partition"], pa.scalar(","), number["offset"], pa.scalar("]\n"),
    ]  # fmt: skip
    lines = pc.binary_join_element_wise(*pieces, "")
    ordered = lines.take(pa.array(_by_event_id(valid), pa.int64()))
    if ordered.null_count:
        return None
    return _value_bytes(ordered)


def _plain(column: pa.Array) -> bool:
    """No null, and every byte printable ASCII other than a quote or a backslash."""
    if column.null_count:
        return False
    first, last = _value_bounds(column)
    data = column.buffers()[2]
    if first == last or data is None:
        return True
    values = np.frombuffer(data, dtype=np.uint8)[first:last]
    return bool(
        ((values >= 0x20) & (values < 0x7F) & (values != _QUOTE) & (values != _BACKSLASH)).all()
    )


def _value_bounds(column: pa.Array) -> tuple[int, int]:
    """Where a string array's values start and end in its data buffer."""
    offsets = column.buffers()[1]
    bounds = np.frombuffer(offsets, dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    return int(bounds[0]), int(bounds[-1])


def _value_bytes(column: pa.Array) -> bytes:
    """The bytes of a string array's values, one after the other."""
    first, last = _value_bounds(column)
    data = column.buffers()[2]
    return data.to_pybytes()[first:last] if data is not None else b""


def _lines_by_rows(valid: ValidEvents) -> bytes:
    events = valid.events
    columns = (
        events.event_id,
        events.occurred_at_ms,
        events.tenant,
        events.agency_id,
        events.agency_level,
        events.user_id,
        events.model,
        events.feature,
        events.tokens_in,
        events.tokens_out,
        valid.topics(),
        valid.partitions(),
        valid.offsets(),
    )
    order = _by_event_id(valid)
    rows = list(zip(*(list(map(column.__getitem__, order)) for column in columns), strict=True))
    try:
        text = orjson.dumps(rows)
    except TypeError:  # an integer beyond 64 bits
        text = b""
    if (
        text.isascii()
        and b"\\" not in text
        and b"\x7f" not in text
        and text.count(_ROW_SEPARATOR) == len(rows) - 1
    ):
        return b"E" + text[1:-1].replace(_ROW_SEPARATOR, b"]\nE[") + b"\n"
    chained = [ChainedEvent(*row) for row in rows]
    return "".join(content_lines(chained, [], [])[1:]).encode("ascii")


def _by_event_id(valid: ValidEvents) -> list[int]:
    """Row numbers in the order of the canonical id text (stable: equal ids keep their
    order). Lower-case hex at fixed places sorts as the 16 bytes it spells, so the
    order is that of the two big-endian halves."""
    halves = np.frombuffer(valid.id_bytes(), dtype=">u8").reshape(-1, 2)
    order: list[int] = np.lexsort((halves[:, 1], halves[:, 0])).tolist()
    return order
