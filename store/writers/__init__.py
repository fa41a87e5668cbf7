"""The writers of one store (`registry.py`: who they are, their heartbeats), the
leases they take in turn (`leases.py`), both arbitrated by the store itself, and the
numbers their flushes carry (`flush_numbers.py`)."""

from store.writers.flush_numbers import (
    FLUSHES_PER_WRITER,
    FlushNumbers,
    flush_number,
    writer_of_flush,
)
from store.writers.leases import Leases, LeaseState
from store.writers.registry import Registry, WriterIdentity, WriterInfo
from store.writers.sql import CORRECTIONS_LEASE, lease_allows

__all__ = [
    "CORRECTIONS_LEASE",
    "FLUSHES_PER_WRITER",
    "FlushNumbers",
    "LeaseState",
    "Leases",
    "Registry",
    "WriterIdentity",
    "WriterInfo",
    "flush_number",
    "lease_allows",
    "writer_of_flush",
]
