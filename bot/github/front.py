"""The GitHub front as one object on the aiohttp app: webhook intake, API client, triggers, workers and notifier.

``receive`` runs inside the webhook request: it stores the delivery's intents (bot/github/intents.py: merges,
GitHub deployments, ``/deploy`` comments) and the delivery itself, re-opens what a redelivery or a green check asks
to try again, and wakes the scope workers (bot/github/worker.py) — all before GitHub gets its answer. A comment's
steps are bot/github/comments.py; its 👀 comes from the background worker right after. The aiohttp client session
(and so everything that talks to GitHub) exists only while the app runs: it is made and closed in a
``cleanup_ctx`` pair, which also registers the GitHubNotifier with the Deployer, resumes the open intents a
previous server left, and stops the workers (their intents stay in the store for the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from gidgethub import BadRequest, sansio

from bot.github.client import GitHubAuth, GitHubClient, GitHubUnavailable
from bot.github.comments import CommentSteps
from bot.github.intents import (
    CHECK_FAILURES,
    SOURCE,
    CheckReport,
    Kind,
    check_report,
    delivery_key,
    intents_of_event,
    queue_entry,
    scope_of,
)
from bot.github.notifier import GitHubNotifier
from bot.github.pr_comments import deployment_reply
from bot.github.revisions import (
    CommitNotFound,
    CommitRef,
    GitHubNotConfigured,
    RepositoryNotConfigured,
    revision_from_commit,
)
from bot.github.rules import CHECKS_TIMEOUT_SECONDS, merge_rules
from bot.github.triggers import DeployTriggers
from bot.github.webhooks import Receipt, Received, router, webhook_handler
from bot.github.worker import IntentWorkers, StepsByKind
from bot.pages.links import page_url
from bot.settings import Settings
from engine import OPEN_INTENT_STATES, DeploymentService, EngineConfig, IntentState

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/github/webhook"
STATE_FILENAME = "github-deployments.json"
_OPEN = tuple(str(state) for state in OPEN_INTENT_STATES)


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
        self.comments: CommentSteps
        self.workers: IntentWorkers
        self.notifier: GitHubNotifier | None = None
        self._running = False

    @property
    def config(self) -> EngineConfig:
        return self.deployer.config

    # -- the webhook's intake (inside the request) ------------------------------------------------------------

    async def receive(self, event: sansio.Event) -> Received:
        """Store what ``event`` asks for before it is answered; a redelivery re-tries what failed."""
        store, now = self.deployer.store, self.deployer.clock.now()
        key = delivery_key(event.delivery_id)
        seen = await store.get_intent(key)
        if seen is not None:
            return await self._redelivered(seen, now)
        keys = []
        for new in intents_of_event(self.config, event.event, event.data, now=now, delivery=event.delivery_id):
            row, added = await store.add_intent(
                new.key,
                source=SOURCE,
                kind=new.kind,
                scope=new.scope,
                actor=new.actor,
                payload=new.payload,
                at=now,
            )
            keys.append(new.key)
            if added and new.kind == Kind.MERGE:
                await self._supersede_failed(row, now)
            self.workers.wake(new.scope)
        report = check_report(event.event, event.data)
        if report is not None:
            keys.extend(await self._look_again(report, now))
        action = event.data.get("action")
        await store.add_intent(
            key,
            source=SOURCE,
            kind=Kind.DELIVERY,
            payload={"event": event.event, "action": action if isinstance(action, str) else None, "intents": keys},
            at=now,
            state=IntentState.DONE,
        )
        self._queue.put_nowait(event)
        return Received(Receipt.QUEUED, tuple(keys))

    async def _redelivered(self, delivery: Mapping[str, Any], now: float) -> Received:
        """The same delivery again (GitHub's Redeliver): the merges and GitHub deployments it asked for and that
        failed are tried again (a comment was answered: commenting again asks again)."""
        retried = []
        for key in delivery["payload"].get("intents") or []:
            row = await self.deployer.store.get_intent(str(key))
            if row is None or row["kind"] == Kind.COMMENT:
                continue
            if row["state"] == IntentState.FAILED and await self._reopen(row, now, retry=True):
                retried.append(str(key))
        return Received(Receipt.RETRYING if retried else Receipt.DUPLICATE, tuple(retried))

    async def _reopen(self, row: Mapping[str, Any], now: float, **why: Any) -> bool:
        """A failed merge or GitHub deployment back to pending, with a fresh deadline for its checks."""
        timeout = float(row["payload"].get("checks_timeout") or CHECKS_TIMEOUT_SECONDS)
        # What the commit (or GitHub deployment) says now, so the next step knows to say something else.
        outcome = {**why, "deadline": now + timeout, "posted": (row["outcome"] or {}).get("message")}
        moved = await self.deployer.store.move_intent(
            row["key"], IntentState.PENDING, at=now, only_from=[IntentState.FAILED], outcome=outcome
        )
        if moved is None:
            return False
        log.info("GitHub: trying %s again (%s)", row["key"], why)
        self.workers.wake(str(row["scope"]))
        return True

    async def _supersede_failed(self, row: Mapping[str, Any], now: float) -> None:
        """A new merge makes older failed ones of its scope moot: neither a re-run nor a redelivery revives them."""
        failed = await self.deployer.store.list_intents(
            source=SOURCE, kind=Kind.MERGE, scope=row["scope"], states=[IntentState.FAILED]
        )
        for older in failed:
            if int(older["seq"]) < int(row["seq"]):
                outcome = {**(older["outcome"] or {}), "by": row["payload"]["sha"], "by_key": row["key"]}
                await self.deployer.store.move_intent(
                    older["key"], IntentState.SUPERSEDED, at=now, only_from=[IntentState.FAILED], outcome=outcome
                )

    async def _look_again(self, report: CheckReport, now: float) -> list[str]:
        """A check reported on a commit: its waiting merges look again now, and a green one re-opens a merge that
        failed on its checks. Returns the keys re-opened."""
        reopened = []
        comments = await self.deployer.store.list_intents(
            source=SOURCE, kind=Kind.COMMENT, states=[IntentState.WAITING]
        )
        for row in comments:
            same_repository = str(row["payload"].get("repository")).lower() == report.repository.lower()
            if same_repository and (row["outcome"] or {}).get("sha") == report.sha:
                self.workers.wake(str(row["scope"]), recheck=True)
        for rule in merge_rules(self.config, report.repository):
            scope = scope_of(rule.application, rule.environment)
            rows = await self.deployer.store.list_intents(
                source=SOURCE, kind=Kind.MERGE, scope=scope, states=[*_OPEN, IntentState.FAILED]
            )
            for row in rows:
                if row["payload"].get("sha") != report.sha:
                    continue
                if row["state"] in _OPEN:
                    self.workers.wake(scope, recheck=True)
                    continue
                failed_on_checks = (row["outcome"] or {}).get("reason") in CHECK_FAILURES
                if report.green and failed_on_checks and await self._reopen(row, now, reopened_by=report.what):
                    reopened.append(str(row["key"]))
        return reopened

    # -- what the API asks -------------------------------------------------------------------------------------

    async def waiting(self, application: str | None = None, environment: str | None = None) -> list[dict[str, Any]]:
        """Open merges and GitHub deployments, oldest first, as the queue shows them."""
        rows = await self.deployer.store.list_intents(source=SOURCE, states=_OPEN)
        entries = [queue_entry(row) for row in rows if row["kind"] in (Kind.MERGE, Kind.DEPLOYMENT)]
        return [
            entry
            for entry in entries
            if application in (None, entry["application"]) and environment in (None, entry["environment"])
        ]

    async def commit_revision(self, application: str, ref: CommitRef) -> dict[str, Any]:
        """Download commit ``ref`` of ``application``'s repository and store it as a revision, as a merge would
        (``deploybot deploy --revision github:...``). Raises RepositoryNotConfigured, GitHubNotConfigured,
        CommitNotFound, GitHubUnavailable (GitHub failed), or the engine's AppSpecInvalid / BundleError."""
        configured = self.config.application(application).github_repository
        if not configured or configured.lower() != ref.repository.lower():
            raise RepositoryNotConfigured(application, ref.repository, configured)
        if not self.auth.usable or not self._running:
            raise GitHubNotConfigured()
        try:
            gh = await self.client.api(configured)
            commit = await gh.getitem(f"/repos/{configured}/commits/{ref.sha}")
        except BadRequest as exc:
            if exc.status_code in (404, 422):
                raise CommitNotFound(configured, ref.sha) from None
            raise GitHubUnavailable(f"looking up {configured}@{ref.sha}", int(exc.status_code)) from None
        sha = str(commit["sha"])
        try:
            return await revision_from_commit(
                self.client, self.deployer, configured, sha, scratch=self.scratch, application=application
            )
        except GitHubUnavailable as exc:
            if exc.status == 404:
                raise CommitNotFound(configured, ref.sha) from None
            raise

    @property
    def scratch(self) -> Path:
        """Where tarballs are unpacked on their way into the revision store."""
        return self.settings.data_dir / "github"

    # -- background work ---------------------------------------------------------------------------------------

    async def idle(self) -> None:
        """Until every received event and every intent is done or parked, and every status posted (tests)."""
        await self._queue.join()
        await self.workers.idle()
        if self.notifier is not None:
            await self.notifier.idle()

    async def _work(self) -> None:
        """What needs no durable record (a pull request's AppSpec check), in arrival order."""
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
                comment_body=deployment_reply,
            )
            self.notifier.start()
            self.deployer.notifiers.append(self.notifier)
        self.triggers = DeployTriggers(
            self.client, self.deployer, self.notifier, scratch=self.scratch, poll_seconds=self.poll_seconds
        )
        self.comments = CommentSteps(
            self.client, self.deployer, self.notifier, scratch=self.scratch, poll_seconds=self.poll_seconds
        )
        steps = StepsByKind(self.triggers, {Kind.COMMENT: self.comments})
        self.workers = IntentWorkers(self.deployer.store, self.deployer.clock, steps, retry_seconds=self.poll_seconds)
        worker = asyncio.ensure_future(self._work())
        self._running = True
        resumed = await self.workers.resume()
        if resumed:
            log.info("GitHub: resumed the open merges and deployments of %d environment(s)", resumed)
        try:
            yield
        finally:
            self._running = False
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await self.workers.close()
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
