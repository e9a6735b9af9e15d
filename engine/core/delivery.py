"""Delivery numbers of one application and environment over the last N days (pure): the four DORA keys as a team
reads them off its deployment history.

- **deployment frequency**: successful deployments (rollbacks are not counted: they deliver nothing new) per day and
  per week of the window;
- **change failure rate**: of the finished deployments that are changes (not rollbacks), the share that failed or
  was later rolled back; a deployment stopped without rollback counts as a change that did not fail;
- **time to restore**: from a failure (a failed deployment, or one later rolled back) to the next successful
  deployment of the same application and environment (a rollback that succeeds restores too), the median over the
  outages that started in the window; a second failure before the restore belongs to the same outage;
- **lead time**: from the commit's time to the end of its successful deployment, the median over the window's
  successful changes whose revision has a commit time ("n/a" without one: the time is known for GitHub revisions
  that stored it, ``revision.location["github"]["committed_at"]``).

A deployment belongs to the window by when it finished (``ended_at``); deployments still running are not counted.
Everything here is values in, values out: the server reads the history (bot/pages/stats.py) and the page, the API,
``deploybot stats`` and ``/metrics`` show the same numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DAY = 86400.0
DELIVERY_WINDOWS = (30, 90)
FINAL = frozenset({"Succeeded", "Failed", "Stopped"})


@dataclass(frozen=True, slots=True)
class DeploymentSummary:
    """What the numbers need of one deployment."""

    id: str
    application: str
    environment: str
    status: str
    ended_at: float | None
    rollback_of: str | None = None  # this deployment is a rollback of that one
    rolled_back_by: str | None = None  # this deployment was rolled back by that one
    committed_at: float | None = None  # the revision's commit time, when known

    @property
    def finished(self) -> bool:
        return self.status in FINAL and self.ended_at is not None

    @property
    def is_change(self) -> bool:
        return self.rollback_of is None

    @property
    def failed(self) -> bool:
        """Failed, or rolled back afterwards (stopped with rollback counts: a rollback names it)."""
        return self.status == "Failed" or self.rolled_back_by is not None

    @property
    def restores(self) -> bool:
        """Service is good again after this one: it succeeded and nobody rolled it back."""
        return self.status == "Succeeded" and self.rolled_back_by is None


@dataclass(frozen=True, slots=True)
class DeliveryNumbers:
    application: str
    environment: str
    days: int
    deployments: int  # finished changes in the window
    successful: int  # successful changes (the frequency's count)
    failed: int  # changes that failed or were rolled back
    per_day: float
    change_failure_rate: float | None  # None without any finished change
    restores: int  # outages restored (the time to restore's samples)
    time_to_restore_seconds: float | None
    lead_times: int  # successful changes with a known commit time
    lead_time_seconds: float | None

    @property
    def per_week(self) -> float:
        return self.per_day * 7

    def as_json(self) -> dict[str, Any]:
        return {
            "application": self.application,
            "environment": self.environment,
            "days": self.days,
            "deployments": self.deployments,
            "successful": self.successful,
            "failed": self.failed,
            "deployments_per_day": round(self.per_day, 4),
            "deployments_per_week": round(self.per_week, 4),
            "change_failure_rate": None if self.change_failure_rate is None else round(self.change_failure_rate, 4),
            "restores": self.restores,
            "time_to_restore_seconds": self.time_to_restore_seconds,
            "lead_times": self.lead_times,
            "lead_time_seconds": self.lead_time_seconds,
        }


def _median(values: Sequence[float]) -> float | None:
    return round(float(statistics.median(values)), 3) if values else None


def restore_times(history: Iterable[DeploymentSummary]) -> list[tuple[float, float]]:
    """(outage start, seconds to restore) for each outage of one application and environment, oldest first."""
    outage_since: float | None = None
    restored: list[tuple[float, float]] = []
    for summary in sorted((s for s in history if s.finished), key=lambda s: float(s.ended_at or 0)):
        ended = float(summary.ended_at or 0)
        if summary.failed:
            outage_since = ended if outage_since is None else outage_since
        elif summary.restores and outage_since is not None:
            restored.append((outage_since, ended - outage_since))
            outage_since = None
    return restored


def delivery_numbers(
    history: Iterable[DeploymentSummary], *, application: str, environment: str, days: int, now: float
) -> DeliveryNumbers:
    """The numbers of ``application`` in ``environment`` over the ``days`` before ``now`` (``history`` may hold
    other applications and environments: they are left out)."""
    since = now - days * DAY
    mine = [s for s in history if s.application == application and s.environment == environment and s.finished]
    window = [s for s in mine if since <= float(s.ended_at or 0) <= now]
    changes = [s for s in window if s.is_change]
    successful = [s for s in changes if s.status == "Succeeded"]
    failed = [s for s in changes if s.failed]
    outages = [seconds for start, seconds in restore_times(mine) if since <= start <= now]
    leads = [max(0.0, float(s.ended_at or 0) - s.committed_at) for s in successful if s.committed_at is not None]
    return DeliveryNumbers(
        application=application,
        environment=environment,
        days=days,
        deployments=len(changes),
        successful=len(successful),
        failed=len(failed),
        per_day=len(successful) / days,
        change_failure_rate=len(failed) / len(changes) if changes else None,
        restores=len(outages),
        time_to_restore_seconds=_median(outages),
        lead_times=len(leads),
        lead_time_seconds=_median(leads),
    )


def revision_committed_at(location: Mapping[str, Any] | None) -> float | None:
    """The commit time a GitHub revision's location carries (``{"github": {..., "committed_at": epoch}}``)."""
    github = (location or {}).get("github")
    value = github.get("committed_at") if isinstance(github, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def deployment_summary(row: Mapping[str, Any], *, committed: float | None = None) -> DeploymentSummary:
    """A stored deployment row (or the deployment JSON) as the numbers need it."""
    rollback = row.get("rollback")
    of = rollback.get("of") if isinstance(rollback, Mapping) else row.get("rollback_of")
    by = rollback.get("by") if isinstance(rollback, Mapping) else row.get("rolled_back_by")
    ended = row.get("ended_at")
    return DeploymentSummary(
        id=str(row["id"]),
        application=str(row["application"]),
        environment=str(row["environment"]),
        status=str(row["status"]),
        ended_at=float(ended) if isinstance(ended, int | float) else None,
        rollback_of=of or None,
        rolled_back_by=by or None,
        committed_at=committed,
    )
