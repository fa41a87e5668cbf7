"""Billing: price book, statements, recorded billing runs and reconciliation."""

__all__: list[str] = []
