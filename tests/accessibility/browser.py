"""Headless Chromium for the page tests, and axe-core run inside it.

`chromium()` finds Debian's `chromium` or installs it (`apt-get`, as root), and fails the
test with the reason when it cannot: the page tests never skip. `axe_source()` is
axe-core from `tests/accessibility/node_modules` (`npm ci --prefix tests/accessibility`,
which `make accessibility-setup` runs and this module runs when it is missing).

`Browser` drives one headless Chromium over the Chrome DevTools protocol (the
WebSocket client of aiohttp, no browser driver): it loads a page (with extra request
headers, e.g. a session cookie or HTTP Basic credentials), follows a navigation a
script starts (a form submitted), returns its DOM or a screenshot, runs axe-core on it
at the WCAG 2.1 AA level, and walks it with the Tab key, describing each focused
element and how its focus is drawn. `browser(..., flags=...)` passes extra Chromium
flags (e.g. --ignore-certificate-errors-spki-list for a test's own certificate).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

__all__ = [
    "AXE_EXTRA_RULES",
    "AXE_TAGS",
    "Browser",
    "Focus",
    "axe_source",
    "browser",
    "chromium",
    "headless",
]

HERE: Final = Path(__file__).resolve().parent
AXE_FILE: Final = HERE / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS: Final = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")
# Best-practice rules run as well: headings in order, one main landmark, a level-one
# heading, content inside landmarks, a skip link whose target exists.
AXE_EXTRA_RULES: Final = (
    "heading-order",
    "landmark-one-main",
    "page-has-heading-one",
    "region",
    "skip-link",
    "landmark-unique",
)
_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--font-render-hinting=none",
)


def chromium() -> str:
    """The path of Debian's `chromium`, installed with apt-get if missing."""
    found = shutil.which("chromium")
    if found is not None:
        return found
    if os.geteuid() != 0:
        pytest.fail(
            "chromium is not installed and installing it needs root: run "
            "`make accessibility-setup` (or `apt-get install -y chromium`) first"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=1800, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed (exit {result.returncode}); the page tests "
                f"need Chromium:\n{result.stderr[-2000:]}"
            )
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("apt-get installed chromium but no `chromium` is on PATH")
    return found


def axe_source() -> str:
    """axe-core's browser bundle, installed from the lock file if it is missing."""
    if not AXE_FILE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "axe-core is not installed and there is no npm to install it: install Node.js "
                "and npm, then run `make accessibility-setup` (npm ci --prefix tests/accessibility)"
            )
        result = subprocess.run(
            [npm, "ci", "--prefix", str(HERE), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0 or not AXE_FILE.exists():
            pytest.fail(
                f"`npm ci --prefix {HERE}` failed (exit {result.returncode}); the "
                f"accessibility tests need axe-core:\n{result.stderr[-2000:]}"
            )
    return AXE_FILE.read_text(encoding="utf-8")


def headless(browser_path: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `chromium --headless` run (--dump-dom, --screenshot)."""
    return subprocess.run(
        [browser_path, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class Focus:
    """The element the keyboard focus is on, and how its focus is drawn."""

    tag: str
    id: str
    classes: str
    name: str  # its text, label or aria-label, shortened
    href: str
    focus_visible: bool  # it matches :focus-visible
    outline: str  # computed outline style and width
    box_shadow: str
    on_screen: bool  # its box is inside the viewport

    @property
    def ring_drawn(self) -> bool:
        style, _, width = self.outline.partition(" ")
        outline = style not in ("none", "") and width not in ("0px", "")
        return outline or self.box_shadow not in ("none", "")


_DESCRIBE_FOCUS: Final = """(() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  const label = el.labels && el.labels.length ? el.labels[0].innerText : '';
  return {
    tag: el.tagName.toLowerCase(), id: el.id || '', classes: el.className || '',
    name: (label || el.getAttribute('aria-label') || el.innerText || '').trim().slice(0, 80),
    href: el.getAttribute('href') || '',
    focus_visible: el.matches(':focus-visible'),
    outline: style.outlineStyle + ' ' + style.outlineWidth,
    box_shadow: style.boxShadow,
    on_screen: box.width > 0 && box.height > 0 && box.right > 0 && box.bottom > 0 &&
               box.left < innerWidth && box.top < innerHeight,
  };
})()"""

_AXE_RUN: Final = """axe.run(document, {
  runOnly: {type: 'tag', values: %s},
  rules: %s,
  resultTypes: ['violations'],
}).then(r => JSON.stringify({
  violations: r.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, tags: v.tags,
    nodes: v.nodes.map(n => ({target: n.target, html: n.html.slice(0, 300),
                             summary: n.failureSummary}))})),
  passes: r.passes.map(p => p.id),
}))"""


class Browser:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data and data["method"] in self._events:
                self._events[data["method"]].set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self._socket.send_str(json.dumps({"id": number, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout=120)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open(self, url: str, headers: dict[str, str] | None = None) -> None:
        """Load `url` and wait for its load event."""
        await self.send("Network.enable")
        await self.send("Network.setExtraHTTPHeaders", headers=headers or {})
        await self.send("Page.enable")
        loaded = self._events["Page.loadEventFired"] = asyncio.Event()
        reply = await self.send("Page.navigate", url=url)
        assert not reply.get("errorText"), (url, reply)
        await asyncio.wait_for(loaded.wait(), timeout=60)

    async def follow(self, expression: str) -> None:
        """Run `expression`, which navigates (e.g. submits a form); wait for the new page."""
        loaded = self._events["Page.loadEventFired"] = asyncio.Event()
        await self.evaluate(expression)
        await asyncio.wait_for(loaded.wait(), timeout=60)

    async def screenshot(self, width: int, height: int) -> bytes:
        """The top `width` x `height` CSS pixels of the page (scale 1), as PNG bytes."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        reply = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(reply["data"])

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        reply = await self.send(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=await_promise,
            returnByValue=True,
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def dom(self) -> str:
        html: str = await self.evaluate("document.documentElement.outerHTML")
        return html

    async def axe(self, source: str) -> dict[str, Any]:
        """axe-core's violations at WCAG 2.1 AA (and the ids of the rules that passed)."""
        await self.evaluate(source)
        rules = {rule: {"enabled": True} for rule in AXE_EXTRA_RULES}
        script = _AXE_RUN % (json.dumps(list(AXE_TAGS)), json.dumps(rules))
        text = await self.evaluate(script, await_promise=True)
        result: dict[str, Any] = json.loads(text)
        return result

    async def press(self, key: str, *, shift: bool = False) -> None:
        codes = {"Tab": 9, "Enter": 13}
        event: dict[str, Any] = {
            "key": key,
            "code": key,
            "windowsVirtualKeyCode": codes[key],
            "modifiers": 8 if shift else 0,
        }
        text = {"Enter": "\r"}.get(key)
        await self.send("Input.dispatchKeyEvent", type="keyDown", **event, **_text(text))
        await self.send("Input.dispatchKeyEvent", type="keyUp", **event)

    async def focus(self) -> Focus | None:
        described = await self.evaluate(_DESCRIBE_FOCUS)
        return None if described is None else Focus(**described)

    async def tab_walk(self, limit: int = 60) -> list[Focus]:
        """Press Tab until the focus leaves the page or comes round again."""
        walk: list[Focus] = []
        for _ in range(limit):
            await self.press("Tab")
            focused = await self.focus()
            if focused is None or (walk and focused == walk[0]):
                break
            walk.append(focused)
        return walk


def _text(text: str | None) -> dict[str, str]:
    return {} if text is None else {"text": text, "unmodifiedText": text}


@contextlib.asynccontextmanager
async def browser(
    browser_path: str, width: int = 1280, height: int = 1000, flags: Sequence[str] = ()
) -> AsyncIterator[Browser]:
    """A headless Chromium with one page, ended when the block ends."""
    # Chromium's helper processes can still write to the profile for a moment after the
    # browser exits: a leftover file there must not fail the test that used it.
    with tempfile.TemporaryDirectory(
        prefix="govmeter-chromium-", ignore_cleanup_errors=True
    ) as profile:
        process = await asyncio.create_subprocess_exec(
            browser_path,
            *_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--window-size={width},{height}",
            *flags,
            "about:blank",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = await _devtools_port(Path(profile) / "DevToolsActivePort", process)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json()
                page = next(t for t in targets if t.get("type") == "page")
                async with session.ws_connect(
                    page["webSocketDebuggerUrl"], max_msg_size=0
                ) as socket:
                    driver = Browser(socket)
                    try:
                        yield driver
                    finally:
                        driver._reader.cancel()
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _devtools_port(path: Path, process: asyncio.subprocess.Process) -> int:
    """Chromium writes the port it listens on into its profile's DevToolsActivePort."""
    for _ in range(600):
        if process.returncode is not None:
            raise AssertionError(f"chromium exited with {process.returncode} before listening")
        if path.exists():
            first = path.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.05)
    raise AssertionError("chromium did not open its DevTools port within 30 s")
