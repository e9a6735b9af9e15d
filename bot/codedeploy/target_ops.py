"""What a deployment did on each target: the current ``DeploymentTarget`` operations and the legacy
``DeploymentInstance`` ones (``InstanceSummary``), both with lifecycle events and diagnostics.

A blue/green deployment labels its original fleet Blue and its replacement Green.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bot.codedeploy.access import READ, Access
from bot.codedeploy.base import OperationsBase, deployment_id, required, string_list
from bot.codedeploy.shapes import ApiError, blue_green_labels, instance_summary, target_json
from engine import EngineError

INSTANCE_STATUSES = ("Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Unknown", "Ready")
INSTANCE_TYPES = ("Blue", "Green")


class TargetOperations(OperationsBase):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "ListDeploymentTargets": READ,
        "GetDeploymentTarget": READ,
        "BatchGetDeploymentTargets": READ,
        "ListDeploymentInstances": READ,
        "GetDeploymentInstance": READ,
        "BatchGetDeploymentInstances": READ,
    }

    async def _targets(self, deployment: str) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        """(document, every target name in stage order, Blue/Green labels)."""
        doc = await self.deployer.get(deployment)
        row = await self.deployer.store.get_deployment(deployment) or {}
        state = row.get("state") or {}
        names: list[str] = []
        for stage in state.get("stages", []):
            names.extend(t for t in stage.get("targets", []) if t not in names)
        names.extend(t["name"] for t in doc["targets"] if t["name"] not in names)
        return doc, names, blue_green_labels(state)

    async def list_deployment_targets(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        _, names, _ = await self._targets(deployment_id(body))
        return self.paged(names, body, "targetIds")

    async def batch_get_deployment_targets(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        doc, names, labels = await self._targets(deployment_id(body))
        wanted = string_list(body, "targetIds", "DeploymentTargetIdRequired", limit=25)
        return {"deploymentTargets": [target_json(doc, names, t, labels) for t in wanted]}

    async def get_deployment_target(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        doc, names, labels = await self._targets(deployment_id(body))
        target = required(body, "targetId", "DeploymentTargetIdRequired")
        return {"deploymentTarget": target_json(doc, names, target, labels)}

    # -- the legacy instance operations (EC2/on-premises deployments only) -------------------------------------

    async def _instances(self, deployment: str) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        doc, names, labels = await self._targets(deployment)
        try:
            platform = self.deployer.config.group(doc["application"], doc["environment"]).platform
        except EngineError:
            platform = None
        if platform is not None and str(platform) != "server":
            raise ApiError(
                "InvalidComputePlatform",
                f"Deployment {deployment} is a {platform} deployment: use ListDeploymentTargets / GetDeploymentTarget",
            )
        return doc, names, labels

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
