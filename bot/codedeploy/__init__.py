"""The CodeDeploy-compatible front: boto3's ``codedeploy`` client (SigV4, JSON 1.1) against ``POST /codedeploy``.

``setup_codedeploy`` is the one entry point for bot/app.py; it mounts nothing unless DEPLOYBOT_AWS_KEYS is set.
GitHub revisions are downloaded with bot/github's client, made (with its own HTTP session) while the app runs when
GitHub credentials exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from bot.codedeploy.operations import CodeDeployOperations
from bot.codedeploy.protocol import PATH, CodeDeployEndpoint
from bot.codedeploy.sigv4 import parse_keys
from bot.github.client import GitHubAuth, GitHubClient
from bot.settings import Settings
from engine import DeploymentService

log = logging.getLogger(__name__)

CODEDEPLOY = web.AppKey("codedeploy", CodeDeployEndpoint)


def setup_codedeploy(
    app: web.Application, settings: Settings, deployer: DeploymentService, *, environ: Mapping[str, str] | None = None
) -> bool:
    """Mount ``POST /codedeploy`` when access keys are configured; False, and nothing mounted, otherwise.

    A malformed DEPLOYBOT_AWS_KEYS raises ValueError: a server that silently drops its keys would look broken later.
    """
    keys = parse_keys(settings.aws_keys)
    if not keys:
        return False
    operations = CodeDeployOperations(deployer, scratch=settings.data_dir / "codedeploy")
    endpoint = CodeDeployEndpoint(operations, keys)
    app[CODEDEPLOY] = endpoint
    auth = GitHubAuth.from_environment(os.environ if environ is None else environ, token=settings.github_token)
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
    log.info("CodeDeploy API on %s for %d access key(s)", PATH, len(keys))
    return True


__all__ = ["CODEDEPLOY", "setup_codedeploy"]
