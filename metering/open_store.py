"""The one way commands open the store: as a writer (migrates first) or as a reader.

Writers (`worker`, `migrate`) bring the schema up to date. Readers (`query`, `report`,
`headline`, `reconcile`) and `bill`, which writes only its own run tables, never run
DDL: they check that the schema is current and say what to do when it is not. So any
number of readers can share the store with a running worker.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from metering.settings import Settings
from store import connect
from store.migrations import apply_migrations, check_schema_current

__all__ = ["open_for_reading", "open_for_writing"]


def open_for_writing(settings: Settings) -> Client:
    client = connect(settings.clickhouse_url)
    try:
        apply_migrations(client, settings.effective_clickhouse_mode, settings.clickhouse_cluster)
    except BaseException:
        client.close()
        raise
    return client


def open_for_reading(settings: Settings, *, schema: bool = True) -> Client:
    """Connect; with `schema`, refuse a store whose schema is missing or behind."""
    client = connect(settings.clickhouse_url)
    if schema:
        try:
            check_schema_current(client)
        except BaseException:
            client.close()
            raise
    return client
