"""Reading applications and deployment groups, and deployment configurations, through the CodeDeploy API.

Applications and groups are the config file's (read-only here) and those made with CreateApplication and
CreateDeploymentGroup (resource_ops.py); a group made through the API is shown as it was defined (its
CreateDeploymentGroup members) with what deploybot made of it. Configurations are the built-ins, the config file's
and those made with CreateDeploymentConfig; only the last can be deleted, and only while nothing uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bot.codedeploy.access import ADMIN, READ, Access
from bot.codedeploy.base import OperationsBase, required, string_list
from bot.codedeploy.shapes import PLATFORMS, ApiError, config_info
from engine import (
    BUILTIN_CONFIGS,
    BUILTIN_PREFIX,
    FROM_API,
    MAX_CONFIG_NAME_LENGTH,
    Application,
    DeploymentConfig,
    DeploymentConfigExists,
    DeploymentConfigInUse,
    DeploymentConfigReadOnly,
    DeploymentGroup,
    InvalidDeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
)

_PLATFORM_NAMES = {name: platform for platform, name in PLATFORMS.items()}
_CODEDEPLOY_TRIGGER_EVENTS = frozenset(
    {f"Deployment{e}" for e in ("Start", "Success", "Failure", "Stop", "Rollback", "Ready")}
    | {f"Instance{e}" for e in ("Start", "Success", "Failure", "Ready")}
)
"""botocore's TriggerEventType: what ``triggerEvents`` may hold."""
_MHH_WORDS = ("minimum_healthy", "FLEET_PERCENT", "HOST_COUNT", "MOST_CONCURRENCY")
# The members of an API-made group's definition GetDeploymentGroup shows as given (the others are read back from
# the group: its configuration, style, rollback, alarms and triggers, with deploybot's defaults filled in).
_ECHOED_MEMBERS = (
    "onPremisesInstanceTagFilters",
    "onPremisesTagSet",
    "ec2TagFilters",
    "ec2TagSet",
    "autoScalingGroups",
    "serviceRoleArn",
    "loadBalancerInfo",
    "blueGreenDeploymentConfiguration",
    "outdatedInstancesStrategy",
    "terminationHookEnabled",
)


class ApplicationOperations(OperationsBase):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "ListApplications": READ,
        "GetApplication": READ,
        "BatchGetApplications": READ,
        "ListDeploymentGroups": READ,
        "GetDeploymentGroup": READ,
        "BatchGetDeploymentGroups": READ,
        "ListDeploymentConfigs": READ,
        "GetDeploymentConfig": READ,
        "CreateDeploymentConfig": ADMIN,
        "DeleteDeploymentConfig": ADMIN,
    }

    # -- applications and groups ------------------------------------------------------------------------------

    def _app_info(self, app: Application) -> dict[str, Any]:
        info: dict[str, Any] = {
            "applicationId": app.name,
            "applicationName": app.name,
            "computePlatform": PLATFORMS[app.platform],
            "linkedToGitHub": bool(app.github_repository),
        }
        if app.github_repository:
            info["gitHubAccountName"] = app.github_repository.split("/")[0]
        made = self.registry.api_application(app.name) if app.origin == FROM_API else None
        if made is not None:
            info["applicationId"] = made.id
            info["createTime"] = made.created_at
        return info

    async def list_applications(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return self.paged(sorted(self.deployer.config.applications), body, "applications")

    async def get_application(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return {"application": self._app_info(self.application_of(body))}

    async def batch_get_applications(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names = string_list(body, "applicationNames", "ApplicationNameRequired")
        return {"applicationsInfo": [self._app_info(self.application(n)) for n in names]}

    async def list_deployment_groups(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        answer = self.paged([app.groups[env].name for env in app.environments], body, "deploymentGroups")
        return {"applicationName": app.name, **answer}

    def _group_info(self, group: DeploymentGroup) -> dict[str, Any]:
        info = self._built_group_info(group)
        from_api = self.deployer.config.application(group.application).origin == FROM_API
        made = self.registry.api_group(group.name) if from_api else None
        if made is not None:  # what was given, as it was given, where deploybot's reading would differ in form
            for member in _ECHOED_MEMBERS:
                info.pop(member, None)
                if member in made.definition:
                    info[member] = made.definition[member]
        return info

    def _built_group_info(self, group: DeploymentGroup) -> dict[str, Any]:
        if group.hosts:  # named hosts have no tag; show them as Name filters so the target list is visible
            filters = [{"Key": "Name", "Value": host, "Type": "KEY_AND_VALUE"} for host in group.hosts]
        else:
            filters = [{"Key": k, "Value": v, "Type": "KEY_AND_VALUE"} for k, v in group.target_tags.items()]
        with_traffic = group.load_balancer is not None and group.load_balancer.type != "none"
        return {
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
            # CodeDeploy's triggers are SNS topics: the group's sns triggers, with CodeDeploy's own event types
            # (webhook and Slack triggers, and the agent-health events, are deploybot's: docs/triggers.md).
            "triggerConfigurations": [
                {
                    "triggerName": trigger.name,
                    "triggerTargetArn": trigger.target.address,
                    "triggerEvents": sorted(str(e) for e in trigger.events if str(e) in _CODEDEPLOY_TRIGGER_EVENTS),
                }
                for trigger in group.triggers
                if str(trigger.target.kind) == "sns"
            ],
        }

    async def get_deployment_group(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return {"deploymentGroupInfo": self._group_info(self.group_of(body))}

    async def batch_get_deployment_groups(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        names = string_list(body, "deploymentGroupNames", "DeploymentGroupNameRequired")
        infos, missing = [], []
        for name in names:
            try:
                infos.append(self._group_info(self.group_in(app, name)))
            except ApiError:
                missing.append(name)
        answer: dict[str, Any] = {"deploymentGroupsInfo": infos}
        if missing:
            answer["errorMessage"] = f"No deployment group {', '.join(missing)} in {app.name}"
        return answer

    # -- configurations -----------------------------------------------------------------------------------------

    async def list_deployment_configs(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return self.paged([*BUILTIN_CONFIGS, *self.configs()], body, "deploymentConfigsList")

    async def get_deployment_config(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = required(body, "deploymentConfigName", "DeploymentConfigNameRequired")
        config = self.config_named(name)
        return {"deploymentConfigInfo": config_info(config, self.registry.config_created_at(name))}

    async def create_deployment_config(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = required(body, "deploymentConfigName", "DeploymentConfigNameRequired")
        if name.startswith(BUILTIN_PREFIX) or len(name) > MAX_CONFIG_NAME_LENGTH:
            raise ApiError(
                "InvalidDeploymentConfigName",
                f"{name!r}: names are 1-{MAX_CONFIG_NAME_LENGTH} characters and may not start with {BUILTIN_PREFIX}",
            )
        platform_name = body.get("computePlatform") or "Server"
        if platform_name not in _PLATFORM_NAMES:
            raise ApiError("InvalidComputePlatform", f"computePlatform {platform_name!r} is not Server, Lambda or ECS")
        if body.get("zonalConfig"):
            raise ApiError("InvalidZonalDeploymentConfiguration", "deploybot does not deploy by availability zone")
        config = DeploymentConfig(
            name,
            _PLATFORM_NAMES[platform_name],
            _minimum_healthy_hosts(body.get("minimumHealthyHosts")),
            _traffic_routing(body.get("trafficRoutingConfig")),
        )
        try:
            await self.registry.create_config(config)
        except DeploymentConfigExists:
            raise ApiError("DeploymentConfigAlreadyExists", f"A deployment configuration named {name} exists") from None
        except InvalidDeploymentConfig as exc:
            mhh = any(word in problem for problem in exc.problems for word in _MHH_WORDS)
            kind = "InvalidMinimumHealthyHostValue" if mhh else "InvalidTrafficRoutingConfiguration"
            raise ApiError(kind, f"{name}: {'; '.join(exc.problems)}") from None
        await self.audit("deployment_config.created", actor, config=name)
        return {"deploymentConfigId": name}

    async def delete_deployment_config(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = required(body, "deploymentConfigName", "DeploymentConfigNameRequired")
        try:
            await self.registry.delete_config(name)
        except DeploymentConfigReadOnly as exc:
            where = "is built in" if exc.origin == "built-in" else "comes from the config file; edit it there"
            raise ApiError("InvalidOperation", f"{name} {where}: it cannot be deleted") from None
        except DeploymentConfigInUse as exc:
            raise ApiError("DeploymentConfigInUse", f"{name} is used by {', '.join(exc.users)}") from None
        await self.audit("deployment_config.deleted", actor, config=name)
        return {}


def _minimum_healthy_hosts(value: object) -> MinimumHealthyHosts | None:
    if value is None:
        return None
    kinds = ("HOST_COUNT", "FLEET_PERCENT")
    if not isinstance(value, Mapping) or value.get("type") not in kinds or not isinstance(value.get("value"), int):
        raise ApiError(
            "InvalidMinimumHealthyHostValue", "minimumHealthyHosts needs type HOST_COUNT|FLEET_PERCENT and value"
        )
    return MinimumHealthyHosts(MinimumHealthyHostsType(value["type"]), int(value["value"]))


def _traffic_routing(value: object) -> TrafficRouting | None:
    if value is None:
        return None
    kinds = {t.value: t for t in TrafficRoutingType}
    if not isinstance(value, Mapping) or value.get("type") not in kinds:
        raise ApiError(
            "InvalidTrafficRoutingConfiguration", f"trafficRoutingConfig.type must be one of {', '.join(kinds)}"
        )
    kind = kinds[str(value["type"])]
    if kind is TrafficRoutingType.ALL_AT_ONCE:
        return TrafficRouting(kind)
    member, prefix = (
        ("timeBasedCanary", "canary") if kind is TrafficRoutingType.CANARY else ("timeBasedLinear", "linear")
    )
    step = value.get(member)
    percentage = step.get(f"{prefix}Percentage") if isinstance(step, Mapping) else None
    interval = step.get(f"{prefix}Interval") if isinstance(step, Mapping) else None
    if not isinstance(percentage, int) or not isinstance(interval, int):
        raise ApiError(
            "InvalidTrafficRoutingConfiguration", f"{kind} needs {member} {{{prefix}Percentage, {prefix}Interval}}"
        )
    return TrafficRouting(kind, percentage, interval)
