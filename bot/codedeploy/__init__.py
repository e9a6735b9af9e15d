"""The CodeDeploy-compatible front: boto3's ``codedeploy`` client (SigV4, JSON 1.1) against ``POST /codedeploy``.

``setup_codedeploy`` is the one entry point for bot/app.py; it mounts nothing unless DEPLOYBOT_AWS_KEYS is set.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from bot.codedeploy.operations import CodeDeployOperations
from bot.codedeploy.protocol import PATH, CodeDeployEndpoint
from bot.codedeploy.sigv4 import parse_keys
from bot.settings import Settings

log = logging.getLogger(__name__)

CODEDEPLOY = web.AppKey("codedeploy", CodeDeployEndpoint)


def setup_codedeploy(app: web.Application, settings: Settings, deployer: Any) -> bool:
    """Mount ``POST /codedeploy`` when access keys are configured; False, and nothing mounted, otherwise.

    A malformed DEPLOYBOT_AWS_KEYS raises ValueError: a server that silently drops its keys would look broken later.
    """
    keys = parse_keys(settings.aws_keys)
    if not keys:
        return False
    endpoint = CodeDeployEndpoint(CodeDeployOperations(deployer), keys)
    app[CODEDEPLOY] = endpoint
    app.router.add_post(PATH, endpoint.handle)
    app.router.add_post(PATH + "/", endpoint.handle)
    log.info("CodeDeploy API on %s for %d access key(s)", PATH, len(keys))
    return True


__all__ = ["CODEDEPLOY", "setup_codedeploy"]
