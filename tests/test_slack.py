"""The Slack front for real: the bolt app on our aiohttp server (signed requests in), the real Deployer with
scripted agents at the Fleet port, and a fake Slack Web API that records every call (Block Kit out)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from conftest import FakeClock, eventually
from fake_slack import FakeSlack
from slack_support import BOT_TOKEN, SECRET, ScriptedAgents, button_body, buttons_of, signed, slash_body, texts

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.messages import ButtonState
from bot.pages.links import LinkCheck, deployment_path, verify
from bot.settings import Settings
from bot.slack.app import SLACK
from engine import ROLLBACK_CREATOR
from engine.core.config.parse import parse_config
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer

CONFIG = """
server: {data_dir: var}
roles: {ops: [U0CAROL]}   # no users section: Slack user ids are the names
hosts:
  - {name: s1, tags: {env: staging}}
  - {name: s2, tags: {env: staging}}
  - {name: p1, tags: {env: production}}
applications:
  app:
    platform: server
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging, production]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: staging}}
      production:
        deployment_config: CodeDeployDefault.OneAtATime
        targets: {tags: {env: production}}
        deployers: [U0ALICE, "@ops"]
"""
APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: VERSION\n    destination: /opt/app\n"
PAGES_SECRET = "slack-test-pages-secret"


class Rig:
    def __init__(self, slack: FakeSlack, deployer: Deployer, url: str, session: ClientSession, app: Any) -> None:
        self.slack, self.deployer, self.url, self.session, self.app = slack, deployer, url, session, app

    @property
    def notifier(self) -> Any:
        return self.app[SLACK].notifier

    async def post(self, body: str, headers: dict[str, str]) -> tuple[int, str]:
        async with self.session.post(self.url + "/slack/events", data=body, headers=headers) as response:
            return response.status, await response.text()

    async def command(self, text: str, *, user: str = "U0ALICE", retry: int | None = None) -> tuple[int, str]:
        body = slash_body(text, user=user, response_url=self.slack.response_url(f"{user}-{len(self.slack.responses)}"))
        return await self.post(body, signed(body, retry=retry))

    async def click(self, action: str, deployment_id: str, *, user: str = "U0ALICE") -> tuple[int, str]:
        body = button_body(action, deployment_id, user=user, response_url=self.slack.response_url("click"))
        return await self.post(body, signed(body))

    async def settle(self) -> None:
        await self.app[SLACK].chatops.drain()
        await self.notifier.idle(15)

    async def final(self, deployment_id: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                doc = await self.deployer.watch(deployment_id, after=0, timeout=0.2)
                if doc["status"] in ("Succeeded", "Failed", "Stopped"):
                    return doc

    async def final_in_slack(self, deployment_id: str) -> dict[str, Any]:
        """``final``, then until Slack was sent that status for it and nothing more is queued. The store has the
        final status before the notifiers hear of it (a runner persists a step, acts on it, then notifies), so a
        test that looks at the thread once the deployment is final must wait for the thread."""
        doc = await self.final(deployment_id)

        def shown() -> bool:
            return any(
                deployment_id in json.dumps(call.payload) and doc["status"] in str(call.payload.get("text", ""))
                for call in self.slack.calls
            )

        await eventually(shown, f"{deployment_id} shown {doc['status']} in Slack")
        await self.notifier.idle(15)
        return doc


def make_revision(root: Path, name: str, version: str) -> None:
    (root / name).mkdir()
    (root / name / "appspec.yml").write_text(APPSPEC)
    (root / name / "VERSION").write_text(version)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    agents = ScriptedAgents(deployer, ["s1", "s2", "p1"])
    async with FakeSlack() as slack:
        settings = Settings(
            data_dir=tmp_path / "var",
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SECRET,
            slack_api_url=slack.api_url,
            pages_secret=PAGES_SECRET,
        )
        app = create_app(settings, deployer=deployer)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                yield Rig(slack, deployer, str(server.make_url("")).rstrip("/"), session, app)
        finally:
            await server.close()
            await agents.close()
            await deployer.close()


async def test_bad_and_stale_signatures_are_refused_with_401(rig: Rig) -> None:
    body = slash_body("app to staging")
    assert (await rig.post(body, signed(body, secret="wrong-secret")))[0] == 401
    assert (await rig.post(body, signed(body, ts=time.time() - 600)))[0] == 401
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await rig.post(body, unsigned))[0] == 401
    click = button_body("stop", "d-AAAAAAAAA")
    assert (await rig.post(click, signed(click, secret="wrong-secret")))[0] == 401
    await rig.settle()
    assert rig.slack.calls == [] and rig.slack.responses == []
    assert await rig.deployer.history("app") == []


async def test_slash_command_acks_fast_then_the_thread_tells_the_deployment(rig: Rig) -> None:
    rig.slack.hold()  # Slack wants the ack within 3 s: it must not wait on any Slack call, which is held until it came
    status, text = await rig.command("APP to Staging")
    await eventually(lambda: rig.slack.waiting, "the deployment's thread waiting on Slack")  # the hold was tested
    rig.slack.release()
    assert status == 200 and "Deploying app to staging" in text
    await rig.app[SLACK].chatops.drain()
    [started] = await rig.deployer.history("app")
    doc = await rig.final_in_slack(started["id"])
    assert doc["status"] == "Succeeded" and doc["created_by"] == "U0ALICE"
    await rig.settle()

    parent = rig.slack.of("chat.postMessage")[0]
    assert parent.payload["channel"] == "#deploys" and "thread_ts" not in parent.payload
    assert parent.authorization == f"Bearer {BOT_TOKEN}"
    header = parent.payload["blocks"][0]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "app → staging"}}
    first = texts(parent.payload["blocks"])
    for field in ("*Application*\napp", "*Environment*\nstaging", "*Started by*\n<@U0ALICE>", "AllAtOnce"):
        assert field in first
    replies = [c.payload for c in rig.slack.of("chat.postMessage")[1:]]
    ts = "1700000000.000001"
    assert replies and all(r["thread_ts"] == ts and r["channel"] == "C0DEPLOYS" for r in replies)
    assert any(r["text"].startswith("Batch: s1, s2") for r in replies)
    assert "*Succeeded*" in replies[-1]["text"] and "2/2 hosts" in replies[-1]["text"]

    updates = rig.slack.of("chat.update")
    assert updates and all(u.payload["ts"] == ts and u.payload["channel"] == "C0DEPLOYS" for u in updates)
    last = updates[-1].payload
    assert "Succeeded" in last["text"] and ":white_check_mark: Succeeded" in texts(last["blocks"])
    assert "hosts 2/2 done" in texts(last["blocks"])
    assert set(buttons_of(last["blocks"])) == {"deploy.promote", "deploy.rollback"}
    promote = buttons_of(last["blocks"])["deploy.promote"]
    assert promote["text"]["text"] == "Promote to production"
    assert ButtonState.from_value(promote["value"]) == ButtonState(
        doc["id"], "Succeeded", False, doc["revision"]["sha256"]
    )
    assert promote["confirm"]["confirm"]["text"] == "Promote"
    assert buttons_of(last["blocks"])["deploy.rollback"]["confirm"]["confirm"]["text"] == "Roll back"
    gaps = [b.at - a.at for a, b in itertools.pairwise(updates)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # at most one edit per second per message
    ephemeral = rig.slack.responses[-1][1]
    assert ephemeral["response_type"] == "ephemeral" and doc["id"] in ephemeral["text"]


def page_link(blocks: list[dict[str, Any]]) -> str:
    [block] = [b for b in blocks if b.get("block_id") == "deployment-page"]
    assert block["accessory"]["action_id"] == "page.view" and block["accessory"]["text"]["text"] == "View deployment"
    assert f"<{block['accessory']['url']}|" in block["text"]["text"]
    return str(block["accessory"]["url"])


async def test_parent_message_links_to_the_deployment_page_with_a_signed_link(rig: Rig) -> None:
    started = await rig.deployer.start(DeployRequest("app", "staging", actor="cli"))
    doc = await rig.final_in_slack(started["id"])
    parent = rig.slack.of("chat.postMessage")[0].payload
    url = page_link(parent["blocks"])
    edits = [u.payload["blocks"] for u in rig.slack.of("chat.update")]
    assert edits and all(page_link(blocks) == url for blocks in edits)  # one link per thread, not one per edit
    kinds = [b["type"] for b in edits[-1]]
    assert kinds.index("section", 2) < kinds.index("actions")  # the link sits above the action buttons
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    assert (parts.netloc, parts.path) == ("127.0.0.1:8080", deployment_path(doc["id"]))  # the config's server url
    assert verify(deployment_path(doc["id"]), params["exp"], params["sig"], PAGES_SECRET, now=time.time()) == (
        LinkCheck.VALID
    )
    assert int(params["exp"]) > time.time() + 6 * 24 * 3600  # the default week
    assert verify(deployment_path("d-OTHER"), params["exp"], params["sig"], PAGES_SECRET, now=time.time()) == (
        LinkCheck.TAMPERED
    )
    async with rig.session.get(f"{rig.url}{parts.path}?{parts.query}") as page:  # the link opens the page, no login
        assert page.status == 200 and doc["id"] in await page.text()
    click = button_body("view", doc["id"]).replace("deploy.view", "page.view")
    status, body = await rig.post(click, signed(click))
    await rig.settle()
    assert (status, body) == (200, "") and rig.slack.responses == []  # acknowledged; nothing else happens


async def test_slack_retries_of_one_command_start_one_deployment(rig: Rig) -> None:
    body = slash_body("app to staging", response_url=rig.slack.response_url("retried"))
    results = await asyncio.gather(
        rig.post(body, signed(body)), rig.post(body, signed(body, retry=1)), rig.post(body, signed(body, retry=2))
    )
    assert [r[0] for r in results] == [200, 200, 200]
    assert sum("Already taken: `/deploy app to staging`" in r[1] for r in results) == 2
    await rig.settle()
    assert len(await rig.deployer.history("app")) == 1


async def test_malformed_and_unknown_names_get_usage_and_a_suggestion(rig: Rig) -> None:
    status, text = await rig.command("app staging")
    assert status == 200 and "Usage: /deploy APP[@REF] to ENV" in text
    assert "Did you mean `/deploy app to staging`?" in text
    _, text = await rig.command("app to prod")
    assert "unknown environment 'prod' of app (did you mean production?)" in text
    _, text = await rig.command("rolback app in staging")
    assert "/deploy rollback app in staging" in text
    _, text = await rig.command("help")
    assert "/deploy where APP" in text
    await rig.settle()
    assert await rig.deployer.history("app") == []


async def test_production_refuses_users_not_listed_and_admits_a_role_member(rig: Rig) -> None:
    status, _ = await rig.command("app to production", user="U0BOB")
    assert status == 200
    await rig.settle()
    refusal = rig.slack.responses[-1][1]["text"]
    assert refusal == (
        ":no_entry: <@U0BOB> may not deploy app to production (rule: app-production.deployers: <@U0ALICE>, @ops)"
    )
    assert await rig.deployer.history("app") == []
    await rig.command("rollback app in production", user="U0BOB")  # no rollbackers: the deployers decide
    await rig.settle()
    assert "may not roll back app in production (rule: app-production.deployers: " in rig.slack.responses[-1][1]["text"]

    await rig.command("app to production", user="U0CAROL")  # in @ops, a role of Slack ids
    await rig.settle()
    [doc] = await rig.deployer.history("app")
    assert doc["created_by"] == "U0CAROL"
    assert rig.slack.of("usergroups.users.list") == []  # roles replace Slack user groups: nothing to look up


async def test_buttons_on_a_finished_deployment_are_answered_and_shown(rig: Rig) -> None:
    started = await rig.deployer.start(DeployRequest("app", "staging", actor="cli-user"))
    await rig.final_in_slack(started["id"])  # CLI deployments get their thread too
    assert rig.slack.of("chat.postMessage")[0].payload["channel"] == "#deploys"
    edits = len(rig.slack.of("chat.update"))
    rig.slack.hold()  # the click's ack must not wait on Slack either (its answer goes to the response_url)
    status, body = await rig.click("stop", started["id"], user="U0BOB")  # an old message: a bare id
    rig.slack.release()
    assert status == 200 and body == ""
    await rig.settle()
    answer = rig.slack.responses[-1][1]
    assert answer["response_type"] == "ephemeral"
    assert answer["text"].startswith(f":information_source: `{started['id']}` is Succeeded: nothing to stop. <")
    assert (
        f"<https://example.slack.com/archives/C0DEPLOYS/p1700000000000001|thread of `{started['id']}`>"
        in (answer["text"])
    )
    assert "|deployment page>" in answer["text"]
    await rig.notifier.idle(15)
    assert len(rig.slack.of("chat.update")) == edits  # the thread is not told about a click that did nothing


async def test_rollback_button_starts_a_rollback_shown_in_both_threads(rig: Rig) -> None:
    first = await rig.deployer.start(DeployRequest("app", "staging", revision="rev-a", actor="cli"))
    await rig.final(first["id"])
    second = await rig.deployer.start(DeployRequest("app", "staging", revision="rev-b", actor="cli"))
    await rig.final_in_slack(second["id"])
    await rig.click("rollback", second["id"])
    await rig.settle()
    rollback_id = (await rig.deployer.get(second["id"]))["rollback"]["by"]
    assert rollback_id
    rollback = await rig.final_in_slack(rollback_id)
    assert rollback["status"] == "Succeeded" and rollback["revision"]["sha256"] == first["revision"]["sha256"]
    thread = rig.notifier.thread_of(second["id"])
    assert thread is not None
    in_thread = [c.payload["text"] for c in rig.slack.of("chat.postMessage") if c.payload.get("thread_ts") == thread[1]]
    assert any("Rollback started: `" + rollback_id in t for t in in_thread)
    assert any(t.startswith(":white_check_mark: Rollback `" + rollback_id + "` finished: Succeeded") for t in in_thread)
    assert any("<@U0ALICE> clicked Rollback: rollback `" + rollback_id in t for t in in_thread)
    parents = [c for c in rig.slack.of("chat.postMessage") if "thread_ts" not in c.payload]
    assert texts(parents[-1].payload["blocks"]).startswith("Rollback: app → staging")


async def test_a_429_is_waited_out_and_the_edit_still_lands(rig: Rig) -> None:
    rig.slack.rate_limit_once("chat.update", retry_after=1)
    started = await rig.deployer.start(DeployRequest("app", "staging", actor="cli"))
    await rig.final_in_slack(started["id"])
    updates = rig.slack.of("chat.update")
    assert updates[0].payload.get("_answered") == 429
    assert updates[1].at - updates[0].at >= 0.95  # Retry-After honoured
    assert rig.notifier.rate_limited == 1
    assert "Succeeded" in updates[-1].payload["text"]


async def test_slack_off_without_settings(tmp_path: Path) -> None:
    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    try:
        app = create_app(Settings(data_dir=tmp_path / "var"), deployer=deployer)
        assert SLACK not in app
        assert all(getattr(r, "path", "") != "/slack/events" for r in app.router.resources())
        assert not any(type(n).__module__.startswith("bot.slack") for n in deployer.notifiers)  # no Slack notifier
    finally:
        await deployer.close()


def test_serve_says_whether_slack_is_on() -> None:
    from bot.cli.server_cmd import _slack_line

    assert _slack_line(Settings()) == (
        "Slack: off (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or SLACK_APP_TOKEN for Socket Mode)"
    )
    on = Settings(slack_bot_token="xoxb", slack_signing_secret="s")
    assert _slack_line(on) == "Slack: on (events at /slack/events)"


def _running_doc(deployment_id: str) -> dict[str, Any]:
    """A deployment's document as the notifier hears it, in progress."""
    return {
        "id": deployment_id,
        "application": "app",
        "environment": "staging",
        "status": "InProgress",
        "revision": {"sha256": "ab" * 32, "source": "rev-a", "commit": None},
        "config": "X",
        "created_by": "cli",
        "created_at": 1.0,
        "started_at": 1.0,
        "ended_at": None,
        "error": None,
        "rollback": {"of": None, "by": None},
        "targets": [],
        "traffic": None,
    }


async def test_a_restarted_notifier_keeps_editing_the_same_message(tmp_path: Path) -> None:
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.slack.notifier import SlackNotifier

    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(tmp_path))
    doc = _running_doc("d-RESTART01")
    async with FakeSlack() as slack:
        state = tmp_path / "var" / "slack-threads.json"
        first = SlackNotifier(
            AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url), config, state, clock=FakeClock(auto=True)
        )
        await first.deployment_changed(doc)
        await first.idle()
        await first.close()
        second = SlackNotifier(
            AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url), config, state, clock=FakeClock(auto=True)
        )
        await second.deployment_changed({**doc, "status": "Succeeded", "ended_at": 3.0})
        await second.idle()
        await second.close()
    assert [c.method for c in slack.messages()] == ["chat.postMessage", "chat.update"]
    _parent, edit = slack.messages()
    assert edit.payload["ts"] == "1700000000.000001" and edit.payload["channel"] == "C0DEPLOYS"
    assert "Succeeded" in edit.payload["text"]


async def test_an_answer_can_wait_for_the_thread_being_opened_to_link_to_it(tmp_path: Path) -> None:
    """A thread the notifier has just heard of has no message yet, so no link; ``opened`` waits for its first."""
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.slack.notifier import SlackNotifier

    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(tmp_path))
    doc = _running_doc("d-OPENING01")
    async with FakeSlack() as slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
        notifier = SlackNotifier(client, config, tmp_path / "threads.json", clock=FakeClock(auto=True))
        notifier.know(doc)
        assert notifier.permalink(doc["id"], "acme") is None  # being opened: its first message is not posted yet
        await notifier.opened(doc["id"])
        link = notifier.permalink(doc["id"], "acme")
        await notifier.opened("d-UNKNOWN")  # a deployment it has no thread of: at once
        await notifier.close()
    assert link == "https://acme.slack.com/archives/C0DEPLOYS/p1700000000000001"


async def test_a_rollback_heard_of_first_from_the_deployment_it_rolls_back_is_announced_with_who_asked(
    tmp_path: Path,
) -> None:
    """The rolled-back deployment's document (naming its rollback) can reach the notifier before the rollback's own:
    the thread still says who asked for it, once."""
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.slack.notifier import SlackNotifier

    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(tmp_path))
    original = {**_running_doc("d-ORIGINAL1"), "status": "Succeeded", "ended_at": 2.0, "version": 1}
    rollback = {**_running_doc("d-ROLLBACK1"), "created_by": ROLLBACK_CREATOR, "version": 1}
    rollback["rollback"] = {"of": original["id"], "by": None}
    async with FakeSlack() as slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
        notifier = SlackNotifier(client, config, tmp_path / "threads.json", clock=FakeClock(auto=True))
        await notifier.deployment_changed(original)
        notifier.expect_rollback("app", "staging", "U0ROB")  # a click asks the engine for the rollback
        await notifier.deployment_changed({**original, "rollback": {"of": None, "by": rollback["id"]}, "version": 2})
        await notifier.deployment_changed(rollback)
        notifier.forget_rollback("app", "staging")
        await notifier.idle()
        await notifier.close()
    replies = [c.payload["text"] for c in slack.of("chat.postMessage") if c.payload.get("thread_ts")]
    assert [text for text in replies if "Rollback started" in text] == [
        f":rewind: Rollback started: `{rollback['id']}` by <@U0ROB>"
    ]


async def test_a_broken_slack_never_reaches_the_engine(tmp_path: Path, fake_clock: FakeClock) -> None:
    """A malformed document and an unreachable Slack: the engine's calls return, and what is owed waits for Slack
    (on the notifier's clock), never posted nowhere."""
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.slack.notifier import SlackNotifier

    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(CONFIG, filename="test.yml", base_dir=str(tmp_path))
    dead = AsyncWebClient(token=BOT_TOKEN, base_url="http://127.0.0.1:9/api/", timeout=1, retry_handlers=[])
    notifier = SlackNotifier(dead, config, tmp_path / "threads.json", clock=fake_clock)
    await notifier.deployment_changed({"id": "d-X", "application": "app", "environment": "staging"})  # malformed
    await notifier.deployment_changed(
        {
            "id": "d-Y",
            "application": "app",
            "environment": "staging",
            "status": "Succeeded",
            "targets": [],
            "revision": {},
            "rollback": {},
        }
    )
    await fake_clock.sleeping(1)  # the worker of d-Y waits out the outage
    assert notifier.outage.down and fake_clock.sleepers == [1.0]
    await notifier.close()
    assert notifier.thread_of("d-Y") is None


async def test_read_commands_answer_in_words(rig: Rig) -> None:
    started = await rig.deployer.start(DeployRequest("app", "staging", actor="cli"))
    await rig.final(started["id"])
    answers = {}
    for text in (
        "status",
        f"status {started['id']}",
        "where app",
        "history app staging",
        "plan app to production",
        "lock app production db work",
        "unlock app production",
    ):
        await rig.command(text, user="U0ALICE")
        await rig.settle()
        answers[text] = rig.slack.responses[-1][1]["text"]
    assert started["id"] in answers["status"] and "Succeeded" in answers[f"status {started['id']}"]
    assert (
        answers["where app"].startswith("*app*\n• *staging*: `") and "• *production*: nothing" in answers["where app"]
    )
    assert answers["history app staging"].count("\n") == 0 and "by cli" in answers["history app staging"]
    assert (
        answers["plan app to production"].startswith("*Plan: app → production*")
        and "Batch 1: p1" in answers["plan app to production"]
    )
    assert answers["lock app production db work"] == ":lock: <@U0ALICE> locked app/production: db work"
    assert answers["unlock app production"] == ":unlock: <@U0ALICE> unlocked app/production"
