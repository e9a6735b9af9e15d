"""The GitHub front as one object on the aiohttp app: webhook secret, API client, triggers, notifier and worker.

The aiohttp client session (and so everything that talks to GitHub) exists only while the app runs: it is made
and closed in a ``cleanup_ctx`` pair, which also registers the GitHubNotifier with the Deployer and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from gidgethub import sansio

from bot.github.client import GitHubAuth, GitHubClient
from bot.github.notifier import GitHubNotifier
from bot.github.triggers import DeployTriggers
from bot.github.webhooks import router, webhook_handler
from bot.pages.links import page_url
from bot.settings import Settings
from engine import DeploymentService, EngineConfig

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/github/webhook"
STATE_FILENAME = "github-deployments.json"


class GitHubFront:
    def __init__(
        self, settings: Settings, deployer: DeploymentService, auth: GitHubAuth, *, poll_seconds: float = 15.0
    ) -> None:
        self.settings = settings
        self.deployer = deployer
        self.auth = auth
        self.secret = settings.github_webhook_secret
        self.poll_seconds = poll_seconds
        self._queue: asyncio.Queue[sansio.Event] = asyncio.Queue()
        # Made at start-up (they need the running loop's client session):
        self.client: GitHubClient
        self.triggers: DeployTriggers
        self.notifier: GitHubNotifier | None = None

    @property
    def config(self) -> EngineConfig:
        return self.deployer.config

    async def first_delivery(self, delivery_id: str) -> bool:
        return bool(await self.deployer.store.record_delivery(delivery_id, "github", self.deployer.clock.now()))

    def enqueue(self, event: sansio.Event) -> None:
        self._queue.put_nowait(event)

    async def idle(self) -> None:
        """Wait until every received event and what it started (checks, downloads, statuses) is done (tests)."""
        await self._queue.join()
        await self.triggers.idle()
        if self.notifier is not None:
            await self.notifier.idle()

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                repository = (event.data.get("repository") or {}).get("full_name")
                installation = (event.data.get("installation") or {}).get("id")
                if repository:
                    self.client.remember_installation(repository, installation)
                await router.dispatch(event, self)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("GitHub %s event %s failed", event.event, event.delivery_id)
            finally:
                self._queue.task_done()

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        self.client = GitHubClient(session, self.auth, base_url=self.settings.github_api_url)
        if self.auth.usable:
            self.notifier = GitHubNotifier(
                self.client,
                self.config,
                state_file=self.settings.data_dir / STATE_FILENAME,
                public_url=self.config.server.url,
                page_link=lambda deployment_id: page_url(self.settings, deployment_id, base_url=self.config.server.url),
            )
            self.notifier.start()
            self.deployer.notifiers.append(self.notifier)
        self.triggers = DeployTriggers(
            self.client,
            self.deployer,
            self.notifier,
            scratch=self.settings.data_dir / "github",
            poll_seconds=self.poll_seconds,
        )
        worker = asyncio.ensure_future(self._work())
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await self.triggers.close()
            if self.notifier is not None:
                with contextlib.suppress(ValueError):
                    self.deployer.notifiers.remove(self.notifier)
                await self.notifier.close()
            await session.close()


GITHUB = web.AppKey("github", GitHubFront)


def setup_github(
    app: web.Application,
    settings: Settings,
    deployer: DeploymentService,
    *,
    environ: Mapping[str, str] | None = None,
    poll_seconds: float = 15.0,
) -> bool:
    """Mount POST /github/webhook (with GITHUB_WEBHOOK_SECRET) and report deployments to GitHub (with a token or
    a GitHub App); False, and nothing mounted, when neither is configured."""
    auth = GitHubAuth.from_environment(os.environ if environ is None else environ, token=settings.github_token)
    if not settings.github_webhook_secret and not auth.usable:
        return False
    front = GitHubFront(settings, deployer, auth, poll_seconds=poll_seconds)
    app[GITHUB] = front
    if settings.github_webhook_secret:
        app.router.add_post(WEBHOOK_PATH, webhook_handler(front))
    if not auth.usable:
        log.warning("GitHub: webhooks verified but no GITHUB_TOKEN or GitHub App: nothing can be reported back")
    app.cleanup_ctx.append(front.lifecycle)
    return True


def describe(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """One line for ``deploybot serve``: is the GitHub front on, and how does it authenticate."""
    auth = GitHubAuth.from_environment(os.environ if environ is None else environ, token=settings.github_token)
    if not settings.github_webhook_secret and not auth.usable:
        return "GitHub: off (set GITHUB_WEBHOOK_SECRET and GITHUB_TOKEN or GITHUB_APP_ID + key)"
    hook = f"webhook POST {WEBHOOK_PATH}" if settings.github_webhook_secret else "no webhook secret"
    how = f"GitHub App {auth.app_id}" if auth.is_app else "token" if auth.usable else "no credentials"
    return f"GitHub: on ({hook}, {how}, API {settings.github_api_url})"
