"""The JSON edge shared by ``/api/v1`` (bot/api.py, bot/api_external.py) and ``/agent/v1`` (bot/agent_api.py).

Engine errors become ``{"error": "<ExceptionClassName>", "message": ..., **data}`` in exactly one place
(``error_response``), so the status codes stay consistent across routes and the agent protocol; the edge's own
refusals (bad JSON, a missing field, no token) are ``HttpProblem``s rendered the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from engine import (
    AppSpecInvalid,
    BundleError,
    ConfigError,
    DeploymentRefused,
    DeploymentService,
    EngineError,
    InvalidTransition,
    NotFound,
    UnknownDeploymentConfig,
)

log = logging.getLogger(__name__)

ACTOR_HEADER = "X-Deploybot-Actor"

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
    """A request the edge itself refuses (bad JSON, missing field, no token): rendered like engine errors."""

    def __init__(self, status: int, error: str, message: str, **data: object) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.data = status, error, message, data


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


_dumps = functools.partial(json.dumps, default=str)


def json_response(data: object, *, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into the JSON error shape, so clients never have to parse HTML or plain text."""
    try:
        return await handler(request)
    except EngineError as exc:
        return error_response(exc)
    except HttpProblem as exc:
        return json_response({"error": exc.error, "message": exc.message, **exc.data}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name = type(exc).__name__.removeprefix("HTTP")
        return json_response({"error": name, "message": exc.reason}, status=exc.status)
    except Exception as exc:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": "InternalError", "message": f"{type(exc).__name__}: {exc}"}, status=500)


# ---------------------------------------------------------------------------------------------------- requests


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def json_object(request: web.Request, usage: str, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` when ``optional``."""
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the body is not JSON: {exc}", usage) from exc
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", usage)
    return body


def actor_of(request: web.Request) -> str:
    """Who asked: the CLI sends the OS user name; anything else calling the API is "api"."""
    actor = request.headers.get(ACTOR_HEADER, "").strip()
    return actor[:100] if actor else "api"
