"""Triggers: CodeDeploy's events from a deployment's documents, stored once in the outbox, delivered at least once.

Real parts throughout: the Deployer over SQLite, a scripted agent on the real Fleet, a local aiohttp receiver that
verifies webhook signatures, the fake Slack, and (tests/test_triggers_sns.py) moto's SNS and SQS.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import FakeClock, deployer_from, eventually, free_port
from fake_slack import FakeSlack
from slack_sdk.web.async_client import AsyncWebClient
from test_service import ScriptedFleet, make_revision, never_fails, wait_final

from bot.assembly import ServedDeployer, default_trigger_senders
from bot.slack.agent_health import SlackChannelSender
from engine.core.config.parse import parse_config
from engine.core.errors import ConfigError
from engine.core.requests import DeployRequest
from engine.core.triggers import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Occurrence,
    TriggerEvent,
    deployment_message,
    events_of,
    instance_message,
    retry_delay,
    sign_webhook,
    verify_webhook,
)
from engine.ports import Clock
from engine.runtime.triggers import SOURCE

SECRET = "s3cr3t-for-tests"
SECRET_ENV = "DEPLOYBOT_TEST_HOOK_SECRET"

CONFIG = """
server: {data_dir: var}
hosts:
  - {name: web-1}
  - {name: web-2}
applications:
  app:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [web-1, web-2]}
        triggers:
          - name: hook
            events: [DeploymentStart, DeploymentSuccess, DeploymentFailure, InstanceStart, InstanceSuccess]
            target: {webhook: "%(url)s", secret_env: %(env)s}
          - name: chat
            events: [DeploymentSuccess]
            target: {slack: "#deploys"}
"""


class Receiver:
    """A webhook receiver as docs/triggers.md tells one to write: verify the signature over timestamp and body,
    refuse a stale timestamp, refuse a signature seen before (a replay inside the window)."""

    def __init__(self, port: int, now: Callable[[], float] = time.time) -> None:
        self.port = port
        self.now = now  # the receiver's clock (the test's fake one when the engine runs on it)
        self.accepted: list[dict[str, Any]] = []  # {"delivery", "event", "message"}
        self.refused: list[str] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.status = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: request.headers.get(k, "") for k in (TIMESTAMP_HEADER, SIGNATURE_HEADER)}
        if not verify_webhook(SECRET.encode(), headers, body, now=self.now()):
            self.refused.append("bad signature or stale timestamp")
            return web.Response(status=401)
        if headers[SIGNATURE_HEADER] in self._seen:
            self.refused.append("replay")
            return web.Response(status=409)
        self._seen.add(headers[SIGNATURE_HEADER])
        self.raw.append((dict(request.headers), body))
        self.accepted.append(
            {
                "delivery": request.headers[DELIVERY_HEADER],
                "event": request.headers[EVENT_HEADER],
                "message": json.loads(body),
            }
        )
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def events(self) -> list[str]:
        return [a["event"] for a in self.accepted]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_revision(tmp_path, "rev-a", "1")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return tmp_path


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def open_deployer(workdir: Path, url: str, slack: FakeSlack, *, clock: Clock | None = None) -> ServedDeployer:
    config = CONFIG % {"url": url, "env": SECRET_ENV}
    deployer = await deployer_from(config, workdir, clock=clock)
    assert isinstance(deployer, ServedDeployer)
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url, retry_handlers=[])
    deployer.trigger_senders["slack"] = SlackChannelSender(client)  # the test's Slack instead of SLACK_BOT_TOKEN's
    return deployer


async def deploy(deployer: ServedDeployer) -> dict[str, Any]:
    agents = ScriptedFleet(deployer, ["web-1", "web-2"], never_fails)
    try:
        started = await deployer.start(DeployRequest("app", "staging", actor="alice"))
        return await wait_final(deployer, started["id"])
    finally:
        await agents.close()


# -- pure: which document is which event, and the message ----------------------------------------------------------


def _document(status: str, targets: dict[str, str], **extra: Any) -> dict[str, Any]:
    events = {
        "Succeeded": [{"name": "Install", "status": "Succeeded", "started_at": 10.0, "ended_at": 12.5}],
        "Failed": [{"name": "Install", "status": "Failed", "started_at": 10.0, "ended_at": 11.0}],
        "InProgress": [{"name": "Install", "status": "InProgress", "started_at": 10.0, "ended_at": None}],
        "Pending": [{"name": "Install", "status": "Pending", "started_at": None, "ended_at": None}],
    }
    return {
        "id": "d-1",
        "application": "app",
        "group": "app-staging",
        "status": status,
        "created_at": 1.0,
        "started_at": extra.pop("started_at", 2.0),
        "ended_at": extra.pop("ended_at", None),
        "error": extra.pop("error", None),
        "rollback": extra.pop("rollback", {"of": None, "by": None}),
        "targets": [{"name": n, "status": s, "events": events[s]} for n, s in targets.items()],
    }


E = TriggerEvent


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (_document("Queued", {}, started_at=None), []),
        (_document("WaitingApproval", {}, started_at=None), []),
        (_document("InProgress", {"a": "Pending"}), [Occurrence(E.DEPLOYMENT_START)]),
        (
            _document("InProgress", {"a": "InProgress", "b": "Pending"}),
            [Occurrence(E.DEPLOYMENT_START), Occurrence(E.INSTANCE_START, "a")],
        ),
        (
            _document("Succeeded", {"a": "Succeeded"}),
            [
                Occurrence(E.DEPLOYMENT_START),
                Occurrence(E.DEPLOYMENT_SUCCESS),
                Occurrence(E.INSTANCE_START, "a"),
                Occurrence(E.INSTANCE_SUCCESS, "a"),
            ],
        ),
        (
            _document("Failed", {"a": "Failed"}, rollback={"of": None, "by": "d-2"}),
            [
                Occurrence(E.DEPLOYMENT_START),
                Occurrence(E.DEPLOYMENT_FAILURE),
                Occurrence(E.DEPLOYMENT_ROLLBACK),
                Occurrence(E.INSTANCE_START, "a"),
                Occurrence(E.INSTANCE_FAILURE, "a"),
            ],
        ),
        (
            _document("Ready", {"g": "Succeeded"}),
            [
                Occurrence(E.DEPLOYMENT_START),
                Occurrence(E.DEPLOYMENT_READY),
                Occurrence(E.INSTANCE_START, "g"),
                Occurrence(E.INSTANCE_SUCCESS, "g"),
                Occurrence(E.INSTANCE_READY, "g"),
            ],
        ),
        (_document("Stopped", {}), [Occurrence(E.DEPLOYMENT_START), Occurrence(E.DEPLOYMENT_STOP)]),
    ],
)
def test_each_document_is_the_events_it_shows(document: dict[str, Any], expected: list[Occurrence]) -> None:
    assert events_of(document) == expected


def test_messages_have_codedeploys_shape() -> None:
    document = _document(
        "Failed", {"a": "Failed", "b": "Succeeded"}, ended_at=20.0, error={"code": "HEALTH_CONSTRAINTS", "message": "x"}
    )
    deployment = deployment_message(document, "t", region="us-east-1", account_id="123456789012")
    assert deployment == {
        "region": "us-east-1",
        "accountId": "123456789012",
        "eventTriggerName": "t",
        "applicationName": "app",
        "deploymentId": "d-1",
        "deploymentGroupName": "app-staging",
        "createTime": "1.000",
        "completeTime": "20.000",
        "deploymentOverview": {"Failed": "1", "InProgress": "0", "Pending": "0", "Skipped": "0", "Succeeded": "1"},
        "status": "Failed",
        "errorInformation": {"ErrorCode": "HEALTH_CONSTRAINTS", "ErrorMessage": "x"},
    }
    instance = instance_message(document, "b", "t", region="us-east-1", account_id="123456789012")
    assert instance["instanceId"] == "b" and instance["instanceStatus"] == "Succeeded"
    assert instance["lastUpdatedAt"] == "12.500"
    assert instance["lifecycleEvents"] == [
        {"LifecycleEvent": "Install", "LifecycleEventStatus": "Succeeded", "StartTime": "10.000", "EndTime": "12.500"}
    ]


def test_webhook_signature_is_over_timestamp_and_body_and_refuses_stale_or_altered() -> None:
    body = b'{"status":"Succeeded"}'
    headers = {TIMESTAMP_HEADER: "1000.000", SIGNATURE_HEADER: sign_webhook(b"k", "1000.000", body)}
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert verify_webhook(b"k", headers, body, now=1100)
    assert not verify_webhook(b"k", headers, body, now=1000 + 301)  # replayed later than the window
    assert not verify_webhook(b"k", headers, body + b" ", now=1100)  # body altered
    assert not verify_webhook(b"other", headers, body, now=1100)  # another secret
    assert not verify_webhook(b"k", {**headers, TIMESTAMP_HEADER: "1001.000"}, body, now=1100)  # timestamp altered


def test_retry_backs_off_doubling_to_a_ceiling() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(50) == 15 * 60.0


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("{webhook: 'https://x.example/h', secret: abc}", "never write a secret in the config file"),
        ("{webhook: 'https://x.example/h'}", "a webhook needs secret_env"),
        ("{webhook: 'https://x.example/h', secret_env: 'not a name'}", "is not an environment variable name"),
        ("{sns: 'arn:aws:sqs:us-east-1:123456789012:q'}", "expected an SNS topic ARN"),
        ("{sns: 'arn:aws:sns:us-east-1:123456789012:t', slack: '#x'}", "exactly one of sns, webhook or slack"),
        ("{slack: '#x', secret_env: X}", "secret_env applies only to a webhook"),
    ],
)
def test_config_refuses_bad_trigger_targets(target: str, problem: str) -> None:
    text = f"""
hosts: [{{name: h}}]
applications:
  app:
    environments: [e]
    deployment_groups:
      e:
        targets: {{hosts: [h]}}
        triggers: [{{name: t, events: [DeploymentStart], target: {target}}}]
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert problem in str(raised.value)
    assert "triggers[0].target" in str(raised.value)


def test_config_refuses_unknown_events_with_a_hint() -> None:
    text = """
hosts: [{name: h}]
applications:
  app:
    environments: [e]
    deployment_groups:
      e:
        targets: {hosts: [h]}
        triggers: [{name: t, events: [DeploymentSucess], target: {slack: '#x'}}]
"""
    with pytest.raises(ConfigError, match="did you mean 'DeploymentSuccess'"):
        parse_config(text)


# -- delivery ------------------------------------------------------------------------------------------------------


async def test_webhook_receives_signed_codedeploy_messages_once_per_event(workdir: Path, slack: FakeSlack) -> None:
    receiver = Receiver(free_port())
    await receiver.start()
    deployer = await open_deployer(workdir, receiver.url, slack)
    try:
        doc = await deploy(deployer)
        await eventually(lambda: len(receiver.accepted) == 6, "six webhook deliveries")
        await eventually(lambda: len(slack.taken("chat.postMessage")) >= 1, "the Slack channel trigger")
        await eventually(lambda: _all_done(deployer), "every entry done")
    finally:
        await deployer.close()
        await receiver.stop()
    assert doc["status"] == "Succeeded"
    assert sorted(receiver.events()) == sorted(
        ["DeploymentStart", "DeploymentSuccess", *["InstanceStart", "InstanceSuccess"] * 2]
    )
    deliveries = [a["delivery"] for a in receiver.accepted]
    assert len(set(deliveries)) == len(deliveries)
    assert f"trigger:{doc['id']}:DeploymentSuccess:hook" in deliveries
    assert f"trigger:{doc['id']}:InstanceSuccess:hook:web-2" in deliveries
    success = next(a["message"] for a in receiver.accepted if a["event"] == "DeploymentSuccess")
    assert success["deploymentId"] == doc["id"] and success["status"] == "Succeeded"
    assert success["deploymentOverview"]["Succeeded"] == "2"
    assert success["eventTriggerName"] == "hook"
    posted = [c.payload for c in slack.taken("chat.postMessage")]
    assert posted == [{"channel": "#deploys", "text": f"DeploymentSuccess: app / app-staging {doc['id']} (Succeeded)"}]


async def test_receiver_refuses_a_replayed_delivery(workdir: Path, slack: FakeSlack) -> None:
    receiver = Receiver(free_port())
    await receiver.start()
    deployer = await open_deployer(workdir, receiver.url, slack)
    try:
        await deploy(deployer)
        await eventually(lambda: len(receiver.accepted) == 6, "six webhook deliveries")
    finally:
        await deployer.close()
    import aiohttp

    headers, body = receiver.raw[0]
    replay = {k: headers[k] for k in (TIMESTAMP_HEADER, SIGNATURE_HEADER, EVENT_HEADER, DELIVERY_HEADER)}
    stale = str(float(headers[TIMESTAMP_HEADER]) - 600)
    forged = {**replay, TIMESTAMP_HEADER: stale, SIGNATURE_HEADER: sign_webhook(SECRET.encode(), stale, body)}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(receiver.url, data=body, headers=replay) as answer:
                assert answer.status == 409
            async with session.post(receiver.url, data=body, headers=forged) as answer:
                assert answer.status == 401
    finally:
        await receiver.stop()
    assert receiver.refused == ["replay", "bad signature or stale timestamp"]
    assert len(receiver.accepted) == 6


async def test_a_receiver_that_is_down_does_not_slow_the_deployment(workdir: Path, slack: FakeSlack) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens here
    deployer = await open_deployer(workdir, down, slack)
    try:
        doc = await deploy(deployer)
        assert doc["status"] == "Succeeded"  # final while its triggers are still owed
        await eventually(lambda: _tried(deployer, doc["id"]), "a failed attempt of the deployment's webhook trigger")
        await eventually(lambda: _owed(deployer, 6), "the last document's six webhook entries stored")
        pending = await deployer.triggers.pending()
    finally:
        await deployer.close()
    waiting = [p for p in pending if p["payload"]["trigger"] == "hook"]
    assert len(waiting) == 6
    assert all(p["state"] in ("pending", "waiting", "running") for p in waiting)
    tried = [p for p in waiting if p["attempts"]]
    assert tried and all(p["not_before"] > p["updated_at"] for p in tried if p["state"] == "waiting")
    assert all("did not answer" in p["outcome"]["reason"] for p in tried if p["outcome"])


async def _tried(deployer: ServedDeployer, deployment_id: str) -> bool:
    """Whether some webhook entry of the deployment has failed once and waits for its next try."""
    rows = await deployer.store.list_intents(source=SOURCE, scope=deployment_id, states=["waiting"])
    return any(r["payload"]["trigger"] == "hook" for r in rows)


async def test_outbox_survives_a_restart_and_delivers_each_event_once(
    workdir: Path, slack: FakeSlack, fake_clock: FakeClock
) -> None:
    receiver = Receiver(free_port(), now=fake_clock.now)
    first = await open_deployer(workdir, receiver.url, slack, clock=fake_clock)  # the receiver is not up yet
    try:
        doc = await deploy(first)
        await eventually(lambda: _tried(first, doc["id"]), "a failed first attempt")
        await eventually(lambda: _owed(first, 6), "the last document's six webhook entries stored")
        stored = await first.triggers.pending()
    finally:
        await first.close()  # the server goes away with the triggers owed
    owed = {str(p["key"]) for p in stored if p["payload"]["trigger"] == "hook"}
    assert len(owed) == 6

    await receiver.start()
    second = await open_deployer(workdir, receiver.url, slack, clock=fake_clock)
    try:
        await fake_clock.advance(60)  # past every entry's backoff
        await eventually(lambda: len(receiver.accepted) == 6, "the six owed deliveries after the restart")
        await eventually(lambda: _all_done(second), "every entry done")
        await fake_clock.advance(3600)  # nothing is sent again later
    finally:
        await second.close()
        await receiver.stop()
    deliveries = [a["delivery"] for a in receiver.accepted]
    assert sorted(deliveries) == sorted(owed)


async def _owed(deployer: ServedDeployer, count: int) -> bool:
    return len([p for p in await deployer.triggers.pending() if p["payload"]["trigger"] == "hook"]) == count


async def _all_done(deployer: ServedDeployer) -> bool:
    return not await deployer.triggers.pending()


def test_default_senders_cover_every_target_kind_when_slack_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    config = parse_config("hosts: [{name: h}]\n")
    senders = default_trigger_senders(config, _Clock())
    assert set(senders) == {"sns", "webhook", "slack"}
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    assert set(default_trigger_senders(config, _Clock())) == {"sns", "webhook"}


class _Clock:
    def now(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        return None


async def test_get_deployment_group_lists_the_sns_triggers(tmp_path: Path) -> None:
    from test_codedeploy import call, serving

    config = """
server: {data_dir: var}
hosts: [{name: s1}]
applications:
  app:
    revision: rev-a
    environments: [staging]
    deployment_groups:
      staging:
        targets: {hosts: [s1]}
        triggers:
          - name: to-sns
            events: [DeploymentFailure, DeploymentStart, InstanceFailure, InstanceAgentOffline]
            target: {sns: "arn:aws:sns:eu-west-1:123456789012:deploys"}
          - name: hook
            events: [DeploymentSuccess]
            target: {webhook: "https://hooks.example/d", secret_env: HOOK_SECRET}
"""
    async with serving(tmp_path, config=config, hosts=("s1",)) as served:
        client = served.client()
        info = (await call(client.get_deployment_group, applicationName="app", deploymentGroupName="app-staging"))[
            "deploymentGroupInfo"
        ]
    assert info["triggerConfigurations"] == [
        {
            "triggerName": "to-sns",
            "triggerTargetArn": "arn:aws:sns:eu-west-1:123456789012:deploys",
            "triggerEvents": ["DeploymentFailure", "DeploymentStart", "InstanceFailure"],
        }
    ]


class HangingReceiver(Receiver):
    """Takes the request and never answers while ``hang`` is set: the server goes away mid-delivery."""

    def __init__(self, port: int, now: Callable[[], float]) -> None:
        super().__init__(port, now)
        self.hang = True
        self.held: list[str] = []  # delivery ids of requests taken and never answered
        self._forever = asyncio.Event()

    async def _hook(self, request: web.Request) -> web.Response:
        if self.hang:
            self.held.append(request.headers[DELIVERY_HEADER])
            await self._forever.wait()  # until the test ends; the server that sent it is gone by then
            return web.Response(status=503)
        return await super()._hook(request)

    async def stop(self) -> None:
        self._forever.set()
        await super().stop()


async def test_a_delivery_cut_short_by_the_server_going_away_is_sent_again(
    workdir: Path, slack: FakeSlack, fake_clock: FakeClock
) -> None:
    receiver = HangingReceiver(free_port(), fake_clock.now)
    await receiver.start()
    first = await open_deployer(workdir, receiver.url, slack, clock=fake_clock)
    try:
        await deploy(first)
        await eventually(lambda: len(receiver.held) == 6, "six requests in flight")
        running = [p for p in await first.triggers.pending() if p["payload"]["trigger"] == "hook"]
    finally:
        await first.close()  # mid-delivery: no answer came back
    assert {p["state"] for p in running} == {"running"}

    receiver.hang = False
    second = await open_deployer(workdir, receiver.url, slack, clock=fake_clock)
    try:
        await eventually(lambda: len(receiver.accepted) == 6, "the six cut-short deliveries sent again")
        await eventually(lambda: _all_done(second), "every entry done")
    finally:
        await second.close()
        await receiver.stop()
    assert sorted(a["delivery"] for a in receiver.accepted) == sorted(receiver.held)  # each event id once more


async def test_a_cancelled_outbox_wait_is_never_swallowed_at_whatever_point_it_lands(
    workdir: Path, slack: FakeSlack, fake_clock: FakeClock
) -> None:
    """The outbox worker waits for a wake-up or for an entry's next try on its clock, then tidies both waits away. A
    cancellation (the server closing) landing while it tidies must still end the wait with CancelledError: swallowed
    there, the worker went on to wait on a clock nobody moves, and the server's shutdown hung (seen once in the
    suite under load). Every interleaving of the wake-up and the cancellation up to 12 loop turns apart is tried."""
    deployer = await open_deployer(workdir, Receiver(free_port()).url, slack, clock=fake_clock)
    outbox = deployer.triggers
    await outbox.close()  # its own worker stays out of the way: this drives the wait directly
    try:
        for turns in range(12):
            parked = len(fake_clock.sleepers)
            wait = asyncio.ensure_future(outbox._until(60.0))
            await fake_clock.sleeping(parked + 1)
            outbox._wake.set()
            for _ in range(turns):
                await asyncio.sleep(0)
            if wait.done():  # it ended on the wake-up before the cancellation: nothing to lose
                continue
            wait.cancel()
            with pytest.raises(asyncio.CancelledError):
                await wait
    finally:
        await deployer.close()
