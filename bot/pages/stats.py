"""Reads the deployment history for the delivery numbers (the async side of engine/core/delivery.py): the list page,
``GET /api/v1/applications/{app}/stats`` and ``/metrics`` all call ``environment_numbers``.

Only the deployments that finished inside the widest window are read (one query per application and
environment), and each revision's commit time once (from its stored location).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine import (
    DELIVERY_WINDOWS,
    DeliveryNumbers,
    DeploymentService,
    DeploymentSummary,
    RevisionNotFound,
    delivery_numbers,
    deployment_summary,
    revision_committed_at,
)

DAY = 86400.0


async def recent_history(
    deployer: DeploymentService, application: str, environment: str, *, days: int, now: float
) -> list[DeploymentSummary]:
    """The application's deployments in ``environment`` that finished in the last ``days`` days."""
    since = now - days * DAY
    rows = await deployer.store.list_deployments(application=application, environment=environment, limit=None)
    recent = [r for r in rows if isinstance(r.get("ended_at"), int | float) and r["ended_at"] >= since]
    commit_times: dict[str, float | None] = {}
    for row in recent:
        sha = row.get("revision_sha256")
        if row["status"] != "Succeeded" or not sha or sha in commit_times:
            continue
        try:
            commit_times[sha] = revision_committed_at((await deployer.revisions.get(sha)).location)
        except RevisionNotFound:
            commit_times[sha] = None
    return [deployment_summary(r, committed=commit_times.get(r.get("revision_sha256") or "")) for r in recent]


async def environment_numbers(
    deployer: DeploymentService,
    application: str,
    environments: Sequence[str],
    *,
    windows: Sequence[int] = DELIVERY_WINDOWS,
    now: float,
) -> list[DeliveryNumbers]:
    """The numbers of each environment (in the order given) for each window (in the order given)."""
    numbers: list[DeliveryNumbers] = []
    for environment in environments:
        history = await recent_history(deployer, application, environment, days=max(windows), now=now)
        numbers += [
            delivery_numbers(history, application=application, environment=environment, days=days, now=now)
            for days in windows
        ]
    return numbers


def environments_of(deployer: DeploymentService, application: str) -> list[str]:
    """The application's environments in promotion order (empty for an unknown application)."""
    for app in deployer.applications():
        if app["name"] == application:
            return [str(env["name"]) for env in app["environments"]]
    return []
