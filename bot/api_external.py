"""API routes for what lives outside the config file and our agents: Lambda/ECS hook functions reporting their
status, revisions the server fetches from S3 (registered by ``deploybot push``), and agent tokens for instances that
join by EC2 tag or registration rather than being listed under ``hosts``.

``PUT /api/v1/lifecycle-hooks/{execution_id}`` is the same callback as CodeDeploy's
PutLifecycleEventHookExecutionStatus, for hook functions that would rather call deploybot's own API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot.http import (
    DEPLOYER,
    HttpProblem,
    actor_of,
    authorize,
    bad_request,
    deployment_group,
    json_object,
    json_response,
)
from engine import NAME_PATTERN, Action, Platform

_HOOK_USAGE = 'PUT /api/v1/lifecycle-hooks/{execution_id} {"status": "Succeeded"|"Failed", "deployment_id"?: str}'
_TOKEN_USAGE = 'POST /api/v1/agent-tokens {"name": "i-0abc123...", "rotate"?: true}'
_S3_USAGE = (
    'POST /api/v1/revisions {"s3": {"bucket": str, "key": str, "version"?: str, "etag"?: str, '
    '"bundle_type"?: "tgz"|"tar"|"zip"}, "application"?: str, "account"?: str}'
)


async def put_hook_status(request: web.Request) -> web.Response:
    body = await json_object(request, _HOOK_USAGE)
    status = body.get("status")
    if not isinstance(status, str):
        raise bad_request("'status' is required: Succeeded or Failed", _HOOK_USAGE)
    deployment_id = body.get("deployment_id")
    deployer = request.app[DEPLOYER]
    execution_id = request.match_info["execution_id"]
    # The execution's deployment decides who may answer; found even once answered, so a repeat is not refused here.
    known = None if isinstance(deployment_id, str) else await deployer.hooks.find(execution_id)
    owner = deployment_id if isinstance(deployment_id, str) else (known or {}).get("deployment_id")
    group = await deployment_group(request, owner) if isinstance(owner, str) else None
    actor = await authorize(request, Action.CONTROL, group)
    result = await deployer.put_hook_status(
        execution_id,
        status,
        deployment_id=deployment_id if isinstance(deployment_id, str) else None,
        actor=actor,
    )
    return json_response(result)


async def list_hook_executions(request: web.Request) -> web.Response:
    """The hook executions waiting for a callback (optionally of one deployment): what an operator unblocks."""
    deployment_id = request.query.get("deployment_id") or None
    return json_response({"executions": request.app[DEPLOYER].hooks.pending(deployment_id)})


async def register_s3_revision(request: web.Request) -> web.Response:
    """``POST /api/v1/revisions`` with a JSON body (bot/api.py routes it here): the server fetches the S3 object."""
    body = await json_object(request, _S3_USAGE)
    location: Any = body.get("s3")
    if not isinstance(location, dict) or not isinstance(location.get("bucket"), str) or not location.get("key"):
        raise bad_request("'s3' with 'bucket' and 'key' is required", _S3_USAGE)
    deployer = request.app[DEPLOYER]
    application = body.get("application")
    platform = deployer.config.application(application).platform if isinstance(application, str) else Platform.SERVER
    revision = await deployer.fetch_s3_revision(
        location["bucket"],
        str(location["key"]),
        version=_optional(location, "version"),
        etag=_optional(location, "etag"),
        bundle_type=_optional(location, "bundle_type"),
        account=str(body.get("account") or "default"),
        platform=platform,
    )
    return json_response(
        {"sha256": revision.sha256, "size": revision.size, "source": revision.source, "location": revision.location},
        status=201,
    )


def _optional(location: Mapping[str, Any], key: str) -> str | None:
    value = location.get(key)
    return value if isinstance(value, str) else None


async def issue_agent_token(request: web.Request) -> web.Response:
    """Issue ``name`` an agent token, answered once (201): an EC2 instance's user data or an on-premises installer
    calls this with the API token and writes the token to the file ``deploybot agent --token-file`` reads.

    A host that holds a token gets 409: an existing token is never shown again (it would let an API caller act as a
    running agent unnoticed). ``"rotate": true`` issues a new one and revokes the old at once: its agent gets 401
    from its next request. Both are in the audit log. Admins only: an agent token runs code as root on a host."""
    await authorize(request, Action.ADMIN, None)
    body = await json_object(request, _TOKEN_USAGE)
    name = body.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise bad_request("'name' must be a host name: letters, digits, '.', '_' or '-'", _TOKEN_USAGE)
    rotate = body.get("rotate", False)
    if not isinstance(rotate, bool):
        raise bad_request("'rotate' must be true or false", _TOKEN_USAGE)
    deployer = request.app[DEPLOYER]
    fleet = deployer.fleet
    if not rotate and fleet.has_token(name):
        raise HttpProblem(
            409,
            "AgentTokenExists",
            f"{name} has an agent token already, and it is not shown again; to replace it, send "
            f'{{"name": "{name}", "rotate": true}}: a new token is issued and the old one stops working at once',
            name=name,
        )
    token = await fleet.issue_token(name, rotate=rotate)  # stored before it is shown: every replica accepts it
    kind = "agent_token.rotated" if rotate else "agent_token.issued"
    await deployer.store.append_log(kind, at=deployer.clock.now(), actor=actor_of(request), data={"host": name})
    return json_response({"name": name, "token": token, "rotated": rotate}, status=201)


def external_routes() -> list[web.RouteDef]:
    return [
        web.put("/lifecycle-hooks/{execution_id}", put_hook_status),
        web.get("/lifecycle-hooks", list_hook_executions),
        web.post("/agent-tokens", issue_agent_token),
    ]
