"""Benchmarks that print figures: `python -m bench.pipeline`, `python -m bench.freshness`."""

__all__: list[str] = []
