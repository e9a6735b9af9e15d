"""The agent protocol under ``/agent/v1`` (DESIGN §3.2, contracts "Agent protocol"): HTTP in, one Fleet call out.

Each agent authenticates with its own token, which the Fleet maps to a host name; every route acts for that host
only, so an agent can neither take nor report another host's commands (the Fleet answers NotFound → 404), nor
download a revision none of its host's deployments uses (404 as for a bundle that does not exist).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.http import HttpProblem, bad_request, bearer_token, json_errors, json_object, json_response
from bot.logs import annotate as annotate_log
from engine import AgentFleet, CommandBody, HeartbeatBody, ResultBody, RevisionArchive, ScriptErrorCode

MAX_POLL_SECONDS = 60.0
DEFAULT_POLL_SECONDS = 25.0
MAX_LOG_TAIL_BYTES = 4096
RESULT_STATUSES = ("Succeeded", "Failed")
SHUTDOWN_CLAIM_GRACE = 0.2
MAX_NEXT_SECONDS = 1.0
MAX_COMMAND_ID = 2**63 - 1
"""The largest id the store can hold (SQLite's INTEGER); a longer one in a route is no command."""
MAX_EPOCH = 32_503_680_000
"""2999-12-31: a result's times past it are no times (and past year 9999 nothing can show them as a date)."""
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
"""What a heartbeat may carry: an agent reports a handful of short tags and its version."""

FLEET = web.AppKey("agent_fleet", AgentFleet)
BUNDLES = web.AppKey("agent_bundles", RevisionArchive)
HOST = web.RequestKey("agent_host", str)
CLOSING = web.AppKey("agent_closing", asyncio.Event)

_RESULT_USAGE = (
    'POST /agent/v1/commands/{id}/result[?next=SECONDS[&runs=1]|?then=ID] {"status": "Succeeded"|"Failed",'
    ' "error_code": 0..7, "message": str, "log_tail": str, "started_at": epoch, "ended_at": epoch}'
)
_HEARTBEAT_USAGE = (
    'POST /agent/v1/heartbeat {"tags": {...}, "version": str, "running_command": int|null, "capabilities": [str]}'
)
_POLL_USAGE = "GET /agent/v1/commands/next?wait=SECONDS (at most 60)[&runs=1]"


@web.middleware
async def _require_agent_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = bearer_token(request)
    host = request.app[FLEET].authenticate(token) if token else None
    if host is None:
        raise HttpProblem(401, "Unauthorized", "unknown agent token: use the token `deploybot serve` issued")
    request[HOST] = host
    annotate_log(host=host)
    return await handler(request)


def _clip_tail(text: str) -> str:
    """The protocol allows 4096 bytes of log tail; keep the end, which is where the error usually is."""
    data = text.encode("utf-8", errors="replace")
    return text if len(data) <= MAX_LOG_TAIL_BYTES else data[-MAX_LOG_TAIL_BYTES:].decode("utf-8", "ignore")


def _result(body: Mapping[str, Any]) -> ResultBody:
    status = body.get("status")
    if status not in RESULT_STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(RESULT_STATUSES)}", _RESULT_USAGE)
    error_code = body.get("error_code", 0)
    lowest, highest = int(min(ScriptErrorCode)), int(max(ScriptErrorCode))
    if isinstance(error_code, bool) or not isinstance(error_code, int) or not lowest <= error_code <= highest:
        raise bad_request(f"'error_code' must be an integer from {lowest} to {highest}", _RESULT_USAGE)
    for key in ("message", "log_tail"):
        if not isinstance(body.get(key, ""), str):
            raise bad_request(f"{key!r} must be a string", _RESULT_USAGE)
    for key in ("started_at", "ended_at"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_EPOCH
        ):
            raise bad_request(f"{key!r} must be an epoch time in seconds (before the year 3000)", _RESULT_USAGE)
    return ResultBody(
        status="Succeeded" if status == "Succeeded" else "Failed",
        error_code=error_code,
        message=body.get("message", ""),
        log_tail=_clip_tail(body.get("log_tail", "")),
        started_at=body.get("started_at"),
        ended_at=body.get("ended_at"),
    )


def _seconds(request: web.Request, name: str, usage: str, *, default: float, limit: float) -> float:
    """Query parameter ``name`` as seconds, clamped to ``[0, limit]``; ``default`` when empty or NaN."""
    raw = request.query.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise bad_request(f"{name!r} must be a number of seconds, got {raw!r}", usage) from None
    return min(max(value, 0.0), limit) if value == value else default


def _asks_for_runs(request: web.Request) -> bool:
    """``runs=1``: the agent runs a host's consecutive events back to back (its commands carry ``then``)."""
    return request.query.get("runs") == "1"


async def _long_poll(request: web.Request, wait: float) -> CommandBody | None:
    """The host's next command within ``wait`` seconds, claimed for this request; None when there is none."""
    fleet, host = request.app[FLEET], request[HOST]
    # An agent of the first protocol version is served as before: no ``runs`` at all.
    asked = (
        fleet.next_command(host, wait=wait, runs=True)
        if _asks_for_runs(request)
        else fleet.next_command(host, wait=wait)
    )
    poll = asyncio.ensure_future(asked)
    closing = asyncio.ensure_future(request.app[CLOSING].wait())
    try:
        await asyncio.wait({poll, closing}, return_when=asyncio.FIRST_COMPLETED)
        if not poll.done():
            # Shutting down: a claim already under way is still delivered; an idle wait ends now, so the
            # server stops at once instead of holding every agent's poll open until its timeout.
            await asyncio.wait({poll}, timeout=SHUTDOWN_CLAIM_GRACE)
    finally:
        closing.cancel()
        if not poll.done():
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
    command = None if poll.cancelled() else poll.result()
    if command is not None and (request.transport is None or request.transport.is_closing()):
        # The agent hung up while we waited (it died or restarted): nobody would receive this command.
        await request.app[FLEET].release(request[HOST], command["id"])
        return None
    return command


async def next_command(request: web.Request) -> web.Response:
    """Long poll; answered the moment a command is queued for this host, else 204 after ``wait`` seconds."""
    wait = _seconds(request, "wait", _POLL_USAGE, default=DEFAULT_POLL_SECONDS, limit=MAX_POLL_SECONDS)
    command = await _long_poll(request, wait)
    if command is None:
        return web.Response(status=204)
    return json_response({"command": command})


async def report_result(request: web.Request) -> web.Response:
    """Idempotent: the Fleet ignores a repeated result for a finished command (the agent may retry on timeout).

    ``?next=SECONDS`` (at most MAX_NEXT_SECONDS) also hands over the host's next command when one is queued within
    that time: the server usually queues it a few milliseconds after taking the result, and answering here saves
    the agent a long-poll round trip per lifecycle event. Only agents that ask get a ``command``, so an older
    agent never receives (and strands) a command it would not look for.

    ``?then=ID`` (an agent running a run of events, see ``engine.core.agent_protocol``): ID is the next command of
    the run, which the agent runs only on ``{"stop": false}``, the server having claimed it for it along with this
    result; ``{"stop": true}`` when it must not (the deployment was stopped, or the command is no longer queued).
    """
    result = _result(await json_object(request, _RESULT_USAGE))
    wait = _seconds(request, "next", _RESULT_USAGE, default=0.0, limit=MAX_NEXT_SECONDS)
    then = _then(request)
    fleet, host, command_id = request.app[FLEET], request[HOST], _command_id(request)
    if then is not None:
        go_on = await fleet.report_result(host, command_id, result, then=then)
        return json_response({"ok": True, "stop": not go_on})
    await fleet.report_result(host, command_id, result)
    if "next" not in request.query:
        return json_response({"ok": True})
    command = await _long_poll(request, wait)
    return json_response({"ok": True} if command is None else {"ok": True, "command": command})


def _then(request: web.Request) -> int | None:
    """The ``then`` query parameter: the id of the command the agent would run next, or None."""
    text = request.query.get("then")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_COMMAND_ID)) or int(text) > MAX_COMMAND_ID:
        raise bad_request(f"'then' must be a command id, got {text[:30]!r}", _RESULT_USAGE)
    return int(text)


def _command_id(request: web.Request) -> int:
    """The route's command id; one past what the store can hold is no command at all (404, as for any unknown id)."""
    text = request.match_info["id"]
    if len(text) > len(str(MAX_COMMAND_ID)) or int(text) > MAX_COMMAND_ID:
        raise HttpProblem(404, "NotFound", f"no command {text[:30]} for host {request[HOST]}")
    return int(text)


async def report_progress(request: web.Request) -> web.Response:
    """Optional live log tail; the Fleet has no use for it yet, so it is accepted and dropped (202)."""
    body = await json_object(request, 'POST /agent/v1/commands/{id}/progress {"log_tail": str}')
    if not isinstance(body.get("log_tail", ""), str):
        raise bad_request("'log_tail' must be a string", 'POST /agent/v1/commands/{id}/progress {"log_tail": str}')
    return json_response({"ok": True}, status=202)


async def heartbeat(request: web.Request) -> web.Response:
    body = await json_object(request, _HEARTBEAT_USAGE, optional=True)
    tags = body.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise bad_request("'tags' must be an object of strings", _HEARTBEAT_USAGE)
    if len(tags) > MAX_TAGS or any(len(text) > MAX_TAG_LENGTH for pair in tags.items() for text in pair):
        message = f"'tags' may hold {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters each"
        raise bad_request(message, _HEARTBEAT_USAGE)
    version = body.get("version", "")
    if not isinstance(version, str) or len(version) > MAX_TAG_LENGTH:
        raise bad_request(f"'version' must be a string of at most {MAX_TAG_LENGTH} characters", _HEARTBEAT_USAGE)
    running = body.get("running_command")
    if running is not None and (isinstance(running, bool) or not isinstance(running, int) or running < 0):
        raise bad_request("'running_command' must be a command id or null", _HEARTBEAT_USAGE)
    capabilities = body.get("capabilities") or []
    if (
        not isinstance(capabilities, list)
        or len(capabilities) > MAX_TAGS
        or not all(isinstance(c, str) and len(c) <= MAX_TAG_LENGTH for c in capabilities)
    ):
        raise bad_request(f"'capabilities' must be a list of at most {MAX_TAGS} short strings", _HEARTBEAT_USAGE)
    info = HeartbeatBody(tags=dict(tags), version=version, running_command=running)
    if capabilities:
        info["capabilities"] = capabilities
    await request.app[FLEET].heartbeat(request[HOST], info)
    return json_response({"ok": True})


async def download_bundle(request: web.Request) -> web.StreamResponse:
    """The bundle of a revision this host's deployments use. Any other is a 404 like a missing one, never a 403:
    an agent token must not learn which revisions exist."""
    sha256 = request.match_info["sha256"]
    fleet = request.app[FLEET]
    path = await fleet.bundle_for(request[HOST], sha256)
    bundles = request.app.get(BUNDLES)
    if path is None and bundles is not None and await bundles.fetch(sha256):  # a replica without it: from the database
        path = await fleet.bundle_for(request[HOST], sha256)
    if path is None:
        raise HttpProblem(404, "RevisionNotFound", f"no stored revision {sha256}", sha256=sha256)
    headers = {"Content-Type": "application/gzip", "X-Deploybot-Sha256": sha256}
    held = await request.app[SMALL_BUNDLES].read(path)
    if held is not None:
        return web.Response(body=held, headers=headers)
    return web.FileResponse(path, headers=headers)


class SmallBundles:
    """The bytes of the small bundles served lately, by path, so that the hosts of a deployment, which all fetch the
    same bundle at once, are served from memory: a bundle is stored under its sha256 and never changes.

    aiohttp's FileResponse stats and opens the file on the default executor, then sends it with sendfile: for a
    bundle of a few KiB that cost the server ~0.5 ms of CPU a download, twice a host-event's, and under a deployment
    of 20 hosts the executor's few threads queued them. Only bundles of at most ``max_bundle`` bytes are held, at
    most ``max_total`` bytes in all (the least recently served go first); larger ones go out as files, as before."""

    def __init__(self, *, max_bundle: int = 256 * 1024, max_total: int = 16 * 1024 * 1024) -> None:
        self.max_bundle, self.max_total = max_bundle, max_total
        self._held: OrderedDict[Path, bytes] = OrderedDict()
        self._total = 0
        self._large: OrderedDict[Path, None] = OrderedDict()  # known too large: not read again

    async def read(self, path: Path) -> bytes | None:
        """The bundle's bytes when it is small (read once, then from memory); None for a large one."""
        held = self._held.get(path)
        if held is not None:
            self._held.move_to_end(path)
            return held
        if path in self._large:
            return None
        data = await asyncio.to_thread(_read_if_small, path, self.max_bundle)
        if data is None:
            self._large[path] = None
            if len(self._large) > _LARGE_REMEMBERED:
                self._large.popitem(last=False)
            return None
        if path not in self._held:
            self._held[path] = data
            self._total += len(data)
        while self._total > self.max_total:
            _, dropped = self._held.popitem(last=False)
            self._total -= len(dropped)
        return data


_LARGE_REMEMBERED = 1024
SMALL_BUNDLES = web.AppKey("agent_small_bundles", SmallBundles)


def _read_if_small(path: Path, limit: int) -> bytes | None:
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size > limit:
            return None
        return file.read(limit + 1)


async def _end_long_polls(app: web.Application) -> None:
    app[CLOSING].set()


def create_agent_app(fleet: AgentFleet, *, bundles: RevisionArchive | None = None) -> web.Application:
    """The ``/agent/v1`` sub-application (mount it with ``app.add_subapp("/agent/v1", ...)``); ``bundles``: the
    revision archive a replica fetches a bundle it lacks through (from the database) before serving it."""
    app = web.Application(middlewares=[json_errors, _require_agent_token], client_max_size=1024**2)
    app[FLEET] = fleet
    if bundles is not None:
        app[BUNDLES] = bundles
    app[CLOSING] = asyncio.Event()
    app[SMALL_BUNDLES] = SmallBundles()
    app.on_shutdown.append(_end_long_polls)
    command = "/commands/{id:\\d+}"
    app.add_routes(
        [
            web.get("/commands/next", next_command),
            web.post(command + "/result", report_result),
            web.post(command + "/progress", report_progress),
            web.post("/heartbeat", heartbeat),
            web.get("/bundles/{sha256:[0-9a-f]{64}}", download_bundle),
        ]
    )
    return app
