"""Is a click still true? (pure): a button acts on the state it was rendered for, or not at all.

A button carries what it showed (``bot.messages.ButtonState``). When someone clicks it, ChatOps reads what is true
now (``Now``: the deployment, the newest deployment of its group, and for Promote what runs in the thread's
environment) and asks ``staleness``. A click is stale when acting would do something other than what the person
saw:

- the deployment finished (or started, or stopped waiting for approval) since the message showed it;
- it was already rolled back (Rollback), or a newer deployment of the group superseded it (Rollback on a finished
  deployment would roll back the newer one);
- Promote: another revision runs in the environment now than the sha256 the thread shows (or the button is from
  before buttons carried their revision);
- Pause on a paused deployment, Resume on one that is not.

A stale click is answered with what is true now, never acted on. The answer's words are chosen in ChatOps;
``Stale`` is data: what changed, and which deployment to point at.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.messages import ACTIVE, ButtonState
from engine import FINAL_STATUSES


class Change(enum.StrEnum):
    STATUS_CHANGED = "status_changed"  # it started, finished or stopped waiting since the button was shown
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # a newer deployment of the group
    NOT_WAITING = "not_waiting"  # approve / reject: it no longer waits for approval
    ALREADY_PAUSED = "already_paused"
    NOT_PAUSED = "not_paused"
    OTHER_REVISION = "other_revision"  # promote: the environment runs another revision now
    OLD_BUTTON = "old_button"  # promote: a button from before buttons carried their revision
    NOT_POSSIBLE = "not_possible"  # the deployment's state does not allow the action at all


@dataclass(frozen=True, slots=True)
class Now:
    """What is true now, as far as a click cares."""

    doc: Mapping[str, Any]  # the clicked deployment, read after the click was taken
    newest_id: str | None = None  # the newest deployment of its group
    source_revision: str | None = None  # promote: the sha256 running in the deployment's environment
    source_deployment: str | None = None  # ... put there by this deployment


@dataclass(frozen=True, slots=True)
class Stale:
    change: Change
    point_at: str  # the deployment whose state the answer shows (and links to)


# The statuses in which an action can be done at all.
ACTION_NEEDS: dict[str, frozenset[str]] = {
    "stop": ACTIVE | {"Queued", "WaitingApproval"},
    "pause": ACTIVE,
    "resume": ACTIVE,
    "continue": ACTIVE,
    "approve": frozenset({"WaitingApproval"}),
    "reject": frozenset({"WaitingApproval"}),
    "promote": frozenset({"Succeeded"}),
    "rollback": ACTIVE | FINAL_STATUSES,
}


def _phase(status: str | None) -> str:
    if status in FINAL_STATUSES:
        return "final"
    if status in ACTIVE:
        return "active"
    return str(status)  # Queued, WaitingApproval


def staleness(action: str, shown: ButtonState, now: Now) -> Stale | None:
    """None when the click may act; else what changed since the button was shown."""
    doc = now.doc
    deployment_id, status = str(doc["id"]), str(doc["status"])
    rollback = doc.get("rollback") or {}
    if action == "rollback" and rollback.get("by"):
        return Stale(Change.ROLLED_BACK, str(rollback["by"]))
    if action in ("approve", "reject") and status != "WaitingApproval":
        return Stale(Change.NOT_WAITING, deployment_id)
    if shown.status is not None and _phase(shown.status) != _phase(status):
        return Stale(Change.STATUS_CHANGED, deployment_id)
    if status not in ACTION_NEEDS[action]:
        return Stale(Change.NOT_POSSIBLE, deployment_id)
    if action == "rollback" and status in FINAL_STATUSES and now.newest_id not in (None, deployment_id):
        return Stale(Change.SUPERSEDED, now.newest_id)
    if action == "pause" and doc.get("paused"):
        return Stale(Change.ALREADY_PAUSED, deployment_id)
    if action == "resume" and not doc.get("paused"):
        return Stale(Change.NOT_PAUSED, deployment_id)
    if action == "promote":
        if shown.sha256 is None:
            return Stale(Change.OLD_BUTTON, now.source_deployment or deployment_id)
        if now.source_revision != shown.sha256:
            return Stale(Change.OTHER_REVISION, now.source_deployment or deployment_id)
    return None


# What an action leaves in the engine's audit log, to say who did it when a later click finds it done.
DONE_BY_LOG: dict[Change, tuple[str, ...]] = {
    Change.ROLLED_BACK: ("rollback.requested", "deployment.stop_requested", "rollback.triggered"),
    Change.NOT_WAITING: ("approval.rejected", "approval.granted", "deployment.stop_requested"),
    Change.STATUS_CHANGED: ("deployment.stop_requested", "approval.rejected"),
    Change.NOT_POSSIBLE: ("deployment.stop_requested", "approval.rejected"),
    Change.ALREADY_PAUSED: ("deployment.pause",),
    Change.NOT_PAUSED: ("deployment.resume",),
}
