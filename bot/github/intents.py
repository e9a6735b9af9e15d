"""GitHub's intents (engine/core/intents.py): what a webhook delivery asks for, stored before it is answered.

A delivery is turned into intents inside the webhook request, so the 202 is only sent once they are in the store;
a worker per (application, environment) then drives them from there (bot/github/worker.py), and a restarted
server finds the open ones. Everything here is pure: events in, keys, payloads and views out.

Keys (source ``github``; the repository in lower case):

    github:delivery:<X-GitHub-Delivery id>        kind "delivery", stored done: the event and the keys of the
                                                  intents it made or re-opened, so a redelivery finds them
    github:merge:<owner/repo>:<app>:<env>:<sha>   kind "merge", scope "<app>/<env>": a commit that landed on the
                                                  auto_deploy branch (its push and its merged pull request are one)
    github:deployment:<owner/repo>:<id>           kind "deployment", scope "<app>/<env>": a deployment created on
                                                  GitHub, by its GitHub id
    github:comment:<owner/repo>:<comment id>      kind "comment": a ``/deploy`` comment on a pull request (or an
                                                  issue), by its comment id, so neither a redelivery nor GitHub
                                                  sending it in another delivery acts twice; scope "<app>/<env>"
                                                  for deploy, rollback and plan, else "comments:<owner/repo>#<n>"

A merge's payload keeps what was decided when it arrived: repository, branch, sha, who pushed, the rule's required
checks, their timeout and the deadline. Its ``outcome`` says what it waits for or how it ended:

    {"waiting": "checks" | "download", "message": "waiting for ci/test", "failures": n}   waiting
    {"phase": "starting", "sha256": ..., "asked_at": ...}   about to start: a restart looks for that deployment first
    {"deployment": <id>}                                    done
    {"reason": <Failure>, "message": ...}                   failed (a redelivery, or a green re-run, re-opens it)
    {"by": <sha>, "by_key": <key>}                          superseded by a newer merge of the same scope
    {"retry": true | "reopened_by": <check>, "deadline": ...}   re-opened, with the checks' new deadline

and ``"posted"``: what the commit's status ``deploybot/auto-deploy/<env>`` says now, so each step says only what
changed (a pending wait, then ``deploying as <id>``).

A comment's payload keeps the repository, the issue or pull request number, ``is_pull``, the comment id, the
commenter's login, the words after ``/deploy``, the delivery and the installation; its actor is the deploybot user
of the login (None: not mapped). Its ``outcome`` (bot/github/comments.py) carries ``reply_id`` (the one reply
comment, ``"reply": "creating"`` while it is being made), ``sha`` (the pull request's head, read once) and, like a
merge, ``phase``/``deployment`` or ``reason``/``message``. A failed comment is not re-opened by a redelivery: the
reply said why, and commenting again asks again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.github.notifier import PAYLOAD_KEY
from bot.github.pr_comments import command_line, parse_comment, scope_of_comment
from bot.github.rules import GREEN_CONCLUSIONS, OWN_CONTEXT_PREFIX, applications_of, merge_rules
from bot.policy import actor_from_github
from engine import EngineConfig, IntentState

SOURCE = "github"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1, or SHA-256 repositories


class Kind(StrEnum):
    DELIVERY = "delivery"
    MERGE = "merge"
    DEPLOYMENT = "deployment"
    COMMENT = "comment"


class Failure(StrEnum):
    """Why a merge or a GitHub deployment was not deployed (``outcome["reason"]`` of a failed intent)."""

    REFUSED = "refused"  # the user it acts as may not deploy there
    RED = "red"  # a required check failed
    TIMEOUT = "timeout"  # the required checks did not finish in time
    DOWNLOAD = "download"  # the tarball could not be had (404, or transient errors past the retries)
    INVALID = "invalid"  # the commit is not a deployable revision (AppSpec, bundle)
    ENGINE = "engine"  # the engine refused (a lock, a freeze, an unknown configuration)
    ERROR = "error"  # deploybot itself failed (logged)
    COMMAND = "command"  # a comment deploybot cannot take as a command (the reply says why)


CHECK_FAILURES = frozenset({Failure.RED, Failure.TIMEOUT})
"""Failures a later green check re-opens (a redelivery re-opens any failure)."""


def delivery_key(delivery_id: str) -> str:
    return f"github:delivery:{delivery_id}"


def merge_key(repository: str, application: str, environment: str, sha: str) -> str:
    return f"github:merge:{repository.lower()}:{application}:{environment}:{sha}"


def deployment_key(repository: str, github_id: int) -> str:
    return f"github:deployment:{repository.lower()}:{github_id}"


def comment_key(repository: str, comment_id: int) -> str:
    return f"github:comment:{repository.lower()}:{comment_id}"


def scope_of(application: str, environment: str) -> str:
    return f"{application}/{environment}"


@dataclass(frozen=True, slots=True)
class NewIntent:
    """An intent a delivery asks for, before it is stored."""

    key: str
    kind: Kind
    scope: str
    actor: str | None
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Next:
    """Where one step of the work leaves an intent; the worker writes it to the store."""

    state: IntentState
    outcome: Mapping[str, Any] = field(default_factory=dict)
    not_before: float | None = None
    attempt: bool = False  # one more try of something that failed for a while (the download)

    @classmethod
    def done(cls, **outcome: Any) -> Next:
        return cls(IntentState.DONE, outcome)

    @classmethod
    def failed(cls, reason: Failure, message: str) -> Next:
        return cls(IntentState.FAILED, {"reason": str(reason), "message": message})

    @classmethod
    def waiting(cls, until: float, waiting: str, message: str, *, attempt: bool = False, **extra: Any) -> Next:
        return cls(IntentState.WAITING, {"waiting": waiting, "message": message, **extra}, until, attempt)


# ---------------------------------------------------------------------------------------------------- events in


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def repository_of(data: Mapping[str, Any]) -> str:
    return _text(_object(data.get("repository")).get("full_name"))


def _sender(data: Mapping[str, Any]) -> str:
    return _text(_object(data.get("sender")).get("login"))


def intents_of_event(
    config: EngineConfig, event: str, data: Mapping[str, Any], *, now: float, delivery: str = ""
) -> list[NewIntent]:
    """The merges, GitHub deployments and comment commands a delivery asks for (none for anything else)."""
    repository = repository_of(data)
    installation = _object(data.get("installation")).get("id")
    if not repository:
        return []
    if event == "push":
        ref, sha = _text(data.get("ref")), _text(data.get("after"))
        deleted = data.get("deleted") or not sha.strip("0")
        if not ref.startswith("refs/heads/") or deleted or not _COMMIT_SHA.fullmatch(sha):
            return []  # a tag, or a deleted branch
        pusher = _text(_object(data.get("pusher")).get("name")) or _sender(data) or "github"
        branch = ref.removeprefix("refs/heads/")
        return merge_intents(config, repository, branch, sha, pusher, now=now, installation=installation)
    if event == "pull_request" and data.get("action") == "closed":
        pull = _object(data.get("pull_request"))
        sha = _text(pull.get("merge_commit_sha"))
        if not pull.get("merged") or not _COMMIT_SHA.fullmatch(sha):
            return []
        merger = _text(_object(pull.get("merged_by")).get("login")) or _sender(data) or "github"
        branch = _text(_object(pull.get("base")).get("ref"))
        return merge_intents(config, repository, branch, sha, merger, now=now, installation=installation)
    if event == "deployment" and data.get("action") == "created":
        one = deployment_intent(
            config, repository, _object(data.get("deployment")), _sender(data) or None, installation=installation
        )
        return [one] if one is not None else []
    if event == "issue_comment":
        comment = comment_intent(config, data, delivery=delivery)
        return [comment] if comment is not None else []
    return []


def comment_intent(config: EngineConfig, data: Mapping[str, Any], *, delivery: str = "") -> NewIntent | None:
    """A ``/deploy`` comment just created on a repository that feeds an application (None for anything else: an
    edit, another comment, a bot's comment, a repository deploybot does not deploy)."""
    repository = repository_of(data)
    comment, issue = _object(data.get("comment")), _object(data.get("issue"))
    if data.get("action") != "created" or not repository or not applications_of(config, repository):
        return None
    sender = _object(data.get("sender")) or _object(comment.get("user"))
    if _text(sender.get("type")) == "Bot":
        return None  # deploybot's own replies, and other bots: never commands
    text = command_line(_text(comment.get("body")))
    comment_id, number = comment.get("id"), issue.get("number")
    if text is None or not isinstance(comment_id, int) or not isinstance(number, int):
        return None
    login = _text(sender.get("login"))
    asked = parse_comment(config, repository, text)
    payload = {
        "repository": repository,
        "number": number,
        "is_pull": bool(issue.get("pull_request")),
        "comment_id": comment_id,
        "login": login,
        "text": text,
        "delivery": delivery,
        "installation": _object(data.get("installation")).get("id"),
    }
    return NewIntent(
        comment_key(repository, comment_id),
        Kind.COMMENT,
        scope_of_comment(asked.command, repository, number),
        actor_from_github(config, login) if login else None,
        payload,
    )


def merge_intents(
    config: EngineConfig,
    repository: str,
    branch: str,
    sha: str,
    pushed_by: str,
    *,
    now: float,
    installation: object = None,
) -> list[NewIntent]:
    """One merge intent per environment an auto_deploy rule sends ``branch`` to; each acts as its application's
    integration user (``github.deploy_as``), whoever pushed."""
    intents = []
    for rule in merge_rules(config, repository, branch):
        payload = {
            "repository": repository,
            "branch": branch,
            "sha": sha,
            "pushed_by": pushed_by,
            "application": rule.application,
            "environment": rule.environment,
            "require_checks": list(rule.require_checks),
            "checks_timeout": rule.checks_timeout_seconds,
            "deadline": now + rule.checks_timeout_seconds if rule.require_checks else None,
            "installation": installation,
        }
        intents.append(
            NewIntent(
                merge_key(repository, rule.application, rule.environment, sha),
                Kind.MERGE,
                scope_of(rule.application, rule.environment),
                config.application(rule.application).github_deploy_as,
                payload,
            )
        )
    return intents


def deployment_intent(
    config: EngineConfig,
    repository: str,
    deployment: Mapping[str, Any],
    sender: str | None,
    *,
    installation: object = None,
) -> NewIntent | None:
    """A deployment created on GitHub for an environment deploybot manages (None for one deploybot created itself,
    another task, or an environment it does not know). It acts as the deploybot user of ``sender`` (the webhook's
    sender login, else the deployment's creator); ``actor`` is None when that login maps to nobody."""
    if PAYLOAD_KEY in _object(deployment.get("payload")):
        return None  # one deploybot created itself
    if not str(deployment.get("task") or "deploy").startswith("deploy"):
        return None
    github_id, sha = deployment.get("id"), _text(deployment.get("sha"))
    if not isinstance(github_id, int) or isinstance(github_id, bool) or not _COMMIT_SHA.fullmatch(sha):
        return None
    wanted = _text(deployment.get("environment")).casefold()
    for app in applications_of(config, repository):
        environment = next((e for e in app.environments if e.casefold() == wanted), None)
        if environment is None:
            continue
        login = sender or _text(_object(deployment.get("creator")).get("login"))
        payload = {
            "repository": repository,
            "github_id": github_id,
            "sha": sha,
            "application": app.name,
            "environment": environment,
            "login": login,
            "installation": installation,
        }
        actor = actor_from_github(config, login) if login else None
        return NewIntent(
            deployment_key(repository, github_id), Kind.DEPLOYMENT, scope_of(app.name, environment), actor, payload
        )
    return None


@dataclass(frozen=True, slots=True)
class CheckReport:
    """A status, check run or check suite reported on a commit: a reason to look at its merges again."""

    repository: str
    sha: str
    green: bool
    what: str  # "check run lint success", for the outcome of what it re-opens


def check_report(event: str, data: Mapping[str, Any]) -> CheckReport | None:
    """The report a ``status``, ``check_run`` or ``check_suite`` delivery carries (None for deploybot's own)."""
    repository = repository_of(data)
    if event == "status":
        sha, name, state = _text(data.get("sha")), _text(data.get("context")), _text(data.get("state"))
        green, what = state == "success", f"status {name} {state}"
    elif event in ("check_run", "check_suite"):
        item = _object(data.get(event))
        sha = _text(item.get("head_sha"))
        name = _text(item.get("name")) or _text(_object(item.get("app")).get("name")) or "check suite"
        conclusion = _text(item.get("conclusion"))
        green = item.get("status") == "completed" and conclusion in GREEN_CONCLUSIONS
        what = f"{event.replace('_', ' ')} {name} {conclusion or _text(item.get('status'))}"
    else:
        return None
    if not repository or not sha or name.startswith(OWN_CONTEXT_PREFIX):
        return None
    return CheckReport(repository, sha, green, what)


# ---------------------------------------------------------------------------------------------------- views out

_STATUS_OF_STATE = {str(IntentState.PENDING): "Received", str(IntentState.RUNNING): "Preparing"}
_STATUS_OF_WAIT = {"checks": "WaitingForChecks", "download": "RetryingDownload"}


def queue_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """An open GitHub intent as the queue shows it: what commit, where, waiting for what, since when."""
    payload, outcome = _object(row.get("payload")), _object(row.get("outcome"))
    state = str(row.get("state"))
    if state == IntentState.WAITING:
        status = _STATUS_OF_WAIT.get(_text(outcome.get("waiting")), "Waiting")
    else:
        status = _STATUS_OF_STATE.get(state, state)
    repository, sha = _text(payload.get("repository")), _text(payload.get("sha"))
    message = _text(outcome.get("message")) if state == IntentState.WAITING else ""
    return {
        "kind": "merge" if row.get("kind") == Kind.MERGE else "github-deployment",
        "id": f"{repository}@{sha[:7]}",
        "intent": row.get("key"),
        "application": payload.get("application"),
        "environment": payload.get("environment"),
        "repository": repository,
        "commit": sha,
        "status": status,
        "created_by": row.get("actor"),
        "created_at": row.get("created_at"),
        "since": row.get("created_at"),
        "next_look_at": row.get("not_before") if state == IntentState.WAITING else None,
        "waiting_for": {"message": message or status_words(status)},
    }


def status_words(status: str) -> str:
    return {
        "Received": "received: about to be looked at",
        "Preparing": "checking, downloading or starting it now",
    }.get(status, status)
