"""The JSON API under ``/api/v1`` (used by the CLI and scripts) and ``GET /healthz``: HTTP in, one Deployer call out.

Rules: every route needs ``Authorization: Bearer <token>``, a per-user API token the engine checks against the store
on every request (so a revocation counts at once); its user is who asks, for every route and audit entry (no header
can say otherwise). Handlers only parse, call the engine and serialize; engine errors become the JSON error shape in
exactly one place (bot/http.py), as on the agent protocol. The routes for what lives outside the config file (hook
callbacks, S3 revisions, agent tokens) are in bot/api_external.py.

The bootstrap secrets (var/api-token, DEPLOYBOT_TOKEN) are handed to ``create_api_app`` only to be registered, by
hash, as the bootstrap admin's tokens when the app starts (engine/runtime/tokens.py says how rotation works).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.api_external import external_routes, register_s3_revision
from bot.github import GITHUB
from bot.github.client import GitHubUnavailable
from bot.github.revisions import (
    GITHUB_REVISION_PREFIX,
    CommitNotFound,
    CommitRef,
    GitHubNotConfigured,
    RepositoryNotConfigured,
    parse_github_revision,
)
from bot.http import (
    ACTOR,
    DEPLOYER,
    DURATION_FORMAT,
    MAX_DURATION_SECONDS,
    HttpProblem,
    actor_of,
    authorize,
    bad_request,
    bearer_token,
    deployment_group,
    json_errors,
    json_object,
    json_response,
    parse_duration,
    unauthorized,
)
from bot.idempotency import idempotent_requests
from bot.logs import annotate as annotate_log
from bot.pages.stats import environment_numbers
from engine import (
    BOOTSTRAP_ADMIN,
    Action,
    DeploymentService,
    DeployRequest,
    EngineConfig,
    ReplicaRegistry,
    names_server_path,
    path_within,
)

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 512 * 1024**2
MAX_WATCH_SECONDS = 60.0
SOURCE_HEADER = "X-Deploybot-Source"
APPLICATION_HEADER = "X-Deploybot-Application"  # an upload for this application: its platform checks the AppSpec
CONTROL_ACTIONS = ("continue", "pause", "resume", "promote")

try:
    VERSION = metadata.version("deploybot")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
    VERSION = "0+unknown"

BOOTSTRAP_TOKENS = web.AppKey("api_bootstrap_tokens", frozenset[str])
UPLOAD_DIR = web.AppKey("api_upload_dir", Path)
MAX_BUNDLE = web.AppKey("api_max_bundle_bytes", int)
REPLICA = web.AppKey("replica", ReplicaRegistry)
"""This server among the replicas on its database (bot/app.py sets it on the root app and on /api/v1)."""
MAX_LABEL_LENGTH = 100


@web.middleware
async def _require_api_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Resolve the bearer token to its user, or answer 401 with the reason (missing, unknown, expired, revoked)."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized(None)
    check = await request.app[DEPLOYER].tokens.authenticate(token)
    if check.user is None:
        raise unauthorized(check)
    request[ACTOR] = check.user
    annotate_log(actor=check.user)
    return await handler(request)


async def _register_bootstrap_tokens(app: web.Application) -> None:
    """At start: the configured bootstrap secrets become the bootstrap admin's tokens (once each, by hash)."""
    bootstrap: frozenset[str] = app[BOOTSTRAP_TOKENS]
    deployer = app[DEPLOYER]
    # Servers sharing a store each keep their own bootstrap file: each retires only its own old values.
    shared = deployer.config.store is not None
    source = f"{socket.gethostname()}:{app[UPLOAD_DIR].parent.resolve()}" if shared else None  # host:data dir
    change = await deployer.tokens.register_bootstrap(bootstrap, source=source)
    for token in change.registered:
        log.info("registered a bootstrap API token of %s as %s", token.user, token.id)
    for token in change.revoked:
        log.warning("revoked bootstrap API token %s: var/api-token and DEPLOYBOT_TOKEN no longer hold it", token.id)


# ---------------------------------------------------------------------------------------------------- parsing


def _string(body: Mapping[str, Any], key: str, usage: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        wanted = "is required" if value is None else "must be a non-empty string"
        raise bad_request(f"{key!r} {wanted}", usage)
    return value.strip()


def _number(request: web.Request, key: str, default: float, low: float, high: float, usage: str) -> float:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"query parameter {key!r} must be a number, got {raw!r}", usage) from None
    if value != value or value < low:  # NaN or too small
        raise bad_request(f"query parameter {key!r} must be at least {low:g}", usage)
    return min(value, high)


_DEPLOY_USAGE = (
    'POST /api/v1/deployments {"application": str, "environment": str, "revision"?: "sha256:<hex>"|path|"git:REF"'
    '|"github:OWNER/REPO@SHA", "config"?: str, "description"?: str}'
)
_PLAN_USAGE = (
    'POST /api/v1/plan {"application": str, "environment": str, "revision"?: str, "config"?: str, "from"?: ENV}'
)
_UPLOAD_USAGE = "POST /api/v1/revisions with the bundle (.tar.gz) as the raw body, header X-Deploybot-Source"
_LIST_USAGE = "GET /api/v1/deployments?application=APP&environment=ENV&limit=N"
_WATCH_USAGE = "GET /api/v1/deployments/{id}/watch?after=VERSION&wait=SECONDS"
_STOP_USAGE = 'POST /api/v1/deployments/{id}/stop {"rollback"?: true|false|null}'
_PROMOTE_USAGE = (
    'POST /api/v1/applications/{app}/promote {"from": ENV, "to": ENV, "override"?: bool, "revision"?: "sha256:<hex>"}'
)
_LOCK_USAGE = (
    'POST /api/v1/locks {"application": APP|"*", "environment": ENV, "reason"?: str, "expires_in_minutes"?: number}'
    ' (application "*": the global freeze)'
)
_UNLOCK_USAGE = 'DELETE /api/v1/locks {"application": APP|"*", "environment": ENV} or ?application=APP&environment=ENV'
_REJECT_USAGE = 'POST /api/v1/deployments/{id}/reject {"reason"?: str}'
_QUEUE_USAGE = "GET /api/v1/queue?application=APP&environment=ENV"
_STATS_USAGE = "GET /api/v1/applications/{app}/stats?env=ENV&days=N (N from 1 to 365, default 30)"


def _deploy_request(request: web.Request, body: Mapping[str, Any], usage: str) -> DeployRequest:
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise bad_request("'description' must be a string", usage)
    application = _string(body, "application", usage, required=True) or ""
    revision = _string(body, "revision", usage)
    if revision is not None and names_server_path(revision):
        _check_server_path(request.app[DEPLOYER].config, application, revision)
    return DeployRequest(
        application=application,
        environment=_string(body, "environment", usage, required=True) or "",
        revision=revision,
        config_name=_string(body, "config", usage),
        actor=actor_of(request),
        description=description,
        ignore_alarms=body.get("ignore_alarms") is True,
    )


def _check_server_path(config: EngineConfig, application: str, revision: str) -> None:
    """403 unless the server path ``revision`` lies, links followed, under the application's own ``revision`` or a
    ``server.revision_roots`` entry (engine/core/revision_paths.py). The answer is the same whether or not the path
    exists: nothing about a refused path is read or told."""
    roots = [*config.server.revision_roots]
    app = next((a for a in config.applications.values() if a.name.casefold() == application.casefold()), None)
    if app is not None and app.revision and names_server_path(app.revision):
        roots.append(app.revision)
    resolved = os.path.realpath(os.path.join(config.base_dir, revision))
    if path_within(resolved, [os.path.realpath(root) for root in roots]):
        return
    allowed = ", ".join(roots) or "none configured"
    raise HttpProblem(
        403,
        "RevisionPathRefused",
        f"{revision!r} is a path on the server outside where revisions may be read from ({allowed}); upload the "
        "bundle instead (`deploybot deploy --revision DIR` does), or name sha256:, s3://, git: or github:",
        rule="server.revision_roots",
    )


# ---------------------------------------------------------------------------------------------------- handlers


async def healthz(request: web.Request) -> web.Response:
    """Health for load balancers and the CLI's "is the server running?" check; no auth. With the replica registry:
    ``store`` (reachable, backend, migrations) and ``leases`` (the groups this replica drives); 503 and ``ok: false``
    when the store cannot be reached, so a load balancer takes this replica out."""
    replica = request.app.get(REPLICA)
    if replica is None:
        return json_response({"ok": True, "version": VERSION})
    healthy, report = await replica.health()
    return json_response({"ok": healthy, "version": VERSION, **report}, status=200 if healthy else 503)


async def list_replicas(request: web.Request) -> web.Response:
    """The servers on this database: alive or not, and the groups each holds the lease of (its expiry)."""
    replica = request.app.get(REPLICA)
    if replica is None:
        raise HttpProblem(404, "NotFound", "this server keeps no replica registry")
    return json_response(
        {"this": replica.replica_id, "leases": replica.has_leases, "replicas": await replica.replicas()}
    )


async def upload_revision(request: web.Request) -> web.Response:
    """Stream the bundle to a temp file (never into memory), then let the engine validate and store it.

    A JSON body instead names an S3 object the server fetches (``deploybot push``)."""
    if request.content_type == "application/json":
        return await register_s3_revision(request)
    limit = request.app[MAX_BUNDLE]
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    upload_dir = request.app[UPLOAD_DIR]
    upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar.gz", dir=upload_dir)
    path = Path(name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                out.write(chunk)
        if size == 0:
            raise bad_request("the body is empty", _UPLOAD_USAGE)
        source = request.headers.get(SOURCE_HEADER, "").strip()[:500] or "upload"
        application = request.headers.get(APPLICATION_HEADER, "").strip() or None
        stored = await request.app[DEPLOYER].store_revision(path, source=source, application=application)
    finally:
        path.unlink(missing_ok=True)
    return json_response(stored, status=201)


def _too_large(limit: int) -> HttpProblem:
    return HttpProblem(413, "PayloadTooLarge", f"bundles are limited to {limit:,} bytes", limit_bytes=limit)


async def start_deployment(request: web.Request) -> web.Response:
    body = await json_object(request, _DEPLOY_USAGE)
    deploy = _deploy_request(request, body, _DEPLOY_USAGE)
    deployer = request.app[DEPLOYER]
    commit = _github_commit(deploy.revision)
    await authorize(request, Action.DEPLOY, deployer.config.group(deploy.application, deploy.environment))
    if commit is not None:
        deploy = dataclasses.replace(deploy, revision=await _github_revision(request, deploy.application, commit))
    deployment = await deployer.start(deploy)
    return json_response(deployment, status=201)


def _github_commit(revision: str | None) -> CommitRef | None:
    """The commit a ``github:OWNER/REPO@SHA`` revision names (None for any other revision); 400 when malformed."""
    if revision is None or not revision.startswith(GITHUB_REVISION_PREFIX):
        return None
    try:
        return parse_github_revision(revision)
    except ValueError as exc:
        raise bad_request(str(exc), _DEPLOY_USAGE) from None


async def _github_revision(request: web.Request, application: str, commit: CommitRef) -> str:
    """The server downloads the commit with its GitHub credentials, as for a merge: ``sha256:<hex>``."""
    front = request.config_dict.get(GITHUB)
    try:
        if front is None:
            raise GitHubNotConfigured()
        stored = await front.commit_revision(application, commit)
    except RepositoryNotConfigured as exc:
        where = f"its repository is {exc.configured}" if exc.configured else "it has no github.repository"
        raise HttpProblem(
            400,
            "RepositoryNotConfigured",
            f"{exc.repository} is not a GitHub repository of {application}: {where}",
            application=application,
            repository=exc.repository,
            configured=exc.configured,
        ) from None
    except CommitNotFound as exc:
        raise HttpProblem(
            404, "CommitNotFound", f"{exc.repository} has no commit {exc.sha}", repository=exc.repository, sha=exc.sha
        ) from None
    except GitHubNotConfigured:
        raise HttpProblem(
            409,
            "GitHubNotConfigured",
            "this server cannot fetch github: revisions: GitHub is not configured "
            "(set GITHUB_TOKEN, or GITHUB_APP_ID and its key, where `deploybot serve` runs)",
        ) from None
    except GitHubUnavailable as exc:
        raise HttpProblem(
            502, "GitHubUnavailable", f"GitHub failed: {exc}; try again", github_status=exc.status
        ) from None
    return f"sha256:{stored['sha256']}"


async def list_deployments(request: web.Request) -> web.Response:
    """Newest first; without ``application``, the newest across every application."""
    deployer = request.app[DEPLOYER]
    limit = int(_number(request, "limit", 20, 1, 500, _LIST_USAGE))
    application = request.query.get("application") or None
    environment = request.query.get("environment") or None
    if application is not None:
        deployments = await deployer.history(application, environment, limit)
    else:
        if environment is not None:
            raise bad_request("'environment' needs 'application'", _LIST_USAGE)
        deployments = []
        for app in deployer.applications():
            deployments.extend(await deployer.history(str(app["name"]), None, limit))
        deployments.sort(key=lambda d: d.get("created_at") or 0, reverse=True)
        deployments = deployments[:limit]
    return json_response({"deployments": deployments})


async def get_deployment(request: web.Request) -> web.Response:
    return json_response(await request.app[DEPLOYER].get(request.match_info["id"]))


async def deployment_log(request: web.Request) -> web.Response:
    """The append-only audit trail of one deployment: who asked for what, and what happened, in order."""
    return json_response(await request.app[DEPLOYER].event_log(request.match_info["id"]))


async def watch_deployment(request: web.Request) -> web.Response:
    """Long poll: answers as soon as the deployment's version passes ``after`` (or with the current one at ``wait``)."""
    after = int(_number(request, "after", 0, 0, float(2**62), _WATCH_USAGE))
    wait = _number(request, "wait", 25.0, 0, MAX_WATCH_SECONDS, _WATCH_USAGE)
    deployer = request.app[DEPLOYER]
    return json_response(await deployer.watch(request.match_info["id"], after=after, timeout=wait))


async def stop_deployment(request: web.Request) -> web.Response:
    body = await json_object(request, _STOP_USAGE, optional=True)
    rollback = body.get("rollback")
    if rollback is not None and not isinstance(rollback, bool):
        raise bad_request("'rollback' must be true, false or null", _STOP_USAGE)
    group = await deployment_group(request, request.match_info["id"])
    actor = await authorize(request, Action.ROLLBACK if rollback else Action.CONTROL, group)
    deployment = await request.app[DEPLOYER].stop(request.match_info["id"], rollback=rollback, actor=actor)
    return json_response(deployment)


async def control_deployment(request: web.Request) -> web.Response:
    deployer = request.app[DEPLOYER]
    actor = await authorize(request, Action.CONTROL, await deployment_group(request, request.match_info["id"]))
    deployment = await deployer.control(request.match_info["id"], request.match_info["action"], actor=actor)
    return json_response(deployment)


async def rollback_environment(request: web.Request) -> web.Response:
    """Redeploy the last good revision: a new deployment, hence 201."""
    application, environment = request.match_info["app"], request.match_info["env"]
    deployer = request.app[DEPLOYER]
    actor = await authorize(request, Action.ROLLBACK, deployer.config.group(application, environment))
    deployment = await deployer.rollback(application, environment, actor=actor)
    return json_response(deployment, status=201)


async def plan_deployment(request: web.Request) -> web.Response:
    """A dry run; with ``"from": ENV`` it plans the promotion of what last succeeded there."""
    body = await json_object(request, _PLAN_USAGE)
    deploy = _deploy_request(request, body, _PLAN_USAGE)
    if (source := _string(body, "from", _PLAN_USAGE)) is not None:
        deploy = dataclasses.replace(deploy, promoted_from=source, source="promotion")
    return json_response(await request.app[DEPLOYER].plan(deploy))


# ---------------------------------------------------------------------------------------------------- release flow


def _flag(body: Mapping[str, Any], key: str, usage: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"{key!r} must be true or false", usage)
    return value


def _text(body: Mapping[str, Any], key: str, usage: str) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise bad_request(f"{key!r} must be a string", usage)
    return value.strip()[:500]


async def promote_application(request: web.Request) -> web.Response:
    """Deploy to ``to`` the exact bundle that last succeeded in ``from``: a new deployment, hence 201."""
    body = await json_object(request, _PROMOTE_USAGE)
    source = _string(body, "from", _PROMOTE_USAGE, required=True) or ""
    target = _string(body, "to", _PROMOTE_USAGE, required=True) or ""
    deployer = request.app[DEPLOYER]
    actor = await authorize(request, Action.DEPLOY, deployer.config.group(request.match_info["app"], target))
    deployment = await deployer.release.promote(
        request.match_info["app"],
        source,
        target,
        actor=actor,
        override=_flag(body, "override", _PROMOTE_USAGE),
        revision=_string(body, "revision", _PROMOTE_USAGE),
    )
    return json_response(deployment, status=201)


async def where_application(request: web.Request) -> web.Response:
    return json_response(await request.app[DEPLOYER].release.where(request.match_info["app"]))


async def application_stats(request: web.Request) -> web.Response:
    """Delivery numbers (engine/core/delivery.py) of each environment of the application, or of ``env``, over the last
    ``days`` days: what ``deploybot stats`` prints."""
    deployer = request.app[DEPLOYER]
    days = int(_number(request, "days", 30, 1, 365, _STATS_USAGE))
    app = deployer.config.application(request.match_info["app"])
    wanted = request.query.get("env") or None
    environments = [app.environment(wanted)] if wanted else list(app.environments)
    now = deployer.clock.now()
    numbers = await environment_numbers(deployer, app.name, environments, windows=(days,), now=now)
    environments_json = [n.as_json() for n in numbers]
    return json_response({"application": app.name, "days": days, "at": now, "environments": environments_json})


async def list_locks(request: web.Request) -> web.Response:
    return json_response({"locks": await request.app[DEPLOYER].release.locks()})


def _lock_target(source: Mapping[str, Any], usage: str) -> tuple[str, str]:
    application = _string(source, "application", usage, required=True) or ""
    if application == "*":
        return "*", "*"
    return application, _string(source, "environment", usage, required=True) or ""


async def _authorize_lock(request: web.Request, application: str, environment: str) -> str:
    """Locking one environment is its deployers'; the global freeze (``*``) is the admins'."""
    if "*" in (application, environment):
        return await authorize(request, Action.FREEZE, None)
    return await authorize(request, Action.LOCK, request.app[DEPLOYER].config.group(application, environment))


async def create_lock(request: web.Request) -> web.Response:
    body = await json_object(request, _LOCK_USAGE)
    application, environment = _lock_target(body, _LOCK_USAGE)
    minutes = body.get("expires_in_minutes")
    if minutes is not None and (
        isinstance(minutes, bool)
        or not isinstance(minutes, int | float)
        or not 0 < minutes <= MAX_DURATION_SECONDS / 60
    ):
        raise bad_request("'expires_in_minutes' must be a positive number of minutes, at most 10 years", _LOCK_USAGE)
    actor = await _authorize_lock(request, application, environment)
    lock = await request.app[DEPLOYER].release.lock(
        application,
        environment,
        actor=actor,
        reason=_text(body, "reason", _LOCK_USAGE),
        expires_in_minutes=None if minutes is None else float(minutes),
    )
    return json_response(lock, status=201)


async def delete_lock(request: web.Request) -> web.Response:
    body = await json_object(request, _UNLOCK_USAGE, optional=True) or dict(request.query)
    application, environment = _lock_target(body, _UNLOCK_USAGE)
    actor = await _authorize_lock(request, application, environment)
    result = await request.app[DEPLOYER].release.unlock(application, environment, actor=actor)
    return json_response(result)


async def approve_deployment(request: web.Request) -> web.Response:
    actor = await authorize(request, Action.APPROVE, await deployment_group(request, request.match_info["id"]))
    return json_response(await request.app[DEPLOYER].release.approve(request.match_info["id"], actor=actor))


async def reject_deployment(request: web.Request) -> web.Response:
    body = await json_object(request, _REJECT_USAGE, optional=True)
    release = request.app[DEPLOYER].release
    reason = _text(body, "reason", _REJECT_USAGE)
    group = await deployment_group(request, request.match_info["id"])
    # Approvers reject; the requester may withdraw their own request, which is controlling their own deployment.
    row = await request.app[DEPLOYER].store.get_deployment(request.match_info["id"])
    requester = row["created_by"] if row else None
    action = Action.CONTROL if requester == actor_of(request) else Action.APPROVE
    actor = await authorize(request, action, group)
    return json_response(await release.reject(request.match_info["id"], actor=actor, reason=reason))


async def list_queue(request: web.Request) -> web.Response:
    """Deployments waiting (position, ETA, what holds them), then GitHub merges and deployments not yet started
    (``"kind": "merge"``: repository, commit, what they wait for, since when)."""
    application = request.query.get("application") or None
    environment = request.query.get("environment") or None
    if environment is not None and application is None:
        raise bad_request("'environment' needs 'application'", _QUEUE_USAGE)
    queue = await request.app[DEPLOYER].release.queue(application, environment)
    github = request.config_dict.get(GITHUB)
    if github is not None:
        queue = [*queue, *await github.waiting(application, environment)]
    return json_response({"queue": queue})


# ---------------------------------------------------------------------------------------------------- API tokens

_TOKEN_USAGE = (
    f'POST /api/v1/tokens {{"user": USER, "name"?: str, "expires_in"?: {DURATION_FORMAT}}} (admins only; '
    "the answer holds the token, shown this once)"
)


async def _require_admin(request: web.Request) -> str:
    """Tokens are the admins': the bootstrap admin or ``server.admins`` (engine.core.policy's ADMIN)."""
    return await authorize(request, Action.ADMIN, None)


def _label(body: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = _string(body, key, _TOKEN_USAGE, required=default is None) or default or ""
    if len(value) > MAX_LABEL_LENGTH or any(c.isspace() or not c.isprintable() for c in value):
        raise bad_request(f"{key!r} must be at most {MAX_LABEL_LENGTH} printable characters, no spaces", _TOKEN_USAGE)
    return value


async def create_token(request: web.Request) -> web.Response:
    """A new token for a user; the only answer that ever holds it (``Cache-Control: no-store``)."""
    actor = await _require_admin(request)
    body = await json_object(request, _TOKEN_USAGE)
    deployer = request.app[DEPLOYER]
    user, name = _label(body, "user"), _label(body, "name", "default")
    if user == BOOTSTRAP_ADMIN:
        raise bad_request(f"{BOOTSTRAP_ADMIN} is reserved for the bootstrap token (var/api-token)", _TOKEN_USAGE)
    users = deployer.config.users
    if users is not None and user not in users:
        raise bad_request(f"{user!r} is not a declared user (users: {', '.join(sorted(users))})", _TOKEN_USAGE)
    expires_in = None
    if body.get("expires_in") is not None:
        try:
            expires_in = parse_duration(body["expires_in"])
        except ValueError as exc:
            raise bad_request(f"'expires_in': {exc}", _TOKEN_USAGE) from None
    token, plaintext = await deployer.tokens.create(user, name=name, expires_in=expires_in, actor=actor)
    response = json_response({**token.describe(deployer.clock.now()), "token": plaintext}, status=201)
    response.headers["Cache-Control"] = "no-store"
    return response


async def list_tokens(request: web.Request) -> web.Response:
    """Every token (or one user's), with its status; never a token or its hash."""
    await _require_admin(request)
    deployer = request.app[DEPLOYER]
    tokens = await deployer.tokens.list(request.query.get("user") or None)
    now = deployer.clock.now()
    return json_response({"tokens": [token.describe(now) for token in tokens]})


async def revoke_token(request: web.Request) -> web.Response:
    """Refused from the next request on, on every server sharing the store; revoking twice is harmless."""
    actor = await _require_admin(request)
    deployer = request.app[DEPLOYER]
    token = await deployer.tokens.revoke(request.match_info["id"], actor=actor)
    return json_response(token.describe(deployer.clock.now()))


async def list_hosts(request: web.Request) -> web.Response:
    return json_response({"hosts": await request.app[DEPLOYER].hosts()})


async def list_applications(request: web.Request) -> web.Response:
    """Each application with ``source``: where it (and its groups) comes from, "config file" or "API"."""
    deployer = request.app[DEPLOYER]
    applications = [
        {**app, "source": deployer.config.application(app["name"]).origin} for app in deployer.applications()
    ]
    return json_response({"applications": applications})


def create_api_app(
    deployer: DeploymentService,
    *,
    tokens: frozenset[str],
    upload_dir: Path,
    max_bundle_bytes: int = MAX_BUNDLE_BYTES,
) -> web.Application:
    """The ``/api/v1`` sub-application (mount it with ``app.add_subapp("/api/v1", ...)``).

    ``tokens``: the bootstrap secrets (var/api-token, DEPLOYBOT_TOKEN), registered as the bootstrap admin's tokens
    when the app starts; every request is checked against the store, not against these."""
    app = web.Application(middlewares=[json_errors, _require_api_token, idempotent_requests()], client_max_size=1024**2)
    app[DEPLOYER] = deployer
    app[BOOTSTRAP_TOKENS] = tokens
    app.on_startup.append(_register_bootstrap_tokens)
    app[UPLOAD_DIR] = upload_dir
    app[MAX_BUNDLE] = max_bundle_bytes
    deployment = "/deployments/{id}"
    app.add_routes(
        [
            web.post("/revisions", upload_revision),
            web.post("/deployments", start_deployment),
            web.get("/deployments", list_deployments),
            web.get(deployment, get_deployment),
            web.get(deployment + "/watch", watch_deployment),
            web.get(deployment + "/log", deployment_log),
            web.post(deployment + "/stop", stop_deployment),
            web.post(deployment + "/{action:" + "|".join(CONTROL_ACTIONS) + "}", control_deployment),
            web.post("/applications/{app}/environments/{env}/rollback", rollback_environment),
            web.post("/plan", plan_deployment),
            web.post("/applications/{app}/promote", promote_application),
            web.get("/applications/{app}/where", where_application),
            web.get("/applications/{app}/stats", application_stats),
            web.get("/locks", list_locks),
            web.post("/locks", create_lock),
            web.delete("/locks", delete_lock),
            web.post(deployment + "/approve", approve_deployment),
            web.post(deployment + "/reject", reject_deployment),
            web.get("/queue", list_queue),
            web.get("/applications", list_applications),
            web.get("/hosts", list_hosts),
            web.get("/replicas", list_replicas),
            web.post("/tokens", create_token),
            web.get("/tokens", list_tokens),
            web.delete("/tokens/{id}", revoke_token),
        ]
    )
    app.add_routes(external_routes())
    return app
