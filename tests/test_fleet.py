"""The server side of the agent protocol with the real store: queues, long polls, lost agents and lost claims."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import HANG_GUARD, FakeClock, eventually

from bot.agent_api import create_agent_app
from engine.adapters.fleet import CLAIM_GRACE, Fleet
from engine.core.errors import NotFound
from engine.core.model import LifecycleEvent
from engine.store.sqlite import SqliteStore


@pytest.fixture
async def fleet(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[tuple[Fleet, list, FakeClock]]:
    """The Fleet on a fake clock: a long poll never times out on its own, only a dispatch (or wait=0) ends it."""
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def on_result(command: dict[str, Any], result: dict[str, Any]) -> None:
        results.append((command, result))

    fleet = Fleet(
        store, data_dir=tmp_path, clock=fake_clock, bundle_dir=tmp_path, on_result=on_result, heartbeat_timeout=60
    )
    yield fleet, results, fake_clock
    await store.close()


def tell_when_a_claim_finds_nothing(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a poll found the host's queue empty: from then on that poll is parked, waiting to be woken."""
    found_nothing = asyncio.Event()
    claim = fleet.store.claim_next_command

    async def claim_and_tell(host: str, **kwargs: Any) -> dict[str, Any] | None:
        row = await claim(host, **kwargs)
        if row is None:
            found_nothing.set()
        return row

    monkeypatch.setattr(fleet.store, "claim_next_command", claim_and_tell)
    return found_nothing


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


async def test_a_parked_long_poll_is_woken_by_the_dispatch_not_by_its_timeout(
    fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, _, clock = fleet
    parked = tell_when_a_claim_finds_nothing(fleet, monkeypatch)
    poll = asyncio.ensure_future(fleet.next_command("web-1", wait=3600))
    await asyncio.wait_for(parked.wait(), HANG_GUARD)
    assert not poll.done()
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    command = await asyncio.wait_for(poll, HANG_GUARD)  # the hour-long wait cannot have run out: only a wake-up
    assert command is not None and command["event"] == "Install"
    assert clock.monotonic() == 0  # the fake clock never moved: the poll ended on the dispatch


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


async def test_a_dispatch_cancelled_after_the_store_claimed_its_command_still_hands_it_to_the_parked_poll(
    fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that steps down (another replica took its group) is cancelled at whatever await it is in. Once the
    store has claimed the command for a parked poll, that poll must still get it: else the command sits claimed by
    nobody, and with an agent that sends no heartbeat naming what it runs, for ever."""
    fleet, _, _ = fleet
    parked = tell_when_a_claim_finds_nothing(fleet, monkeypatch)
    poll = asyncio.ensure_future(fleet.next_command("web-1", wait=3600))
    await asyncio.wait_for(parked.wait(), HANG_GUARD)
    committed, go_on = asyncio.Event(), asyncio.Event()
    enqueue = fleet.store.enqueue_command_runs

    async def enqueue_then_wait(*args: Any, **kwargs: Any) -> Any:
        outcome = await enqueue(*args, **kwargs)
        committed.set()  # the claim for the parked poll is written; the dispatch is cancelled before it hands it
        await go_on.wait()
        return outcome

    monkeypatch.setattr(fleet.store, "enqueue_command_runs", enqueue_then_wait)
    dispatch = asyncio.ensure_future(fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC))
    await asyncio.wait_for(committed.wait(), HANG_GUARD)
    dispatch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dispatch
    go_on.set()
    command = await asyncio.wait_for(poll, HANG_GUARD)
    assert command is not None and command["event"] == "Install"
    [stored] = await fleet.store.list_commands(host="web-1")
    assert stored["status"] == "InProgress" and stored["id"] == command["id"]


async def test_claim_the_agent_never_got_is_handed_out_again(fleet) -> None:
    fleet, _, clock = fleet
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    lost = await fleet.next_command("web-1", wait=0)  # answered to a poll whose agent had died
    await fleet.heartbeat("web-1", {"running_command": None})
    assert await fleet.next_command("web-1", wait=0) is None  # within the grace: it may still be on its way
    await clock.advance(CLAIM_GRACE + 1)
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
    await clock.advance(61)
    assert len(await fleet.fail_silent_hosts()) == 1
    assert "has not been heard from for 61 s" in results[0][1]["message"]


async def test_a_wall_clock_step_fails_nothing_and_hides_no_silence(fleet) -> None:
    fleet, results, clock = fleet
    await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
    claimed = await fleet.next_command("web-1", wait=0)  # on its way to the agent
    await fleet.dispatch("d-1", "web-2", LifecycleEvent.INSTALL, SPEC)  # web-2's agent has not been heard from yet
    assert await fleet.fail_silent_hosts() == []
    clock.jump(120)  # NTP steps the wall clock forward: no time has passed for anyone
    assert await fleet.fail_silent_hosts() == []
    await fleet.heartbeat("web-1", {"running_command": None})
    [in_progress] = await fleet.store.list_commands(host="web-1", status="InProgress")
    assert in_progress["id"] == claimed["id"]  # the claim in transit is still within its grace
    assert fleet.last_seen("web-1") == clock.start + 120  # `deploybot hosts` shows wall time
    assert results == []

    clock.jump(-3600)  # a step back hides no silence either
    await clock.advance(61)
    assert len(await fleet.fail_silent_hosts()) == 2
    assert [result["message"] for _, result in results] == [
        "the agent on web-1 has not been heard from for 61 s (heartbeat limit 60 s)",
        "the agent on web-2 has not been heard from for 61 s (heartbeat limit 60 s)",
    ]


async def test_poll_abandoned_by_a_dead_agent_does_not_swallow_a_command(
    fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, _, _ = fleet
    parked = tell_when_a_claim_finds_nothing(fleet, monkeypatch)
    polls: list[web.Request] = []
    answered = asyncio.Event()

    @web.middleware
    async def watch_polls(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.endswith("/commands/next"):
            return await handler(request)
        polls.append(request)
        try:
            return await handler(request)
        finally:
            answered.set()

    token = fleet.token_for("web-1")
    app = web.Application(middlewares=[watch_polls])
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
            await asyncio.wait_for(parked.wait(), HANG_GUARD)  # the server holds the poll
            poll.cancel()  # the agent dies mid-poll
            with contextlib.suppress(asyncio.CancelledError):
                await poll
        [dead] = polls
        # what the server checks before it hands a claimed command to a poll
        await eventually(lambda: dead.transport is None or dead.transport.is_closing(), "the server saw the hang-up")
        assert not answered.is_set()  # the dead poll is still held by the server
        await fleet.dispatch("d-1", "web-1", LifecycleEvent.INSTALL, SPEC)
        await asyncio.wait_for(answered.wait(), HANG_GUARD)  # the dead poll was woken, claimed it and gave it back
        [pending] = await fleet.store.list_commands(host="web-1", status="Pending")
        assert pending["event"] == "Install"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["command"]["event"] == "Install"
    finally:
        await runner.cleanup()


async def test_heartbeats_arriving_while_a_batch_gathers_are_written_in_one_transaction(
    tmp_path: Path, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server gathers heartbeats (``gather_heartbeats``) before writing them: agents that beat a few
    milliseconds apart share a transaction, each answered once it has committed."""
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    gathering, gathered = asyncio.Event(), asyncio.Event()

    async def gather() -> None:
        gathering.set()
        await gathered.wait()

    async def on_result(command: dict[str, Any], result: dict[str, Any]) -> None:
        raise AssertionError("no command runs here")

    fleet = Fleet(
        store, data_dir=tmp_path, clock=fake_clock, bundle_dir=tmp_path, on_result=on_result, gather_beats=gather
    )
    written: list[list[str]] = []
    record = store.record_heartbeats

    async def record_and_tell(beats: Any) -> Any:
        written.append([beat[0] for beat in beats])
        return await record(beats)

    monkeypatch.setattr(store, "record_heartbeats", record_and_tell)
    try:
        first = asyncio.ensure_future(fleet.heartbeat("web-1", {"version": "2", "running_command": None}))
        await asyncio.wait_for(gathering.wait(), HANG_GUARD)
        second = asyncio.ensure_future(fleet.heartbeat("web-2", {"version": "2", "running_command": None}))
        await asyncio.sleep(0)  # web-2's beat waits beside web-1's
        assert not first.done() and written == []  # not answered before it is written
        gathered.set()
        await asyncio.wait_for(asyncio.gather(first, second), HANG_GUARD)
        assert written == [["web-1", "web-2"]]
        assert [(row["name"], row["version"], row["state"]) for row in await store.list_agents()] == [
            ("web-1", "2", "online"),
            ("web-2", "2", "online"),
        ]
    finally:
        await store.close()
