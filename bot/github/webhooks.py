"""POST /github/webhook: verify with gidgethub, remember the delivery, answer, and let a worker act on it.

GitHub gives a webhook 10 s and retries (or lets people redeliver) what it thinks failed, so the request only
checks the signature (``X-Hub-Signature-256``; 401 when missing or wrong, and nothing is recorded), records the
``X-GitHub-Delivery`` id (a delivery seen before is answered 200 and dropped) and enqueues the event. The gidgethub
``Router`` handlers below run in the background worker of ``GitHubFront`` (bot/github/front.py), which hands itself
to them: they and the request see it only as a ``WebhookFront``, so this module does not depend on the front.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, routing, sansio

from bot.github.checks import check_pull_request
from bot.github.client import GitHubClient
from bot.github.triggers import DeployTriggers, applications_of
from engine import EngineConfig, Platform

log = logging.getLogger(__name__)

router = routing.Router()
_HEADERS = ("content-type", "x-github-event", "x-github-delivery", "x-hub-signature-256")


class WebhookFront(Protocol):
    """What the webhook request and the event handlers need of the GitHub front."""

    @property
    def secret(self) -> str | None: ...

    @property
    def config(self) -> EngineConfig: ...

    @property
    def client(self) -> GitHubClient: ...

    @property
    def triggers(self) -> DeployTriggers: ...

    async def first_delivery(self, delivery_id: str) -> bool: ...

    def enqueue(self, event: sansio.Event) -> None: ...


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
        except (BadRequest, KeyError, ValueError) as exc:
            return web.json_response({"error": f"not a GitHub webhook: {exc!r}"}, status=400)
        if event.event == "ping":
            return web.json_response({"ok": True, "pong": True})
        if not await front.first_delivery(event.delivery_id):
            return web.json_response({"ok": True, "duplicate": True})
        front.enqueue(event)
        return web.json_response({"ok": True, "queued": True}, status=202)

    return receive


def _repository(event: sansio.Event) -> str:
    return str(event.data["repository"]["full_name"])


def _sender(event: sansio.Event) -> str:
    return str((event.data.get("sender") or {}).get("login") or "github")


@router.register("push")
async def on_push(event: sansio.Event, front: WebhookFront, *args: Any, **kwargs: Any) -> None:
    data = event.data
    ref, sha = str(data.get("ref") or ""), str(data.get("after") or "")
    if not ref.startswith("refs/heads/") or data.get("deleted") or not sha.strip("0"):
        return  # a tag, or a deleted branch
    actor = (data.get("pusher") or {}).get("name") or _sender(event)
    await front.triggers.merged(_repository(event), ref.removeprefix("refs/heads/"), sha, str(actor))


@router.register("pull_request", action="closed")
async def on_pull_request_closed(event: sansio.Event, front: WebhookFront, *args: Any, **kwargs: Any) -> None:
    pull = event.data["pull_request"]
    if not pull.get("merged") or not pull.get("merge_commit_sha"):
        return
    actor = (pull.get("merged_by") or {}).get("login") or _sender(event)
    await front.triggers.merged(_repository(event), str(pull["base"]["ref"]), str(pull["merge_commit_sha"]), actor)


async def on_pull_request_changed(event: sansio.Event, front: WebhookFront, *args: Any, **kwargs: Any) -> None:
    repository = _repository(event)
    apps = applications_of(front.config, repository)
    platform = apps[0].platform if apps else Platform.SERVER
    gh = await front.client.api(repository)
    await check_pull_request(gh, repository, event.data["pull_request"], platform=platform)


for _action in ("opened", "reopened", "synchronize", "ready_for_review"):
    router.add(on_pull_request_changed, "pull_request", action=_action)


@router.register("deployment", action="created")
async def on_deployment(event: sansio.Event, front: WebhookFront, *args: Any, **kwargs: Any) -> None:
    sender = (event.data.get("sender") or {}).get("login")
    await front.triggers.github_deployment(
        _repository(event), event.data["deployment"], str(sender) if sender else None
    )
