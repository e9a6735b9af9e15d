"""What GitHub's intents become: merges into an auto_deploy branch and GitHub deployments, deployed step by step.

``DeployTriggers.advance`` is one step of the work on a stored intent (bot/github/intents.py), run by the intent's
scope worker (bot/github/worker.py); it answers where the intent goes next and never sleeps: a wait (for required
checks, before another download) is a ``Next.waiting`` with the time to look again, kept in the store.

A merge: may its integration user deploy there → are its required checks green (pending: a pending commit status
``deploybot/auto-deploy/<environment>`` saying what it waits for, and a look again after ``poll_seconds`` or on
the next check event; red or past the deadline: a failure status) → the commit's tarball, retried on transient
errors (5xx, the network) after ``DOWNLOAD_RETRY_SECONDS`` → claim the start (a newer merge of the scope may have
superseded it) → ``Deployer.start`` with ``source="merge"``, so locks, the queue and approvals apply.

A GitHub deployment: may the deploybot user of its sender deploy there → the tarball (a 404 is a failure status
at once) → ``Deployer.start``, reported on that GitHub deployment by the GitHubNotifier. Every way it can end
without a deployment posts a final deployment status with the reason.

Who asks: a merge acts as the application's integration user (``github.deploy_as``, default ``github``), whoever
pushed; a deployment created on GitHub acts as the deploybot user of its sender's login (bot.policy). Either is
checked with ``engine.may`` before anything is downloaded, so a group whose ``deployers`` list is set deploys merges
only when it lists the integration user, and production with no list never does. A refusal is never silent: it is
appended to the audit log (``deployment.refused``, with the rule) and said on GitHub.

A restart may find an intent whose step had claimed its start (``outcome.phase == "starting"``): the deployment it
asked for is looked up first, so it is not started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from gidgethub import GitHubException

from bot.github.client import GitHubClient, GitHubUnavailable
from bot.github.intents import Failure, Kind, Next
from bot.github.notifier import GitHubNotifier
from bot.github.revisions import revision_from_commit
from bot.github.rules import STATUS_CONTEXT, Verdict, checks_verdict
from bot.github.worker import Claim
from engine import (
    Action,
    AppSpecInvalid,
    Decision,
    DeploymentService,
    DeployRequest,
    EngineConfig,
    EngineError,
    IntentState,
    may,
)

log = logging.getLogger(__name__)

DOWNLOAD_RETRY_SECONDS = (2.0, 10.0, 30.0)
"""The pauses before each new try of a tarball download that failed for a while (like CodeDeploy's agent: 3 more)."""

Say = Callable[[str, str], Awaitable[None]]  # (state, description) on the commit or the GitHub deployment


def transient(exc: BaseException) -> bool:
    """Worth another try later: GitHub's 5xx or 429, the network, a connection cut mid-download."""
    if isinstance(exc, GitHubUnavailable):
        return exc.status is not None and (exc.status >= 500 or exc.status == 429)
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)


def download_problem(repository: str, sha: str, exc: BaseException) -> str:
    if isinstance(exc, GitHubUnavailable) and exc.status == 404:
        return f"commit {sha[:7]} not found in {repository} (HTTP 404)"
    return f"could not download the commit ({type(exc).__name__}: {exc})"


class GitHubSteps:
    """What the steps of GitHub's intents work with: the GitHub client, the Deployer, the notifier (deployment
    statuses), a scratch directory for downloaded commits, and how often to look at pending checks again."""

    def __init__(
        self,
        client: GitHubClient,
        deployer: DeploymentService,
        notifier: GitHubNotifier | None,
        *,
        scratch: Path,
        poll_seconds: float = 15.0,
    ) -> None:
        self.client = client
        self.deployer = deployer
        self.notifier = notifier
        self.scratch = scratch
        self.poll_seconds = poll_seconds

    @property
    def config(self) -> EngineConfig:
        return self.deployer.config


class DeployTriggers(GitHubSteps):
    """The steps of GitHub's intents (the worker's ``Steps``)."""

    async def advance(self, intent: dict[str, Any], claim: Claim) -> Next:
        payload = intent["payload"]
        self.client.remember_installation(str(payload["repository"]), payload.get("installation"))
        started = await self._started_before(intent)
        if started is not None:
            return Next.done(deployment=started)
        if intent["kind"] == Kind.MERGE:
            return await self._advance_merge(intent, claim)
        if intent["kind"] == Kind.DEPLOYMENT:
            return await self._advance_deployment(intent, claim)
        return Next.failed(Failure.ERROR, f"not a GitHub intent deploybot knows: {intent['kind']}")

    async def superseded(self, intent: dict[str, Any], newer: dict[str, Any]) -> None:
        payload, by = intent["payload"], str(newer["payload"].get("sha") or "")
        text = f"not deployed: superseded by {by[:7]}"
        await self._commit_status(payload["repository"], payload["sha"], payload["environment"], "error", text)

    async def _started_before(self, intent: Mapping[str, Any]) -> str | None:
        """The deployment a step started just before a restart (it claimed, then the server stopped)."""
        outcome = intent["outcome"] or {}
        if outcome.get("phase") != "starting":
            return None
        payload = intent["payload"]
        rows = await self.deployer.store.list_deployments(
            application=str(payload["application"]), environment=str(payload["environment"]), limit=20
        )
        for row in rows:
            if row.get("revision_sha256") == outcome["sha256"] and float(row["created_at"]) >= outcome["asked_at"]:
                return str(row["id"])
        return None

    def _may_deploy(self, actor: str | None, application: str, environment: str) -> Decision:
        return may(self.config, actor, Action.DEPLOY, self.config.group(application, environment))

    async def _log_refusal(self, actor: str, application: str, environment: str, *, rule: str, **data: Any) -> None:
        """The audit entry of a refused request: ``deployment.refused`` (as the release flow writes its own), with
        the rule that decided as its reason."""
        await self.deployer.store.append_log(
            "deployment.refused",
            at=self.deployer.clock.now(),
            actor=actor or "(unknown)",
            data={"application": application, "environment": environment, **data, "rule": rule, "reason": rule},
        )

    # -- merges ----------------------------------------------------------------------------------------------

    async def _advance_merge(self, intent: Mapping[str, Any], claim: Claim) -> Next:
        payload = intent["payload"]
        repository, sha = str(payload["repository"]), str(payload["sha"])
        application, environment = str(payload["application"]), str(payload["environment"])
        actor = str(intent["actor"])

        async def say(state: str, text: str) -> None:
            await self._commit_status(repository, sha, environment, state, text)

        decision = self._may_deploy(actor, application, environment)
        if not decision.allowed:
            await self._log_refusal(
                actor,
                application,
                environment,
                source="merge",
                repository=repository,
                commit=sha,
                pushed_by=payload["pushed_by"],
                action=str(decision.action),
                rule=decision.rule,
            )
            text = f"not deployed: {actor} may not deploy ({decision.rule})"
            await say("failure", text)
            return Next.failed(Failure.REFUSED, text)
        posted = (intent["outcome"] or {}).get("posted")
        held = await self._checks_gate(intent, say) if payload.get("require_checks") else None
        fetched = held or await self._fetch(intent, say)
        if isinstance(fetched, Next):
            if fetched.state == IntentState.WAITING and posted and "posted" not in fetched.outcome:
                return dataclasses.replace(fetched, outcome={**fetched.outcome, "posted": posted})
            return fetched
        await claim(fetched)
        request = DeployRequest(
            application,
            environment,
            revision=f"sha256:{fetched}",
            actor=actor,
            description=f"merge into {payload['branch']} ({sha[:7]}) by {payload['pushed_by']}",
            source="merge",
        )
        try:
            document = await self.deployer.start(request)
        except AppSpecInvalid as exc:
            text = f"not deployed: {exc.problems[0]}"
            await say("failure", text)
            return Next.failed(Failure.INVALID, text)
        except EngineError as exc:
            text = f"not deployed: {exc}"
            await say("error", text)
            return Next.failed(Failure.ENGINE, text)
        if posted:  # the commit said it was waiting, or why it was not deployed: it is deploying now
            await say("success", f"deploying as {document['id']}")
        return Next.done(deployment=str(document["id"]))

    async def _checks_gate(self, intent: Mapping[str, Any], say: Say) -> Next | None:
        """None when every required check is green; else where the merge goes (waiting, or failed with a status)."""
        payload, outcome = intent["payload"], intent["outcome"] or {}
        repository, sha = str(payload["repository"]), str(payload["sha"])
        now = self.deployer.clock.now()
        deadline = float(outcome.get("deadline") or payload.get("deadline") or now)
        kept = {"deadline": outcome["deadline"]} if outcome.get("deadline") else {}
        posted = outcome.get("posted")
        try:
            gh = await self.client.api(repository)
            combined = await gh.getitem(f"/repos/{repository}/commits/{sha}/status")
            runs = await gh.getitem(f"/repos/{repository}/commits/{sha}/check-runs")
            verdict, why = checks_verdict(
                payload["require_checks"], combined.get("statuses") or [], runs.get("check_runs") or []
            )
        except (GitHubException, GitHubUnavailable, aiohttp.ClientError, OSError, TimeoutError) as exc:
            verdict, why = Verdict.PENDING, f"waiting for GitHub to answer ({type(exc).__name__})"
            log.info("GitHub: could not read the checks of %s@%s: %s", repository, sha[:7], exc)
        if verdict is Verdict.GREEN:
            return None
        if verdict is Verdict.RED:
            text = f"not deployed: {why}"
            await say("failure", text)
            return Next.failed(Failure.RED, text)
        if now >= deadline:
            text = f"not deployed: timed out {why}"
            await say("failure", text)
            return Next.failed(Failure.TIMEOUT, text)
        if posted != why:
            await say("pending", why)
        return Next.waiting(min(now + self.poll_seconds, deadline), "checks", why, posted=why, **kept)

    async def _commit_status(self, repository: str, sha: str, environment: str, state: str, text: str) -> None:
        """Say on the commit where its deployment stands (best effort: the reason is logged anyway)."""
        log.log(
            logging.INFO if state in ("pending", "success") else logging.WARNING,
            "GitHub: %s@%s → %s: %s",
            repository,
            sha[:7],
            environment,
            text,
        )
        with contextlib.suppress(Exception):
            gh = await self.client.api(repository)
            await gh.post(
                f"/repos/{repository}/statuses/{sha}",
                data={"state": state, "context": f"{STATUS_CONTEXT}/{environment}", "description": text[:140]},
            )

    # -- downloads -------------------------------------------------------------------------------------------

    async def _fetch(self, intent: Mapping[str, Any], say: Say) -> str | Next:
        """The commit as a stored revision (its sha256), or where the intent goes when it cannot be had now."""
        payload, outcome = intent["payload"], intent["outcome"] or {}
        repository, sha = str(payload["repository"]), str(payload["sha"])
        try:
            stored = await revision_from_commit(
                self.client,
                self.deployer,
                repository,
                sha,
                scratch=self.scratch,
                application=str(payload["application"]),
            )
            return str(stored["sha256"])
        except asyncio.CancelledError:
            raise
        except AppSpecInvalid as exc:
            text = f"not deployed: {exc.problems[0]}"
            await say("failure", text)
            return Next.failed(Failure.INVALID, text)
        except EngineError as exc:
            text = f"not deployed: {exc}"
            await say("failure", text)
            return Next.failed(Failure.INVALID, text)
        except Exception as exc:
            failures = int(outcome.get("failures") or 0) if outcome.get("waiting") == "download" else 0
            if transient(exc) and failures < len(DOWNLOAD_RETRY_SECONDS):
                pause = DOWNLOAD_RETRY_SECONDS[failures]
                log.info("GitHub: download of %s@%s failed (%s); retrying in %g s", repository, sha[:7], exc, pause)
                until = self.deployer.clock.now() + pause
                message = f"retrying the download after {type(exc).__name__}: {exc}"[:200]
                return Next.waiting(until, "download", message, attempt=True, failures=failures + 1)
            problem = download_problem(repository, sha, exc)
            state = "error" if transient(exc) else "failure"
            await say(state, f"not deployed: {problem}")
            return Next.failed(Failure.DOWNLOAD, f"not deployed: {problem}")

    # -- GitHub deployments ----------------------------------------------------------------------------------

    def _sender_refusal(self, actor: str | None, login: str, application: str, environment: str) -> str | None:
        """None when the sender of a GitHub deployment may deploy there; else why not (the rule, or what to map)."""
        if actor is None:
            who = login or "(unknown)"
            return (
                f"GitHub user {who} is not mapped to a deploybot user; ask an admin to add `github: {who}` under users:"
            )
        decision = self._may_deploy(actor, application, environment)
        return None if decision.allowed else decision.rule

    async def _advance_deployment(self, intent: Mapping[str, Any], claim: Claim) -> Next:
        payload = intent["payload"]
        repository, sha, github_id = str(payload["repository"]), str(payload["sha"]), int(payload["github_id"])
        application, environment = str(payload["application"]), str(payload["environment"])
        login, actor = str(payload.get("login") or ""), intent["actor"]

        async def say(state: str, text: str) -> None:
            await self._deployment_status(repository, github_id, environment, state, text)

        rule = self._sender_refusal(actor, login, application, environment)
        if rule is not None:
            await self._log_refusal(
                actor or login,
                application,
                environment,
                source="github-deployment",
                repository=repository,
                commit=sha,
                github_deployment=github_id,
                action=str(Action.DEPLOY),
                rule=rule,
            )
            text = f"not deployed: {actor} may not deploy ({rule})" if actor else f"not deployed: {rule}"
            await say("failure", text)
            return Next.failed(Failure.REFUSED, text)
        assert actor is not None  # an unmapped login is always refused
        fetched = await self._fetch(intent, say)
        if isinstance(fetched, Next):
            return fetched
        await claim(fetched)
        if self.notifier is not None:
            self.notifier.expect(application, environment, fetched, repository=repository, github_id=github_id)
        asked_at = self.deployer.clock.now()
        request = DeployRequest(
            application,
            environment,
            revision=f"sha256:{fetched}",
            actor=actor,
            description=f"GitHub deployment {github_id} by {login}",
        )
        try:
            document = await self.deployer.start(request)
        except EngineError as exc:
            if self.notifier is not None:
                self.notifier.forget(application, environment, fetched)
            invalid = isinstance(exc, AppSpecInvalid)
            text = f"not deployed: {exc.problems[0] if isinstance(exc, AppSpecInvalid) else exc}"
            await say("failure" if invalid else "error", text)
            return Next.failed(Failure.INVALID if invalid else Failure.ENGINE, text)
        if document["created_at"] < asked_at and self.notifier is not None:  # the same revision was already going
            self.notifier.forget(application, environment, fetched)
            await say("inactive", f"already deploying this revision as {document['id']}")
        return Next.done(deployment=str(document["id"]))

    async def _deployment_status(
        self, repository: str, github_id: int, environment: str, state: str, text: str
    ) -> None:
        log.warning("GitHub deployment %s of %s: %s (%s)", github_id, repository, state, text)
        with contextlib.suppress(Exception):
            gh = await self.client.api(repository)
            await gh.post(
                f"/repos/{repository}/deployments/{github_id}/statuses",
                data={"state": state, "environment": environment, "description": text[:140]},
            )
