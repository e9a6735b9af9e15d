"""Server-rendered deployment pages (signed links, SSE live updates) and Prometheus metrics on the main server.

``setup_pages`` is the one entry point for bot/app.py.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from aiohttp import web

from bot.pages.access import PAGES_SETTINGS, login, page_access
from bot.pages.links import page_url, sign, verify
from bot.pages.metrics import METRICS, EventDurations, create_metrics, metrics_endpoint, timing_middleware
from bot.pages.views import PAGES_DEPLOYER, detail_page, event_stream, list_page
from bot.settings import Settings
from engine import DeploymentService

__all__ = ["page_url", "setup_pages", "sign", "verify"]


async def _observe_events(
    app: web.Application, *, deployer: DeploymentService, durations: EventDurations
) -> AsyncIterator[None]:
    """The duration listener listens for the app's lifetime only (paired start/stop, like the other fronts)."""
    deployer.event_listeners.append(durations)
    try:
        yield
    finally:
        deployer.event_listeners.remove(durations)


def setup_pages(app: web.Application, settings: Settings, deployer: DeploymentService) -> None:
    """Add the pages, ``/login`` and ``/metrics`` to ``app`` and register the event-duration listener."""
    metrics = create_metrics(deployer)
    app[PAGES_SETTINGS] = settings
    app[PAGES_DEPLOYER] = deployer
    app[METRICS] = metrics
    app.middlewares.append(timing_middleware(metrics))
    app.cleanup_ctx.append(functools.partial(_observe_events, deployer=deployer, durations=metrics.durations))
    app.router.add_get("/login", login)
    app.router.add_post("/login", login)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/deployments", page_access(list_page))
    app.router.add_get("/deployments/{id}", page_access(detail_page))
    app.router.add_get("/deployments/{id}/events", page_access(event_stream))
