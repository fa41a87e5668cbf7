"""The flush ledger: the source of truth for what was counted and where each partition
resumes (`ledger.py`), its statements (`sql.py`) and startup recovery (`recovery.py`)."""

from store.ledger.ledger import Ledger, Positions
from store.ledger.recovery import RecoveredState, fold_unapplied_flushes, recover
from store.ledger.sql import (
    APPLY_ROLLUPS,
    COUNTED_EVENT_COLUMNS,
    LEDGER_COLUMNS,
    REJECTION_COLUMNS,
)

__all__ = [
    "APPLY_ROLLUPS",
    "COUNTED_EVENT_COLUMNS",
    "LEDGER_COLUMNS",
    "REJECTION_COLUMNS",
    "Ledger",
    "Positions",
    "RecoveredState",
    "fold_unapplied_flushes",
    "recover",
]
