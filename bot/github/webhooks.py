"""POST /github/webhook: verify with gidgethub, store what the delivery asks for, then answer.

GitHub gives a webhook 10 s and retries (or lets people redeliver) what it thinks failed. The request checks the
signature (``X-Hub-Signature-256``; 401 when missing or wrong, and nothing is recorded), then hands the event to
the front's ``receive``, which stores its intents (merges, GitHub deployments, re-opened merges) and the delivery
before the answer goes out:

    202 {"queued": true}                a new delivery: its work runs from the store
    202 {"retrying": [keys]}            a redelivery of a delivery whose merge or deployment failed: tried again
    200 {"duplicate": true}             a redelivery of one that is done, or still going

The gidgethub ``Router`` below handles what needs no durable record (the AppSpec check of a pull request, the 👀
on a ``/deploy`` comment) in the front's background worker, which hands itself to the handlers as a
``WebhookFront``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, routing, sansio

from bot.github.checks import check_pull_request
from bot.github.client import GitHubClient
from bot.github.comments import react
from bot.github.intents import comment_intent, repository_of
from bot.github.rules import applications_of
from engine import EngineConfig, Platform

log = logging.getLogger(__name__)

router = routing.Router()
_HEADERS = ("content-type", "x-github-event", "x-github-delivery", "x-hub-signature-256")


class Receipt(StrEnum):
    QUEUED = "queued"
    RETRYING = "retrying"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Received:
    receipt: Receipt
    intents: tuple[str, ...] = ()  # the keys it made or re-opened (retried, for a redelivery)


class WebhookFront(Protocol):
    """What the webhook request and the event handlers need of the GitHub front."""

    @property
    def secret(self) -> str | None: ...

    @property
    def config(self) -> EngineConfig: ...

    @property
    def client(self) -> GitHubClient: ...

    async def receive(self, event: sansio.Event) -> Received: ...


def webhook_handler(front: WebhookFront) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``POST /github/webhook`` handler of ``front``."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        # Only the sha256 signature is passed on: gidgethub would otherwise accept a sha1-only request.
        headers = {name: request.headers[name] for name in _HEADERS if name in request.headers}
        try:
            event = sansio.Event.from_http(headers, body, secret=front.secret)
        except ValidationFailure as exc:
            return web.json_response({"error": f"bad webhook signature: {exc}"}, status=401)
        except RecursionError:  # signed, so from GitHub or the secret's holder, but still never a 500
            return web.json_response({"error": "not a GitHub webhook: the JSON nests too deeply"}, status=400)
        except (BadRequest, KeyError, ValueError) as exc:
            return web.json_response({"error": f"not a GitHub webhook: {exc!r}"}, status=400)
        if event.event == "ping":
            return web.json_response({"ok": True, "pong": True})
        if not isinstance(event.data, dict):
            return web.json_response({"error": "not a GitHub webhook: the body is not a JSON object"}, status=400)
        received = await front.receive(event)
        if received.receipt is Receipt.DUPLICATE:
            return web.json_response({"ok": True, "duplicate": True})
        if received.receipt is Receipt.RETRYING:
            return web.json_response({"ok": True, "retrying": list(received.intents)}, status=202)
        return web.json_response({"ok": True, "queued": True}, status=202)

    return receive


async def on_pull_request_changed(event: sansio.Event, front: WebhookFront, *args: Any, **kwargs: Any) -> None:
    repository = repository_of(event.data)
    apps = applications_of(front.config, repository)
    platform = apps[0].platform if apps else Platform.SERVER
    gh = await front.client.api(repository)
    await check_pull_request(gh, repository, event.data["pull_request"], platform=platform)


async def on_comment_created(event: sansio.Event, front: WebhookFront, *args: Any, **kwargs: Any) -> None:
    """👀 on a ``/deploy`` comment at once; its work runs from the intent ``receive`` stored."""
    if comment_intent(front.config, event.data) is not None:
        await react(front.client, repository_of(event.data), int(event.data["comment"]["id"]))


for _action in ("opened", "reopened", "synchronize", "ready_for_review"):
    router.add(on_pull_request_changed, "pull_request", action=_action)
router.add(on_comment_created, "issue_comment", action="created")
