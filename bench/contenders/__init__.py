"""The contenders of `bench.pipeline`, each run as its own process.

Modules here import only what their own interpreter has (quixstreams runs in a separate
virtual environment), so the shared helpers (`markers`, `chstore`) depend on the standard
library, orjson and clickhouse-connect only.
"""

__all__: list[str] = []
