"""The release flow's read side: "where" per environment, the queue, ETAs, and the release fields every deployment
JSON carries (source, duration, ETA, what it waits for, approvals). Reads only; ReleaseFlow exposes each one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.model import FINAL_STATUSES, DeploymentStatus
from engine.release.context import ReleaseContext
from engine.release.promotion import tenure
from engine.release.rules import (
    ETA_SAMPLE,
    RequestSource,
    blocking_lock,
    durations_of,
    is_automatic_rollback,
    lock_message,
    queue_eta,
)

ACTIVE_STATUSES = ("Created", "InProgress", "Ready", "Baking")
WAITING_STATUSES = ("Queued", "WaitingApproval")
HISTORY = 200  # deployments of a group looked at for "what runs there since when"


async def where(flow: ReleaseContext, application: str) -> dict[str, Any]:
    """Per environment, in promotion order: what runs there, since when, who put it there, and what waits."""
    app = flow.config.application(application)
    locks, now = await flow.all_locks(), flow.clock.now()
    environments = []
    for env in app.environments:
        group = app.groups[env]
        rows = await flow.store.list_deployments(group_name=group.name, limit=HISTORY)
        held = tenure(rows)
        held_row = next((r for r in rows if held is not None and r["id"] == held.deployment_id), None)
        revision = await flow.store.get_revision(held.revision) if held else None
        lock = blocking_lock(locks, app.name, env, now)
        in_flight = next((r for r in rows if r["status"] in ACTIVE_STATUSES), None)
        latest = next((r for r in rows if r["status"] in FINAL_STATUSES), None)
        environments.append(
            {
                "environment": env,
                "group": group.name,
                "revision": None
                if held is None
                else {
                    "sha256": held.revision,
                    "source": (revision or {}).get("source"),
                    "commit": (revision or {}).get("commit"),
                },
                "since": held.since if held else None,
                "deployed_by": held.by if held else None,
                "deployment_id": held.deployment_id if held else None,
                # what put it there, e.g. "PR #12 (head 1a2b3c4) by @alice"
                "description": (held_row or {}).get("description") or None,
                "last": _brief(latest),
                "in_flight": _brief(in_flight),
                "waiting": sum(1 for r in rows if r["status"] in WAITING_STATUSES),
                "lock": lock.as_dict() if lock else None,
            }
        )
    return {"application": app.name, "environments": environments}


# ---------------------------------------------------------------------------------------------------- queue


async def queue(
    flow: ReleaseContext, application: str | None = None, environment: str | None = None
) -> list[dict[str, Any]]:
    """Waiting deployments (queued in FIFO order with position and ETA, then those awaiting approval)."""
    groups = list(flow.config.groups())
    if application is not None:
        app = flow.config.application(application)
        envs = (app.environment(environment),) if environment else app.environments
        groups = [app.groups[env] for env in envs]
    out = []
    for group in groups:
        for status in WAITING_STATUSES:
            rows = await flow.store.list_deployments(
                group_name=group.name, status=status, newest_first=False, limit=None
            )
            out.extend([await flow.deployments.get(r["id"]) for r in rows])
    return out


async def eta(flow: ReleaseContext, group_name: str, position: int) -> float | None:
    """Seconds until the deployment at queue ``position`` (1-based) of the group starts; None if unknown."""
    store, now = flow.store, flow.clock.now()
    durations = durations_of(await store.list_deployments(group_name=group_name, status="Succeeded", limit=ETA_SAMPLE))
    running = await store.list_deployments(group_name=group_name, status=list(ACTIVE_STATUSES), limit=1)
    elapsed = now - (running[0]["started_at"] or running[0]["created_at"]) if running else None
    return queue_eta(durations, queued_ahead=max(position - 1, 0), running_elapsed=elapsed)


async def decorate(flow: ReleaseContext, row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The release-flow fields of the deployment JSON: source, duration, ETA, what it waits for, approvals."""
    request = row.get("request") or {}
    document["source"] = request.get("source", str(RequestSource.MANUAL))
    document["promoted_from"] = request.get("from")
    started, ended = row.get("started_at"), row.get("ended_at")
    document["duration_seconds"] = ended - started if started is not None and ended is not None else None
    document["eta_seconds"] = None
    document["waiting_for"] = None
    status = row["status"]
    group = flow.group_named(row["group_name"]) if status in WAITING_STATUSES else None
    if group is not None and status == DeploymentStatus.QUEUED:
        now = flow.clock.now()
        lock = None if is_automatic_rollback(row) else await flow.blocking(group)
        eta = await flow.eta(group.name, document.get("queue_position") or 1)
        if lock is not None:
            message = lock_message(lock, group.application, group.environment, now)
            document["waiting_for"] = {"gate": "lock", "message": message, "lock": lock.as_dict()}
            eta = None if eta is None or lock.expires_at is None else max(eta, lock.expires_at - now)
        document["eta_seconds"] = eta
    elif group is not None:
        requester = str(request.get("actor") or row.get("created_by"))
        state = await flow.approval_state(group, row["revision_sha256"], requester, flow.clock.now())
        approval = state.as_dict(flow.approval_policy(group))
        document["approval"] = approval
        who = ", ".join(group.approvers) if group.approvers else "anyone but the requester"
        message = f"waiting for {approval['missing']} more approval(s) from {who}"
        document["waiting_for"] = {"gate": "approval", "message": message}
    elif request.get("approved_by"):
        document["approval"] = {"approved_by": list(request["approved_by"])}
    return document


def _brief(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"id": row["id"], "status": row["status"], "sha256": row["revision_sha256"], "created_by": row["created_by"]}
