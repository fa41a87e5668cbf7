"""Billing: price book, periods, statements, recorded billing runs and reconciliation."""

__all__: list[str] = []
