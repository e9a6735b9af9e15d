"""Slack over Socket Mode (``SLACK_APP_TOKEN``: no public URL), against the fake Slack's Socket Mode: the bot opens
the connection with the app-level token (``apps.connections.open`` → a ``ws://`` URL on the fake), the fake sends
envelopes as Slack does, and every one must come back acknowledged with its ``envelope_id``.

In process (the real bolt app on the real aiohttp app, scripted agents): the token each call carries, an answer
carried in the ack's payload, no ``/slack/events`` route without a signing secret, a server that starts and stops
while Slack cannot be reached, a new connection when Slack asks for one, and a stop that closes the websocket
cleanly with nothing left pending. End to end
(a real ``deploybot serve`` with real local agents): ``/deploy hello to staging`` runs to success with its thread
posted, a Rollback click rolls back, and SIGTERM ends the process cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import ClientSession, WSCloseCode
from aiohttp.test_utils import TestServer
from conftest import eventually
from e2e_support import DeploybotServer, write_revision
from fake_slack import FakeSlack
from slack_support import BOT_TOKEN, ScriptedAgents, button_body, slash_body, texts

APP_TOKEN = "xapp-1-A0APP-1-test-app-level-token"

# -- envelopes, as Slack sends them over the socket ---------------------------------------------------------------


def command_payload(text: str, *, user: str = "U0ALICE", response_url: str = "") -> dict[str, Any]:
    """A slash command's payload: the fields of its HTTP form, as JSON."""
    return dict(parse_qsl(slash_body(text, user=user, response_url=response_url)))


def click_payload(action: str, value: str, *, message_ts: str, response_url: str = "") -> dict[str, Any]:
    """A ``block_actions`` payload: the JSON an HTTP click carries in its ``payload`` field."""
    form = dict(parse_qsl(button_body(action, value, message_ts=message_ts, response_url=response_url)))
    return dict(json.loads(form["payload"]))


def slack_tasks() -> set[asyncio.Task[Any]]:
    """The running tasks of the Slack libraries and of bot/slack."""
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if task is not asyncio.current_task() and code is not None and "slack" in code.co_filename:
            found.add(task)
    return found


# -- in process ---------------------------------------------------------------------------------------------------

CONFIG = """
server: {data_dir: var}
hosts:
  - {name: s1, tags: {env: staging}}
applications:
  hello:
    platform: server
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: staging}}
"""


@dataclass
class Bot:
    app: Any
    url: str
    left_running: set[asyncio.Task[Any]] = field(default_factory=set)  # Slack tasks still running once it stopped


@contextlib.asynccontextmanager
async def socket_mode_bot(root: Path, slack: FakeSlack, app_token: str = APP_TOKEN) -> AsyncIterator[Bot]:
    """The real aiohttp app with Slack over Socket Mode only (no signing secret)."""
    from slack_support import make_revision

    from bot.app import create_app
    from bot.assembly import assemble_deployer
    from bot.settings import Settings
    from engine import parse_config

    make_revision(root, "rev-a", "1")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(root))
    deployer = await assemble_deployer(config, data_dir=root / "var")
    agents = ScriptedAgents(deployer, ["s1"])
    settings = Settings(
        data_dir=root / "var",
        slack_bot_token=BOT_TOKEN,
        slack_app_token=app_token,
        slack_api_url=slack.api_url,
        pages_secret="socket-mode-pages-secret",
    )
    app = create_app(settings, deployer=deployer)
    server = TestServer(app, host="127.0.0.1")
    before = slack_tasks()
    await server.start_server()
    bot = Bot(app, str(server.make_url("")).rstrip("/"))
    try:
        yield bot
    finally:
        await server.close()
        bot.left_running = slack_tasks() - before  # right away: nothing may be left to finish later
        await agents.close()
        await deployer.close()


async def connected(slack: FakeSlack) -> None:
    await eventually(lambda: slack.socket() is not None, "the bot's Socket Mode connection")


async def acked(slack: FakeSlack, envelope_id: str) -> dict[str, Any]:
    await eventually(lambda: envelope_id in slack.acks, f"the ack of {envelope_id}")
    return slack.acks[envelope_id]


async def test_the_connection_is_opened_with_the_app_level_token(tmp_path: Path) -> None:
    async with FakeSlack() as slack, socket_mode_bot(tmp_path, slack):
        await connected(slack)
        [opened] = slack.of("apps.connections.open")
        assert opened.authorization == f"Bearer {APP_TOKEN}"
        assert slack.socket().app_token == APP_TOKEN  # type: ignore[union-attr]
        envelope_id = await slack.send_envelope(
            "slash_commands", command_payload("help"), accepts_response_payload=True
        )
        assert "/deploy" in (await acked(slack, envelope_id))["payload"]["text"]
        assert {c.authorization for c in slack.calls if c.method != "apps.connections.open"} <= {f"Bearer {BOT_TOKEN}"}


async def test_a_bot_token_given_as_the_app_token_is_named_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        FakeSlack() as slack,
        socket_mode_bot(tmp_path, slack, app_token=BOT_TOKEN) as bot,
        ClientSession() as http,
        http.get(bot.url + "/healthz") as response,
    ):
        assert response.status == 200
    assert slack.of("apps.connections.open") == []
    assert "SLACK_APP_TOKEN is not an app-level token (xapp-…)" in caplog.text


async def test_a_malformed_command_is_answered_in_the_ack_payload(tmp_path: Path) -> None:
    async with FakeSlack() as slack, socket_mode_bot(tmp_path, slack):
        await connected(slack)
        envelope_id = await slack.send_envelope(
            "slash_commands", command_payload("hello staging"), accepts_response_payload=True
        )
        ack = await acked(slack, envelope_id)
        assert ack["envelope_id"] == envelope_id
        assert ack["payload"]["response_type"] == "ephemeral"
        assert "Did you mean `/deploy hello to staging`?" in ack["payload"]["text"]


async def test_without_a_signing_secret_there_is_no_events_route(tmp_path: Path) -> None:
    async with FakeSlack() as slack, socket_mode_bot(tmp_path, slack) as bot, ClientSession() as http:
        response = await http.post(bot.url + "/slack/events", data=slash_body("help"))
        response.release()
        assert response.status == 404  # nothing on the server's side for anyone to reach


async def test_a_server_starts_and_stops_while_slack_cannot_be_reached(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        await slack.go_down(refuse=True)
        async with socket_mode_bot(tmp_path, slack) as bot, ClientSession() as http:
            async with http.get(bot.url + "/healthz") as response:
                assert response.status == 200  # started: the connection is tried in the background
            from bot.slack.app import SLACK

            link = bot.app[SLACK].socket_mode
            assert link is not None and not link.connected.is_set()
        assert bot.left_running == set()  # the retrying connection was ended, not left pending


async def test_asked_to_reconnect_the_bot_opens_a_new_connection_and_closes_the_old(tmp_path: Path) -> None:
    async with FakeSlack() as slack, socket_mode_bot(tmp_path, slack):
        await connected(slack)
        await slack.ask_to_reconnect()
        await eventually(lambda: len(slack.sockets) == 2 and not slack.sockets[0].open, "a second connection")
        assert slack.sockets[0].closed_with == WSCloseCode.OK
        assert len(slack.of("apps.connections.open")) == 2  # a new URL for the new connection
        envelope_id = await slack.send_envelope(
            "slash_commands", command_payload("help"), accepts_response_payload=True
        )
        assert "/deploy" in (await acked(slack, envelope_id))["payload"]["text"]


async def test_stopping_the_server_closes_the_socket_cleanly(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        async with socket_mode_bot(tmp_path, slack) as bot:
            await connected(slack)
            envelope_id = await slack.send_envelope("slash_commands", command_payload("help"))
            await acked(slack, envelope_id)
        [socket] = slack.sockets
        assert not socket.open and socket.closed_with == WSCloseCode.OK  # the bot said goodbye
        assert bot.left_running == set()


# -- end to end: a real ``deploybot serve`` ------------------------------------------------------------------------

E2E_CONFIG = """server: {data_dir: var}
hosts:
  - {name: stage-1, local: true}
  - {name: stage-2, local: true}
applications:
  hello:
    platform: server
    revision: rev-2
    slack_channel: "#deploys"
    environments: [staging]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [stage-1, stage-2]}
"""


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture
def server(tmp_path: Path, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> Iterator[DeploybotServer]:
    """``deploybot serve`` with Slack over Socket Mode only: a bot token and an app-level token, no signing secret."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    write_revision(tmp_path, "rev-1", {"ValidateService": "exit 0"})
    write_revision(tmp_path, "rev-2", {"ValidateService": "exit 0"})
    running = DeploybotServer(tmp_path, E2E_CONFIG)
    try:
        running.start()
        wait(lambda: slack.socket() is not None)  # connected in the background, just after the server started
        yield running
    finally:
        running.cleanup()


def wait(predicate: Callable[[], Any], timeout: float = 60) -> Any:
    """Until ``predicate()`` is truthy (the server is another process: no event to wait on here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def thread_ts(slack: FakeSlack, deployment_id: str) -> str | None:
    """Where the deployment's thread is: the ts its parent message's edits name."""
    return next((str(c.payload["ts"]) for c in slack.taken("chat.update") if deployment_id in c.payload["text"]), None)


def parent(slack: FakeSlack, deployment_id: str) -> dict[str, Any] | None:
    """The thread's parent message as its last edit left it."""
    ts = thread_ts(slack, deployment_id)
    edits = [c.payload for c in slack.taken("chat.update") if ts is not None and c.payload["ts"] == ts]
    return edits[-1] if edits else None


def parent_showing(slack: FakeSlack, deployment_id: str, status: str) -> dict[str, Any]:
    from bot.messages import STATUS_ICON

    shown = f"*Status*\n{STATUS_ICON.get(status, '')} {status}"
    return dict(wait(lambda: (m := parent(slack, deployment_id)) and shown in texts(m["blocks"]) and m))


def thread_replies(slack: FakeSlack, deployment_id: str) -> list[str]:
    ts = thread_ts(slack, deployment_id)
    return [str(c.payload["text"]) for c in slack.taken("chat.postMessage") if c.payload.get("thread_ts") == ts]


def test_the_server_says_it_listens_over_socket_mode(server: DeploybotServer, slack: FakeSlack) -> None:
    assert any("Slack: on (Socket Mode)" in line for line in server.output)
    wait(lambda: any("Slack Socket Mode connected" in line for line in server.output))
    [opened] = slack.of("apps.connections.open")
    assert opened.authorization == f"Bearer {APP_TOKEN}"


def test_deploy_over_socket_mode_end_to_end(server: DeploybotServer, slack: FakeSlack) -> None:
    envelope_id = slack.send_envelope_from_thread(
        "slash_commands",
        command_payload("hello to staging", response_url=slack.response_url("cmd")),
        accepts_response_payload=True,
    )
    ack = wait(lambda: slack.acks.get(envelope_id))
    assert ack == {
        "envelope_id": envelope_id,
        "payload": {"text": "Deploying hello to staging…", "response_type": "ephemeral"},
    }
    [deployment] = wait(lambda: server.api("GET", "/api/v1/deployments?application=hello")[1]["deployments"])
    done = server.wait_final(deployment["id"])
    assert done["status"] == "Succeeded" and done["created_by"] == "U0ALICE"
    assert {t["name"]: t["status"] for t in done["targets"]} == {"stage-1": "Succeeded", "stage-2": "Succeeded"}

    shown = texts(parent_showing(slack, deployment["id"], "Succeeded")["blocks"])
    assert "*Started by*\n<@U0ALICE>" in shown
    [summary] = wait(lambda: [r for r in thread_replies(slack, deployment["id"]) if "*Succeeded*" in r])
    assert "2/2 hosts" in summary
    assert thread_replies(slack, deployment["id"])[0] == "Batch: stage-1, stage-2 (2/2 hosts started)"


def test_a_button_click_over_socket_mode_is_acked_and_acted_on(server: DeploybotServer, slack: FakeSlack) -> None:
    first = server.deploy("hello", "staging", server.workdir / "rev-1")
    assert server.wait_final(first["id"])["status"] == "Succeeded"
    second = server.deploy("hello", "staging", server.workdir / "rev-2")
    assert server.wait_final(second["id"])["status"] == "Succeeded"
    message = parent_showing(slack, second["id"], "Succeeded")
    [rollback] = [
        e
        for b in message["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == "deploy.rollback"
    ]

    payload = click_payload(
        "rollback", rollback["value"], message_ts=message["ts"], response_url=slack.response_url("rb")
    )
    envelope_id = slack.send_envelope_from_thread("interactive", payload)
    assert wait(lambda: slack.acks.get(envelope_id)) == {"envelope_id": envelope_id}
    rollback_id = wait(lambda: server.deployment(second["id"])["rollback"]["by"])
    done = server.wait_final(rollback_id)
    assert done["status"] == "Succeeded"
    assert done["revision"]["sha256"] == first["revision"]["sha256"]
    shown = texts(parent_showing(slack, rollback_id, "Succeeded")["blocks"])
    assert "*Started by*\n<@U0ALICE>" in shown  # who clicked, in the rollback's own thread


def test_sigterm_closes_the_socket_cleanly(server: DeploybotServer, slack: FakeSlack) -> None:
    envelope_id = slack.send_envelope_from_thread("slash_commands", command_payload("help"))
    wait(lambda: slack.acks.get(envelope_id))
    assert server.stop() == 0
    [socket] = slack.sockets
    assert socket.closed_with == WSCloseCode.OK
    output = "".join(server.output)
    for trouble in ("Task was destroyed", "Unclosed", "Traceback", "Exception ignored"):
        assert trouble not in output, output
