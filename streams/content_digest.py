"""The counted-event lines of a flush's canonical content text, built from columns.

`store.ledger.chain` defines the text (one line per counted event, sorted by event id:
"E" + compact ASCII JSON of 13 fields). Building it line by line costs a JSON encoding
per event; here one orjson call encodes every row, and its output is used only when it
provably equals the standard library's (ASCII, no backslash and no DEL: then no
character needed an escape, and the row separators split back exactly). Otherwise the
lines are built by `store.ledger.chain` itself.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import orjson

from store.ledger.chain import ChainedEvent, content_lines
from streams.valid_events import ValidEvents

__all__ = ["counted_event_lines"]

_ROW_SEPARATOR: Final = b"],["


def counted_event_lines(valid: ValidEvents) -> bytes:
    """The "E" lines of `store.ledger.chain.content_lines`, as ASCII bytes."""
    return valid.derive("counted_event_lines", _lines)


def _lines(valid: ValidEvents) -> bytes:
    if not len(valid):
        return b""
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
