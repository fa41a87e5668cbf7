"""The flush ledger: the source of truth for what was counted and where each partition
resumes (`ledger.py`), its statements (`sql.py`) and the work any writer does for the
store when another stopped midway (`recovery.py`)."""

from store.ledger.ledger import (
    Commit,
    CommittedRange,
    Ledger,
    Orphan,
    Positions,
    Unapplied,
)
from store.ledger.recovery import Janitor, JanitorReport, fold_unapplied_flushes
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
    "Commit",
    "CommittedRange",
    "Janitor",
    "JanitorReport",
    "Ledger",
    "Orphan",
    "Positions",
    "Unapplied",
    "fold_unapplied_flushes",
]
