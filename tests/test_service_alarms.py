"""Alarms at the service level: a real HTTP probe alarm against a local server whose answer the test flips."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from test_service import ScriptedFleet, make_revision, never_fails, wait_final

from bot.assembly import assemble_deployer
from engine.adapters.clock import SystemClock
from engine.adapters.haproxy.stack import build_alarms
from engine.core.config.parse import parse_config
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer

CONFIG = """
server: {data_dir: var}
hosts: [{name: h1}, {name: h2}]
applications:
  app:
    platform: server
    revision: rev-a
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [h1, h2]}
        watch_minutes: %(watch)s
        auto_rollback: {enabled: true, events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]}
        alarms:
          enabled: true
          poll_seconds: 0.1
          alarms: [{name: probe, type: http, url: '%(url)s'}]
"""


@pytest.fixture
async def health() -> AsyncIterator[tuple[str, dict[str, int]]]:
    state = {"status": 200}

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=state["status"], text="probe")

    app = web.Application()
    app.router.add_get("/health", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/health", state
    await runner.cleanup()


async def open_deployer(tmp_path: Path, url: str, watch: float = 0) -> Deployer:
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    config = parse_config(CONFIG % {"url": url, "watch": watch}, filename="t.yml", base_dir=str(tmp_path))
    clock = SystemClock()
    return await assemble_deployer(
        config,
        data_dir=tmp_path / "var",
        clock=clock,
        alarm_factory=lambda group, targets: build_alarms(group, targets, clock=clock),
    )


async def test_alarm_firing_before_start_blocks_it_without_rollback(tmp_path, health) -> None:
    url, state = health
    deployer = await open_deployer(tmp_path, url)
    agents = ScriptedFleet(deployer, ["h1", "h2"], never_fails)
    try:
        state["status"] = 500
        blocked = await wait_final(deployer, (await deployer.start(DeployRequest("app", "prod")))["id"])
        assert blocked["status"] == "Stopped"
        assert blocked["error"]["code"] == "ALARM_ACTIVE"
        assert "already firing before the deployment started" in blocked["error"]["message"]
        assert blocked["rollback"]["by"] is None
        assert await deployer.store.list_commands(deployment_id=blocked["id"]) == []  # no host was touched
        forced = await deployer.start(DeployRequest("app", "prod", revision="rev-b", ignore_alarms=True))
        state["status"] = 200  # the probe recovers once we are under way: the override only skips the start check
        assert (await wait_final(deployer, forced["id"]))["status"] == "Succeeded"
    finally:
        await agents.close()
        await deployer.close()


async def test_watch_window_keeps_alarms_armed_after_the_last_host(tmp_path, health) -> None:
    url, state = health
    deployer = await open_deployer(tmp_path, url, watch=0.05)  # 3 s
    agents = ScriptedFleet(deployer, ["h1", "h2"], never_fails)
    try:
        good = await wait_final(deployer, (await deployer.start(DeployRequest("app", "prod")))["id"])
        assert good["status"] == "Succeeded"
        started = await deployer.start(DeployRequest("app", "prod", revision="rev-b"))
        async with asyncio.timeout(10):
            while (await deployer.get(started["id"]))["status"] != "Baking":
                await asyncio.sleep(0.02)
        state["status"] = 503
        stopped = await wait_final(deployer, started["id"])
        assert stopped["status"] == "Stopped"
        assert stopped["error"]["code"] == "ALARM_ACTIVE" and "probe" in stopped["error"]["message"]
        assert all(t["status"] == "Succeeded" for t in stopped["targets"])  # every host had finished
        async with asyncio.timeout(5):  # the link is written by the runner right after the final status
            while not (await deployer.get(started["id"]))["rollback"]["by"]:
                await asyncio.sleep(0.02)
        rollback = await wait_final(deployer, (await deployer.get(started["id"]))["rollback"]["by"])
        assert rollback["status"] == "Succeeded"  # the still-firing alarm does not hold the rollback back
        assert rollback["revision"]["sha256"] == good["revision"]["sha256"]
    finally:
        await agents.close()
        await deployer.close()


def test_alarm_config_round_trip() -> None:
    config = parse_config(CONFIG % {"url": "http://x/health", "watch": 1}, filename="t.yml")
    group = config.group("app", "prod")
    assert list(dataclasses.asdict(group.alarms)["alarms"]) == [
        {"name": "probe", "type": "http", "url": "http://x/health", "expect_status": 200}
    ]
