"""The CodeDeploy operations deploybot answers, each mapped onto one Deployer call and shaped like the service model.

Names are CodeDeploy's: an application is an application, a deployment group is matched by its group name (or, as a
convenience, its environment), timestamps are epoch seconds. A revision is named the deploybot way through the S3
shape: ``{"revisionType": "S3", "s3Location": {"bucket": "deploybot", "key": "sha256:<hex>" | path | "git:REF"}}``;
without ``revision`` the application's default revision is deployed, like ``deploybot deploy``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bot.codedeploy.shapes import (
    PLATFORMS,
    ApiError,
    config_info,
    deployment_info,
    revision_spec,
    target_json,
)
from engine.configs import BUILTIN_CONFIGS
from engine.errors import ApplicationNotFound, EngineError, UnknownDeploymentConfig
from engine.service import DeployRequest
from engine.topology import Application, DeploymentGroup

_DEPLOYMENT_ID = re.compile(r"^d-[A-Z0-9]{9}$")
_LISTABLE_STATUSES = ("Created", "Queued", "InProgress", "Baking", "Succeeded", "Failed", "Stopped", "Ready")

Operation = Callable[[Mapping[str, Any], str], Awaitable[dict[str, Any]]]


def _required(body: Mapping[str, Any], key: str, missing: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(missing, f"{key} is required")
    return value.strip()


def _deployment_id(body: Mapping[str, Any]) -> str:
    return _checked_id(_required(body, "deploymentId", "DeploymentIdRequired"))


def _checked_id(value: str) -> str:
    if not _DEPLOYMENT_ID.match(value):
        raise ApiError("InvalidDeploymentId", f"{value!r} is not a deployment id (d- and nine letters or digits)")
    return value


def _offset(body: Mapping[str, Any]) -> int:
    token = body.get("nextToken")
    if token is None:
        return 0
    if not isinstance(token, str) or not token.isdigit():
        raise ApiError("InvalidNextToken", f"nextToken {token!r} was not issued by this server")
    return int(token)


def _page(items: list[Any], offset: int, size: int) -> tuple[list[Any], str | None]:
    page = items[offset : offset + size]
    return page, str(offset + size) if offset + size < len(items) else None


class CodeDeployOperations:
    """One method per supported operation: ``(body, actor) -> response body``; failures raise ApiError/EngineError."""

    def __init__(self, deployer: Any, *, page_size: int = 100) -> None:
        self.deployer = deployer
        self.page_size = page_size
        self.table: dict[str, Operation] = {
            "ListApplications": self.list_applications,
            "GetApplication": self.get_application,
            "BatchGetApplications": self.batch_get_applications,
            "ListDeploymentGroups": self.list_deployment_groups,
            "GetDeploymentGroup": self.get_deployment_group,
            "ListDeploymentConfigs": self.list_deployment_configs,
            "GetDeploymentConfig": self.get_deployment_config,
            "CreateDeployment": self.create_deployment,
            "GetDeployment": self.get_deployment,
            "BatchGetDeployments": self.batch_get_deployments,
            "ListDeployments": self.list_deployments,
            "StopDeployment": self.stop_deployment,
            "ContinueDeployment": self.continue_deployment,
            "ListDeploymentTargets": self.list_deployment_targets,
            "GetDeploymentTarget": self.get_deployment_target,
            "BatchGetDeploymentTargets": self.batch_get_deployment_targets,
        }

    # -- lookups -----------------------------------------------------------------------------------------------

    def _application(self, name: str) -> Application:
        try:
            return self.deployer.config.application(name)
        except ApplicationNotFound:
            raise ApiError("ApplicationDoesNotExist", f"No application found for name: {name}") from None

    def _group(self, body: Mapping[str, Any]) -> DeploymentGroup:
        app = self._application(_required(body, "applicationName", "ApplicationNameRequired"))
        name = _required(body, "deploymentGroupName", "DeploymentGroupNameRequired")
        for environment, group in app.groups.items():
            if name in (group.name, environment) or name.casefold() == environment.casefold():
                return group
        names = ", ".join(g.name for g in app.groups.values())
        raise ApiError("DeploymentGroupDoesNotExist", f"No deployment group {name!r} in {app.name} (has: {names})")

    def _app_info(self, app: Application) -> dict[str, Any]:
        info: dict[str, Any] = {
            "applicationId": app.name,
            "applicationName": app.name,
            "computePlatform": PLATFORMS[app.platform],
            "linkedToGitHub": bool(app.github_repository),
        }
        if app.github_repository:
            info["gitHubAccountName"] = app.github_repository.split("/")[0]
        return info

    # -- applications, groups, configurations -----------------------------------------------------------------

    async def list_applications(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names = sorted(self.deployer.config.applications)
        page, token = _page(names, _offset(body), self.page_size)
        return {"applications": page, **({"nextToken": token} if token else {})}

    async def get_application(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self._application(_required(body, "applicationName", "ApplicationNameRequired"))
        return {"application": self._app_info(app)}

    async def batch_get_applications(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names = body.get("applicationNames") or []
        return {"applicationsInfo": [self._app_info(self._application(str(n))) for n in names]}

    async def list_deployment_groups(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self._application(_required(body, "applicationName", "ApplicationNameRequired"))
        names = [app.groups[env].name for env in app.environments]
        page, token = _page(names, _offset(body), self.page_size)
        return {"applicationName": app.name, "deploymentGroups": page, **({"nextToken": token} if token else {})}

    async def get_deployment_group(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        group = self._group(body)
        if group.hosts:  # named hosts have no tag; show them as Name filters so the target list is visible
            filters = [{"Key": "Name", "Value": host, "Type": "KEY_AND_VALUE"} for host in group.hosts]
        else:
            filters = [{"Key": k, "Value": v, "Type": "KEY_AND_VALUE"} for k, v in group.target_tags.items()]
        with_traffic = group.load_balancer is not None and group.load_balancer.type != "none"
        info = {
            "applicationName": group.application,
            "deploymentGroupId": group.group_id(),
            "deploymentGroupName": group.name,
            "deploymentConfigName": group.deployment_config,
            "onPremisesInstanceTagFilters": filters,
            "deploymentStyle": {
                "deploymentType": str(group.deployment_type),
                "deploymentOption": "WITH_TRAFFIC_CONTROL" if with_traffic else "WITHOUT_TRAFFIC_CONTROL",
            },
            "autoRollbackConfiguration": {
                "enabled": group.auto_rollback.enabled,
                "events": sorted(str(e) for e in group.auto_rollback.events),
            },
            "alarmConfiguration": {
                "enabled": group.alarms.enabled,
                "ignorePollAlarmFailure": group.alarms.ignore_poll_alarm_failure,
                "alarms": [{"name": name} for name in group.alarms.names],
            },
            "computePlatform": PLATFORMS[group.platform],
        }
        return {"deploymentGroupInfo": info}

    async def list_deployment_configs(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names = [*BUILTIN_CONFIGS, *self.deployer.config.deployment_configs]
        page, token = _page(names, _offset(body), self.page_size)
        return {"deploymentConfigsList": page, **({"nextToken": token} if token else {})}

    async def get_deployment_config(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = _required(body, "deploymentConfigName", "DeploymentConfigNameRequired")
        try:
            config = self.deployer.config.deployment_config(name)
        except UnknownDeploymentConfig:
            raise ApiError(
                "DeploymentConfigDoesNotExist", f"No deployment configuration found for name: {name}"
            ) from None
        return {"deploymentConfigInfo": config_info(config)}

    # -- deployments --------------------------------------------------------------------------------------------

    async def create_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        group = self._group(body)
        config_name = body.get("deploymentConfigName")
        if config_name is not None:
            try:
                self.deployer.config.deployment_config(str(config_name))
            except UnknownDeploymentConfig:
                raise ApiError(
                    "DeploymentConfigDoesNotExist", f"No deployment configuration named {config_name}"
                ) from None
        description = body.get("description") or ""
        request = DeployRequest(
            application=group.application,
            environment=group.environment,
            revision=revision_spec(body.get("revision")),
            config_name=str(config_name) if config_name else None,
            actor=actor,
            description=str(description),
        )
        try:
            deployment = await self.deployer.start(request)
        except EngineError as exc:
            if request.revision is None and "no default revision" in str(exc):
                raise ApiError("RevisionRequired", str(exc)) from None
            raise
        return {"deploymentId": deployment["id"]}

    async def _deployment_info(self, deployment_id: str) -> dict[str, Any]:
        doc = await self.deployer.get(_checked_id(deployment_id))
        return deployment_info(doc)

    async def get_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return {"deploymentInfo": await self._deployment_info(_deployment_id(body))}

    async def batch_get_deployments(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        ids = body.get("deploymentIds") or []
        return {"deploymentsInfo": [await self._deployment_info(str(i)) for i in ids]}

    async def list_deployments(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        application = group_name = None
        if body.get("applicationName"):
            application = self._application(str(body["applicationName"])).name
            if body.get("deploymentGroupName"):
                group_name = self._group(body).name
        elif body.get("deploymentGroupName"):
            raise ApiError("ApplicationNameRequired", "deploymentGroupName needs applicationName")
        statuses = [str(s) for s in body.get("includeOnlyStatuses") or []]
        unknown = [s for s in statuses if s not in _LISTABLE_STATUSES]
        if unknown:
            raise ApiError(
                "InvalidDeploymentStatus", f"unknown status {unknown[0]!r}; use {', '.join(_LISTABLE_STATUSES)}"
            )
        if "Queued" in statuses:
            statuses.append("WaitingApproval")
        rows = await self.deployer.store.list_deployments(
            application=application, group_name=group_name, status=statuses or None, limit=None
        )
        page, token = _page([row["id"] for row in rows], _offset(body), self.page_size)
        return {"deployments": page, **({"nextToken": token} if token else {})}

    async def stop_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment_id = _deployment_id(body)
        current = await self.deployer.get(deployment_id)
        if current["status"] in ("Succeeded", "Failed", "Stopped"):
            raise ApiError("DeploymentAlreadyCompleted", f"Deployment {deployment_id} is already {current['status']}")
        rollback = body.get("autoRollbackEnabled")
        doc = await self.deployer.stop(
            deployment_id, rollback=rollback if isinstance(rollback, bool) else None, actor=actor
        )
        message = f"Deployment {deployment_id} is {doc['status']}"
        if doc["rollback"]["by"]:
            message += f"; rolled back by {doc['rollback']['by']}"
        return {"status": "Succeeded" if doc["status"] == "Stopped" else "Pending", "statusMessage": message}

    async def continue_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment_id = _deployment_id(body)
        current = await self.deployer.get(deployment_id)
        if current["status"] != "Ready" and not current.get("paused"):
            raise ApiError("DeploymentIsNotInReadyState", f"Deployment {deployment_id} is {current['status']}")
        await self.deployer.control(deployment_id, "continue", actor=actor)
        return {}

    # -- targets ------------------------------------------------------------------------------------------------

    async def _targets(self, deployment_id: str) -> tuple[dict[str, Any], list[str]]:
        doc = await self.deployer.get(deployment_id)
        row = await self.deployer.store.get_deployment(deployment_id) or {}
        names: list[str] = []
        for stage in (row.get("state") or {}).get("stages", []):
            names.extend(t for t in stage.get("targets", []) if t not in names)
        names.extend(t["name"] for t in doc["targets"] if t["name"] not in names)
        return doc, names

    async def list_deployment_targets(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        _, names = await self._targets(_deployment_id(body))
        page, token = _page(names, _offset(body), self.page_size)
        return {"targetIds": page, **({"nextToken": token} if token else {})}

    async def batch_get_deployment_targets(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment_id = _deployment_id(body)
        doc, names = await self._targets(deployment_id)
        wanted = [str(t) for t in body.get("targetIds") or []]
        return {"deploymentTargets": [target_json(doc, names, t) for t in wanted]}

    async def get_deployment_target(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment_id = _deployment_id(body)
        doc, names = await self._targets(deployment_id)
        target = _required(body, "targetId", "DeploymentTargetIdRequired")
        return {"deploymentTarget": target_json(doc, names, target)}
