"""The CodeDeploy-compatible front: boto3's ``codedeploy`` client (SigV4, JSON 1.1) against ``POST /codedeploy``.

``setup_codedeploy`` is the one entry point for bot/app.py; it mounts nothing unless DEPLOYBOT_AWS_KEYS is set.
DEPLOYBOT_AWS_REGION is the region signatures must be scoped to (``*``: any; unset: us-east-1, see sigv4). Each key
is a deploybot user, and every operation asks the policy (access.py).
GitHub revisions are downloaded with bot/github's client, made (with its own HTTP session) while the app runs when
GitHub credentials exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from bot.codedeploy.access import key_problems
from bot.codedeploy.operations import CodeDeployOperations
from bot.codedeploy.protocol import PATH, CodeDeployEndpoint
from bot.codedeploy.sigv4 import DEFAULT_REGION, parse_keys, parse_region
from bot.github.client import GitHubAuth, GitHubClient
from bot.settings import Settings
from engine import DeploymentService

log = logging.getLogger(__name__)

CODEDEPLOY = web.AppKey("codedeploy", CodeDeployEndpoint)


def setup_codedeploy(
    app: web.Application, settings: Settings, deployer: DeploymentService, *, environ: Mapping[str, str] | None = None
) -> bool:
    """Mount ``POST /codedeploy`` when access keys are configured; False, and nothing mounted, otherwise.

    ``environ`` (default ``os.environ``) gives DEPLOYBOT_AWS_REGION and the GitHub App's credentials. A malformed
    DEPLOYBOT_AWS_KEYS or DEPLOYBOT_AWS_REGION raises ValueError: a server that silently drops its keys (or accepts
    any region instead of the one meant) would look broken later.
    """
    env = os.environ if environ is None else environ
    raw_region = env.get("DEPLOYBOT_AWS_REGION")
    region = parse_region(raw_region)
    keys = parse_keys(settings.aws_keys, region=region)
    if not keys:
        return False
    for problem in key_problems(deployer.config, keys):
        log.warning("DEPLOYBOT_AWS_KEYS: %s", problem)
    operations = CodeDeployOperations(deployer, scratch=settings.data_dir / "codedeploy")
    endpoint = CodeDeployEndpoint(operations, keys)
    app[CODEDEPLOY] = endpoint
    auth = GitHubAuth.from_environment(env, token=settings.github_token)
    if auth.usable:

        async def github_client(_: web.Application) -> AsyncIterator[None]:
            async with aiohttp.ClientSession() as session:
                operations.github = GitHubClient(session, auth, base_url=settings.github_api_url)
                try:
                    yield
                finally:
                    operations.github = None

        app.cleanup_ctx.append(github_client)
    app.router.add_post(PATH, endpoint.handle)
    app.router.add_post(PATH + "/", endpoint.handle)
    unset = "" if (raw_region or "").strip() else f" (DEPLOYBOT_AWS_REGION unset: {DEFAULT_REGION})"
    log.info("CodeDeploy API on %s for %d access key(s), signed for region %s%s", PATH, len(keys), region, unset)
    return True


__all__ = ["CODEDEPLOY", "setup_codedeploy"]
