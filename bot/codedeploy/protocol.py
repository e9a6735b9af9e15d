"""CodeDeploy's JSON 1.1 wire protocol on ``POST /codedeploy``, so boto3's ``codedeploy`` client works unchanged.

Request: ``X-Amz-Target: CodeDeploy_20141006.<Operation>``, a JSON body, a SigV4 signature by a key that is a
deploybot user, who must be allowed the operation (access.py). Answer:
``application/x-amz-json-1.1``; errors are ``{"__type": "<Name>Exception", "message": ...}`` with status 400, which
botocore maps to its modeled exception classes (``client.exceptions.DeploymentDoesNotExistException``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from bot.codedeploy.access import AccessDenied, user_of
from bot.codedeploy.base import Answer
from bot.codedeploy.operations import CodeDeployOperations
from bot.codedeploy.shapes import ApiError
from bot.codedeploy.sigv4 import AccessKey, SignatureRejected, verify
from bot.http import parse_json
from engine import (
    ApplicationNotFound,
    AppSpecInvalid,
    BundleError,
    DeploymentNotFound,
    DeploymentRefused,
    EngineError,
    EnvironmentNotFound,
    InstanceNotRegistered,
    InvalidLifecycleHookStatus,
    InvalidTransition,
    RevisionNotFound,
    UnknownDeploymentConfig,
)

log = logging.getLogger(__name__)

PATH = "/codedeploy"
TARGET_PREFIX = "CodeDeploy_20141006."
CONTENT_TYPE = "application/x-amz-json-1.1"

_ENGINE_ERRORS: tuple[tuple[type[EngineError], str], ...] = (
    (DeploymentNotFound, "DeploymentDoesNotExist"),
    (ApplicationNotFound, "ApplicationDoesNotExist"),
    (EnvironmentNotFound, "DeploymentGroupDoesNotExist"),
    (RevisionNotFound, "RevisionDoesNotExist"),
    (UnknownDeploymentConfig, "DeploymentConfigDoesNotExist"),
    (InstanceNotRegistered, "InstanceNotRegistered"),
    (InvalidLifecycleHookStatus, "InvalidLifecycleEventHookExecutionStatus"),
    (AppSpecInvalid, "InvalidRevision"),
    (BundleError, "InvalidRevision"),
    (InvalidTransition, "InvalidOperation"),
    (DeploymentRefused, "InvalidOperation"),
)


def aws_error(name: str, message: str, *, status: int = 400) -> web.Response:
    return _answer({"__type": f"{name}Exception", "message": message}, status=status)


def _answer(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    encoded = json.dumps(body, default=str, allow_nan=False).encode()
    return web.Response(status=status, body=encoded, content_type=CONTENT_TYPE, headers=headers)


def engine_error_name(exc: EngineError) -> str:
    for cls, name in _ENGINE_ERRORS:
        if isinstance(exc, cls):
            return name
    return "InvalidOperation"


class CodeDeployEndpoint:
    """The aiohttp handler: verify the signature, pick the operation, turn every failure into an AWS error."""

    def __init__(self, operations: CodeDeployOperations, keys: dict[str, AccessKey]) -> None:
        self.operations = operations
        self.keys = keys

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            key = verify(
                self.keys,
                method=request.method,
                url=f"{request.scheme}://{request.host}{request.raw_path}",
                headers=request.headers,
                body=body,
            )
        except SignatureRejected as exc:
            return aws_error(exc.error, exc.message)
        try:
            user = user_of(self.operations.deployer.config, key)
        except AccessDenied as exc:
            log.warning("CodeDeploy API: %s", exc.message)
            return aws_error(exc.name, exc.message)
        target = request.headers.get("X-Amz-Target", "")
        name = target.removeprefix(TARGET_PREFIX)
        operation = self.operations.table.get(name) if target.startswith(TARGET_PREFIX) else None
        if operation is None:
            supported = ", ".join(sorted(self.operations.table))
            what = f"operation {name!r}" if target.startswith(TARGET_PREFIX) else f"X-Amz-Target {target!r}"
            return aws_error(
                "UnknownOperation", f"deploybot does not support the CodeDeploy {what}; it supports {supported}"
            )
        try:
            payload = parse_json(body) if body.strip() else {}
        except ValueError as exc:
            return aws_error("Serialization", f"the body is not JSON: {exc}")
        if not isinstance(payload, dict):
            return aws_error("Serialization", "the body must be a JSON object")
        try:
            await self.operations.authorize(name, payload, user)
            answer = await operation(payload, user)
            if isinstance(answer, Answer):
                return _answer(answer.body, headers=dict(answer.headers))
            return _answer(answer)
        except AccessDenied as exc:
            await self._record_denial(name, exc)
            return aws_error(exc.name, exc.message)
        except ApiError as exc:
            return aws_error(exc.name, exc.message)
        except EngineError as exc:
            return aws_error(engine_error_name(exc), str(exc))
        except Exception:
            log.exception("CodeDeploy %s failed", name)
            return aws_error("InternalFailure", "deploybot hit an internal error; see the server log", status=500)

    async def _record_denial(self, operation: str, refused: AccessDenied) -> None:
        """The audit log keeps who was refused what, and by which rule (nothing else changes)."""
        decision = refused.decision
        if decision is None or decision.actor is None:
            return
        log.info("CodeDeploy API: %s", refused.message)
        deployer = self.operations.deployer
        await deployer.store.append_log(
            "access.denied",
            at=deployer.clock.now(),
            actor=decision.actor,
            data={
                "door": "codedeploy",
                "operation": operation,
                "action": str(decision.action),
                "target": decision.target,
                "rule": decision.rule,
            },
        )
