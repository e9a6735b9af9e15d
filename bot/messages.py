"""Deployment JSON -> chat messages (pure): the Block Kit parent message of a deployment's Slack thread, and the
milestones worth a thread reply between two versions of the same deployment.

The parent message is rebuilt from scratch from the latest deployment JSON each time (and edited in place), so it
can never drift from the engine's state; milestones are the only thing computed from a difference.

Each button carries what it was rendered for (``ButtonState``: the deployment id, its status, whether it was paused,
and for Promote the exact revision sha256 of the thread) as compact JSON in its ``value``, so a click acts on what the
person saw or is told what changed (bot/slack/clicks.py). Rollback, Promote and Stop ask for confirmation first.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from engine import FINAL_STATUSES

ACTIVE = frozenset({"Created", "InProgress", "Ready", "Baking"})
ACTION_PREFIX = "deploy."
STATUS_ICON = {
    "Created": ":hourglass_flowing_sand:",
    "Queued": ":double_vertical_bar:",
    "WaitingApproval": ":raised_hand:",
    "InProgress": ":arrows_counterclockwise:",
    "Ready": ":large_blue_circle:",
    "Baking": ":fire:",
    "Succeeded": ":white_check_mark:",
    "Failed": ":x:",
    "Stopped": ":octagonal_sign:",
}
LOG_TAIL_CHARS = 1500
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{3,}$")  # Slack user ids; CLI user names are lower case
_DEPLOYMENT_ID = re.compile(r"^d-[A-Za-z0-9]{1,64}$")


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What the deployment JSON does not say but the message shows."""

    github_repository: str | None = None  # OWNER/NAME: commit and compare links
    previous_commit: str | None = None  # what ran before, for the compare link
    next_environment: str | None = None  # the "Promote to ..." button
    note: str | None = None  # the last click: who did what, and what happened
    approvers: tuple[str, ...] = ()  # who may approve, as Slack ids or names (mentioned while it waits)


@dataclass(frozen=True, slots=True)
class ButtonState:
    """What a button was rendered for, carried in its ``value``: a click is checked against it.

    ``status`` is None for a button rendered before buttons carried their state (its value was the bare id).
    """

    deployment_id: str
    status: str | None = None
    paused: bool = False
    sha256: str | None = None  # Promote: the revision the thread shows, which is what gets promoted

    def to_value(self) -> str:
        """Compact JSON, far below Slack's 2000 characters for a button value."""
        value: dict[str, Any] = {"id": self.deployment_id, "status": self.status}
        if self.paused:
            value["paused"] = True
        if self.sha256:
            value["sha256"] = self.sha256
        return json.dumps(value, separators=(",", ":"))

    @classmethod
    def from_value(cls, value: str) -> ButtonState | None:
        """The state a clicked button carries; a bare deployment id (an older message) has no state; None when
        the value is neither."""
        value = value.strip()
        if _DEPLOYMENT_ID.match(value):
            return cls(value)
        try:
            data = json.loads(value)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not _DEPLOYMENT_ID.match(data["id"]):
            return None
        status, sha256 = data.get("status"), data.get("sha256")
        return cls(
            data["id"],
            status if isinstance(status, str) else None,
            data.get("paused") is True,
            sha256 if isinstance(sha256, str) else None,
        )

    @classmethod
    def of(cls, doc: Mapping[str, Any], *, with_revision: bool = False) -> ButtonState:
        sha256 = str((doc.get("revision") or {}).get("sha256") or "") or None
        return cls(str(doc["id"]), str(doc["status"]), bool(doc.get("paused")), sha256 if with_revision else None)


def who(actor: str | None) -> str:
    """A Slack user id as a mention; anything else (CLI users, codeDeployRollback) as it is."""
    if not actor:
        return "unknown"
    return f"<@{actor}>" if _SLACK_USER.match(actor) else actor


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def duration_of(doc: Mapping[str, Any]) -> float | None:
    started, ended = doc.get("started_at") or doc.get("created_at"), doc.get("ended_at")
    return ended - started if started is not None and ended is not None else None


def source_label(source: str | None) -> str:
    """A revision's source as people should see it: the name of a local directory or bundle, never the server's
    absolute path (``/srv/deploybot/releases/hello-2.tar.gz`` -> ``hello-2.tar.gz``); ``git:``, ``s3://`` and
    other sources as they are."""
    if not source:
        return ""
    if source.startswith("/"):
        return source.rstrip("/").rsplit("/", 1)[-1]
    return source


def revision_text(doc: Mapping[str, Any], ctx: MessageContext = MessageContext()) -> str:
    """Short sha and commit title, with a compare (or commit) link when the revision came from GitHub."""
    revision = doc.get("revision") or {}
    commit = revision.get("commit")
    title = revision.get("title") or doc.get("commit_title")
    sha256 = str(revision.get("sha256") or "")
    if not commit:
        source = source_label(revision.get("source"))
        return f"`{sha256[:12]}`" + (f" {source}" if source else "")
    short = f"`{commit[:7]}`"
    text = short + (f" {title}" if title else "")
    if ctx.github_repository:
        base = f"https://github.com/{ctx.github_repository}"
        if ctx.previous_commit and ctx.previous_commit != commit:
            text += f" (<{base}/compare/{ctx.previous_commit[:12]}...{commit[:12]}|compare>)"
        else:
            text += f" (<{base}/commit/{commit}|commit>)"
    return text


def progress_text(doc: Mapping[str, Any]) -> str:
    targets = doc.get("targets") or []
    done = sum(1 for t in targets if t["status"] == "Succeeded")
    failed = sum(1 for t in targets if t["status"] == "Failed")
    parts = [f"hosts {done}/{len(targets)} done" + (f", {failed} failed" if failed else "")]
    if doc.get("traffic") is not None:
        parts.append(f"traffic {doc['traffic'].get('percent', 0)}%")
    if doc.get("queue_position"):
        parts.append(f"queue position {doc['queue_position']}")
    if doc.get("paused"):
        parts.append("paused")
    return " · ".join(parts)


def status_text(doc: Mapping[str, Any]) -> str:
    status = doc["status"]
    text = f"{STATUS_ICON.get(status, '')} {status}".strip()
    if status in FINAL_STATUSES and duration_of(doc) is not None:
        text += f" in {duration_text(duration_of(doc))}"
    error = doc.get("error")
    if error and error.get("message"):
        text += f": {error['message']}"
    return text


def fallback_text(doc: Mapping[str, Any], ctx: MessageContext = MessageContext()) -> str:
    """The notification text (and what screen readers say) of the parent message; while it waits for approval it
    names who may approve, so they are notified."""
    text = f"{doc['application']} → {doc['environment']}: {doc['status']} ({doc['id']})"
    if doc["status"] == "WaitingApproval" and ctx.approvers:
        text += " — approval needed from " + ", ".join(who(a) for a in ctx.approvers)
    return text


def approval_text(doc: Mapping[str, Any], ctx: MessageContext = MessageContext()) -> str | None:
    """While a deployment waits for approval: how many more, from whom (mentioned), and who approved so far; the
    engine's own words when nobody is to be mentioned."""
    if doc["status"] != "WaitingApproval":
        return None
    approval = doc.get("approval") or {}
    text = ":raised_hand: *Waiting for approval*"
    if ctx.approvers:
        missing = approval.get("missing")
        text += (f": {missing} more" if missing else "") + " from " + ", ".join(who(a) for a in ctx.approvers)
    elif (doc.get("waiting_for") or {}).get("message"):
        text += f" ({doc['waiting_for']['message']})"
    approved = approval.get("approved_by") or []
    if approved:
        text += " · approved by " + ", ".join(who(a) for a in approved)
    return text


def deployment_blocks(doc: Mapping[str, Any], ctx: MessageContext = MessageContext()) -> list[dict[str, Any]]:
    """The parent message of a deployment's thread, as Block Kit dicts (built with slack_sdk.models.blocks)."""
    rollback = doc.get("rollback") or {}
    title = f"{doc['application']} → {doc['environment']}"
    if rollback.get("of"):
        title = f"Rollback: {title}"
    fields = [
        MarkdownTextObject(text=f"*Application*\n{doc['application']}"),
        MarkdownTextObject(text=f"*Environment*\n{doc['environment']}"),
        MarkdownTextObject(text=f"*Revision*\n{revision_text(doc, ctx)}"),
        MarkdownTextObject(text=f"*Started by*\n{who(doc.get('created_by'))}"),
        MarkdownTextObject(text=f"*Configuration*\n{doc.get('config') or '-'}"),
        MarkdownTextObject(text=f"*Status*\n{status_text(doc)[:1900]}"),
    ]
    blocks: list[Any] = [
        HeaderBlock(text=PlainTextObject(text=title[:150])),
        SectionBlock(fields=fields),
        SectionBlock(text=MarkdownTextObject(text=f"*Progress* {progress_text(doc)}")),
    ]
    waiting_text = approval_text(doc, ctx)
    if waiting_text:
        blocks.append(SectionBlock(block_id="approval", text=MarkdownTextObject(text=waiting_text[:2900])))
    context = [f"`{doc['id']}`"]
    if rollback.get("of"):
        context.append(f"rollback of `{rollback['of']}`")
    if rollback.get("by"):
        context.append(f"rolled back by `{rollback['by']}`")
    waiting = doc.get("waiting_for") or {}
    if waiting.get("message") and not waiting_text:  # an approval is said in full above
        context.append(str(waiting["message"]))
    if ctx.note:
        context.append(ctx.note)
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=" · ".join(context)[:2900])]))
    buttons = deployment_buttons(doc, ctx)
    if buttons:
        blocks.append(ActionsBlock(block_id="deployment-actions", elements=buttons))
    return [block.to_dict() for block in blocks]


def _button(
    action: str, label: str, state: ButtonState, style: str | None = None, confirm: ConfirmObject | None = None
) -> ButtonElement:
    return ButtonElement(
        text=label, action_id=ACTION_PREFIX + action, value=state.to_value(), style=style, confirm=confirm
    )


def _confirm(title: str, text: str, confirm: str) -> ConfirmObject:
    return ConfirmObject(title=title, text=text, confirm=confirm, deny="Cancel", style="danger")


def deployment_buttons(doc: Mapping[str, Any], ctx: MessageContext = MessageContext()) -> list[ButtonElement]:
    """What can be done now: control while running, decide while waiting, promote or roll back when done. Each
    carries the state it was rendered for (``ButtonState``); Rollback, Promote and Stop ask for confirmation."""
    status = doc["status"]
    state = ButtonState.of(doc)
    where = f"{doc['application']} in {doc['environment']}"
    rollback = _button(
        "rollback",
        "Rollback",
        state,
        "danger",
        _confirm("Roll back?", f"Roll back {where} to its previous good revision?", "Roll back"),
    )
    stop = _button("stop", "Stop", state, "danger", _confirm("Stop?", f"Stop `{doc['id']}` ({where})?", "Stop"))
    if status == "WaitingApproval":
        return [_button("approve", "Approve", state, "primary"), _button("reject", "Reject", state, "danger")]
    if status == "Queued":
        return [stop]
    if status in ACTIVE:
        pause = _button("resume", "Resume", state) if doc.get("paused") else _button("pause", "Pause", state)
        buttons = [stop, pause]
        if status == "Ready":
            buttons.append(_button("continue", "Continue", state, "primary"))
        if not (doc.get("rollback") or {}).get("of"):
            buttons.append(rollback)
        return buttons
    if status == "Succeeded":
        buttons = []
        if ctx.next_environment:
            revision = ButtonState.of(doc, with_revision=True)
            short = f"`{(revision.sha256 or '')[:12]}`"
            confirm = _confirm(
                f"Promote to {ctx.next_environment}?"[:100],
                f"Deploy {short} (what this thread shows) to {doc['application']} in {ctx.next_environment}?",
                "Promote",
            )
            buttons.append(_button("promote", f"Promote to {ctx.next_environment}"[:75], revision, "primary", confirm))
        if not (doc.get("rollback") or {}).get("by"):
            buttons.append(rollback)
        return buttons
    return []


# -- milestones ----------------------------------------------------------------------------------------------


class MilestoneKind(enum.StrEnum):
    BATCH = "batch"
    HOST_FAILED = "host_failed"
    TRAFFIC = "traffic"
    ALARM = "alarm"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_FINISHED = "rollback_finished"
    APPROVED = "approved"
    APPROVAL_EXPIRED = "approval_expired"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Milestone:
    kind: MilestoneKind
    text: str


def _started(target: Mapping[str, Any]) -> bool:
    return any(e["status"] not in ("Pending", "Skipped") for e in target["events"])


def _targets(doc: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {t["name"]: t for t in (doc or {}).get("targets") or []}


def milestones(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Milestone]:
    """What happened between two versions of one deployment that deserves a thread reply, in order."""
    out: list[Milestone] = []
    old, new = _targets(before), _targets(after)
    started = [name for name, t in new.items() if _started(t) and not (name in old and _started(old[name]))]
    if started:
        total = len(new)
        begun = sum(1 for t in new.values() if _started(t))
        out.append(Milestone(MilestoneKind.BATCH, f"Batch: {', '.join(started)} ({begun}/{total} hosts started)"))
    for name, target in new.items():
        if target["status"] == "Failed" and (name not in old or old[name]["status"] != "Failed"):
            out.append(Milestone(MilestoneKind.HOST_FAILED, host_failure_text(name, target)))
    old_traffic = ((before or {}).get("traffic") or {}).get("percent", 0)
    traffic = (after.get("traffic") or {}).get("percent", 0)
    if after.get("traffic") is not None and traffic != old_traffic:
        out.append(Milestone(MilestoneKind.TRAFFIC, f"Traffic: {traffic}% on the new revision"))
    error = after.get("error") or {}
    old_error = (before or {}).get("error") or {}
    if error.get("code") == "ALARM_ACTIVE" and old_error.get("code") != "ALARM_ACTIVE":
        out.append(Milestone(MilestoneKind.ALARM, f":rotating_light: Alarm fired: {error.get('message', '')}"))
    out += _approval_milestones(before, after)
    rolled_back_by = (after.get("rollback") or {}).get("by")
    if rolled_back_by and rolled_back_by != ((before or {}).get("rollback") or {}).get("by"):
        out.append(Milestone(MilestoneKind.ROLLBACK_STARTED, f":rewind: Rollback started: `{rolled_back_by}`"))
    if after["status"] in FINAL_STATUSES and (before is None or before["status"] not in FINAL_STATUSES):
        out.append(Milestone(MilestoneKind.FINISHED, summary_text(after)))
    return out


def _approval_milestones(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Milestone]:
    """Approvals given and lapsed while the deployment waited (a rejection ends it: the summary says so)."""
    if before is None or before["status"] != "WaitingApproval":
        return []
    had = list((before.get("approval") or {}).get("approved_by") or [])
    has = list((after.get("approval") or {}).get("approved_by") or [])
    out = []
    for name in has:
        if name not in had:
            text = f":white_check_mark: Approved by {who(name)}"
            if after["status"] == "WaitingApproval":
                missing = (after.get("approval") or {}).get("missing")
                text += f"; {missing} more needed" if missing else ""
            else:
                text += f"; now {after['status']}"
            out.append(Milestone(MilestoneKind.APPROVED, text))
    if after["status"] == "WaitingApproval":
        for name in had:
            if name not in has:
                text = f":hourglass: The approval by {who(name)} expired; it needs approving again"
                out.append(Milestone(MilestoneKind.APPROVAL_EXPIRED, text))
    return out


def host_failure_text(name: str, target: Mapping[str, Any]) -> str:
    failed = next((e for e in target["events"] if e["status"] == "Failed"), None)
    if failed is None:
        return f":x: {name} failed"
    code = f" (code {failed['error_code']})" if failed.get("error_code") is not None else ""
    text = f":x: {name} failed at {failed['name']}{code}"
    if failed.get("message"):
        text += f": {failed['message'][:300]}"
    tail = (failed.get("log_tail") or "").strip()
    if tail:
        text += "\n```" + tail[-LOG_TAIL_CHARS:].replace("```", "'''") + "```"
    return text


def summary_text(doc: Mapping[str, Any]) -> str:
    """The final reply: outcome, duration, hosts."""
    targets = doc.get("targets") or []
    done = sum(1 for t in targets if t["status"] == "Succeeded")
    text = f"{STATUS_ICON.get(doc['status'], '')} *{doc['status']}* in {duration_text(duration_of(doc))}"
    text += f" — {done}/{len(targets)} hosts"
    error = doc.get("error") or {}
    if error.get("message"):
        text += f"\n{error.get('code') or 'error'}: {error['message']}"
    return text


def rollback_finished_text(rollback: Mapping[str, Any]) -> str:
    """The reply in the rolled-back deployment's thread when its rollback ends."""
    icon = STATUS_ICON.get(rollback["status"], "")
    return (
        f"{icon} Rollback `{rollback['id']}` finished: {rollback['status']} in {duration_text(duration_of(rollback))}"
    )


def deployment_line(doc: Mapping[str, Any]) -> str:
    """One line per deployment, for status and history replies."""
    revision = doc.get("revision") or {}
    rev = (revision.get("commit") or "")[:7] or str(revision.get("sha256") or "")[:12]
    when = duration_text(duration_of(doc)) if doc["status"] in FINAL_STATUSES else progress_text(doc)
    return (
        f"{STATUS_ICON.get(doc['status'], '')} `{doc['id']}` {doc['application']} → {doc['environment']} "
        f"`{rev}` {doc['status']} ({when}) by {who(doc.get('created_by'))}"
    )


def history_text(docs: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(deployment_line(d) for d in docs) or "no deployments yet"
