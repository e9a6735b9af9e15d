"""Helpers for the Slack tests: really signed slash-command and button requests, scripted agents, and ``SlackRig``:
the real bolt app and Deployer with a fake Slack, whose buttons are clicked as the thread shows them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientSession
from conftest import HANG_GUARD, eventually
from fake_slack import FakeSlack
from slack_sdk.signature import SignatureVerifier

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token"
TEAM_DOMAIN = "example"
_serial = itertools.count(1)


def new_trigger_id() -> str:
    """Slack's trigger ids are unique per invocation: ``<digits>.<digits>.<hex>``."""
    return f"{next(_serial)}.{int(time.time())}.{time.monotonic_ns():x}"


def signed(body: str, *, ts: float | None = None, secret: str = SECRET, retry: int | None = None) -> dict[str, str]:
    stamp = str(int(ts if ts is not None else time.time()))
    headers = {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if retry is not None:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers


def slash_body(
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0DEPLOYS",
    response_url: str = "",
    trigger_id: str | None = None,
) -> str:
    """A slash command's form body; each call is a new invocation (its own ``trigger_id``) unless one is given."""
    return urlencode(
        {
            "token": "unused",
            "team_id": "T0TEAM",
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel,
            "channel_name": "deploys",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/deploy",
            "text": text,
            "api_app_id": "A0APP",
            "response_url": response_url,
            "trigger_id": trigger_id or new_trigger_id(),
        }
    )


def button_body(
    action: str,
    value: str,
    *,
    user: str = "U0ALICE",
    response_url: str = "",
    message_ts: str = "1.1",
    action_ts: str | None = None,
) -> str:
    """A click on the button ``deploy.<action>`` whose ``value`` is what the message carried (the rendered state, or
    a bare deployment id as older messages had); each call is a new click (its own ``action_ts``) unless given."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": "T0TEAM", "domain": TEAM_DOMAIN},
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "token": "unused",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": "C0DEPLOYS", "is_ephemeral": False},
        "trigger_id": new_trigger_id(),
        "channel": {"id": "C0DEPLOYS", "name": "deploys"},
        "message": {"ts": message_ts, "text": "deployment"},
        "response_url": response_url,
        "actions": [
            {
                "type": "button",
                "action_id": f"deploy.{action}",
                "block_id": "deployment-actions",
                "value": value,
                "text": {"type": "plain_text", "text": action},
                "action_ts": action_ts or f"{time.time():.6f}{next(_serial)}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


class ScriptedAgents:
    """One task per host, long-polling the real Fleet port and answering every command with success (or
    ``fail`` for the given (host, event) pairs)."""

    def __init__(self, deployer: Any, hosts: list[str], *, fail: set[tuple[str, str]] | None = None) -> None:
        self.deployer, self.fail = deployer, fail or set()
        self.tasks = [asyncio.ensure_future(self._agent(h)) for h in hosts]

    async def _agent(self, host: str) -> None:
        fleet = self.deployer.fleet
        while True:
            command = await fleet.next_command(host, wait=0.5)
            if command is None:
                continue
            failed = (host, command["event"]) in self.fail
            result = {"status": "Failed", "error_code": 4, "message": "script failed"} if failed else {}
            result = result or {"status": "Succeeded"}
            await fleet.report_result(host, command["id"], {**result, "log_tail": f"{host} {command['event']} output"})

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- a deploybot with Slack on, for one test ---------------------------------------------------------------------

APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: VERSION\n    destination: /opt/app\n"
FINAL = ("Succeeded", "Failed", "Stopped")


def make_revision(root: Path, name: str, version: str) -> Path:
    path = root / name
    if not path.exists():
        path.mkdir()
        (path / "appspec.yml").write_text(APPSPEC)
        (path / "VERSION").write_text(version)
    return path


def texts(blocks: Any) -> str:
    """Every text in a Block Kit message, flattened, for assertions."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                out.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(blocks)
    return "\n".join(out)


def buttons_of(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}


class SlackRig:
    """The real bolt app on our aiohttp server (signed requests in), a real Deployer on SQLite, and a fake Slack.

    Clicks use the buttons of the thread's parent message as the fake Slack last received it, as a person would."""

    def __init__(self, slack: FakeSlack, deployer: Any, url: str, session: ClientSession, app: Any, root: Path):
        self.slack, self.deployer, self.url, self.session, self.app, self.root = (
            slack,
            deployer,
            url,
            session,
            app,
            root,
        )

    @property
    def front(self) -> Any:
        from bot.slack.app import SLACK

        return self.app[SLACK]

    @property
    def notifier(self) -> Any:
        return self.front.notifier

    async def post(self, body: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """Send a signed request: the HTTP status and what Slack is acknowledged with (the ack's text)."""
        headers = headers if headers is not None else signed(body)
        async with self.session.post(self.url + "/slack/events", data=body, headers=headers) as response:
            raw = await response.text()
        try:
            return response.status, str(json.loads(raw)["text"])
        except (ValueError, KeyError, TypeError):
            return response.status, raw

    async def command(self, text: str, *, user: str = "U0ALICE", reply_to: str = "cmd") -> str:
        """Send ``/deploy text``; the acknowledgement's text."""
        status, answer = await self.post(slash_body(text, user=user, response_url=self.slack.response_url(reply_to)))
        assert status == 200, answer
        return answer

    def replies(self, reply_to: str) -> list[str]:
        """What was answered at a response_url, in order."""
        return [str(body.get("text")) for name, body in self.slack.responses if name == reply_to]

    async def answered(self, reply_to: str, count: int = 1) -> list[str]:
        await eventually(lambda: len(self.replies(reply_to)) >= count, f"{count} answer(s) at {reply_to}")
        return self.replies(reply_to)

    async def settle(self) -> None:
        """Until every request taken so far has been acted on."""
        await self.front.chatops.drain(HANG_GUARD)

    async def final(self, deployment_id: str) -> dict[str, Any]:
        async with asyncio.timeout(HANG_GUARD):
            while True:
                doc = await self.deployer.watch(deployment_id, after=0, timeout=0.2)
                if doc["status"] in FINAL:
                    return dict(doc)

    async def deployed(self, app: str, env: str, revision: str = "rev-a", *, actor: str = "cli") -> dict[str, Any]:
        from engine import DeployRequest

        doc = await self.deployer.start(DeployRequest(app, env, revision=str(self.root / revision), actor=actor))
        done = await self.final(doc["id"])
        assert done["status"] == "Succeeded", done
        return done

    # -- the thread as Slack has it

    def parent_ts(self, deployment_id: str) -> str | None:
        where = self.notifier.thread_of(deployment_id)
        return where[1] if where else None

    def parent(self, deployment_id: str) -> list[dict[str, Any]]:
        """The thread's parent message as last posted or edited (Slack took it)."""
        ts = self.parent_ts(deployment_id)
        versions = [
            c.payload["blocks"]
            for c in self.slack.calls
            if "_answered" not in c.payload
            and (
                (c.method == "chat.postMessage" and "thread_ts" not in c.payload and deployment_id in c.payload["text"])
                or (c.method == "chat.update" and c.payload.get("ts") == ts)
            )
        ]
        assert versions, f"no parent message for {deployment_id}"
        return list(versions[-1])

    def thread(self, deployment_id: str) -> list[str]:
        """The replies in the deployment's thread, in order."""
        ts = self.parent_ts(deployment_id)
        return [c.payload["text"] for c in self.slack.taken("chat.postMessage") if c.payload.get("thread_ts") == ts]

    async def showing(self, deployment_id: str, status: str) -> list[dict[str, Any]]:
        """The parent message once it shows ``status``."""
        from bot.messages import STATUS_ICON

        def shows() -> bool:
            try:
                return f"*Status*\n{STATUS_ICON.get(status, '')} {status}" in texts(self.parent(deployment_id))
            except AssertionError:
                return False

        await eventually(shows, f"the thread of {deployment_id} showing {status}")
        return self.parent(deployment_id)

    def button(self, deployment_id: str, action: str) -> dict[str, Any]:
        found = buttons_of(self.parent(deployment_id))
        assert f"deploy.{action}" in found, f"no {action} button on {deployment_id}: {sorted(found)}"
        return found[f"deploy.{action}"]

    async def click(
        self,
        deployment_id: str,
        action: str,
        *,
        user: str = "U0ALICE",
        reply_to: str = "click",
        action_ts: str | None = None,
    ) -> None:
        """Click the button the thread's parent message shows now."""
        value = str(self.button(deployment_id, action)["value"])
        body = button_body(
            action,
            value,
            user=user,
            response_url=self.slack.response_url(reply_to),
            message_ts=self.parent_ts(deployment_id) or "1.1",
            action_ts=action_ts,
        )
        status, answer = await self.post(body)
        assert (status, answer) == (200, ""), answer


@contextlib.asynccontextmanager
async def open_slack_rig(
    root: Path,
    config: str,
    *,
    agents: bool = True,
    clock: Any = None,
    slack: FakeSlack | None = None,
    min_edit_interval: float = 0.0,
    notifier_clock: Any = None,
) -> AsyncIterator[SlackRig]:
    """deploybot with Slack on for ``config`` (its state under ``root/var``, so a second rig on the same root is a
    restart); ``agents``: every host answers at once, else none ever answers; ``clock``: the engine's Clock (the
    notifier's too); ``notifier_clock``: the notifier's alone (its outbox and edit pacing); ``slack``: a fake Slack
    that outlives this rig."""
    from aiohttp.test_utils import TestServer

    from bot.app import create_app
    from bot.assembly import assemble_deployer
    from bot.settings import Settings
    from engine import parse_config

    make_revision(root, "rev-a", "1")
    make_revision(root, "rev-b", "2")
    deployer = await assemble_deployer(
        parse_config(config, filename="test.yml", base_dir=str(root)), data_dir=root / "var", clock=clock
    )
    scripted = ScriptedAgents(deployer, list(deployer.config.hosts) if agents else [])
    async with contextlib.AsyncExitStack() as stack:
        if slack is None:
            slack = await stack.enter_async_context(FakeSlack())
        settings = Settings(
            data_dir=root / "var",
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SECRET,
            slack_api_url=slack.api_url,
            pages_secret="slack-rig-pages-secret",
        )
        app = create_app(settings, deployer=deployer)
        from bot.slack.app import SLACK

        notifier = app[SLACK].notifier
        notifier.min_edit_interval = min_edit_interval
        if notifier_clock is not None:
            notifier.clock = notifier.outage.clock = notifier_clock
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                yield SlackRig(slack, deployer, str(server.make_url("")).rstrip("/"), session, app, root)
        finally:
            await server.close()
            await scripted.close()
            await deployer.close()
