"""A writer registered in a test's store, as `metering worker` registers itself."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from store.writers import Registry, WriterIdentity


def register_writer(client: Client, name: str = "test", pid: int = 1) -> int:
    """The number of a newly registered writer called `name`."""
    return Registry(client).register(
        WriterIdentity(name=name, host="test-host", pid=pid, release="test", consumer_group="g")
    )
