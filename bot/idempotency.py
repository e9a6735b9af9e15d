"""``Idempotency-Key`` on ``/api/v1``: a retried request is answered with the first one's answer, never run twice.

A client that is not sure its request arrived (the connection dropped before the answer) sends it again with the
same key. The first request with a key becomes a stored intent (engine/core/intents.py) before the route runs,
under ``api:<user>:<key>`` — keys are per user, so one caller can never read another's answer. What happens next:

- the route's answer (any status below 500) is stored with the intent; a repeat gets exactly that answer again,
  with ``Idempotent-Replayed: true``, and nothing runs;
- a repeat while the first is still running gets 409 ``RequestInProgress`` (``Retry-After: 1``);
- the same key with a different request (method, path, query or JSON body) is refused with 422
  ``IdempotencyKeyReused``, naming what it was first used for;
- a 5xx answer, or a first request cut off by a server restart (its intent still "running" under another server
  process), is not final: a repeat runs the route again (the engine's own start is idempotent for a revision
  already going to its group).

Reads (GET, HEAD, OPTIONS) ignore the header. Requests without it behave as before. The ``deploybot`` CLI sends a
fresh key with every request that changes something and re-sends it when the connection drops (bot/client.py).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from bot.http import DEPLOYER, HttpProblem, actor_of, json_errors
from engine import IntentState

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces (what the IETF draft's clients send)
MAX_STORED_BODY = 1024**2  # bytes of an answer kept for replay; a larger answer is replayed as its status only
_READS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _fingerprint(request: web.Request) -> str:
    """What makes two requests "the same request": method, path with query, and a JSON body's content. Uploads
    (multipart, octet-stream) are streamed by their route, so their bytes are not read here."""
    digest = hashlib.sha256(f"{request.method} {request.path_qs}".encode())
    if request.content_type == "application/json" and request.can_read_body:
        digest.update(b"\0" + await request.read())  # aiohttp keeps the bytes: the route reads them again
    return digest.hexdigest()


def _replay(outcome: dict[str, Any]) -> web.Response:
    response = web.Response(
        status=int(outcome["status"]),
        body=str(outcome.get("body") or "").encode(),
        content_type=str(outcome.get("content_type") or "application/json"),
    )
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _answer_of(response: web.StreamResponse, server: str) -> dict[str, Any]:
    body = response.body if isinstance(response, web.Response) else None
    kept = bytes(body) if isinstance(body, bytes | bytearray) and len(body) <= MAX_STORED_BODY else b""
    return {
        "status": response.status,
        "content_type": response.content_type,
        "body": kept.decode("utf-8", "replace"),
        "server": server,
    }


def idempotent_requests(server: str | None = None) -> Middleware:
    """The middleware taking a request that carries ``Idempotency-Key`` once; put it inside the auth middleware
    (the key belongs to a user). ``server`` names this server's life (a fresh one per app unless given): a request
    left "running" by another life was cut off by a restart, and a repeat runs it again."""
    this_server = server or uuid.uuid4().hex

    @web.middleware
    async def idempotent(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _take_once(request, handler, this_server)

    return idempotent


async def _take_once(request: web.Request, handler: Handler, this_server: str) -> web.StreamResponse:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or request.method in _READS:
        return await handler(request)
    if not KEY_PATTERN.match(key):
        raise HttpProblem(
            400,
            "BadIdempotencyKey",
            f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters without spaces",
            usage=f"{IDEMPOTENCY_HEADER}: <a unique value per request, e.g. a UUID>",
        )
    actor = actor_of(request)
    store, clock = request.app[DEPLOYER].store, request.app[DEPLOYER].clock
    fingerprint = await _fingerprint(request)
    asked = {"method": request.method, "path": request.path_qs, "fingerprint": fingerprint, "server": this_server}
    intent_key = f"api:{actor}:{key}"
    row, added = await store.add_intent(
        intent_key,
        source="api",
        kind="request",
        payload=asked,
        at=clock.now(),
        actor=actor,
        state="running",
    )
    if not added:
        first = row["payload"]
        if first.get("fingerprint") != fingerprint:
            raise HttpProblem(
                422,
                "IdempotencyKeyReused",
                f"{IDEMPOTENCY_HEADER} {key!r} was first used for {first.get('method')} {first.get('path')}"
                " with a different request; use a new key for a new request",
                first_request=f"{first.get('method')} {first.get('path')}",
            )
        outcome = row.get("outcome") or {}
        if row["state"] == IntentState.DONE:
            return _replay(outcome)
        running_on = outcome.get("server") or first.get("server")
        running_here = row["state"] == IntentState.RUNNING and running_on == this_server
        moved = None
        if not running_here:
            moved = await store.move_intent(
                intent_key, "running", at=clock.now(), only_from=[row["state"]], outcome={"server": this_server}
            )
        if moved is None:
            raise HttpProblem(
                409,
                "RequestInProgress",
                f"the request with {IDEMPOTENCY_HEADER} {key!r} is still running; ask again for its answer",
                headers={"Retry-After": "1"},
            )
    try:
        response = await json_errors(request, handler)  # errors become their JSON answers, which are kept too
    except BaseException:
        await store.move_intent(intent_key, "failed", at=clock.now(), outcome={"status": 500})
        raise
    answer = _answer_of(response, this_server)
    final = response.status < 500
    await store.move_intent(intent_key, "done" if final else "failed", at=clock.now(), outcome=answer)
    return response
