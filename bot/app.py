"""The composition root: builds the aiohttp application from settings and an opened Deployer (no I/O at import).

Each front is its own sub-application with its own auth middleware (``/api/v1`` bearer API token, ``/agent/v1``
per-host agent tokens), so a route can never forget its check. Startup and teardown come in pairs through
``cleanup_ctx``: teardown runs in reverse and only for what started. The Deployer itself is opened and closed by
the caller (``deploybot serve``, or a test), because it outlives the HTTP app during shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from bot.agent_api import create_agent_app
from bot.api import REPLICA, create_api_app, healthz
from bot.codedeploy import setup_codedeploy
from bot.github import setup_github
from bot.http import json_errors
from bot.localfleet import LocalFleet
from bot.pages import setup_pages
from bot.settings import Settings
from bot.slack import setup_slack
from engine import DeploymentService

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DEPLOYER = web.AppKey("deployer", DeploymentService)
LOCAL_FLEET = web.AppKey("local_fleet", LocalFleet)


async def _uploads(app: web.Application) -> AsyncIterator[None]:
    """Leftover uploads of a server that was killed mid-request are garbage: clear them at start and at stop."""
    directory = app[SETTINGS].upload_dir
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("upload-*"):
        stale.unlink(missing_ok=True)
    yield
    for stale in directory.glob("upload-*"):
        stale.unlink(missing_ok=True)


async def _local_fleet(app: web.Application) -> AsyncIterator[None]:
    """Agents start with the app (they retry until the socket accepts) and are terminated before it closes."""
    fleet = app[LOCAL_FLEET]
    await fleet.start()
    try:
        yield
    finally:
        await fleet.stop()


def create_app(
    settings: Settings, *, deployer: DeploymentService, local_fleet: LocalFleet | None = None
) -> web.Application:
    """The server's aiohttp application.

    Args:
        settings: secrets and paths from the environment (``Settings.from_env``).
        deployer: an opened engine.runtime.deployer.Deployer (or a fake of the same shape in tests).
        local_fleet: agent processes to supervise for the app's lifetime (``deploybot serve``'s local hosts).
    """
    tokens = settings.api_tokens()
    if not tokens:
        log.warning(
            "no bootstrap token (DEPLOYBOT_TOKEN or %s): only API tokens already in the database are accepted",
            settings.api_token_file,
        )
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app[DEPLOYER] = deployer
    app.router.add_get("/healthz", healthz)
    api = create_api_app(deployer, tokens=tokens, upload_dir=settings.upload_dir)
    replica = getattr(deployer, "replica", None)  # the served Deployer's (bot/assembly.py); a test's fake has none
    if replica is not None:
        app[REPLICA] = api[REPLICA] = replica
    app.add_subapp("/api/v1", api)
    app.add_subapp("/agent/v1", create_agent_app(deployer.fleet, bundles=deployer.revisions))
    app.cleanup_ctx.append(_uploads)
    setup_slack(app, settings, deployer)
    setup_github(app, settings, deployer)
    setup_codedeploy(app, settings, deployer)
    setup_pages(app, settings, deployer)
    if local_fleet is not None:
        app[LOCAL_FLEET] = local_fleet
        app.cleanup_ctx.append(_local_fleet)
    return app
