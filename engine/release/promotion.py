"""Promotion rules (pure): which revision runs in an environment since when (its tenure), and whether it may be
promoted to another environment — succeeded there, soaked there long enough, and going to the next environment in
order (the last two an admin may override).

No I/O, no clock: rows and ``now`` come in as data. engine.release.flow applies these to the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.model import DeploymentStatus
from engine.release.rules import minutes

# ---------------------------------------------------------------------------------------------------- tenure


@dataclass(frozen=True, slots=True)
class Tenure:
    """Revision ``revision`` runs in the group since ``since``, put there by ``deployment_id`` of ``by``."""

    revision: str
    since: float
    deployment_id: str
    by: str

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.revision, "since": self.since, "deployment_id": self.deployment_id, "by": self.by}


def tenure(deployments_newest_first: Sequence[Mapping[str, Any]]) -> Tenure | None:
    """The revision of the group's last success, and the start of its uninterrupted run: earlier successes of
    the same revision extend it, any deployment of another revision that touched hosts ends it."""
    found: Tenure | None = None
    for row in deployments_newest_first:
        status, revision = row.get("status"), row.get("revision_sha256")
        if found is None:
            if status == DeploymentStatus.SUCCEEDED:
                found = _tenure_of(row)
            continue
        if revision == found.revision:
            if status == DeploymentStatus.SUCCEEDED:
                found = _tenure_of(row)
        elif row.get("started_at") is not None:
            break
    return found


def _tenure_of(row: Mapping[str, Any]) -> Tenure:
    request = row.get("request") or {}
    by = str(request.get("actor") or row.get("created_by") or "?")
    since = row.get("ended_at") or row.get("started_at") or row.get("created_at") or 0.0
    return Tenure(str(row["revision_sha256"]), float(since), str(row["id"]), by)


# ---------------------------------------------------------------------------------------------------- promotion


@dataclass(frozen=True, slots=True)
class Refusal:
    check: str  # "order" | "succeeded" | "soak" | "override"
    message: str
    overridable: bool = False


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    revision: str | None
    refusals: tuple[Refusal, ...] = ()
    overridden: tuple[Refusal, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.refusals

    @property
    def reason(self) -> str:
        return "; ".join(r.message for r in self.refusals)


def check_promotion(
    *,
    application: str,
    environments: Sequence[str],
    source: str,
    target: str,
    current: Tenure | None,
    requested_revision: str | None = None,
    revision_succeeded: bool = True,
    min_soak_seconds: float = 0.0,
    now: float,
    override: bool = False,
    is_admin: bool = False,
) -> PromotionDecision:
    """Whether ``current`` (source's tenure) — or ``requested_revision`` — may go from ``source`` to ``target``.

    Never overridable: promoting to the same environment, or a revision that has not succeeded in the source.
    Overridable by an admin with ``override``: the target not being next in order, too short a soak.
    """
    refusals: list[Refusal] = []
    if source == target:
        refusals.append(Refusal("order", f"{application}: cannot promote {source} to itself"))
    elif environments.index(target) != environments.index(source) + 1:
        following = environments[environments.index(source) + 1 :]
        after = f"next after {source} is {following[0]}" if following else f"{source} is the last environment"
        refusals.append(Refusal("order", f"{target} is not next in order ({after})", overridable=True))
    revision = requested_revision or (current.revision if current else None)
    if revision is None:
        refusals.append(Refusal("succeeded", f"nothing has succeeded in {application}/{source} yet"))
    elif requested_revision is not None and not revision_succeeded:
        refusals.append(Refusal("succeeded", f"revision {revision[:12]} has not succeeded in {application}/{source}"))
    elif current is not None and revision == current.revision and min_soak_seconds > 0:
        soaked = now - current.since
        if soaked < min_soak_seconds:
            message = (
                f"revision {revision[:12]} has run in {source} for {minutes(soaked)}; "
                f"promotion needs {minutes(min_soak_seconds)} (min_soak_minutes)"
            )
            refusals.append(Refusal("soak", message, overridable=True))
    elif current is not None and revision != current.revision and min_soak_seconds > 0:
        message = f"revision {revision[:12]} no longer runs in {source}, so it cannot have soaked there"
        refusals.append(Refusal("soak", message, overridable=True))
    blocking = [r for r in refusals if not r.overridable]
    waivable = [r for r in refusals if r.overridable]
    if waivable and override:
        if not is_admin:
            blocking.append(Refusal("override", "only an admin (server.admins) may override a promotion check"))
            return PromotionDecision(revision, (*blocking, *waivable))
        return PromotionDecision(revision, tuple(blocking), tuple(waivable))
    return PromotionDecision(revision, (*blocking, *waivable))
