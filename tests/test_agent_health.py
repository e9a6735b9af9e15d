"""Agent health: a silent agent is announced once (and once more when it is back), plan names offline targets, a
group with ``offline_hosts: refuse`` refuses, ``/metrics`` has each host's last-seen time.

Time is the engine's FakeClock; heartbeats go through the real Fleet; Slack is the fake Slack over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import FakeClock, deployer_from, eventually
from fake_slack import FakeSlack
from prometheus_client import generate_latest
from slack_sdk.web.async_client import AsyncWebClient
from test_service import make_revision

from bot.assembly import ServedDeployer
from bot.pages.metrics import create_metrics, refresh
from bot.slack.agent_health import SlackChannelSender
from engine.core.errors import DeploymentRefused
from engine.core.requests import DeployRequest

CONFIG = """
server: {data_dir: var, agent_offline_after_seconds: 30}
hosts:
  - {name: web-1}
  - {name: web-2}
  - {name: db-1}
applications:
  app:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging, production]
    deployment_groups:
      staging:
        targets: {hosts: [web-1, web-2]}
        triggers:
          - name: ops
            events: [InstanceAgentOffline, InstanceAgentOnline]
            target: {slack: "#ops"}
      production:
        targets: {hosts: [web-1]}
        offline_hosts: refuse
"""

SILENT = ":red_circle: The agent on `web-1` has gone silent (offline)."
BACK = ":large_green_circle: The agent on `web-1` is back online."


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def open_deployer(workdir: Path, clock: FakeClock, slack: FakeSlack) -> ServedDeployer:
    if not (workdir / "rev-a").exists():  # a restart opens the same directory again
        make_revision(workdir, "rev-a", "1")
    deployer = await deployer_from(CONFIG, workdir, clock=clock)
    assert isinstance(deployer, ServedDeployer)
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url, retry_handlers=[])
    deployer.trigger_senders["slack"] = SlackChannelSender(client)
    return deployer


def posted(slack: FakeSlack) -> list[tuple[str, str]]:
    return [(c.payload["channel"], c.payload["text"]) for c in slack.taken("chat.postMessage")]


async def heartbeat(deployer: ServedDeployer, host: str) -> None:
    await deployer.fleet.heartbeat(host, {"version": "test", "tags": {}})


async def test_a_silent_agent_is_announced_once_and_again_when_back(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    deployer = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(deployer, "web-1")
        await heartbeat(deployer, "db-1")
        await fake_clock.advance(20)
        await heartbeat(deployer, "db-1")  # db-1 keeps talking
        await fake_clock.advance(20)  # web-1 silent for 40 s > 30 s
        await eventually(lambda: len(posted(slack)) == 2, "the announcement in #deploys and the #ops trigger")
        for _ in range(10):  # still silent: nothing more
            await heartbeat(deployer, "db-1")
            await fake_clock.advance(10)
        assert sorted(posted(slack)) == [("#deploys", SILENT), ("#ops", SILENT)]

        await heartbeat(deployer, "web-1")
        await fake_clock.advance(10)
        await eventually(lambda: len(posted(slack)) == 4, "back online in both channels")
        for _ in range(10):  # talking again: nothing more to say
            await heartbeat(deployer, "web-1")
            await heartbeat(deployer, "db-1")
            await fake_clock.advance(10)
    finally:
        await deployer.close()
    assert sorted(posted(slack)[2:]) == [("#deploys", BACK), ("#ops", BACK)]
    assert len(posted(slack)) == 4  # db-1 never went silent; web-2 and never-seen hosts are not announced


async def test_an_announced_silence_is_not_announced_again_after_a_restart(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    first = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(first, "web-1")
        await fake_clock.advance(40)
        await eventually(lambda: len(posted(slack)) == 2, "the silence announced")
    finally:
        await first.close()
    second = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await fake_clock.advance(60)
        assert len(posted(slack)) == 2  # the same silence: not told twice
        await heartbeat(second, "web-1")
        await fake_clock.advance(10)
        await eventually(lambda: len(posted(slack)) == 4, "back online, told once")
    finally:
        await second.close()
    assert sorted(posted(slack)[2:]) == [("#deploys", BACK), ("#ops", BACK)]


async def test_plan_names_offline_targets(tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack) -> None:
    deployer = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(deployer, "web-1")
        await heartbeat(deployer, "web-2")
        online = await deployer.plan(DeployRequest("app", "staging"))
        await fake_clock.advance(20)
        await heartbeat(deployer, "web-2")
        await fake_clock.advance(20)
        staging = await deployer.plan(DeployRequest("app", "staging"))
        production = await deployer.plan(DeployRequest("app", "production"))
    finally:
        await deployer.close()
    assert online["agents"] == {
        "gate": "agents",
        "state": "clear",
        "message": "every target's agent is online",
        "offline": [],
    }
    assert "agents" not in [g["gate"] for g in online["gates"]]
    gate = next(g for g in staging["gates"] if g["gate"] == "agents")
    assert gate["state"] == "proceed"
    assert [h["host"] for h in gate["offline"]] == ["web-1"]
    assert "web-1 (last seen" in gate["message"] and "offline_hosts: proceed" in gate["message"]
    assert not staging["blocked"]
    gate = next(g for g in production["gates"] if g["gate"] == "agents")
    assert gate["state"] == "refuse" and production["blocked"]


async def test_a_refusing_group_refuses_a_deployment_naming_the_offline_hosts(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    deployer = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(deployer, "web-1")
        await fake_clock.advance(45)
        with pytest.raises(DeploymentRefused) as refused:
            await deployer.start(DeployRequest("app", "production", actor="alice"))
        deployments = await deployer.store.list_deployments(limit=None)
        log = await deployer.store.read_log()
    finally:
        await deployer.close()
    assert "web-1 (last seen" in refused.value.reason and "offline_hosts: refuse" in refused.value.reason
    assert refused.value.details["gate"] == "agents"
    assert [h["host"] for h in refused.value.details["offline"]] == ["web-1"]
    assert deployments == []  # nothing started
    assert log[-1]["kind"] == "deployment.refused"


async def test_a_proceeding_group_records_which_hosts_were_offline(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    deployer = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(deployer, "web-1")
        await heartbeat(deployer, "web-2")
        await fake_clock.advance(20)
        await heartbeat(deployer, "web-2")
        await fake_clock.advance(20)
        started = await deployer.start(DeployRequest("app", "staging", actor="alice"))
        log = await deployer.store.read_log()
        await deployer.stop(started["id"], actor="alice")
    finally:
        await deployer.close()
    offline = next(e for e in log if e["kind"] == "deployment.offline_hosts")
    assert [h["host"] for h in offline["data"]["offline"]] == ["web-1"]


async def test_metrics_show_each_hosts_last_seen(tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack) -> None:
    deployer = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(deployer, "web-1")
        seen = fake_clock.now()
        metrics = create_metrics(deployer)
        await refresh(metrics.snapshot, deployer)
    finally:
        await deployer.close()
    text = generate_latest(metrics.registry).decode()
    samples = [line for line in text.splitlines() if line.startswith("deploybot_agent_last_seen_timestamp_seconds{")]
    assert len(samples) == 1, text  # web-2 and db-1 were never heard from: no sample
    name, value = samples[0].rsplit(" ", 1)
    assert name == 'deploybot_agent_last_seen_timestamp_seconds{host="web-1"}'
    assert float(value) == seen


async def test_plan_lists_never_seen_hosts_without_a_gate_unless_the_group_refuses(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    deployer = await open_deployer(tmp_path, fake_clock, slack)
    try:
        staging = await deployer.plan(DeployRequest("app", "staging"))
        production = await deployer.plan(DeployRequest("app", "production"))
    finally:
        await deployer.close()
    assert staging["agents"]["state"] == "proceed"
    assert staging["agents"]["offline"] == [{"host": "web-1", "last_seen": None}, {"host": "web-2", "last_seen": None}]
    assert "web-1 (never seen)" in staging["agents"]["message"]
    assert "agents" not in [g["gate"] for g in staging["gates"]] and not staging["blocked"]
    gate = next(g for g in production["gates"] if g["gate"] == "agents")
    assert gate["state"] == "refuse" and "web-1 (never seen)" in gate["message"] and production["blocked"]


async def test_a_server_that_was_down_does_not_announce_agents_that_talk_again(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    first = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await heartbeat(first, "web-1")
    finally:
        await first.close()
    fake_clock.jump(600)  # the server is away for ten minutes; the agent keeps trying
    second = await open_deployer(tmp_path, fake_clock, slack)
    try:
        await fake_clock.advance(10)
        await heartbeat(second, "web-1")  # its next heartbeat reaches the new server
        for _ in range(6):
            await heartbeat(second, "web-1")
            await fake_clock.advance(10)
    finally:
        await second.close()
    assert posted(slack) == []


TAGGED = """
server: {data_dir: var, agent_offline_after_seconds: 30}
applications:
  api:
    revision: rev-a
    slack_channel: "#api"
    environments: [production]
    deployment_groups:
      production:
        targets: {tags: {role: api}}
"""


async def test_an_instance_the_codedeploy_api_registered_is_announced_in_its_groups_channel(
    tmp_path: Path, fake_clock: FakeClock, slack: FakeSlack
) -> None:
    make_revision(tmp_path, "rev-a", "1")
    deployer = await deployer_from(TAGGED, tmp_path, clock=fake_clock)
    assert isinstance(deployer, ServedDeployer)
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url, retry_handlers=[])
    deployer.trigger_senders["slack"] = SlackChannelSender(client)
    try:
        await deployer.registry.register_instance("onprem-1", tags={"role": "api"})  # not in the config file
        await deployer.registry.register_instance("onprem-2", tags={"role": "db"})  # no group of api targets it
        await heartbeat(deployer, "onprem-1")
        await heartbeat(deployer, "onprem-2")
        await fake_clock.advance(40)
        await eventually(lambda: len(posted(slack)) == 1, "the announcement in #api")
        await fake_clock.advance(10)
    finally:
        await deployer.close()
    assert posted(slack) == [("#api", ":red_circle: The agent on `onprem-1` has gone silent (offline).")]
