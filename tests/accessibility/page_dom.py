"""Read the numbers an adoption page shows out of its DOM (the static report and the live
page share the markup of metering/oversight/render_html.py). Pure.

  headline[tenant][measure]          the figure of a `dd[data-measure]` in the tenant section
  tables[(kind, tenant)][key][name]  a data table's cell text: `kind` is levels, agencies,
                                     models or days, `key` the row's data-key, `name` the
                                     cell's data-measure (the key column is "")
  bars[(chart, tenant)]              the values drawn (data-value / data-messages)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from html.parser import HTMLParser

__all__ = ["PageNumbers", "read_numbers"]


@dataclass
class PageNumbers:
    headline: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    tables: dict[tuple[str, str], dict[str, dict[str, str]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    bars: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    text: list[str] = field(default_factory=list)  # every text node, in order


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.numbers = PageNumbers()
        self.tenant = ""
        self.figure = ""
        self.table: tuple[str, str] | None = None
        self.row: str | None = None
        self.cell: str | None = None  # data-measure of the open cell
        self.buffer: list[str] = []
        self.headline: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and "data-tenant" in a:
            self.tenant = a["data-tenant"]
        elif tag == "figure" and "id" in a:
            self.figure = a["id"].rsplit("-", 1)[-1]
        elif tag == "dd" and "data-measure" in a:
            self.headline, self.buffer = a["data-measure"], []
        elif tag == "table" and "data-table" in a:
            self.table = (a["data-table"], a["data-tenant"])
        elif tag == "tr" and self.table is not None and "data-key" in a:
            self.row = a["data-key"]
            self.numbers.tables[self.table][self.row] = {}
        elif tag in ("td", "th") and self.row is not None:
            self.cell, self.buffer = a.get("data-measure", ""), []
        elif tag == "rect":
            value = a.get("data-value") or a.get("data-messages")
            if value is not None and value != "":
                self.numbers.bars[(self.figure, self.tenant)].append(int(value))

    def handle_endtag(self, tag: str) -> None:
        if tag == "dd" and self.headline is not None:
            self.numbers.headline[self.tenant][self.headline] = "".join(self.buffer).strip()
            self.headline = None
        elif tag in ("td", "th") and self.cell is not None and self.table and self.row:
            self.numbers.tables[self.table][self.row][self.cell] = "".join(self.buffer).strip()
            self.cell = None
        elif tag == "tr":
            self.row = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        self.buffer.append(data)
        if data.strip():
            self.numbers.text.append(data.strip())


def read_numbers(html: str) -> PageNumbers:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.numbers
