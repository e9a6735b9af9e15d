"""The Slack front: a slack-bolt AsyncApp on our aiohttp server (``POST /slack/events``) or over Socket Mode.

Every listener acknowledges first — parse errors and help straight in the ack, everything else with a one-line
"on it" — and only then hands the work to ChatOps in a background task, so Slack's 3-second limit holds however
long the engine takes. Slack re-sends a request it thinks we missed (``X-Slack-Retry-Num``); a retry, or the same
command from the same person in the same channel within ``DUPLICATE_WINDOW_SECONDS``, never starts anything twice.
Signatures are checked by bolt (401 for a bad or stale one). ``authorize=`` hands bolt the bot token directly, so no
request waits for an ``auth.test`` round trip.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.web.async_client import AsyncWebClient

from bot import commands as cmd
from bot.messages import ACTION_PREFIX
from bot.pages.links import page_url
from bot.settings import Settings
from bot.slack.chatops import ChatOps, Reply
from bot.slack.grammar import Freeze, SlackCommand, Unfreeze, help_text, parse
from bot.slack.notifier import PAGE_ACTION, SlackNotifier
from engine import DeploymentService

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
THREADS_FILE = "slack-threads.json"
DUPLICATE_WINDOW_SECONDS = 30.0
_MUTATING = (
    *(cmd.Deploy, cmd.Promote, cmd.Rollback, cmd.Control, cmd.Decide, cmd.Lock, cmd.Unlock),
    *(Freeze, Unfreeze),
)


@dataclass
class SlackFront:
    bolt: AsyncApp
    chatops: ChatOps
    notifier: SlackNotifier
    settings: Settings
    deployer: DeploymentService


SLACK = web.AppKey("slack", SlackFront)


class RecentRequests:
    """Keys seen in the last ``window`` seconds: Slack's retries and double submissions are answered once."""

    def __init__(self, window: float = DUPLICATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._seen: dict[tuple[str, ...], float] = {}

    def first_time(self, key: tuple[str, ...]) -> bool:
        now = time.monotonic()
        if len(self._seen) > 1000:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        seen = self._seen.get(key)
        if seen is not None and now - seen < self.window:
            return False
        self._seen[key] = now
        return True


def catalog_of(deployer: DeploymentService) -> dict[str, list[str]]:
    return {app["name"]: [env["name"] for env in app["environments"]] for app in deployer.applications()}


def _header(request: AsyncBoltRequest, name: str) -> str | None:
    values = request.headers.get(name.lower()) or []
    return values[0] if values else None


def _reply_via(respond: Any) -> Reply:
    async def reply(text: str, *, in_channel: bool = False) -> None:
        await respond(text=text, response_type="in_channel" if in_channel else "ephemeral", replace_original=False)

    return reply


def _ack_text(command: SlackCommand) -> str:
    match command:
        case cmd.Deploy(app, env, ref, _):
            return f"Deploying {app}{f'@{ref}' if ref else ''} to {env}…"
        case cmd.Promote(app, target, _):
            return f"Promoting {app} to {target}…"
        case cmd.Rollback(app, env):
            return f"Rolling back {app} in {env}…"
        case cmd.Control(action, deployment_id) | cmd.Decide(action, deployment_id):
            return f"{action.capitalize()} `{deployment_id}`…"
        case cmd.Lock(app, env) | cmd.Unlock(app, env):
            return f"{type(command).__name__} {app}/{env}…"
        case Freeze():
            return "Freezing every environment…"
        case Unfreeze():
            return "Lifting the freeze…"
    return "Looking…"


def build_bolt_app(
    settings: Settings, chatops: ChatOps, client: AsyncWebClient, deployer: DeploymentService
) -> AsyncApp:
    """The bolt app with the ``/deploy`` command and the ``deploy.*`` buttons."""
    bot_token = settings.slack_bot_token

    async def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=bot_token, user_id=user_id)

    bolt = AsyncApp(
        client=AsyncWebClient(base_url=client.base_url),  # listeners get a client with the token from authorize
        signing_secret=settings.slack_signing_secret or "",
        request_verification_enabled=bool(settings.slack_signing_secret),
        authorize=authorize,
        process_before_response=False,
    )
    recent = RecentRequests()

    @bolt.command(re.compile(r"^/deploy"))
    async def on_deploy(ack: Any, command: Mapping[str, Any], request: AsyncBoltRequest, respond: Any) -> None:
        text, user, channel = str(command.get("text") or ""), str(command["user_id"]), str(command["channel_id"])
        key = (channel, user, " ".join(text.casefold().split()))
        first = recent.first_time(key)
        if not first and _header(request, "X-Slack-Retry-Num") is not None:
            await ack()  # Slack re-sending what we already took: answered, nothing started
            return
        try:
            parsed = parse(text, catalog_of(deployer))
        except cmd.ParseError as exc:
            await ack(text=str(exc), response_type="ephemeral")
            return
        if isinstance(parsed, cmd.Help):
            await ack(text=help_text(), response_type="ephemeral")
            return
        if not first and isinstance(parsed, _MUTATING):
            await ack(text=f"Already on it: `/deploy {text}` was asked a moment ago; nothing new started.")
            return
        await ack(text=_ack_text(parsed), response_type="ephemeral")
        chatops.spawn(chatops.run_command(parsed, user=user, channel=channel, reply=_reply_via(respond)))

    @bolt.action(re.compile("^" + re.escape(ACTION_PREFIX)))
    async def on_button(ack: Any, body: Mapping[str, Any], action: Mapping[str, Any], respond: Any) -> None:
        await ack()
        user = str(body["user"]["id"])
        if not recent.first_time(("action", user, str(action.get("action_ts")), str(action.get("action_id")))):
            return
        name = str(action["action_id"]).removeprefix(ACTION_PREFIX)
        chatops.spawn(chatops.click(name, str(action.get("value")), user=user, reply=_reply_via(respond)))

    @bolt.action(PAGE_ACTION)
    async def on_page_link(ack: Any) -> None:
        await ack()  # the browser opens the link; Slack only wants to hear the click was received

    return bolt


async def slack_events(request: web.Request) -> web.StreamResponse:
    bolt = request.app[SLACK].bolt
    return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))


def setup_slack(app: web.Application, settings: Settings, deployer: DeploymentService) -> bool:
    """Mount the Slack front on ``app`` when Slack is configured; False (and nothing mounted) otherwise.

    HTTP events at POST /slack/events when SLACK_SIGNING_SECRET is set; Socket Mode when SLACK_APP_TOKEN is set.
    The notifier joins the Deployer's notifiers for the app's lifetime (a ``cleanup_ctx``).
    """
    if not settings.slack_enabled:
        return False
    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    config = deployer.config
    notifier = SlackNotifier(
        client,
        config,
        settings.data_dir / THREADS_FILE,
        page_link=lambda deployment_id: page_url(settings, deployment_id, base_url=config.server.url),
    )
    chatops = ChatOps(deployer, notifier)
    bolt = build_bolt_app(settings, chatops, client, deployer)
    app[SLACK] = SlackFront(bolt, chatops, notifier, settings, deployer)
    if settings.slack_signing_secret:
        app.router.add_post(EVENTS_PATH, slack_events)
    app.cleanup_ctx.append(_slack_lifetime)
    log.info(
        "Slack on: %s",
        " and ".join(
            ([f"events at {EVENTS_PATH}"] if settings.slack_signing_secret else [])
            + (["Socket Mode"] if settings.slack_app_token else [])
        ),
    )
    return True


async def _slack_lifetime(app: web.Application) -> AsyncIterator[None]:
    front = app[SLACK]
    notifiers = front.deployer.notifiers
    notifiers.append(front.notifier)
    socket_mode = None
    if front.settings.slack_app_token:
        from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

        socket_mode = AsyncSocketModeHandler(front.bolt, app_token=front.settings.slack_app_token)
        try:
            await socket_mode.connect_async()
        except Exception as exc:  # Slack unreachable: HTTP events (if any) still work; say why
            log.error("Slack Socket Mode could not connect: %s", exc)
            socket_mode = None
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            notifiers.remove(front.notifier)
        if socket_mode is not None:
            with contextlib.suppress(Exception):
                await socket_mode.close_async()
        await front.chatops.close()
        await front.notifier.close()
