"""axe-core in headless Chromium, without any service: it finds violations where there
are some, and finds none on the HTML report of `report adoption --format html` (with
suppressed cells, long names and a fiscal year's trend table that scrolls)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from metering.oversight.render_html import render_html
from tests.accessibility.browser import Focus, axe_source, browser, chromium
from tests.unit.test_render_html import sample

BROKEN = """<!doctype html><html><head><title>x</title></head><body><h1>a</h1><h4>b</h4>
<img src="x.png"><p style="color:#bbb">faint</p><select><option>1</option></select></body></html>"""


async def _audit(url: str) -> tuple[dict[str, Any], list[Focus], str]:
    async with browser(chromium()) as page:
        await page.open(url)
        result = await page.axe(axe_source())
        walk = await page.tab_walk()
        await page.open(url)
        await page.press("Tab")
        await page.press("Enter")
        skipped: str = await page.evaluate("location.hash + ' ' + document.activeElement.id")
        return result, walk, skipped


def test_axe_finds_the_violations_of_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(BROKEN)
    result, _, _ = asyncio.run(_audit(page.as_uri()))
    found = {v["id"] for v in result["violations"]}
    assert {"html-has-lang", "image-alt", "select-name", "color-contrast"} <= found
    assert {"heading-order", "landmark-one-main"} <= found  # the best-practice rules run too


def test_the_html_report_passes_axe_and_works_by_keyboard(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(sample(days=200)))
    result, walk, skipped = asyncio.run(_audit(page.as_uri()))
    assert result["violations"] == [], [(v["id"], v["nodes"][:2]) for v in result["violations"]]
    assert "skip-link" in walk[0].classes and skipped == "#main main"
    scroller = [stop for stop in walk if "table-scroll" in stop.classes]
    assert len(scroller) == 1 and scroller[0].name.startswith("Usage per UTC day")
    for stop in walk:
        assert stop.focus_visible and stop.ring_drawn and stop.on_screen, stop
