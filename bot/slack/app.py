"""The Slack front: a slack-bolt AsyncApp on our aiohttp server (``POST /slack/events``) or over Socket Mode.

Every listener acknowledges within Slack's 3 seconds — parse errors and help straight in the ack, everything else
with a one-line "on it" — and only then does the work, in a background task, however long the engine takes. Before
it acknowledges a command that changes something, or any click, the request is stored as an intent keyed by what
Slack sends again on a retry or a replay (the command's ``trigger_id``; the click's user, action, ``action_ts`` and
message): a request already taken is answered with what came of it and never acts twice, however late inside
Slack's 5-minute signature window, while the same words typed again are a new request (bot/slack/intents.py). At
start, intents a previous server took and did not finish are run, and deployments of the last day that have no
thread get one (the notifier's outbox). Signatures are checked by bolt (401 for a bad or stale one).
``authorize=`` hands bolt the bot token directly, so no request waits for an ``auth.test`` round trip.

Socket Mode (``SLACK_APP_TOKEN``, for a server Slack cannot reach): the bot connects out — ``apps.connections.open``
with the app-level token on the same Web API base URL as every other call, then a websocket whose envelopes go
through the same bolt app, acknowledged with their ``envelope_id``. The connection is made in the background, so a
Slack that cannot be reached at start holds neither the server nor HTTP events (the client retries until it
connects); at stop it is closed and every task it ran is awaited (``SocketModeLink``).

The Web API methods called (``chat.postMessage``, ``chat.update``) and the ``/deploy`` command are what
``slack/manifest.yml`` grants and declares; tests/test_slack_manifest.py keeps the two the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
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
from bot.slack.chatops import ChatOps, ClickAsked, CommandAsked, catalog_of
from bot.slack.grammar import Freeze, SlackCommand, Unfreeze, help_text, parse
from bot.slack.notifier import PAGE_ACTION, SlackNotifier
from engine import DeploymentService

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
COMMAND = "/deploy"  # exactly the command slack/manifest.yml declares
APP_TOKEN_PREFIX = "xapp-"  # Socket Mode's app-level tokens (bot tokens are xoxb-)
THREADS_FILE = "slack-threads.json"
CATCH_UP_SECONDS = 24 * 3600.0  # at start, deployments this recent that have no thread get one
CATCH_UP_LIMIT = 500  # ... looking at this many of the newest deployments at most


@dataclass
class SlackFront:
    bolt: AsyncApp
    chatops: ChatOps
    notifier: SlackNotifier
    settings: Settings
    deployer: DeploymentService
    socket_mode: SocketModeLink | None = None  # while the app runs, with SLACK_APP_TOKEN


SLACK = web.AppKey("slack", SlackFront)


def _header(request: AsyncBoltRequest, name: str) -> str | None:
    values = request.headers.get(name.lower()) or []
    return values[0] if values else None


def _raw_body(request: AsyncBoltRequest) -> bytes:
    """The request as Slack sent it: the signed HTTP body, or (Socket Mode: the envelope's payload is JSON, with no
    body of its own) the payload in a canonical form, so a redelivery keys the same."""
    if request.raw_body:
        return request.raw_body.encode()
    return json.dumps(request.body, sort_keys=True, separators=(",", ":")).encode()


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
    """The bolt app with the ``/deploy`` command and the ``deploy.*`` buttons (and the page link's click)."""
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

    @bolt.command(COMMAND)
    async def on_deploy(ack: Any, command: Mapping[str, Any], request: AsyncBoltRequest) -> None:
        text = str(command.get("text") or "")
        try:
            parsed = parse(text, catalog_of(deployer))
        except cmd.ParseError as exc:
            await ack(text=str(exc), response_type="ephemeral")
            return
        if isinstance(parsed, cmd.Help):
            await ack(text=help_text(), response_type="ephemeral")
            return
        asked = CommandAsked(
            text=text,
            user=str(command["user_id"]),
            channel=str(command.get("channel_id") or ""),
            response_url=str(command.get("response_url") or ""),
            trigger_id=str(command.get("trigger_id") or "") or None,
            team_domain=str(command.get("team_domain") or "") or None,
            signed_at=_header(request, "X-Slack-Request-Timestamp"),
            body=_raw_body(request),
        )
        again = await chatops.take_command(parsed, asked)  # stored before the ack; a replay gets what came of it
        await ack(text=again or _ack_text(parsed), response_type="ephemeral")

    @bolt.action(re.compile("^" + re.escape(ACTION_PREFIX)))
    async def on_button(ack: Any, body: Mapping[str, Any], action: Mapping[str, Any]) -> None:
        message = body.get("message") or {}
        container = body.get("container") or {}
        asked = ClickAsked(
            action=str(action["action_id"]).removeprefix(ACTION_PREFIX),
            action_id=str(action["action_id"]),
            value=str(action.get("value") or ""),
            user=str(body["user"]["id"]),
            channel=str((body.get("channel") or {}).get("id") or container.get("channel_id") or ""),
            message_ts=str(message.get("ts") or container.get("message_ts") or ""),
            action_ts=str(action.get("action_ts") or ""),
            response_url=str(body.get("response_url") or ""),
            team_domain=str((body.get("team") or {}).get("domain") or "") or None,
        )
        await chatops.take_click(asked)  # stored before the ack; the same click again is not acted on twice
        await ack()

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
    # No retries inside the client: the notifier's outbox retries on its own clock (bot/slack/outbox.py).
    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, retry_handlers=[])
    config = deployer.config
    notifier = SlackNotifier(
        client,
        config,
        settings.data_dir / THREADS_FILE,
        page_link=lambda deployment_id: page_url(settings, deployment_id, base_url=config.server.url),
        clock=deployer.clock,
        fetch=deployer.get,
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


class SocketModeLink:
    """Slack's Socket Mode for the app's lifetime: connect in the background, close and await every task at stop.

    slack-sdk's client retries a failed connection on its own (every ping interval) and, on close, cancels its tasks
    without awaiting them; awaiting them here is what lets the event loop end with nothing pending."""

    def __init__(self, bolt: AsyncApp, app_token: str) -> None:
        from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

        # The handler's Web API client is the bolt app's: apps.connections.open goes to SLACK_API_URL too.
        self.handler = AsyncSocketModeHandler(bolt, app_token=app_token)
        self.app_token = app_token
        self.connected = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.app_token.startswith(APP_TOKEN_PREFIX):  # Slack would refuse it, and the client retry forever
            log.error(
                "Slack Socket Mode off: SLACK_APP_TOKEN is not an app-level token (%s…); make one under Basic "
                "Information → App-Level Tokens with the scope connections:write",
                APP_TOKEN_PREFIX,
            )
            return
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        await self.handler.connect_async()  # returns once connected (or the client was closed)
        if not self.handler.client.closed:
            self.connected.set()
            log.info("Slack Socket Mode connected")

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        client = self.handler.client
        try:
            await self.handler.close_async()  # sends the websocket's close frame, closes the HTTP session
        except Exception as exc:  # a connection already broken: nothing left to say goodbye to
            log.info("Slack Socket Mode closed uncleanly: %s: %s", type(exc).__name__, exc)
        running = [client.message_processor, client.current_session_monitor, client.message_receiver]
        await asyncio.gather(*(task for task in running if task is not None), return_exceptions=True)


async def _slack_lifetime(app: web.Application) -> AsyncIterator[None]:
    front = app[SLACK]
    notifiers = front.deployer.notifiers
    notifiers.append(front.notifier)
    await front.chatops.resume()  # listed before the server takes requests, so nothing is run twice
    front.chatops.spawn(_catch_up_later(front))
    socket_mode = None
    if front.settings.slack_app_token:
        socket_mode = front.socket_mode = SocketModeLink(front.bolt, front.settings.slack_app_token)
        socket_mode.start()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            notifiers.remove(front.notifier)
        if socket_mode is not None:
            await socket_mode.close()  # no new requests from here on
        await front.chatops.close()
        await front.notifier.close()


async def _catch_up_later(front: SlackFront) -> None:
    await catch_up(front.deployer, front.notifier)


async def catch_up(deployer: DeploymentService, notifier: SlackNotifier) -> list[str]:
    """The outbox after a restart: deployments of the last day without a thread get one (the thread store is the
    record of what was posted). The ids given a thread."""
    since = deployer.clock.now() - CATCH_UP_SECONDS
    rows = reversed(await deployer.store.list_deployments(limit=CATCH_UP_LIMIT))  # oldest first
    recent = [r for r in rows if float(r.get("created_at") or 0) >= since and not notifier.has_thread(str(r["id"]))]
    docs = []
    for row in recent:
        try:
            docs.append(await deployer.get(str(row["id"])))
        except Exception:
            log.exception("could not read %s to give it a Slack thread", row["id"])
    taken = notifier.catch_up(docs)
    if taken:
        log.info("Slack: giving %d deployment(s) of the last day their thread", len(taken))
    return taken
