"""What a deployment did on each target: the current ``DeploymentTarget`` operations and the legacy
``DeploymentInstance`` ones (``InstanceSummary``), both with lifecycle events and diagnostics.

A blue/green deployment labels its original fleet Blue and its replacement Green. Each target comes back in its
platform's shape (``instanceTarget``, ``lambdaTarget``, ``ecsTarget``; see shapes.target_json).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bot.codedeploy.access import READ, Access
from bot.codedeploy.base import OperationsBase, deployment_id, required, string_list
from bot.codedeploy.shapes import ApiError, blue_green_labels, instance_summary, target_json
from engine import Platform

INSTANCE_STATUSES = ("Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Unknown", "Ready")
INSTANCE_TYPES = ("Blue", "Green")
# ListDeploymentTargets' targetFilters: the model's TargetFilterName → the values each takes.
TARGET_FILTERS = {"TargetStatus": INSTANCE_STATUSES, "ServerInstanceLabel": INSTANCE_TYPES}


@dataclass(frozen=True, slots=True)
class DeploymentTargets:
    """What the target operations read of one deployment."""

    doc: dict[str, Any]
    names: list[str]  # every target, in stage order
    labels: dict[str, str]  # Blue/Green of a server blue/green deployment
    platform: Platform
    state: dict[str, Any]  # the stored state (spec, machine)

    def target(self, name: str) -> dict[str, Any]:
        return target_json(self.doc, self.names, name, self.labels, platform=self.platform, state=self.state)


class TargetOperations(OperationsBase):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "ListDeploymentTargets": READ,
        "GetDeploymentTarget": READ,
        "BatchGetDeploymentTargets": READ,
        "ListDeploymentInstances": READ,
        "GetDeploymentInstance": READ,
        "BatchGetDeploymentInstances": READ,
    }

    async def _deployment_targets(self, deployment: str) -> DeploymentTargets:
        row = await self.deployment_row(deployment)
        doc = await self.deployer.get(deployment)
        state = dict(row.get("state") or {})
        names: list[str] = []
        for stage in state.get("stages", []):
            names.extend(t for t in stage.get("targets", []) if t not in names)
        names.extend(t["name"] for t in doc["targets"] if t["name"] not in names)
        return DeploymentTargets(doc, names, blue_green_labels(state), self.platform_of_row(row), state)

    async def list_deployment_targets(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        """``targetFilters``: TargetStatus (a target's status) and ServerInstanceLabel (Blue, Green); a target is
        listed when it matches every filter given, and one value of each."""
        filters = target_filters(body.get("targetFilters"))
        found = await self._deployment_targets(deployment_id(body))
        chosen = []
        for name in found.names:
            summary = instance_summary(found.doc, name, found.labels)
            if "TargetStatus" in filters and summary["status"] not in filters["TargetStatus"]:
                continue
            if "ServerInstanceLabel" in filters and summary.get("instanceType") not in filters["ServerInstanceLabel"]:
                continue
            chosen.append(name)
        return self.paged(chosen, body, "targetIds")

    async def batch_get_deployment_targets(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        found = await self._deployment_targets(deployment_id(body))
        wanted = string_list(body, "targetIds", "DeploymentTargetIdRequired", limit=25)
        return {"deploymentTargets": [found.target(t) for t in wanted]}

    async def get_deployment_target(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        found = await self._deployment_targets(deployment_id(body))
        target = required(body, "targetId", "DeploymentTargetIdRequired")
        return {"deploymentTarget": found.target(target)}

    # -- the legacy instance operations (EC2/on-premises deployments only) -------------------------------------

    async def _instances(self, deployment: str) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        found = await self._deployment_targets(deployment)
        if found.platform is not Platform.SERVER:
            raise ApiError(
                "InvalidComputePlatform",
                f"Deployment {deployment} is a {found.platform} deployment: "
                "use ListDeploymentTargets / GetDeploymentTarget",
            )
        return found.doc, found.names, found.labels

    async def list_deployment_instances(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        doc, names, labels = await self._instances(deployment_id(body))
        statuses = [str(s) for s in body.get("instanceStatusFilter") or []]
        if any(s not in INSTANCE_STATUSES for s in statuses):
            raise ApiError("InvalidInstanceStatus", f"instanceStatusFilter takes {', '.join(INSTANCE_STATUSES)}")
        types = [str(t) for t in body.get("instanceTypeFilter") or []]
        if any(t not in INSTANCE_TYPES for t in types):
            raise ApiError("InvalidInstanceType", "instanceTypeFilter takes Blue and Green")
        chosen = []
        for name in names:
            summary = instance_summary(doc, name, labels)
            if statuses and summary["status"] not in statuses:
                continue
            if types and summary.get("instanceType") not in types:
                continue
            chosen.append(name)
        return self.paged(chosen, body, "instancesList")

    async def get_deployment_instance(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment = deployment_id(body)
        instance = required(body, "instanceId", "InstanceIdRequired")
        doc, names, labels = await self._instances(deployment)
        if instance not in names:
            raise ApiError("InstanceDoesNotExist", f"Deployment {deployment} has no instance {instance!r}")
        return {"instanceSummary": instance_summary(doc, instance, labels)}

    async def batch_get_deployment_instances(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment = deployment_id(body)
        wanted = string_list(body, "instanceIds", "InstanceIdRequired")
        doc, names, labels = await self._instances(deployment)
        answer: dict[str, Any] = {"instancesSummary": [instance_summary(doc, i, labels) for i in wanted if i in names]}
        missing = [i for i in wanted if i not in names]
        if missing:
            answer["errorMessage"] = f"Deployment {deployment} has no instance {', '.join(missing)}"
        return answer


def target_filters(value: object) -> dict[str, set[str]]:
    """ListDeploymentTargets' ``targetFilters`` (TargetFilterName → values), checked against the model's names and
    the values each takes: InvalidTargetFilterName, InvalidInstanceStatus, InvalidInstanceType otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ApiError("InvalidTargetFilterName", f"targetFilters takes {', '.join(TARGET_FILTERS)}")
    filters: dict[str, set[str]] = {}
    for name, values in value.items():
        allowed = TARGET_FILTERS.get(str(name))
        if allowed is None:
            raise ApiError(
                "InvalidTargetFilterName", f"unknown target filter {name!r}; use {', '.join(TARGET_FILTERS)}"
            )
        chosen = {str(v) for v in values or ()} if isinstance(values, list) else {str(values)}
        wrong = sorted(chosen - set(allowed))
        if wrong:
            error = "InvalidInstanceStatus" if name == "TargetStatus" else "InvalidInstanceType"
            raise ApiError(error, f"{name} takes {', '.join(allowed)}, not {wrong[0]!r}")
        if chosen:
            filters[str(name)] = chosen
    return filters
