"""The writers of one store (`registry.py`: who they are, their heartbeats) and the
leases they take in turn (`leases.py`), both arbitrated by the store itself."""

from store.writers.leases import Leases, LeaseState
from store.writers.registry import (
    FLUSHES_PER_WRITER,
    Registry,
    WriterIdentity,
    WriterInfo,
    flush_number,
    writer_of_flush,
)
from store.writers.sql import CORRECTIONS_LEASE, lease_allows

__all__ = [
    "CORRECTIONS_LEASE",
    "FLUSHES_PER_WRITER",
    "LeaseState",
    "Leases",
    "Registry",
    "WriterIdentity",
    "WriterInfo",
    "flush_number",
    "lease_allows",
    "writer_of_flush",
]
