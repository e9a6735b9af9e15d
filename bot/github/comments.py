"""Deploy from a pull-request comment: the steps of a stored ``/deploy`` comment (bot/github/intents.py, kind
"comment"), run by the scope worker of the environment it names (bot/github/worker.py), and the 👀 reaction.

The webhook request stores the comment as an intent keyed by its comment id (its delivery keeps the key), so a
redelivery or a restart never acts twice; the front's background worker reacts with 👀 at once. The step then:

- **who**: the commenter's login becomes a deploybot user (bot.policy.actor_from_github; an unmapped login is
  refused, told which line to add) and ``engine.may`` decides (DEPLOY, or ROLLBACK for a rollback);
- **may they here**: their repository permission (``GET /repos/{r}/collaborators/{login}/permission``) must reach
  the application's ``github.comment_permission`` (write by default; maintain or admin);
- **is it still true**: a deploy reads the pull request once (open, its head commit, kept in the intent), and the
  application's required checks (``auto_deploy.require_checks``) must be green on that commit — pending ones are
  waited for like a merge's, until ``checks_timeout_minutes`` — unless the comment says ``--force`` and its author
  is a deploybot admin (``may(ADMIN)``);
- then the head's tarball becomes a revision (as merges do), the start is claimed, and ``Deployer.start`` runs it
  with the description ``PR #12 (head abc1234) by @login`` (what history, status, the page and the GitHub deployment
  show); the GitHubNotifier reports it as a GitHub deployment and edits the reply as it moves.

Every command gets one reply comment: created at the first thing worth saying, then edited (refusal, waiting for
checks, the deployment's status with its page link and the rollback hint, a plan, the help). A refusal names the
rule and is appended to the audit log (``deployment.refused``). Plan and help are read-only and answered to
anyone who may comment; deploy and rollback need the permission above.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from gidgethub import BadRequest, GitHubException

from bot import commands as cmd
from bot.github.client import GitHubClient, GitHubUnavailable
from bot.github.intents import Failure, Next
from bot.github.pr_comments import (
    Asked,
    CommentCommand,
    deployment_reply,
    help_reply,
    marker,
    parse_comment,
    permission_allows,
    plan_reply,
    pr_description,
    preparing_reply,
    problem_reply,
    refused_reply,
    repository_permission,
)
from bot.github.revisions import revision_from_commit
from bot.github.rules import Verdict, checks_verdict, merge_rules
from bot.github.triggers import DOWNLOAD_RETRY_SECONDS, GitHubSteps, download_problem, transient
from bot.github.worker import Claim
from engine import (
    ROLLBACK_CREATOR,
    Action,
    AppSpecInvalid,
    DeployRequest,
    EngineError,
    IntentState,
    may,
)

log = logging.getLogger(__name__)

REACTION = "eyes"
_GITHUB_ERRORS = (GitHubException, GitHubUnavailable, aiohttp.ClientError, OSError, TimeoutError)


async def react(client: GitHubClient, repository: str, comment_id: int) -> None:
    """👀 on the comment: deploybot saw it (best effort; the reply follows from the stored intent)."""
    try:
        gh = await client.api(repository)
        await gh.post(f"/repos/{repository}/issues/comments/{comment_id}/reactions", data={"content": REACTION})
    except _GITHUB_ERRORS as exc:
        log.warning("GitHub: could not react to comment %s on %s: %s", comment_id, repository, exc)


class _Refused(Exception):
    """A comment deploybot will not act on: the rule (or the reason) that decided, as the reply words it."""

    def __init__(self, what: str, why: str, reason: Failure = Failure.REFUSED) -> None:
        super().__init__(why)
        self.what, self.why, self.reason = what, why, reason


class CommentSteps(GitHubSteps):
    """The steps of comment intents (the worker's ``Steps`` for kind "comment")."""

    async def superseded(self, intent: dict[str, Any], newer: dict[str, Any]) -> None:
        """Comments are never superseded (only merges are)."""

    async def advance(self, intent: dict[str, Any], claim: Claim) -> Next:
        run = _Run(self, intent)
        payload = intent["payload"]
        self.client.remember_installation(str(payload["repository"]), payload.get("installation"))
        started = await run.started_before()
        if started is not None:
            await run.follow(started)
            return run.done(deployment=started)
        asked = parse_comment(self.config, str(payload["repository"]), str(payload["text"]))
        try:
            return await self._act(run, asked, claim)
        except _Refused as refusal:
            await run.refuse(refusal)
            return run.failed(refusal.reason, f"not {refusal.what}: {refusal.why}")

    async def _act(self, run: _Run, asked: CommentCommand, claim: Claim) -> Next:
        match asked.command:
            case None:
                await run.say(problem_reply(run.asked, asked.problem or "not a command"))
                return run.failed(Failure.COMMAND, asked.problem or "not a command")
            case cmd.Help():
                await run.say(help_reply(run.asked))
                return run.done(answered="help")
            case cmd.Plan(application, environment):
                return await self._plan(run, application, environment)
            case cmd.Rollback(application, environment):
                return await self._rollback(run, application, environment)
            case cmd.Deploy(application, environment, _, config):
                return await self._deploy(run, asked, application, environment, config, claim)
        return run.failed(Failure.COMMAND, f"not taken in comments: {asked.command}")

    # -- who, and may they -----------------------------------------------------------------------------------

    async def _check_caller(self, run: _Run, action: Action, what: str, application: str, environment: str) -> str:
        """The deploybot user the commenter acts as, once the policy and their repository permission allow
        ``action`` there; raises _Refused (logged to the audit log) otherwise."""
        login, actor = run.asked.login, run.intent["actor"]
        if actor is None:
            rule = f"GitHub user {login} is not mapped to a deploybot user; ask an admin to add `github: {login}`"
            rule += " under users:"
            await self._log_refusal(run, login, application, environment, action, rule)
            raise _Refused(what, rule)
        decision = may(self.config, str(actor), action, self.config.group(application, environment))
        if not decision.allowed:
            await self._log_refusal(run, str(actor), application, environment, action, decision.rule)
            raise _Refused(what, f"{actor} may not {action} there ({decision.rule})")
        need = self.config.application(application).github_comment_permission
        have = await self._repository_permission(run.repository, login)
        if not permission_allows(have, need):
            rule = f"github.comment_permission of {application}: {need}"
            await self._log_refusal(run, str(actor), application, environment, action, rule, permission=have)
            raise _Refused(what, f"@{login} has {have} permission on {run.repository}; this needs {need} ({rule})")
        return str(actor)

    async def _repository_permission(self, repository: str, login: str) -> str:
        try:
            gh = await self.client.api(repository)
            answer = await gh.getitem(f"/repos/{repository}/collaborators/{login}/permission")
        except BadRequest as exc:
            if exc.status_code == 404:
                return "none"  # not a collaborator
            why = f"GitHub did not say {login}'s permission (HTTP {exc.status_code})"
            raise _Refused("taken", why, Failure.ERROR) from None
        except _GITHUB_ERRORS as exc:
            raise _Refused("taken", f"GitHub did not say {login}'s permission ({exc})", Failure.ERROR) from None
        return repository_permission(answer)

    async def _log_refusal(
        self,
        run: _Run,
        actor: str,
        application: str,
        environment: str,
        action: Action,
        rule: str,
        **data: Any,
    ) -> None:
        await self.deployer.store.append_log(
            "deployment.refused",
            at=self.deployer.clock.now(),
            actor=actor or "(unknown)",
            data={
                "application": application,
                "environment": environment,
                "source": "pull-request-comment",
                "repository": run.repository,
                "pull_request": run.asked.number,
                "comment": run.asked.comment_id,
                "login": run.asked.login,
                "action": str(action),
                **data,
                "rule": rule,
                "reason": rule,
            },
        )

    # -- the commands ----------------------------------------------------------------------------------------

    async def _plan(self, run: _Run, application: str, environment: str) -> Next:
        actor = run.intent["actor"] or run.asked.login
        plan = await self.deployer.plan(DeployRequest(application, environment, actor=str(actor)))
        head = await self._head(run) if run.asked.is_pull else None
        await run.say(plan_reply(run.asked, plan, head))
        return run.done(answered="plan")

    async def _rollback(self, run: _Run, application: str, environment: str) -> Next:
        what = f"rolling back {application} in {environment}"
        actor = await self._check_caller(run, Action.ROLLBACK, what, application, environment)
        await run.claim_start("rollback")
        try:
            document = await self.deployer.rollback(application, environment, actor=actor)
        except EngineError as exc:
            raise _Refused(what, str(exc), Failure.ENGINE) from None
        await run.follow(str(document["id"]), what="rollback")
        return run.done(deployment=str(document["id"]))

    async def _deploy(
        self,
        run: _Run,
        asked: CommentCommand,
        application: str,
        environment: str,
        config_name: str | None,
        claim: Claim,
    ) -> Next:
        what = f"deploying to {environment}"
        if not run.asked.is_pull:
            raise _Refused(
                what,
                f"#{run.asked.number} is an issue, not a pull request: comment on the pull request to deploy",
                Failure.COMMAND,
            )
        actor = await self._check_caller(run, Action.DEPLOY, what, application, environment)
        if asked.force:
            decision = may(self.config, actor, Action.ADMIN, None)
            if not decision.allowed:
                raise _Refused(what, f"only admins may skip the required checks with --force ({decision.rule})")
        sha = await self._head(run)
        doing = f"deploying PR #{run.asked.number} ({sha[:7]}) to {application}/{environment}"
        if not asked.force:
            held = await self._checks_gate(run, application, sha, doing)
            if held is not None:
                return held
        await run.say(preparing_reply(run.asked, doing, "downloading the commit"))
        fetched = await self._fetch(run, application, sha, doing)
        if isinstance(fetched, Next):
            return fetched
        await claim(fetched)
        request = DeployRequest(
            application,
            environment,
            revision=f"sha256:{fetched}",
            config_name=config_name,
            actor=actor,
            description=pr_description(run.asked.number, sha, run.asked.login),
        )
        try:
            document = await self.deployer.start(request)
        except AppSpecInvalid as exc:
            raise _Refused(what, str(exc.problems[0]), Failure.INVALID) from None
        except EngineError as exc:
            raise _Refused(what, str(exc), Failure.ENGINE) from None
        await run.follow(str(document["id"]))
        return run.done(deployment=str(document["id"]))

    async def _head(self, run: _Run) -> str:
        """The pull request's head commit, read once and kept (a resumed step deploys the same commit)."""
        if run.outcome.get("sha"):
            return str(run.outcome["sha"])
        try:
            gh = await self.client.api(run.repository)
            pull = await gh.getitem(f"/repos/{run.repository}/pulls/{run.asked.number}")
        except _GITHUB_ERRORS as exc:
            why = f"GitHub did not give pull request #{run.asked.number} ({exc})"
            raise _Refused("taken", why, Failure.ERROR) from None
        if pull.get("state") != "open":
            raise _Refused("deployed", f"pull request #{run.asked.number} is {pull.get('state')}")
        sha = str(pull["head"]["sha"])
        run.outcome["sha"] = sha
        await run.note()
        return sha

    async def _checks_gate(self, run: _Run, application: str, sha: str, doing: str) -> Next | None:
        """None when the application's required checks are green on ``sha``; else waiting, or _Refused."""
        rules = [r for r in merge_rules(self.config, run.repository) if r.application == application]
        required = rules[0].require_checks if rules else ()
        if not required:
            return None
        now = self.deployer.clock.now()
        deadline = float(run.outcome.get("deadline") or now + rules[0].checks_timeout_seconds)
        try:
            gh = await self.client.api(run.repository)
            combined = await gh.getitem(f"/repos/{run.repository}/commits/{sha}/status")
            runs = await gh.getitem(f"/repos/{run.repository}/commits/{sha}/check-runs")
            verdict, why = checks_verdict(required, combined.get("statuses") or [], runs.get("check_runs") or [])
        except _GITHUB_ERRORS as exc:
            verdict, why = Verdict.PENDING, f"waiting for GitHub to answer ({type(exc).__name__})"
        if verdict is Verdict.GREEN:
            return None
        hint = "an admin may add --force"
        if verdict is Verdict.RED:
            raise _Refused("deployed", f"{why} (required by auto_deploy.require_checks; {hint})", Failure.RED)
        if now >= deadline:
            raise _Refused("deployed", f"timed out {why} ({hint})", Failure.TIMEOUT)
        await run.say(preparing_reply(run.asked, doing, f"{why} (required checks)"))
        return run.waiting(min(now + self.poll_seconds, deadline), "checks", why, deadline=deadline)

    async def _fetch(self, run: _Run, application: str, sha: str, doing: str) -> str | Next:
        try:
            stored = await revision_from_commit(
                self.client, self.deployer, run.repository, sha, scratch=self.scratch, application=application
            )
            return str(stored["sha256"])
        except asyncio.CancelledError:
            raise
        except AppSpecInvalid as exc:
            raise _Refused("deployed", str(exc.problems[0]), Failure.INVALID) from None
        except EngineError as exc:
            raise _Refused("deployed", str(exc), Failure.INVALID) from None
        except Exception as exc:
            failures = int(run.outcome.get("failures") or 0) if run.outcome.get("waiting") == "download" else 0
            if transient(exc) and failures < len(DOWNLOAD_RETRY_SECONDS):
                until = self.deployer.clock.now() + DOWNLOAD_RETRY_SECONDS[failures]
                message = f"retrying the download after {type(exc).__name__}: {exc}"[:200]
                await run.say(preparing_reply(run.asked, doing, message))
                return run.waiting(until, "download", message, attempt=True, failures=failures + 1)
            raise _Refused("deployed", download_problem(run.repository, sha, exc), Failure.DOWNLOAD) from None


class _Run:
    """One step on one comment intent: its reply comment, and what it notes in the intent as it goes."""

    def __init__(self, steps: CommentSteps, intent: Mapping[str, Any]) -> None:
        self.steps, self.intent = steps, intent
        self.payload = intent["payload"]
        self.repository = str(self.payload["repository"])
        self.asked = Asked.of(self.payload)
        kept = ("reply_id", "reply", "sha", "phase", "sha256", "asked_at", "deadline", "waiting", "failures")
        self.outcome: dict[str, Any] = {k: v for k, v in (intent["outcome"] or {}).items() if k in kept}

    # -- where the intent goes

    def _kept(self) -> dict[str, Any]:
        return {k: self.outcome[k] for k in ("reply_id", "sha") if self.outcome.get(k) is not None}

    def done(self, **outcome: Any) -> Next:
        return Next(IntentState.DONE, {**self._kept(), **outcome})

    def failed(self, reason: Failure, message: str) -> Next:
        return Next(IntentState.FAILED, {**self._kept(), "reason": str(reason), "message": message})

    def waiting(self, until: float, waiting: str, message: str, *, attempt: bool = False, **extra: Any) -> Next:
        outcome = {**self._kept(), "waiting": waiting, "message": message, **extra}
        return Next(IntentState.WAITING, outcome, until, attempt)

    async def note(self) -> None:
        """Record progress in the running intent now (a reply comment made, the head read), for a restart."""
        store, clock = self.steps.deployer.store, self.steps.deployer.clock
        latest = await store.get_intent(str(self.intent["key"]))
        merged = {**((latest or self.intent)["outcome"] or {}), **self.outcome}
        await store.move_intent(
            str(self.intent["key"]),
            IntentState.RUNNING,
            at=clock.now(),
            only_from=[IntentState.RUNNING],
            outcome=merged,
        )

    async def claim_start(self, what: str) -> None:
        """A rollback is about to start: a restart from here looks for it before asking again."""
        self.outcome.update(phase="starting", sha256=what, asked_at=self.steps.deployer.clock.now())
        await self.note()

    async def started_before(self) -> str | None:
        """The deployment a step started just before a restart (it claimed its start, then the server stopped)."""
        if self.outcome.get("phase") != "starting":
            return None
        rows = await self.steps.deployer.store.list_deployments(limit=50)
        asked_at, sha256 = float(self.outcome["asked_at"]), str(self.outcome["sha256"])
        for row in rows:
            if float(row["created_at"]) < asked_at:
                continue
            if sha256 == "rollback" and row.get("created_by") == ROLLBACK_CREATOR and row.get("rollback_of"):
                return str(row["id"])
            description = str(row.get("description") or "")
            if row.get("revision_sha256") == sha256 and description.startswith(f"PR #{self.asked.number} "):
                return str(row["id"])
        return None

    # -- the reply

    async def say(self, body: str) -> None:
        """Create the one reply comment, or edit it (best effort: GitHub failing never stops the work)."""
        try:
            gh = await self.steps.client.api(self.repository)
            reply_id = self.outcome.get("reply_id")
            if reply_id is None and self.outcome.get("reply") == "creating":
                reply_id = await self._find_reply()
            if reply_id is not None:
                await gh.patch(f"/repos/{self.repository}/issues/comments/{reply_id}", data={"body": body})
                self.outcome["reply_id"] = reply_id
                return
            self.outcome["reply"] = "creating"
            await self.note()
            thread = f"/repos/{self.repository}/issues/{self.asked.number}/comments"
            created = await gh.post(thread, data={"body": body})
            self.outcome["reply_id"] = int(created["id"])
            self.outcome.pop("reply", None)
            await self.note()
        except _GITHUB_ERRORS as exc:
            log.warning("GitHub: could not reply to comment %s on %s: %s", self.asked.comment_id, self.repository, exc)

    async def _find_reply(self) -> int | None:
        """The reply a step created right before a restart, by its marker."""
        gh = await self.steps.client.api(self.repository)
        mark = marker(self.asked.comment_id)
        async for comment in gh.getiter(f"/repos/{self.repository}/issues/{self.asked.number}/comments"):
            if mark in str(comment.get("body") or ""):
                return int(comment["id"])
        return None

    async def refuse(self, refusal: _Refused) -> None:
        log.info("GitHub: comment %s on %s not acted on: %s", self.asked.comment_id, self.repository, refusal.why)
        await self.say(refused_reply(self.asked, refusal.what, refusal.why))

    async def follow(self, deployment_id: str, *, what: str = "deploy") -> None:
        """Say where the deployment stands; from now on the GitHubNotifier edits the reply as it moves."""
        notifier = self.steps.notifier
        if notifier is None:
            return
        asked = {**self.asked.as_dict(), "what": what}
        body = deployment_reply(asked, await self.steps.deployer.get(deployment_id), notifier.page_link(deployment_id))
        await self.say(body)
        reply_id = self.outcome.get("reply_id")
        if reply_id is None:
            return
        notifier.follow_comment(
            deployment_id, repository=self.repository, reply_id=int(reply_id), asked=asked, body=body
        )
        await notifier.deployment_changed(await self.steps.deployer.get(deployment_id))
