"""One exception tree: every error raised on purpose is a GovmeterError, explained as it is."""

from __future__ import annotations

import pytest

from metering.billing.pricebook import PriceBookError
from metering.billing.statements import BillingError
from metering.errors import explain
from metering.oversight.access import AccessError
from metering.periods import PeriodError
from metering.replay import ReplayError
from metering.settings import SettingsError
from metering.topics import KafkaUnavailableError
from metering.worker import IntakeError
from schemas.errors import GovmeterError, InputError, ServiceError
from store import StoreBusyError, StoreError
from store.ddl import DDLError
from store.local_server import LocalServerError
from store.migrations import MigrationError
from streams.batch import BatchError
from streams.sink import DeadLetterFailureError, StoreFailureError

INPUT = [
    SettingsError,
    PriceBookError,
    PeriodError,
    AccessError,
    BatchError,
    DDLError,
]
SERVICE = [
    StoreError,
    StoreBusyError,
    MigrationError,
    LocalServerError,
    ReplayError,
    KafkaUnavailableError,
    IntakeError,
    BillingError,
    StoreFailureError,
    DeadLetterFailureError,
]


@pytest.mark.parametrize("kind", INPUT)
def test_bad_input_is_an_input_error_and_a_value_error(kind: type[Exception]) -> None:
    assert issubclass(kind, InputError) and issubclass(kind, ValueError)


@pytest.mark.parametrize("kind", SERVICE)
def test_a_service_failure_is_a_service_error_and_a_runtime_error(kind: type[Exception]) -> None:
    assert issubclass(kind, ServiceError) and issubclass(kind, RuntimeError)


@pytest.mark.parametrize("kind", [*INPUT, *SERVICE])
def test_every_one_is_explained_by_its_own_message(kind: type[Exception]) -> None:
    assert issubclass(kind, GovmeterError)
    assert explain(kind("CLICKHOUSE_URL=x: do this")) == "CLICKHOUSE_URL=x: do this"


def test_other_errors_are_not_explained() -> None:
    assert explain(TypeError("a bug")) is None
