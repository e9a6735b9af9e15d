"""Pull-request comments as commands (pure): which comments are commands, what they ask, and the words of the reply.

A comment is a command when its first non-blank line starts with ``/deploy``; the rest of that line is read with
the chat grammar (bot.commands), the same words as Slack, and ``--force`` anywhere on it asks to skip the
required checks. Only the applications of the comment's repository can be named, and when the repository feeds
exactly one, the application may be left out: ``/deploy to staging``, ``/deploy plan to staging``, ``/deploy
rollback in staging``. Comments take deploy, rollback, plan and help; another verb is answered with where to use
it (Slack or the CLI).

Every command gets ONE reply comment, which deploybot edits as things move. It ends with a hidden marker naming
the comment it answers (``<!-- deploybot:reply-to:<id> -->``), so a step that stopped right after creating it finds
it again instead of posting a second one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot import commands as cmd
from bot.github.notifier import github_status
from bot.github.rules import applications_of
from engine import EngineConfig

COMMAND_PREFIX = "/deploy"
MAX_COMMAND_CHARS = 200  # a longer first line is cut here (and then read as the nonsense it is)
FORCE_FLAG = "--force"
TAKEN_VERBS = ("deploy", "rollback", "plan", "help")

PERMISSION_RANK = {"none": 0, "read": 1, "triage": 2, "write": 3, "maintain": 4, "admin": 5}
"""GitHub's repository roles, least first (``role_name`` of the collaborator permission answer)."""

COMMENT_USAGE = (
    "/deploy to ENV [with CONFIG]",
    "/deploy APP to ENV [with CONFIG]",
    "/deploy rollback [APP] in ENV",
    "/deploy plan [APP] to ENV",
    "/deploy help",
)


def command_line(body: str) -> str | None:
    """The words after ``/deploy`` on the comment's first non-blank line; None when the comment is no command."""
    for line in body.splitlines():
        words = line.split(maxsplit=1)
        if not words:
            continue
        if words[0].casefold() != COMMAND_PREFIX:
            return None
        return words[1].strip()[:MAX_COMMAND_CHARS] if len(words) > 1 else ""
    return None


@dataclass(frozen=True, slots=True)
class CommentCommand:
    """What a comment asks: the command (None when it could not be taken), ``--force``, or why it was not taken."""

    command: cmd.Command | None
    force: bool = False
    problem: str | None = None


def catalog_of(config: EngineConfig, repository: str) -> dict[str, list[str]]:
    """The applications a comment on ``repository`` may name: those the repository feeds."""
    return {app.name: list(app.environments) for app in applications_of(config, repository)}


def parse_comment(config: EngineConfig, repository: str, text: str) -> CommentCommand:
    """Parse the words after ``/deploy`` of a comment on ``repository``."""
    words = text.split()
    force = any(word.casefold() == FORCE_FLAG for word in words)
    words = [word for word in words if word.casefold() != FORCE_FLAG]
    catalog = catalog_of(config, repository)
    default = next(iter(catalog)) if len(catalog) == 1 else None
    if default is None and cmd.with_default_application(words, "APP") != words:
        names = ", ".join(catalog)
        return CommentCommand(
            None,
            force,
            f"{repository} feeds several applications ({names}): name one, as in "
            f"`/deploy {next(iter(catalog))} to ENV`",
        )
    try:
        command = cmd.parse_command(" ".join(words), catalog, default_application=default)
    except cmd.ParseError as exc:
        return CommentCommand(None, force, str(exc))
    match command:
        case cmd.Deploy(application, environment, ref, _) if ref:
            return CommentCommand(
                None,
                force,
                f"a comment deploys the pull request's head: drop `@{ref}` (`/deploy {application} to {environment}`)",
            )
        case cmd.Deploy() | cmd.Rollback() | cmd.Plan() | cmd.Help():
            return CommentCommand(command, force)
    verb = words[0].casefold() if words else ""
    return CommentCommand(None, force, f"`/deploy {verb}` is not taken in comments: use Slack or the deploybot CLI")


def scope_of_comment(command: cmd.Command | None, repository: str, number: int) -> str:
    """The worker scope: the environment it acts on (in line with that environment's merges), else the thread."""
    match command:
        case cmd.Deploy(application, environment, _, _) | cmd.Rollback(application, environment):
            return f"{application}/{environment}"
        case cmd.Plan(application, environment):
            return f"{application}/{environment}"
    return f"comments:{repository.lower()}#{number}"


def repository_permission(answer: Mapping[str, Any]) -> str:
    """The commenter's role from ``GET /repos/{r}/collaborators/{login}/permission`` (``role_name`` tells maintain and
    triage apart; ``permission`` alone says write and read for them)."""
    role = str(answer.get("role_name") or "")
    return role if role in PERMISSION_RANK else str(answer.get("permission") or "none")


def permission_allows(have: str, need: str) -> bool:
    return PERMISSION_RANK.get(have, 0) >= PERMISSION_RANK.get(need, PERMISSION_RANK["write"])


# ---------------------------------------------------------------------------------------------------- the reply


@dataclass(frozen=True, slots=True)
class Asked:
    """The comment a reply answers, as the reply tells it."""

    comment_id: int
    number: int
    login: str
    is_pull: bool

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Asked:
        return cls(int(payload["comment_id"]), int(payload["number"]), str(payload["login"]), bool(payload["is_pull"]))

    def as_dict(self) -> dict[str, Any]:
        return {"comment_id": self.comment_id, "number": self.number, "login": self.login, "is_pull": self.is_pull}


def marker(comment_id: int) -> str:
    return f"<!-- deploybot:reply-to:{comment_id} -->"


def reply(asked: Asked, *lines: str) -> str:
    return "\n".join([*lines, "", marker(asked.comment_id)])


def pr_description(number: int, sha: str, login: str) -> str:
    """How a deployment of a pull request's head reads in history, status and on GitHub."""
    return f"PR #{number} (head {sha[:7]}) by @{login}"


def help_reply(asked: Asked) -> str:
    usage = "\n".join(f"- `{line}`" for line in COMMENT_USAGE)
    return reply(
        asked,
        "**deploybot** takes these commands as the first line of a comment:",
        "",
        usage,
        "",
        f"`/deploy to ENV` deploys this pull request's head commit. Add `{FORCE_FLAG}` (admins) to skip the "
        "required checks. APP may be left out when this repository feeds one application.",
    )


def problem_reply(asked: Asked, problem: str) -> str:
    return reply(asked, f"@{asked.login}: :warning: {problem}", "", "Comment `/deploy help` for the commands.")


def refused_reply(asked: Asked, what: str, why: str) -> str:
    return reply(asked, f"@{asked.login}: :no_entry: not {what}: {why}")


def preparing_reply(asked: Asked, what: str, step: str) -> str:
    return reply(asked, f":hourglass_flowing_sand: {what}: {step}")


def plan_reply(asked: Asked, plan: Mapping[str, Any], head: str | None) -> str:
    lines = [f"**Plan: {plan['application']} → {plan['environment']}** ({plan.get('config')})", ""]
    if head:
        lines.append(f"- revision: this pull request's head `{head[:7]}`")
    for gate in plan.get("gates") or []:
        icon = {"clear": ":white_check_mark:", "wait": ":hourglass_flowing_sand:", "refuse": ":no_entry:"}
        lines.append(f"- {icon.get(str(gate.get('state')), '•')} {gate.get('gate')}: {gate.get('message', '')}")
    for index, batch in enumerate(plan.get("batches") or [], 1):
        lines.append(f"- batch {index}: {', '.join(batch)}")
    steps = plan.get("traffic_steps") or []
    if len(steps) > 1:
        lines.append("- traffic: " + " → ".join(f"{s['percent']}%" for s in steps))
    if plan.get("events"):
        lines.append("- events: " + " → ".join(plan["events"]))
    if plan.get("problem"):
        lines.append(f"- :warning: {plan['problem']}")
    if plan.get("blocked"):
        lines.append("- :no_entry: this deployment would be refused now")
    return reply(asked, *lines)


_ICON = {
    "success": ":white_check_mark:",
    "failure": ":x:",
    "error": ":stop_sign:",
    "queued": ":hourglass_flowing_sand:",
    "in_progress": ":rocket:",
}


def deployment_reply(asked: Mapping[str, Any], deployment: Mapping[str, Any], page: str) -> str:
    """The reply while a deployment a comment started moves: its status, a link to its page, and how to roll back
    (the GitHubNotifier edits the reply with this on every change)."""
    who = Asked.of(asked)
    status = github_status(deployment)
    application, environment = deployment["application"], deployment["environment"]
    rollback = str(asked.get("what") or "deploy") == "rollback"
    headline = f"**{application} → {environment}: {deployment['status']}**"
    link = f"[{deployment['id']}]({page})"
    if rollback:
        of = (deployment.get("rollback") or {}).get("of")
        said = f"Rollback {link}" + (f" of {of}" if of else "") + f", asked by @{who.login}."
    else:
        said = f"Deployment {link}: {deployment.get('description') or application}."
    lines = [f"{_ICON.get(status.state, '')} {headline} — {status.description}", "", said]
    if deployment["status"] in ("Succeeded", "Failed", "Stopped") and not rollback:
        lines += ["", f"To roll back: comment `/deploy rollback {application} in {environment}`."]
    return reply(who, *lines)
