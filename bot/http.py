"""The JSON edge shared by ``/api/v1`` (bot/api.py, bot/api_external.py) and ``/agent/v1`` (bot/agent_api.py).

Engine errors become ``{"error": "<ExceptionClassName>", "message": ..., **data}`` in exactly one place
(``error_response``), so the status codes stay consistent across routes and the agent protocol; the edge's own
refusals (bad JSON, a missing field, no token) are ``HttpProblem``s rendered the same way. Bodies are read by
``parse_json`` within fixed bounds (nesting, number size, no NaN), responses never hold NaN or Infinity, and the
OSErrors a request can cause rather than a bug (a full disk: 507; a name too long: 400) are answered as such.

Who asks is never taken from a header the caller writes: the ``/api/v1`` auth middleware (bot/api.py) resolves the
bearer token to its user and stores it on the request (``ACTOR``); ``actor_of`` reads it back.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

# Re-exported: the API and the tests read a lifetime from here; the CLI imports bot.durations without aiohttp.
from bot.durations import DURATION_FORMAT as DURATION_FORMAT
from bot.durations import MAX_DURATION_SECONDS as MAX_DURATION_SECONDS
from bot.durations import parse_duration as parse_duration
from bot.logs import REQUEST_ID_HEADER, request_scope
from engine import (
    VERBS,
    Action,
    AppSpecInvalid,
    BundleError,
    ConfigError,
    DeploymentGroup,
    DeploymentNotFound,
    DeploymentRefused,
    DeploymentService,
    EngineError,
    InvalidTransition,
    NotFound,
    TokenCheck,
    TokenRefusal,
    UnknownDeploymentConfig,
    may,
)

log = logging.getLogger(__name__)

ACTOR = web.RequestKey("deploybot_actor", str)
"""The user of the API token the request carried, set by the ``/api/v1`` auth middleware once it checked it."""

DEPLOYER = web.AppKey("api_deployer", DeploymentService)
"""The Deployer behind the ``/api/v1`` routes (bot/api.py sets it; every route module of the API reads it)."""

_STATUS_BY_ERROR: tuple[tuple[type[EngineError], int], ...] = (
    (NotFound, 404),
    (AppSpecInvalid, 422),
    (ConfigError, 422),
    (BundleError, 422),
    (UnknownDeploymentConfig, 422),
    (DeploymentRefused, 409),
    (InvalidTransition, 409),
)


class HttpProblem(Exception):
    """A request the edge itself refuses (bad JSON, missing field, no token): rendered like engine errors.
    ``headers`` go on the response (``WWW-Authenticate`` of a 401)."""

    def __init__(
        self, status: int, error: str, message: str, *, headers: Mapping[str, str] | None = None, **data: object
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.data = status, error, message, data
        self.headers = dict(headers or {})


def bad_request(message: str, usage: str) -> HttpProblem:
    return HttpProblem(400, "BadRequest", message, usage=usage)


# ---------------------------------------------------------------------------------------------------- errors


def _plain(value: object) -> object:
    """Error attributes as JSON values (Problems → objects, tuples → lists, anything odd → str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def error_status(exc: EngineError) -> int:
    """The HTTP status of an engine error (contract: NotFound 404, invalid input 422, refusals 409, else 400)."""
    for cls, status in _STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(exc: EngineError) -> dict[str, Any]:
    """``{"error": ClassName, "message": str(exc), **the exception's data}`` — the data is what scripts branch on."""
    body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    for key, value in vars(exc).items():
        if not key.startswith("_") and key not in body:
            body[key] = _plain(value)
    return body


def error_response(exc: EngineError) -> web.Response:
    return json_response(error_body(exc), status=error_status(exc))


_dumps = json.JSONEncoder(default=str, allow_nan=False).encode
"""``allow_nan=False``: NaN and Infinity are not JSON; a response holding one fails (500) rather than send it. One
encoder for every response: ``json.dumps`` with any non-default argument builds a new one each time."""


def json_response(data: object, *, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into the JSON error shape, so clients never have to parse HTML or plain text; every log
    line of the request names its ``request_id`` (bot/logs.py), which the answer carries as ``X-Request-Id``."""
    with request_scope(request.headers.get(REQUEST_ID_HEADER)) as ident:
        response = await _errors_as_json(request, handler)
    if not response.prepared:
        response.headers.setdefault(REQUEST_ID_HEADER, ident)
    return response


async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except EngineError as exc:
        return error_response(exc)
    except HttpProblem as exc:
        response = json_response({"error": exc.error, "message": exc.message, **exc.data}, status=exc.status)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name = type(exc).__name__.removeprefix("HTTP")
        return json_response({"error": name, "message": exc.reason}, status=exc.status)
    except Exception as exc:
        if isinstance(exc, OSError) and (refusal := _os_refusal(request, exc)) is not None:
            log.error("%s %s: %s", request.method, request.path, exc)
            body = {"error": refusal.error, "message": refusal.message, **refusal.data}
            return json_response(body, status=refusal.status)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": "InternalError", "message": f"{type(exc).__name__}: {exc}"}, status=500)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _os_refusal(request: web.Request, exc: OSError) -> HttpProblem | None:
    """The answer to an OSError a request met that is not the server's bug: a full disk (507, so the client knows
    retrying later may work and the operator knows where to look) or a name too long for the file system (400:
    only a request makes such names). None for any other OSError (a 500)."""
    if exc.errno in _DISK_FULL:
        deployer = request.config_dict.get(DEPLOYER)
        data_dir = getattr(getattr(getattr(deployer, "config", None), "server", None), "data_dir", None)
        where = f" (data dir {data_dir})" if data_dir else ""
        message = f"disk full on the server{where}: {exc.strerror}; free space there, then retry"
        return HttpProblem(507, "InsufficientStorage", message, data_dir=data_dir)
    if exc.errno == errno.ENAMETOOLONG:
        return HttpProblem(400, "BadRequest", "a name in the request is too long for the server's file system")
    return None


# ---------------------------------------------------------------------------------------------------- requests

MAX_JSON_DEPTH = 32
"""The deepest nesting a request body may have: every body the API takes is at most a few levels deep, and a deeper
one would only cost recursion (the parser's, then every walk over the value)."""
MAX_JSON_NUMBER = 2**53
"""The largest magnitude of a number in a request body (JavaScript's exact integers): a count, an id, a number of
minutes or seconds past it is a mistake or an attack, and past it every duration overflows downstream."""


class JsonRefused(ValueError):
    """A body that is JSON but past the limits a request body keeps to."""


def _finite(text: str) -> float:
    value = float(text)
    if not abs(value) <= MAX_JSON_NUMBER:  # inf from 1e400 too
        raise JsonRefused(f"number {text[:40]} out of range (at most {MAX_JSON_NUMBER:,} in size)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > len(str(MAX_JSON_NUMBER)) or abs(int(text)) > MAX_JSON_NUMBER:
        raise JsonRefused(f"number {text[:40]} out of range (at most {MAX_JSON_NUMBER:,} in size)")
    return int(text)


def _no_constant(name: str) -> object:
    raise JsonRefused(f"{name} is not a JSON number")


def parse_json(raw: bytes | str) -> object:
    """A request body as JSON, bounded: no NaN or Infinity, numbers at most ``MAX_JSON_NUMBER`` in size, nesting at
    most ``MAX_JSON_DEPTH`` deep. ``JsonRefused`` past a limit, ValueError for what is not JSON."""
    try:
        value = json.loads(raw, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise JsonRefused(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    # Nesting needs an opening bracket per level: a body with few brackets (most: an agent's result, a heartbeat)
    # cannot be too deep, and is not walked (the walk was ~3% of the server's CPU in the swarm bench).
    brackets = raw.count(b"{") + raw.count(b"[") if isinstance(raw, bytes) else raw.count("{") + raw.count("[")
    if brackets > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        raise JsonRefused(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def json_depth(value: object) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def json_object(request: web.Request, usage: str, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` when ``optional``."""
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = parse_json(raw)
    except JsonRefused as exc:
        raise bad_request(f"the body is refused: {exc}", usage) from exc
    except ValueError as exc:
        raise bad_request(f"the body is not JSON: {exc}", usage) from exc
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", usage)
    return body


def actor_of(request: web.Request) -> str:
    """Who asked: the user of the API token the request carried (never a header the caller writes). A route
    outside the auth middleware has no actor and gets a 401 rather than an anonymous audit entry."""
    actor = request.get(ACTOR)
    if not isinstance(actor, str):
        raise unauthorized(None)
    return actor


async def authorize(request: web.Request, action: Action, group: DeploymentGroup | None) -> str:
    """The caller, when ``may`` lets them do ``action`` to ``group``; otherwise 403 naming who, what and the rule that
    refused, and an ``access.denied`` audit entry (the same rule every door asks: engine.core.policy)."""
    actor = actor_of(request)
    deployer = request.app[DEPLOYER]
    decision = may(deployer.config, actor, action, group)
    if decision.allowed:
        return actor
    await deployer.store.append_log(
        "access.denied",
        at=deployer.clock.now(),
        actor=actor,
        data={"door": "api", "action": str(action), "target": decision.target, "rule": decision.rule},
    )
    raise HttpProblem(
        403,
        "Forbidden",
        f"{actor} may not {VERBS[action]} on {decision.target}: {decision.rule}",
        actor=actor,
        action=str(action),
        target=decision.target,
        rule=decision.rule,
    )


async def deployment_group(request: web.Request, deployment_id: str) -> DeploymentGroup | None:
    """The group of a stored deployment (None when the config no longer has it: then only admins may act on it).
    Reads the row, not the whole document: the route builds that once, after the decision."""
    deployer = request.app[DEPLOYER]
    row = await deployer.store.get_deployment(deployment_id)
    if row is None:
        raise DeploymentNotFound(deployment_id)
    return next((g for g in deployer.config.groups() if g.name == row["group_name"]), None)


# ---------------------------------------------------------------------------------------------------- tokens


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def refusal_reason(check: TokenCheck | None) -> str:
    """The reason of a refused credential in one or two words: ``missing``, ``unknown token``, ``expired``,
    ``revoked`` (what the 401's ``reason`` says and a script may branch on)."""
    if check is None:
        return "missing"
    return "unknown token" if check.refusal in (None, TokenRefusal.UNKNOWN) else str(check.refusal)


def refusal_message(check: TokenCheck | None) -> str:
    """A sentence for a refused credential: what is wrong and what to do."""
    token = check.token if check is not None else None
    if check is None:
        return "missing API token: send 'Authorization: Bearer <token>'"
    if check.refusal is TokenRefusal.REVOKED and token is not None and token.revoked_at is not None:
        return f"revoked: API token {token.id} was revoked at {_utc(token.revoked_at)}; ask an admin for a new one"
    if check.refusal is TokenRefusal.EXPIRED and token is not None and token.expires_at is not None:
        return f"expired: API token {token.id} expired at {_utc(token.expires_at)}; ask an admin for a new one"
    if check.refusal is TokenRefusal.SESSION_ENDED:
        return "session ended: log in again"
    return "unknown token: the server has no such API token"


def unauthorized(check: TokenCheck | None) -> HttpProblem:
    """The 401 of a missing (``check`` None) or refused credential, with RFC 6750's ``WWW-Authenticate``."""
    challenge = 'Bearer realm="deploybot"'
    if check is not None:
        challenge += f', error="invalid_token", error_description="{refusal_reason(check)}"'
    return HttpProblem(
        401,
        "Unauthorized",
        refusal_message(check),
        reason=refusal_reason(check),
        headers={"WWW-Authenticate": challenge},
    )
