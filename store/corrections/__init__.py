"""Corrections in the store: the marks, the commit row, the applied record and the
rollup rebuild (`store.py`), their statements (`sql.py`); the tables are migration 0010."""

from store.corrections.sql import REBUILD_GRAIN, RollupKey
from store.corrections.store import CorrectionStore, Decision, Marked

__all__ = ["REBUILD_GRAIN", "CorrectionStore", "Decision", "Marked", "RollupKey"]
