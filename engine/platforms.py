"""The seam between the engine and a compute platform that is not our own agents (Lambda, ECS) (pure: Protocols).

A server deployment's events run on agents (engine/adapters/fleet.py) and its traffic moves through the group's
long-lived router (HAProxy, ELBv2). A Lambda or ECS deployment acts on AWS resources named by its own AppSpec
(function and versions, task definition), so the Deployer asks the platform's driver for an executor and a router
made for that one deployment, and tells the driver when the deployment ends (ECS then deletes a task set).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from engine.core.config.model import DeploymentGroup
from engine.core.model import Platform
from engine.ports import HostExecutor, TrafficRouter

# The Fleet's result callback, shared by every executor: command {"deployment_id", "host", "event"} and result
# {"status": "Succeeded"|"Failed", "error_code", "message", "log_tail", "started_at", "ended_at"}.
OnResult = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[None]]


def serverless_target(group: DeploymentGroup, appspec: Mapping[str, Any]) -> str:
    """The one target of a Lambda or ECS deployment: ``function:alias`` from the AppSpec, or ``cluster:service``
    from the group."""
    if group.platform is Platform.LAMBDA:
        return f"{appspec['function_name']}:{appspec['alias']}"
    return f"{group.extra.get('cluster', '')}:{group.extra.get('service', '')}"


class PlatformDriver(Protocol):
    def target_name(self, group: DeploymentGroup, appspec: Mapping[str, Any]) -> str:
        """The one target of a deployment: ``function:alias`` (Lambda) or ``cluster:service`` (ECS)."""

    def executor(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> HostExecutor:
        """Runs the deployment's lifecycle events; results go to the driver's OnResult."""

    def router(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> TrafficRouter:
        """Shifts the deployment's traffic (alias weights, listener weights); ``set_weight(group, 0)`` reroutes."""

    async def finished(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any], status: str) -> None:
        """The deployment ended with ``status``: release what is no longer needed. Must not raise."""
