"""Turn the errors a user can fix into one clear line (what failed, what to do)."""

from __future__ import annotations

__all__ = ["explain"]


def explain(error: BaseException) -> str | None:
    from kafka.errors import KafkaError

    from metering.replay import ReplayError
    from metering.topics import KafkaUnavailableError
    from metering.worker import IntakeError
    from store import StoreError
    from store.migrations import MigrationError

    if isinstance(
        error, (StoreError, MigrationError, ReplayError, KafkaUnavailableError, IntakeError)
    ):
        return str(error)
    if isinstance(error, KafkaError):
        return f"Kafka error: {type(error).__name__}: {error}"
    if type(error).__name__ in ("DatabaseError", "OperationalError", "ProgrammingError"):
        return f"ClickHouse: {error}"
    return None
