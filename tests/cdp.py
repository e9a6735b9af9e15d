"""A small Chrome DevTools Protocol driver for the browser tests: Debian's headless Chromium, spoken to over
aiohttp's websocket client (no Selenium, no Playwright, no downloaded browser).

``Chromium`` starts the browser with its own throw-away profile and a DevTools port picked by the browser itself
(``--remote-debugging-port=0``; the port is read back from ``<profile>/DevToolsActivePort``), and ``Page`` drives one
tab: ``navigate``, ``evaluate``, ``screenshot``. The browser runs in its own process group: closing it asks the
browser to quit (it reaps its renderer and GPU helpers), then kills whatever of the group is left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class CdpError(Exception):
    """The browser answered a command with an error, or the page threw."""

    def __init__(self, method: str, detail: Any) -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail


class Page:
    """One tab over its own DevTools websocket: commands are matched to answers by id, events are kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._event_arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._events.append(data)
                self._event_arrived.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self.ws.send_json({"id": command_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise CdpError(method, answer["error"])
        return dict(answer.get("result", {}))

    async def wait_event(self, method: str, *, after: int = 0, timeout: float = 15.0) -> dict[str, Any]:
        """The first ``method`` event at index ``after`` or later of everything this page has received."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self._events[after:]:
                    if event["method"] == method:
                        return event
                self._event_arrived.clear()
                await self._event_arrived.wait()

    async def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Open ``url`` and wait for its load event (scripts have run, an EventSource has been created)."""
        mark = len(self._events)
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError("Page.navigate", result["errorText"])
        await self.wait_event("Page.loadEventFired", after=mark, timeout=timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as JSON-able data."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError("Runtime.evaluate", result["exceptionDetails"].get("exception", result["exceptionDetails"]))
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not just the viewport) written to ``path``."""
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Chromium:
    """``async with Chromium() as browser: page = await browser.page()`` — a headless browser for one test."""

    def __init__(self, executable: Path = CHROMIUM, *, width: int = 1280, height: int = 900) -> None:
        self.executable = executable
        self.width, self.height = width, height
        self.profile = Path(tempfile.mkdtemp(prefix="deploybot-chromium-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.port: int | None = None
        self._pages: list[Page] = []

    async def __aenter__(self) -> Chromium:
        with (self.profile / "chromium.log").open("wb") as log:  # the browser is chatty (dbus, GPU): kept aside
            self.process = subprocess.Popen(
                [str(self.executable), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.port = await self._devtools_port()
            self.session = aiohttp.ClientSession()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _devtools_port(self, timeout: float = 20.0) -> int:
        """The port Chromium chose, from the first line of DevToolsActivePort (written once it listens)."""
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(active.read_text().splitlines()[0])
            await asyncio.sleep(0.05)
        raise TimeoutError(f"chromium did not open its DevTools port in {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join((self.profile / "chromium.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def page(self) -> Page:
        """The browser's first tab (about:blank), with page events on and a fixed viewport for screenshots."""
        assert self.session is not None
        async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t.get("type") == "page")
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        self._pages.append(page)
        await page.send("Page.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    async def close(self) -> None:
        for page in self._pages:
            with contextlib.suppress(Exception):
                await page.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            if self.process.poll() is None:  # SIGTERM to the browser alone: it ends and reaps its helpers
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self.process.wait, 5)
            with contextlib.suppress(ProcessLookupError):  # whatever of its group is left (a hung helper)
                os.killpg(self.process.pid, signal.SIGKILL)
            await asyncio.to_thread(self.process.wait, 5)
        shutil.rmtree(self.profile, ignore_errors=True)
