"""Plain-text tables for people: `metering query`, billing statements, adoption reports.

A header line, a rule of dashes, then one line per row. Columns are two spaces apart,
each as wide as its widest cell, left- or right-aligned; trailing spaces are dropped from
every line but the rule.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: Sequence[bool]
) -> str:
    """`headers` over `rows`; column i is right-aligned when `right_aligned[i]` (numbers)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, right_aligned, strict=True)
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])
