"""Turn the errors a user can fix into one clear line (what failed, what to do).

Every error the project raises on purpose is a `schemas.errors.GovmeterError`, whose
message already says what failed and what to do; Kafka's and ClickHouse's own errors
are named as such.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import ClickHouseError
from kafka.errors import KafkaError

from schemas.errors import GovmeterError

__all__ = ["explain"]


def explain(error: BaseException) -> str | None:
    if isinstance(error, GovmeterError):
        return str(error)
    if isinstance(error, KafkaError):
        return f"Kafka error: {type(error).__name__}: {error}"
    if isinstance(error, ClickHouseError):
        return f"ClickHouse: {error}"
    return None
