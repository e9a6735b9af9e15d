"""The release-flow rules (pure): locks and the global freeze, approvals, admission, queue estimates.

No I/O and no clock: every function takes ``now`` (epoch seconds) and plain records, and answers with values, so
each rule is a table-driven test. engine.release.flow reads the store, calls these, and acts on the answers.

Vocabulary:

- a **lock** holds one application's environment; the **freeze** (application and environment ``"*"``) holds
  every environment of every application. A lock with ``expires_at`` in the past no longer counts.
- an **approval** is bound to (application, environment, revision sha256) and expires; the requester's own and
  those of people outside the group's approvers never count.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core.model import ROLLBACK_CREATOR, DeploymentStatus

EVERYWHERE = "*"
"""Application and environment of the global freeze."""

ETA_SAMPLE = 5
"""How many recent successful durations a queue estimate looks at."""


class LockPolicy(enum.StrEnum):
    """What a deployment request meets while its environment is locked."""

    REFUSE = "refuse"
    QUEUE = "queue"


class RequestSource(enum.StrEnum):
    """Where a deployment request came from (locks hold all of them; approvals skip rollbacks)."""

    MANUAL = "manual"
    MERGE = "merge"
    PROMOTION = "promotion"
    ROLLBACK = "rollback"


# ---------------------------------------------------------------------------------------------------- locks


@dataclass(frozen=True, slots=True)
class Lock:
    application: str
    environment: str
    owner: str
    reason: str
    created_at: float
    expires_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Lock:
        return cls(
            row["application"],
            row["environment"],
            row["owner"],
            row.get("reason") or "",
            row["created_at"],
            row.get("expires_at"),
        )

    @property
    def is_freeze(self) -> bool:
        return self.application == EVERYWHERE

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "application": self.application,
            "environment": self.environment,
            "scope": "freeze" if self.is_freeze else "environment",
            "owner": self.owner,
            "reason": self.reason,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


def blocking_lock(locks: Iterable[Lock], application: str, environment: str, now: float) -> Lock | None:
    """The lock holding ``application``/``environment`` now: the freeze first (it outranks any single lock)."""
    active = [lock for lock in locks if lock.active(now)]
    freeze = next((lock for lock in active if lock.is_freeze), None)
    if freeze is not None:
        return freeze
    return next((lock for lock in active if (lock.application, lock.environment) == (application, environment)), None)


def expired(locks: Iterable[Lock], now: float) -> tuple[Lock, ...]:
    return tuple(lock for lock in locks if not lock.active(now))


def minutes(seconds: float) -> str:
    """A duration as people say it: ``45 s``, ``12 min``, ``3 h 5 min``."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    total = round(seconds / 60)
    if total < 60:
        return f"{total} min"
    return f"{total // 60} h {total % 60} min" if total % 60 else f"{total // 60} h"


def lock_message(lock: Lock, application: str, environment: str, now: float) -> str:
    """``hello/production is locked by alice: db migration (expires in 12 min)`` — the same words everywhere."""
    what = "deployments are frozen everywhere" if lock.is_freeze else f"{application}/{environment} is locked"
    because = f": {lock.reason}" if lock.reason else ""
    until = f" (expires in {minutes(lock.expires_at - now)})" if lock.expires_at is not None else ""
    return f"{what} by {lock.owner}{because}{until}"


def lock_conflict(existing: Lock | None, *, actor: str, is_admin: bool, now: float) -> str | None:
    """Why ``actor`` may not set a lock where ``existing`` is: someone else's live lock needs an admin."""
    if existing is None or not existing.active(now) or existing.owner == actor or is_admin:
        return None
    where = "the freeze" if existing.is_freeze else f"{existing.application}/{existing.environment}"
    return f"{where} is already locked by {existing.owner}; unlock it first"


# ---------------------------------------------------------------------------------------------------- approvals


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """A group's approval settings; ``approvers`` empty means anyone but the requester."""

    required: int = 0
    approvers: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    ttl_seconds: float = 3600.0

    def may_approve(self, actor: str) -> bool:
        return not self.approvers or actor in self.approvers or actor in self.admins


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    revision_sha256: str
    decision: str  # "approved" | "rejected"
    created_at: float
    expires_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Approval:
        return cls(row["actor"], row["revision_sha256"], row["decision"], row["created_at"], row.get("expires_at"))


@dataclass(frozen=True, slots=True)
class ApprovalState:
    required: int
    approved_by: tuple[str, ...]
    expires_at: float | None  # when the first counted approval lapses

    @property
    def missing(self) -> int:
        return max(self.required - len(self.approved_by), 0)

    @property
    def satisfied(self) -> bool:
        return self.missing == 0

    def as_dict(self, policy: ApprovalPolicy) -> dict[str, Any]:
        return {
            "required": self.required,
            "approved_by": list(self.approved_by),
            "missing": self.missing,
            "approvers": list(policy.approvers),
            "expires_at": self.expires_at,
        }


def approval_state(
    approvals: Iterable[Approval], *, revision: str, requester: str, policy: ApprovalPolicy, now: float
) -> ApprovalState:
    """Distinct, allowed, unexpired approvals of exactly ``revision``; the requester's own never count."""
    counted: dict[str, Approval] = {}
    for approval in approvals:
        if (
            approval.decision == "approved"
            and approval.revision_sha256 == revision
            and approval.approver != requester
            and policy.may_approve(approval.approver)
            and (approval.expires_at is None or now < approval.expires_at)
        ):
            newest = counted.get(approval.approver)
            if newest is None or approval.created_at > newest.created_at:
                counted[approval.approver] = approval
    ends = [a.expires_at for a in counted.values() if a.expires_at is not None]
    return ApprovalState(policy.required, tuple(sorted(counted)), min(ends) if ends else None)


def approval_refusal(
    policy: ApprovalPolicy, *, actor: str, requester: str, status: str, deployment_id: str
) -> str | None:
    """Why ``actor`` may not approve this deployment, or None."""
    if status != DeploymentStatus.WAITING_APPROVAL:
        return f"{deployment_id} is not waiting for approval (it is {status})"
    if actor == requester:
        return f"{actor} requested {deployment_id} and cannot approve it; ask one of the approvers"
    if not policy.may_approve(actor):
        listed = ", ".join(policy.approvers)
        return f"{actor} may not approve deployments here (approvers: {listed})"
    return None


def rejection_refusal(
    policy: ApprovalPolicy, *, actor: str, requester: str, status: str, deployment_id: str
) -> str | None:
    """Approvers, admins and the requester (withdrawing it) may reject a deployment waiting for approval."""
    if status != DeploymentStatus.WAITING_APPROVAL:
        return f"{deployment_id} is not waiting for approval (it is {status})"
    if actor != requester and not policy.may_approve(actor):
        return f"{actor} may not reject deployments here (approvers: {', '.join(policy.approvers)})"
    return None


# ---------------------------------------------------------------------------------------------------- admission


@dataclass(frozen=True, slots=True)
class Admission:
    """What a new deployment request meets: its first status, or a refusal with the reason and its data."""

    status: DeploymentStatus = DeploymentStatus.QUEUED
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.reason is not None


def admission(
    *,
    application: str,
    environment: str,
    automatic_rollback: bool,
    source: RequestSource,
    lock: Lock | None,
    policy: LockPolicy,
    approvals: ApprovalState | None,
    now: float,
) -> Admission:
    """Automatic rollbacks always go through; a lock refuses or holds the rest; approvals hold non-rollbacks."""
    if automatic_rollback:
        return Admission()
    if lock is not None:
        message = lock_message(lock, application, environment, now)
        if policy is LockPolicy.REFUSE:
            return Admission(reason=message, details={"gate": "lock", "lock": lock.as_dict()})
    if source is not RequestSource.ROLLBACK and approvals is not None and not approvals.satisfied:
        return Admission(DeploymentStatus.WAITING_APPROVAL)
    return Admission()


def is_automatic_rollback(row: Mapping[str, Any]) -> bool:
    """A rollback deploybot started by itself (never held by a lock); manual rollbacks carry their actor."""
    request = row.get("request") or {}
    return row.get("created_by") == ROLLBACK_CREATOR and request.get("actor", ROLLBACK_CREATOR) == ROLLBACK_CREATOR


# ---------------------------------------------------------------------------------------------------- queue


def median_duration(durations: Sequence[float]) -> float | None:
    """The median of the most recent ``ETA_SAMPLE`` successful durations (newest first); None without any."""
    sample = [d for d in durations[:ETA_SAMPLE] if d >= 0]
    return float(statistics.median(sample)) if sample else None


def queue_eta(durations: Sequence[float], *, queued_ahead: int, running_elapsed: float | None) -> float | None:
    """Seconds until a queued deployment starts: a median duration per deployment ahead, less what the running
    one has already spent (never below zero for it). None when there is history to wait on but none to go by."""
    if queued_ahead == 0 and running_elapsed is None:
        return 0.0
    typical = median_duration(durations)
    if typical is None:
        return None
    running = max(typical - running_elapsed, 0.0) if running_elapsed is not None else 0.0
    return typical * queued_ahead + running


def durations_of(rows: Iterable[Mapping[str, Any]]) -> list[float]:
    """Run times of finished deployments (newest first as given), skipping rows without both ends."""
    out = []
    for row in rows:
        if row.get("started_at") is not None and row.get("ended_at") is not None:
            out.append(float(row["ended_at"]) - float(row["started_at"]))
    return out
