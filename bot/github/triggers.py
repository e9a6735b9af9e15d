"""What GitHub events make deploybot deploy: merges into an auto_deploy branch, and GitHub deployments.

A merge (a push to the branch, or the pull request that produced it) is deployed once per commit and environment:
the commit is recorded in the webhook-delivery table under its own key, so the push and the ``closed`` pull request
of the same merge commit start one deployment. With ``require_checks`` the commit waits until every named status
context / check run is green; a red one (or the timeout) cancels with a commit status saying why.

Who asks: a merge acts as the application's integration user (``github.deploy_as``, default ``github``), whoever
pushed; a deployment created on GitHub acts as the deploybot user of its sender's login (bot.policy). Either is
checked with ``engine.may`` before anything is downloaded, so a group whose ``deployers`` list is set deploys merges
only when it lists the integration user, and production with no list never does. A refusal is never silent: it is
appended to the audit log (``deployment.refused``, with the rule) and said on GitHub — a failed commit status
``deploybot/auto-deploy/<environment>`` for a merge, a failed deployment status for a GitHub deployment.

Everything goes through ``Deployer.start`` so locks, the queue and approvals apply; merges carry ``source="merge"``.
Work that can take minutes (waiting for checks, downloading the tarball) runs in its own task, never in the
webhook's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from bot.github.client import GitHubClient
from bot.github.notifier import PAYLOAD_KEY, GitHubNotifier
from bot.github.revisions import revision_from_commit
from bot.policy import actor_from_github
from engine import (
    Action,
    Application,
    AppSpecInvalid,
    Decision,
    DeploymentService,
    DeployRequest,
    EngineConfig,
    EngineError,
    may,
)

log = logging.getLogger(__name__)

DOWNLOAD_RETRY_SECONDS = (2.0, 10.0, 30.0)

GREEN_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})
STATUS_CONTEXT = "deploybot/auto-deploy"
CHECKS_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True, slots=True)
class MergeRule:
    application: str
    environment: str
    branch: str
    require_checks: tuple[str, ...] = ()
    checks_timeout_seconds: float = CHECKS_TIMEOUT_SECONDS


def applications_of(config: EngineConfig, repository: str) -> list[Application]:
    return [a for a in config.applications.values() if (a.github_repository or "").lower() == repository.lower()]


def merge_rules(config: EngineConfig, repository: str, branch: str) -> list[MergeRule]:
    """The auto_deploy rules a merge into ``branch`` of ``repository`` triggers (pure)."""
    rules = []
    for app in applications_of(config, repository):
        auto = app.auto_deploy or {}
        if auto.get("branch") == branch and auto.get("to"):
            # The config parser made these a tuple of strings and a number (engine's Application.auto_deploy).
            checks = auto.get("require_checks") or ()
            minutes = auto.get("checks_timeout_minutes") or 30.0
            rules.append(
                MergeRule(
                    app.name,
                    app.environment(str(auto["to"])),
                    branch,
                    tuple(str(c) for c in checks) if isinstance(checks, tuple | list) else (),
                    float(minutes) * 60.0 if isinstance(minutes, int | float) else CHECKS_TIMEOUT_SECONDS,
                )
            )
    return rules


class Verdict(StrEnum):
    GREEN = "green"
    RED = "red"
    PENDING = "pending"


def checks_verdict(
    required: Sequence[str], statuses: Sequence[Mapping[str, Any]], check_runs: Sequence[Mapping[str, Any]]
) -> tuple[Verdict, str]:
    """Green when every required context is green, red as soon as one is red, else pending (pure)."""
    waiting = []
    for name in required:
        state = _state_of(name, statuses, check_runs)
        if state in ("failure", "error", "cancelled", "timed_out", "action_required", "stale", "startup_failure"):
            return Verdict.RED, f"check {name} is {state}"
        if state != "success":
            waiting.append(name)
    if waiting:
        return Verdict.PENDING, "waiting for " + ", ".join(waiting)
    return Verdict.GREEN, "all required checks passed"


def _state_of(name: str, statuses: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]) -> str:
    status = next((s for s in statuses if s.get("context") == name), None)  # newest first, as GitHub lists them
    if status is not None:
        return str(status.get("state"))
    run = next((r for r in runs if r.get("name") == name), None)
    if run is None:
        return "missing"
    if run.get("status") != "completed":
        return "pending"
    conclusion = str(run.get("conclusion"))
    return "success" if conclusion in GREEN_CONCLUSIONS else conclusion


class DeployTriggers:
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
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> EngineConfig:
        return self.deployer.config

    def spawn(self, work: Awaitable[None], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("GitHub: %s failed", what)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _first_time(self, key: str) -> bool:
        return bool(await self.deployer.store.record_delivery(key, "github", self.deployer.clock.now()))

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

    async def merged(self, repository: str, branch: str, sha: str, actor: str) -> list[MergeRule]:
        """A commit landed on ``branch``: deploy it wherever an auto_deploy rule says (once per environment)."""
        started = []
        for rule in merge_rules(self.config, repository, branch):
            if await self._first_time(f"merge:{repository.lower()}:{rule.application}:{rule.environment}:{sha}"):
                self.spawn(self._deploy_merge(rule, repository, sha, actor), f"deploying {repository}@{sha[:7]}")
                started.append(rule)
        return started

    async def _deploy_merge(self, rule: MergeRule, repository: str, sha: str, pusher: str) -> None:
        actor = self.config.application(rule.application).github_deploy_as
        decision = self._may_deploy(actor, rule.application, rule.environment)
        if not decision.allowed:
            await self._log_refusal(
                actor,
                rule.application,
                rule.environment,
                source="merge",
                repository=repository,
                commit=sha,
                pushed_by=pusher,
                action=str(decision.action),
                rule=decision.rule,
            )
            text = f"not deployed: {actor} may not deploy ({decision.rule})"
            await self._commit_status(repository, sha, rule, "failure", text)
            return
        if rule.require_checks and not await self._wait_for_checks(rule, repository, sha):
            return
        try:
            stored = await self._download(repository, sha, rule)
            if stored is None:
                return
            await self.deployer.start(
                DeployRequest(
                    rule.application,
                    rule.environment,
                    revision=f"sha256:{stored['sha256']}",
                    actor=actor,
                    description=f"merge into {rule.branch} ({sha[:7]}) by {pusher}",
                    source="merge",
                )
            )
        except AppSpecInvalid as exc:
            first = exc.problems[0]
            await self._commit_status(repository, sha, rule, "failure", f"not deployed: {first}")
        except EngineError as exc:
            await self._commit_status(repository, sha, rule, "error", f"not deployed: {exc}")

    async def _download(self, repository: str, sha: str, rule: MergeRule) -> dict[str, Any] | None:
        """The commit as a stored revision; a GitHub hiccup is retried (like CodeDeploy's agent: 3 more tries) and a
        lasting failure is said on the commit, so a merge is never dropped silently."""
        for attempt, pause in enumerate((*DOWNLOAD_RETRY_SECONDS, None)):
            try:
                return await revision_from_commit(
                    self.client, self.deployer, repository, sha, scratch=self.scratch, application=rule.application
                )
            except (AppSpecInvalid, EngineError):
                raise
            except Exception as exc:  # network, GitHub 5xx, a truncated tarball: worth another try
                if pause is None:
                    log.warning("GitHub: giving up on %s@%s after %d tries: %s", repository, sha[:7], attempt + 1, exc)
                    text = f"not deployed: could not download the commit ({type(exc).__name__}: {exc})"
                    await self._commit_status(repository, sha, rule, "error", text[:140])
                    return None
                log.info("GitHub: download of %s@%s failed (%s); retrying in %g s", repository, sha[:7], exc, pause)
                await asyncio.sleep(pause)
        return None

    async def _wait_for_checks(self, rule: MergeRule, repository: str, sha: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rule.checks_timeout_seconds
        while True:
            gh = await self.client.api(repository)
            combined = await gh.getitem(f"/repos/{repository}/commits/{sha}/status")
            runs = await gh.getitem(f"/repos/{repository}/commits/{sha}/check-runs")
            verdict, why = checks_verdict(
                rule.require_checks, combined.get("statuses") or [], runs.get("check_runs") or []
            )
            if verdict is Verdict.GREEN:
                return True
            if verdict is Verdict.RED or loop.time() >= deadline:
                reason = why if verdict is Verdict.RED else f"timed out {why}"
                log.info("GitHub: not deploying %s@%s to %s: %s", repository, sha[:7], rule.environment, reason)
                await self._commit_status(repository, sha, rule, "failure", f"not deployed: {reason}")
                return False
            await asyncio.sleep(min(self.poll_seconds, max(deadline - loop.time(), 0.01)))

    async def _commit_status(self, repository: str, sha: str, rule: MergeRule, state: str, text: str) -> None:
        """Say on the commit why it was not deployed (best effort: the reason is logged anyway)."""
        log.warning("GitHub: %s@%s → %s: %s", repository, sha[:7], rule.environment, text)
        with contextlib.suppress(Exception):
            gh = await self.client.api(repository)
            await gh.post(
                f"/repos/{repository}/statuses/{sha}",
                data={"state": state, "context": f"{STATUS_CONTEXT}/{rule.environment}", "description": text[:140]},
            )

    # -- GitHub deployments ----------------------------------------------------------------------------------

    async def github_deployment(
        self, repository: str, deployment: Mapping[str, Any], sender: str | None = None
    ) -> bool:
        """A deployment created on GitHub for an environment deploybot manages: run it as the deploybot user of
        ``sender`` (the webhook's sender login; else the deployment's creator), if they may (True when taken)."""
        payload = deployment.get("payload")
        if isinstance(payload, Mapping) and PAYLOAD_KEY in payload:
            return False  # one deploybot created itself
        if not str(deployment.get("task") or "deploy").startswith("deploy"):
            return False
        wanted = str(deployment.get("environment") or "").casefold()
        for app in applications_of(self.config, repository):
            environment = next((e for e in app.environments if e.casefold() == wanted), None)
            if environment is not None and await self._first_time(
                f"deployment:{repository.lower()}:{deployment['id']}"
            ):
                work = self._run_deployment(app, environment, repository, deployment, sender)
                self.spawn(work, "a GitHub deployment")
                return True
        return False

    def _sender_refusal(self, actor: str | None, login: str, application: str, environment: str) -> str | None:
        """None when the sender of a GitHub deployment may deploy there; else why not (the rule, or what to map)."""
        if actor is None:
            who = login or "(unknown)"
            return (
                f"GitHub user {who} is not mapped to a deploybot user; ask an admin to add `github: {who}` under users:"
            )
        decision = self._may_deploy(actor, application, environment)
        return None if decision.allowed else decision.rule

    async def _run_deployment(
        self, app: Application, environment: str, repository: str, deployment: Mapping[str, Any], sender: str | None
    ) -> None:
        sha, github_id = str(deployment["sha"]), int(deployment["id"])
        login = sender or str((deployment.get("creator") or {}).get("login") or "")
        actor = actor_from_github(self.config, login)
        rule = self._sender_refusal(actor, login, app.name, environment)
        if rule is not None:
            await self._log_refusal(
                actor or login,
                app.name,
                environment,
                source="github-deployment",
                repository=repository,
                commit=sha,
                github_deployment=github_id,
                action=str(Action.DEPLOY),
                rule=rule,
            )
            text = f"not deployed: {actor} may not deploy ({rule})" if actor else f"not deployed: {rule}"
            await self._deployment_status(repository, github_id, environment, "failure", text)
            return
        assert actor is not None  # an unmapped login is always refused
        try:
            stored = await revision_from_commit(
                self.client, self.deployer, repository, sha, scratch=self.scratch, application=app.name
            )
            if self.notifier is not None:
                self.notifier.expect(
                    app.name, environment, stored["sha256"], repository=repository, github_id=github_id
                )
            asked_at = self.deployer.clock.now()
            document = await self.deployer.start(
                DeployRequest(
                    app.name,
                    environment,
                    revision=f"sha256:{stored['sha256']}",
                    actor=actor,
                    description=f"GitHub deployment {github_id} by {login}",
                )
            )
        except AppSpecInvalid as exc:
            await self._deployment_status(repository, github_id, environment, "failure", str(exc.problems[0]))
            return
        except EngineError as exc:
            await self._deployment_status(repository, github_id, environment, "error", str(exc))
            return
        if document["created_at"] < asked_at and self.notifier is not None:  # the same revision was already going
            self.notifier.forget(app.name, environment, stored["sha256"])
            text = f"already deploying this revision as {document['id']}"
            await self._deployment_status(repository, github_id, environment, "inactive", text)

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
