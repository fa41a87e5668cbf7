"""Oversight: adoption reports with small-cell suppression, and agency-scoped access."""

__all__: list[str] = []
