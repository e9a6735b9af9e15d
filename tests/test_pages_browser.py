"""The live deployment page in a real browser: headless Chromium (Debian's package) opens the page of a running
deployment on a real ``deploybot serve`` with real agents, and watches the host grid and the timeline turn Succeeded
without a reload; then the list page, logged in, with the delivery numbers.

Screenshots of the finished deployment page (pages-live-deployment.png: timeline, grid, event log) and of the list
page (pages-list-delivery.png) are kept in var/test-artifacts/ (CI can upload them; var/ is not committed); the test
prints their paths.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cdp import CHROMIUM, Chromium, Page
from e2e_support import DeploybotServer, write_revision

from bot.pages.links import page_url
from bot.settings import Settings

ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"
PAGES_SECRET = "browser-test-pages-secret"
HOSTS = ("h1", "h2")
CONFIG = """server: {data_dir: var}
hosts:
  - {name: h1, local: true}
  - {name: h2, local: true}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [h1, h2]}
"""
# What the page's grid and timeline show, read in the page itself: every cell's status, the timeline's rows (hosts)
# and its bars' outcomes, and the deployment's status.
GRID = """({
  marker: window.__noReload === undefined ? null : window.__noReload,
  status: document.getElementById("status").textContent,
  cells: Array.from(document.querySelectorAll("#grid td[data-status]")).map(td => td.dataset.status),
  rows: Array.from(document.querySelectorAll("#timeline-svg g.timeline-row")).map(g => g.dataset.host),
  bars: Array.from(document.querySelectorAll("#timeline-svg rect.bar")).map(r => r.dataset.outcome),
})"""
# The list page's delivery rows, read in the page: (environment, window, successful deployments).
DELIVERY = """Array.from(document.querySelectorAll("#delivery tr.delivery-row"))
  .map(tr => [tr.dataset.environment, Number(tr.dataset.days), Number(tr.dataset.successful)])"""
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def chromium() -> Path:
    """Chromium, or a skip saying how to get it; as root (CI) a missing browser is a failure: make installs it."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() == 0:
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs it (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed and this is not root: apt-get install chromium (or make system-deps)")


@pytest.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DeploybotServer]:
    monkeypatch.setenv("DEPLOYBOT_PAGES_SECRET", PAGES_SECRET)  # the server signs and checks links with it
    running = DeploybotServer(tmp_path, CONFIG)
    try:
        await asyncio.to_thread(running.start)
        yield running
    finally:
        await asyncio.to_thread(running.cleanup)


async def grid(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate(GRID))


async def test_live_page_turns_the_grid_succeeded_without_a_reload(
    chromium: Path, server: DeploybotServer, tmp_path: Path
) -> None:
    slow = write_revision(tmp_path, "slow", {"AfterInstall": "sleep 1.5", "ValidateService": "exit 0"})
    async with Chromium(chromium) as browser:
        page = await browser.page()
        deployment = await asyncio.to_thread(server.deploy, "app", "prod", slow)
        running = await asyncio.to_thread(
            server.wait_for, deployment["id"], lambda d: d["status"] == "InProgress" and d["targets"], 20
        )
        url = page_url(Settings(pages_secret=PAGES_SECRET), running["id"], base_url=server.url)
        await page.navigate(url)
        await page.evaluate("window.__noReload = 1")
        first = await grid(page)
        assert first["status"] == "InProgress", first
        assert first["cells"] and set(first["cells"]) != {"Succeeded"}, first  # seen before it was done

        seen = [first]
        async with asyncio.timeout(20):
            while not (
                seen[-1]["status"] == "Succeeded"
                and set(seen[-1]["cells"]) == {"Succeeded"}
                and set(seen[-1]["bars"]) == {"succeeded"}
            ):
                await asyncio.sleep(0.1)
                now = await grid(page)
                if now != seen[-1]:
                    seen.append(now)
        shot = await page.screenshot(ARTIFACTS / "pages-live-deployment.png")

        token = (server.data_dir / "api-token").read_text().strip()
        login = (
            f"fetch('/login', {{method: 'POST', body: new URLSearchParams({{token: {token!r}}})}}).then(r => r.status)"
        )
        assert await page.evaluate(login) == 200  # the session cookie is set; the redirect lands on the list
        await page.navigate(f"{server.url}/deployments")
        delivery = await page.evaluate(DELIVERY)
        listing = await page.screenshot(ARTIFACTS / "pages-list-delivery.png")
    print(f"\nscreenshots: {shot} {listing}")

    done = seen[-1]
    assert done["marker"] == 1, "the page reloaded: the marker set after load is gone"
    assert len(done["cells"]) == len(HOSTS) * 7  # ApplicationStop .. ValidateService on each host
    # The grid changed while we watched (under load the page may catch only the last step before the end).
    assert len(seen) >= 2 and seen[0]["cells"] != done["cells"], seen
    assert any("InProgress" in s["cells"] for s in seen)
    assert (await asyncio.to_thread(server.deployment, running["id"]))["status"] == "Succeeded"
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == PNG
    # the timeline: one row per host in the SVG, a bar per event, all succeeded at the end; it was live as well
    assert sorted(done["rows"]) == sorted(HOSTS), done["rows"]
    assert len(done["bars"]) == len(HOSTS) * 7
    assert any("running" in s["bars"] for s in seen) or seen[0]["bars"] != done["bars"], seen
    # the list page: this deployment counted in both windows
    assert [row for row in delivery if row[0] == "prod"] == [["prod", 30, 1], ["prod", 90, 1]], delivery
    assert listing.stat().st_size > 10_000 and listing.read_bytes()[:8] == PNG
