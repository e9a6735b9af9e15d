"""The server side of the agent protocol with the real store: queues, long polls, lost agents and lost claims."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.agent_api import create_agent_app
from engine.adapters.fleet import CLAIM_GRACE, Fleet
from engine.core.errors import NotFound
from engine.core.model import LifecycleEvent
from engine.store.sqlite import SqliteStore


class ManualClock:
    """Wall time that tests move by hand; monotonic time is real so long polls still time out."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Fleet, list, ManualClock]]:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def on_result(command: dict[str, Any], result: dict[str, Any]) -> None:
        results.append((command, result))

    clock = ManualClock()
    fleet = Fleet(store, data_dir=tmp_path, clock=clock, bundle_dir=tmp_path, on_result=on_result, heartbeat_timeout=60)
    yield fleet, results, clock
    await store.close()


SPEC = {"deployment_id": "d-1"}


async def test_each_host_sees_only_its_own_commands(fleet) -> None:
    fleet, results, _ = fleet
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    assert await fleet.next_command("web-2", wait=0) is None
    command = await fleet.next_command("web-1", wait=0)
    assert command is not None and command["event"] == "Install" and command["spec"] == SPEC
    with pytest.raises(NotFound):
        await fleet.report_result("web-2", command["id"], {"status": "Succeeded"})
    await fleet.report_result("web-1", command["id"], {"status": "Succeeded"})
    await fleet.report_result("web-1", command["id"], {"status": "Succeeded"})  # a retry is harmless
    assert len(results) == 1


async def test_long_poll_wakes_at_once(fleet) -> None:
    fleet, _, _ = fleet
    poll = asyncio.ensure_future(fleet.next_command("web-1", wait=5))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    command = await poll
    assert command is not None
    assert loop.time() - start < 0.05


async def test_dispatch_is_idempotent(fleet) -> None:
    fleet, results, _ = fleet
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    assert len(await fleet.store.list_commands(host="web-1")) == 1
    command = await fleet.next_command("web-1", wait=0)
    await fleet.report_result("web-1", command["id"], {"status": "Failed", "error_code": 4})
    # dispatching a finished command again replays its result instead of running it twice (resume after a crash)
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    assert len(results) == 2 and results[1][1]["error_code"] == 4


async def test_claim_the_agent_never_got_is_handed_out_again(fleet) -> None:
    fleet, _, clock = fleet
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    lost = await fleet.next_command("web-1", wait=0)  # answered to a poll whose agent had died
    await fleet.heartbeat("web-1", {"running_command": None})
    assert await fleet.next_command("web-1", wait=0) is None  # within the grace: it may still be on its way
    clock.t += CLAIM_GRACE + 1
    await fleet.heartbeat("web-1", {"running_command": lost["id"]})  # the agent has it: leave it alone
    assert await fleet.next_command("web-1", wait=0) is None
    await fleet.heartbeat("web-1", {"running_command": None})
    again = await fleet.next_command("web-1", wait=0)
    assert again is not None and again["id"] == lost["id"]


async def test_silent_host_fails_its_open_commands(fleet) -> None:
    fleet, results, clock = fleet
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    await fleet.next_command("web-1", wait=0)
    assert await fleet.fail_silent_hosts() == []
    clock.t += 61
    assert len(await fleet.fail_silent_hosts()) == 1
    assert "has not been heard from for 61 s" in results[0][1]["message"]


async def test_poll_abandoned_by_a_dead_agent_does_not_swallow_a_command(fleet) -> None:
    fleet, _, _ = fleet
    token = fleet.token_for("web-1")
    app = web.Application()
    app.add_subapp("/agent/v1", create_agent_app(fleet))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/agent/v1/commands/next?wait=5"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as session:
            poll = asyncio.ensure_future(session.get(url, headers=headers))
            await asyncio.sleep(0.1)
            poll.cancel()  # the agent dies mid-poll
            await asyncio.sleep(0.05)
        await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["command"]["event"] == "Install"
    finally:
        await runner.cleanup()
