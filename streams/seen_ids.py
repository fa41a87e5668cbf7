"""A fixed-size Bloom filter of the event ids counted so far: who may be a duplicate.

The dedupe lookup (sink step 1) asks the store which of a batch's ids were already
counted. Against a month of ids that query reads the whole id column, so it grows
with the store. This filter answers "certainly new" for almost every id of a batch
in memory, and only the ids it cannot clear ("maybe counted") go to the store, which
stays the only judge: the filter never decides that an id is a duplicate.

Correctness needs one rule: every id of every committed flush is in the filter.
  - it is loaded from the store when the worker starts (after recovery deleted the
    rows of uncommitted flushes), and
  - the sink adds a flush's new ids right after that flush's COMMIT step.
Rows removed later (raw-data TTL) only leave stale bits: more "maybe", never a miss.

Memory is fixed by METERING_DEDUPE_FILTER_MB (default 64 MiB, 2**29 bits) and does not
grow with the number of events; what grows is the false-positive rate: with 3 hash
functions about 0.09% at 18 million ids, 2% at 60 million, 43% at 240 million (each
false positive only costs a store lookup). Size it to the ids the raw-data retention keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from store.ledger import Ledger

__all__ = ["Halves", "SeenIdFilter", "halves_of", "id_halves", "load_from_store"]

_HASHES: Final = 3
_U64 = np.uint64
Halves = npt.NDArray[np.uint64]

_FLUSHES_PER_PAGE: Final = 100


def id_halves(event_ids: Sequence[str]) -> Halves:
    """Canonical UUID strings -> an (n, 2) array of their halves (high, low)."""
    raw = b"".join(bytes.fromhex(event_id.replace("-", "")) for event_id in event_ids)
    return np.frombuffer(raw, dtype="<u8").astype(_U64).reshape(-1, 2)


def _mix(x: Halves) -> Halves:
    """splitmix64's finaliser: every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


class SeenIdFilter:
    """Bloom filter over 2**bits_log2 bits with 3 hash functions from double hashing."""

    def __init__(self, size_mib: int) -> None:
        if size_mib < 1 or size_mib & (size_mib - 1):
            raise ValueError(
                f"METERING_DEDUPE_FILTER_MB={size_mib}: must be a power of two (e.g. 64), "
                "or 0 to look every id up in the store"
            )
        bits = size_mib * 8 * 1024 * 1024
        self._mask = _U64(bits - 1)
        self._words = np.zeros(bits // 64, dtype=_U64)
        self.ids_added = 0

    @property
    def size_bytes(self) -> int:
        return int(self._words.nbytes)

    def _positions(self, halves: Halves) -> Halves:
        first = _mix(halves[:, 0] ^ _mix(halves[:, 1]))
        step = _mix(first ^ _U64(0x9E3779B97F4A7C15)) | _U64(1)
        rounds = np.arange(_HASHES, dtype=_U64)[:, None]
        with np.errstate(over="ignore"):
            return (first[None, :] + rounds * step[None, :]) & self._mask

    def add(self, halves: Halves) -> None:
        if len(halves) == 0:
            return
        positions = self._positions(halves).ravel()
        np.bitwise_or.at(self._words, positions >> _U64(6), _U64(1) << (positions & _U64(63)))
        self.ids_added += len(halves)

    def maybe_seen(self, halves: Halves) -> npt.NDArray[np.bool_]:
        """False: certainly never added. True: perhaps added (ask the store)."""
        if len(halves) == 0:
            return np.zeros(0, dtype=np.bool_)
        positions = self._positions(halves)
        bits = (self._words[positions >> _U64(6)] >> (positions & _U64(63))) & _U64(1)
        result: npt.NDArray[np.bool_] = bits.astype(np.bool_).all(axis=0)
        return result

    def add_ids(self, event_ids: Iterable[str]) -> None:
        self.add(id_halves(list(event_ids)))


def load_from_store(
    ledger: Ledger, size_mib: int, flushes_per_page: int = _FLUSHES_PER_PAGE
) -> SeenIdFilter:
    """A filter holding every id of every committed flush, read a page of flushes at a time."""
    seen = SeenIdFilter(size_mib)
    flushes, first, last = ledger.committed_flush_range()
    if not flushes:
        return seen
    for page in range(first, last + 1, flushes_per_page):
        table = ledger.committed_id_halves(page, page + flushes_per_page)
        if table.num_rows:
            seen.add(halves_of(table))
    return seen


def halves_of(table: pa.Table) -> Halves:
    """`Ledger.committed_id_halves` columns as the filter's (n, 2) array."""
    if table.num_rows == 0:
        return np.zeros((0, 2), dtype=_U64)
    return np.column_stack(
        [
            table.column("high").to_numpy().astype(_U64),
            table.column("low").to_numpy().astype(_U64),
        ]
    )
