"""Applications, deployment groups and tags through the CodeDeploy API; and the operations CodeDeploy has for what
deploybot keeps elsewhere (GitHub credentials, resources by external id).

Applications and groups made here are stored beside the config file (the registry, engine/runtime/registry.py) and
work like the file's: deployments, ``deploybot groups``, Slack. Those of the config file are read-only here: a change,
a delete, a tag, or a new group in such an application is refused naming the file. What a group made here may say is
engine/core/api_groups.py's docstring; each refusal is the model's error for the member at fault.

Tags: ``ResourceArn`` is ``arn:PARTITION:codedeploy:REGION:ACCOUNT:application:APP``, ``...:deploymentgroup:APP/GROUP``
or ``...:deploymentconfig:NAME`` (any partition, region and account: Terraform builds them from its own). Resources
the API made keep their tags; the config file's and the built-in configurations have none and take none.

GitHub: deploybot holds at most one GitHub credential, from its environment: listed as ``GITHUB_TOKEN`` or
``github-app-<GITHUB_APP_ID>``, and never deleted through the API. DeleteResourcesByExternalId answers its empty
output and changes nothing: deploybot keeps no resources by external id (an audit entry records the call).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from bot.codedeploy.access import ADMIN, READ, Access
from bot.codedeploy.base import OperationsBase, required
from bot.codedeploy.shapes import ApiError
from engine import (
    NAME_PATTERN,
    ApplicationExists,
    ConfiguredResourceReadOnly,
    DeploymentConfigReadOnly,
    DeploymentGroupExists,
    GroupDefinitionInvalid,
    Platform,
    ResourceBusy,
    ResourceKind,
    ResourceRef,
    TagsInvalid,
)

_PLATFORMS = {"Server": Platform.SERVER, "Lambda": Platform.LAMBDA, "ECS": Platform.ECS}
_ARN = re.compile(r"^arn:[a-z-]+:(?P<service>[a-z0-9-]+):[a-z0-9-]*:\d*:(?P<kind>[A-Za-z]+)[:/](?P<name>.+)$")
# GroupDefinitionInvalid's member → the model's error; ``limit`` errors have their own.
_MEMBER_ERRORS = {
    "deploymentGroupName": "InvalidDeploymentGroupName",
    "deploymentConfigName": "InvalidDeploymentConfigName",
    "onPremisesInstanceTagFilters": "InvalidTag",
    "onPremisesTagSet": "InvalidOnPremisesTagCombination",
    "ec2TagFilters": "InvalidEC2Tag",
    "ec2TagSet": "InvalidEC2TagCombination",
    "autoScalingGroups": "InvalidAutoScalingGroup",
    "serviceRoleArn": "InvalidRole",
    "triggerConfigurations": "InvalidTriggerConfig",
    "alarmConfiguration": "InvalidAlarmConfig",
    "autoRollbackConfiguration": "InvalidAutoRollbackConfig",
    "deploymentStyle": "InvalidDeploymentStyle",
    "blueGreenDeploymentConfiguration": "InvalidBlueGreenDeploymentConfiguration",
    "loadBalancerInfo": "InvalidLoadBalancerInfo",
    "ecsServices": "InvalidECSService",
}
_LIMIT_ERRORS = {
    "alarmConfiguration": "AlarmsLimitExceeded",
    "triggerConfigurations": "TriggerTargetsLimitExceeded",
    "onPremisesTagSet": "TagSetListLimitExceeded",
    "ec2TagSet": "TagSetListLimitExceeded",
}
_HOOKS_NOT_CLEANED_UP: dict[str, Any] = {"hooksNotCleanedUp": []}  # deploybot installs no Auto Scaling hooks


def _name(body: Mapping[str, Any], key: str, missing: str, invalid: str) -> str:
    name = required(body, key, missing)
    if not NAME_PATTERN.match(name):
        raise ApiError(invalid, f"{key} {name!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return name


def _tags(value: object, *, error: str = "InvalidTagsToAdd") -> dict[str, str]:
    """A ``[{Key, Value}]`` list as a mapping (a missing Value is the empty string, as CodeDeploy keeps it)."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ApiError(error, "tags must be a list of {Key, Value}")
    tags: dict[str, str] = {}
    for tag in value:
        key = tag.get("Key") if isinstance(tag, Mapping) else None
        tag_value = tag.get("Value", "") if isinstance(tag, Mapping) else None
        if not isinstance(key, str) or not key or not isinstance(tag_value, str):
            raise ApiError(error, f"{tag!r} is not a tag with a Key and a Value")
        tags[key] = tag_value
    return tags


def resource_of(arn: str) -> ResourceRef:
    """The resource a CodeDeploy ARN names; InvalidArn for anything not a CodeDeploy ARN, ArnNotSupported for a
    CodeDeploy resource that takes no tags here."""
    found = _ARN.match(arn)
    if found is None or found["service"] != "codedeploy":
        raise ApiError("InvalidArn", f"{arn!r} is not a CodeDeploy ARN (arn:aws:codedeploy:REGION:ACCOUNT:TYPE:NAME)")
    kinds = {kind.value: kind for kind in ResourceKind}
    kind = kinds.get(found["kind"])
    if kind is None:
        raise ApiError(
            "ArnNotSupported",
            f"{found['kind']} ARNs take no tags here; tag an application, deploymentgroup or deploymentconfig",
        )
    name = found["name"]
    if kind is ResourceKind.DEPLOYMENT_GROUP:
        application, _, group = name.partition("/")
        if not application or not group:
            raise ApiError("InvalidArn", f"{arn!r}: a deployment group ARN ends in deploymentgroup:APPLICATION/GROUP")
        return ResourceRef(kind, application, group)
    return ResourceRef(kind, name)


class ResourceOperations(OperationsBase):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "CreateApplication": ADMIN,
        "UpdateApplication": ADMIN,
        "DeleteApplication": ADMIN,
        "CreateDeploymentGroup": ADMIN,
        "UpdateDeploymentGroup": ADMIN,
        "DeleteDeploymentGroup": ADMIN,
        "TagResource": ADMIN,
        "UntagResource": ADMIN,
        "ListTagsForResource": READ,
        "ListGitHubAccountTokenNames": READ,
        "DeleteGitHubAccountToken": ADMIN,
        "DeleteResourcesByExternalId": ADMIN,
    }

    # -- applications -------------------------------------------------------------------------------------------

    async def create_application(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = _name(body, "applicationName", "ApplicationNameRequired", "InvalidApplicationName")
        platform_name = body.get("computePlatform") or "Server"
        if platform_name not in _PLATFORMS:
            raise ApiError("InvalidComputePlatform", f"computePlatform {platform_name!r} is not Server, Lambda or ECS")
        try:
            created = await self.registry.create_application(
                name, _PLATFORMS[platform_name], tags=_tags(body.get("tags"))
            )
        except ApplicationExists as exc:
            where = " in the config file" if exc.in_config else ""
            raise ApiError("ApplicationAlreadyExists", f"An application named {exc.name} exists{where}") from None
        except TagsInvalid as exc:
            raise ApiError("InvalidTagsToAdd", exc.reason) from None
        await self.audit("application.created", actor, application=name, platform=str(created.platform))
        return {"applicationId": created.id}

    async def update_application(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = required(body, "applicationName", "ApplicationNameRequired")
        if body.get("newApplicationName") is None:
            self.application(name)  # only says whether it exists
            return {}
        new_name = _name(body, "newApplicationName", "ApplicationNameRequired", "InvalidApplicationName")
        try:
            renamed = await self.registry.rename_application(name, new_name)
        except ApplicationExists as exc:
            raise ApiError("ApplicationAlreadyExists", f"An application named {exc.name} exists") from None
        except (ConfiguredResourceReadOnly, ResourceBusy) as exc:
            raise ApiError("InvalidOperation", str(exc)) from None
        await self.audit("application.renamed", actor, application=name, to=renamed.name)
        return {}

    async def delete_application(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = required(body, "applicationName", "ApplicationNameRequired")
        try:
            deleted = await self.registry.delete_application(name)
        except (ConfiguredResourceReadOnly, ResourceBusy) as exc:
            raise ApiError("InvalidOperation", str(exc)) from None
        if deleted:
            await self.audit("application.deleted", actor, application=name)
        return {}

    # -- deployment groups ---------------------------------------------------------------------------------------

    async def create_deployment_group(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        name = _name(body, "deploymentGroupName", "DeploymentGroupNameRequired", "InvalidDeploymentGroupName")
        required(body, "serviceRoleArn", "RoleRequired")
        try:
            group = await self.registry.create_group(app.name, name, body, tags=_tags(body.get("tags")))
        except ConfiguredResourceReadOnly as exc:
            raise ApiError(
                "InvalidInput",
                f"application {exc.application} comes from the config file {exc.source}: declare its groups there "
                "(groups made through the API belong to applications made through the API)",
            ) from None
        except DeploymentGroupExists as exc:
            raise _group_exists(exc) from None
        except GroupDefinitionInvalid as exc:
            raise _invalid_group(app.name, name, exc) from None
        except TagsInvalid as exc:
            raise ApiError("InvalidTagsToAdd", exc.reason) from None
        await self.audit("deployment_group.created", actor, application=app.name, group=name)
        return {"deploymentGroupId": group.group_id()}

    async def update_deployment_group(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        current = required(body, "currentDeploymentGroupName", "DeploymentGroupNameRequired")
        new_name = None
        if body.get("newDeploymentGroupName") is not None:
            new_name = _name(
                body, "newDeploymentGroupName", "DeploymentGroupNameRequired", "InvalidDeploymentGroupName"
            )
        try:
            group = await self.registry.update_group(app.name, current, body, new_name=new_name)
        except ConfiguredResourceReadOnly as exc:
            raise ApiError("InvalidInput", str(exc)) from None
        except DeploymentGroupExists as exc:
            raise _group_exists(exc) from None
        except GroupDefinitionInvalid as exc:
            raise _invalid_group(app.name, new_name or current, exc) from None
        except ResourceBusy as exc:
            raise ApiError("InvalidOperation", str(exc)) from None
        await self.audit("deployment_group.updated", actor, application=app.name, group=current, name=group.name)
        return dict(_HOOKS_NOT_CLEANED_UP)

    async def delete_deployment_group(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        name = required(body, "deploymentGroupName", "DeploymentGroupNameRequired")
        try:
            deleted = await self.registry.delete_group(app.name, name)
        except (ConfiguredResourceReadOnly, ResourceBusy) as exc:
            raise ApiError("InvalidOperation", str(exc)) from None
        if deleted:
            await self.audit("deployment_group.deleted", actor, application=app.name, group=name)
        return dict(_HOOKS_NOT_CLEANED_UP)

    # -- tags ----------------------------------------------------------------------------------------------------

    async def tag_resource(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        arn = required(body, "ResourceArn", "ResourceArnRequired")
        if not body.get("Tags"):
            raise ApiError("TagRequired", "Tags must list at least one {Key, Value}")
        tags = _tags(body.get("Tags"))
        await self._resource_tagging(self.registry.tag_resource(resource_of(arn), tags))
        await self.audit("resource.tagged", actor, resource=arn, tags=tags)
        return {}

    async def untag_resource(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        arn = required(body, "ResourceArn", "ResourceArnRequired")
        keys = body.get("TagKeys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ApiError("TagRequired", "TagKeys must list at least one key")
        await self._resource_tagging(self.registry.untag_resource(resource_of(arn), keys))
        await self.audit("resource.untagged", actor, resource=arn, keys=keys)
        return {}

    async def list_tags_for_resource(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        arn = required(body, "ResourceArn", "ResourceArnRequired")
        tags = self.registry.tags_of(resource_of(arn))
        return {"Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]}

    async def _resource_tagging(self, change: Any) -> None:
        try:
            await change
        except ConfiguredResourceReadOnly as exc:
            raise ApiError("InvalidOperation", f"{exc}: it takes no tags through the API") from None
        except DeploymentConfigReadOnly as exc:
            where = "is built in" if exc.origin == "built-in" else "comes from the config file"
            raise ApiError(
                "InvalidOperation", f"deployment configuration {exc.name} {where}: it takes no tags"
            ) from None
        except TagsInvalid as exc:
            raise ApiError("InvalidTagsToAdd", exc.reason) from None

    # -- GitHub credentials and external ids ----------------------------------------------------------------------

    def _github_credentials(self) -> dict[str, str]:
        """The GitHub credential deploybot holds, by the name the API lists it under → where it comes from."""
        auth = self.github.auth if self.github is not None else None
        if auth is None or not auth.usable:
            return {}
        if auth.is_app:
            return {f"github-app-{auth.app_id}": "GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY(_FILE)"}
        return {"GITHUB_TOKEN": "GITHUB_TOKEN"}

    async def list_git_hub_account_token_names(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return self.paged(sorted(self._github_credentials()), body, "tokenNameList")

    async def delete_git_hub_account_token(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = required(body, "tokenName", "GitHubAccountTokenNameRequired")
        held = self._github_credentials()
        if name not in held:
            listed = ", ".join(held) or "none"
            raise ApiError(
                "GitHubAccountTokenDoesNotExist", f"No GitHub token named {name} (deploybot holds: {listed})"
            )
        raise ApiError(
            "OperationNotSupported",
            f"the GitHub credential {name} comes from deploybot's environment ({held[name]}): remove it there and "
            "restart the server",
        )

    async def delete_resources_by_external_id(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        external_id = body.get("externalId")
        if external_id is not None and not isinstance(external_id, str):
            raise ApiError("InvalidInput", "externalId must be a string")
        await self.audit("resources.deleted_by_external_id", actor, external_id=external_id, deleted=[])
        return {}


def _group_exists(exc: DeploymentGroupExists) -> ApiError:
    return ApiError(
        "DeploymentGroupAlreadyExists",
        f"A deployment group named {exc.name} exists in application {exc.holder} (group names are unique in deploybot)",
    )


def _invalid_group(application: str, group: str, exc: GroupDefinitionInvalid) -> ApiError:
    member = exc.member.split(".")[0]
    name = (_LIMIT_ERRORS.get(member) if exc.limit else None) or _MEMBER_ERRORS.get(member, "InvalidInput")
    return ApiError(name, f"deployment group {group} of application {application}: {exc.member}: {exc.reason}")
