"""On-premises instances through the CodeDeploy API: register, deregister, list, get, and tag them.

A registered instance is a deploybot host: ``deploybot hosts`` shows it, and deployment groups selecting hosts by
tag deploy to it. CodeDeploy's agent authenticates with IAM; deploybot's agent with a token, so registering answers
the instance's agent token in the ``x-deploybot-agent-token`` header; the body is the operation's empty output, as
the service model has it: ``deploybot agent --server URL --name NAME --token-file FILE``.
Hosts of the config file are listed too, as registered instances, but are read-only here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar

from bot.codedeploy.access import ADMIN, READ, Access
from bot.codedeploy.base import Answer, OperationsBase, required, string_list
from bot.codedeploy.shapes import ApiError, instance_info
from engine import (
    ConfiguredHostReadOnly,
    IamArnAlreadyRegistered,
    InstanceAlreadyRegistered,
    InstanceNotRegistered,
    TooManyTags,
)

TOKEN_HEADER = "x-deploybot-agent-token"
TAG_BATCH_LIMIT = 10  # instances per Add/RemoveTags call, as CodeDeploy
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FILTER_TYPES = ("KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE")


def _instance_name(body: Mapping[str, Any]) -> str:
    name = required(body, "instanceName", "InstanceNameRequired")
    if not _NAME.match(name):
        raise ApiError("InvalidInstanceName", f"{name!r}: use 1-100 letters, digits, '.', '_' or '-'")
    return name


def _tags(body: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    tags = body.get("tags")
    if not isinstance(tags, list) or not tags:
        raise ApiError("TagRequired", "tags must list at least one {Key, Value}")
    out = []
    for tag in tags:
        if not isinstance(tag, Mapping) or not isinstance(tag.get("Key"), str) or not tag["Key"]:
            raise ApiError("InvalidTag", f"{tag!r} is not a tag with a Key")
        value = tag.get("Value")
        out.append((str(tag["Key"]), None if value is None else str(value)))
    return out


def _matches(tags: Mapping[str, str], filters: list[Mapping[str, Any]]) -> bool:
    """CodeDeploy's tag filters: an instance matches when any one filter does."""
    for f in filters:
        key, value, kind = f.get("Key"), f.get("Value"), f.get("Type")
        if kind == "KEY_ONLY" and key in tags:
            return True
        if kind == "VALUE_ONLY" and value in tags.values():
            return True
        if kind == "KEY_AND_VALUE" and isinstance(key, str) and key in tags and tags[key] == value:
            return True
    return False


class OnPremOperations(OperationsBase):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "RegisterOnPremisesInstance": ADMIN,
        "DeregisterOnPremisesInstance": ADMIN,
        "ListOnPremisesInstances": READ,
        "GetOnPremisesInstance": READ,
        "BatchGetOnPremisesInstances": READ,
        "AddTagsToOnPremisesInstances": ADMIN,
        "RemoveTagsFromOnPremisesInstances": ADMIN,
    }

    async def register_on_premises_instance(self, body: Mapping[str, Any], actor: str) -> Answer:
        name = _instance_name(body)
        session, user = body.get("iamSessionArn"), body.get("iamUserArn")
        if session and user:
            raise ApiError("MultipleIamArnsProvided", "give iamSessionArn or iamUserArn, not both")
        for arn, service, error in ((session, ":sts:", "InvalidIamSessionArn"), (user, ":iam:", "InvalidIamUserArn")):
            if arn and (not str(arn).startswith("arn:") or service not in str(arn)):
                raise ApiError(error, f"{arn!r} is not an {service.strip(':').upper()} ARN")
        try:
            await self.registry.register_instance(name, iam_arn=str(session or user) if session or user else None)
        except InstanceAlreadyRegistered as exc:
            where = " in the config file" if exc.in_config else ""
            raise ApiError("InstanceNameAlreadyRegistered", f"An instance named {name} is registered{where}") from None
        except IamArnAlreadyRegistered as exc:
            kind = "IamSessionArnAlreadyRegistered" if session else "IamUserArnAlreadyRegistered"
            raise ApiError(kind, f"{exc.arn} is already registered for {exc.holder}") from None
        # Always a new token: one the name may hold already (from POST /agent-tokens, or a host since removed from
        # the config) is revoked, never handed out again.
        token = await self.deployer.fleet.issue_token(name, rotate=True)
        await self.audit("instance.registered", actor, instance=name)
        return Answer({}, {TOKEN_HEADER: token})

    async def deregister_on_premises_instance(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = _instance_name(body)
        try:
            await self.registry.deregister_instance(name)
        except ConfiguredHostReadOnly:
            raise ApiError("InvalidOperation", f"{name} is a host of the config file; remove it there") from None
        except InstanceNotRegistered:
            raise ApiError("InstanceNotRegistered", f"No registered instance named {name}") from None
        await self.deployer.fleet.withdraw_token(name)  # its agent is refused from now on, by every replica
        await self.audit("instance.deregistered", actor, instance=name)
        return {}

    def _hosts(self) -> dict[str, dict[str, Any]]:
        """Every host the API can show, by name: the config file's, then the registry's (deregistered too)."""
        hosts = {name: instance_info(name, host.tags, None) for name, host in self.deployer.config.hosts.items()}
        for instance in self.registry.instances():
            hosts.setdefault(instance.name, instance_info(instance.name, instance.tags, instance))
        return hosts

    async def list_on_premises_instances(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        status = body.get("registrationStatus")
        if status not in (None, "Registered", "Deregistered"):
            raise ApiError("InvalidRegistrationStatus", f"registrationStatus {status!r} is not Registered/Deregistered")
        filters = body.get("tagFilters") or []
        if not isinstance(filters, list) or any(
            not isinstance(f, Mapping) or f.get("Type") not in _FILTER_TYPES for f in filters
        ):
            raise ApiError("InvalidTagFilter", f"each tag filter needs Type {', '.join(_FILTER_TYPES)}")
        names = []
        for name, info in sorted(self._hosts().items()):
            registered = "deregisterTime" not in info
            if status is not None and registered != (status == "Registered"):
                continue
            tags = {t["Key"]: t["Value"] for t in info["tags"]}
            if filters and not _matches(tags, filters):
                continue
            names.append(name)
        return self.paged(names, body, "instanceNames")

    async def get_on_premises_instance(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        name = _instance_name(body)
        info = self._hosts().get(name)
        if info is None:
            raise ApiError("InstanceNotRegistered", f"No registered instance named {name}")
        return {"instanceInfo": info}

    async def batch_get_on_premises_instances(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names = string_list(body, "instanceNames", "InstanceNameRequired")
        hosts = self._hosts()
        return {"instanceInfos": [hosts[name] for name in names if name in hosts]}

    async def add_tags_to_on_premises_instances(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names, tags = self._tag_request(body)
        if any(value is None for _, value in tags):
            raise ApiError("InvalidTag", "each tag to add needs a Value")
        await self._tagging(self.registry.add_tags(names, {k: str(v) for k, v in tags}))
        await self.audit("instance.tagged", actor, instances=names, tags={k: str(v) for k, v in tags})
        return {}

    async def remove_tags_from_on_premises_instances(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        names, tags = self._tag_request(body)
        await self._tagging(self.registry.remove_tags(names, tags))
        await self.audit("instance.untagged", actor, instances=names, tags=[[k, v] for k, v in tags])
        return {}

    def _tag_request(self, body: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str | None]]]:
        tags = _tags(body)
        names = body.get("instanceNames")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ApiError("InstanceNameRequired", "instanceNames must list at least one instance")
        if len(names) > TAG_BATCH_LIMIT:
            raise ApiError("InstanceLimitExceeded", f"at most {TAG_BATCH_LIMIT} instances per call")
        return [str(n) for n in names], tags

    async def _tagging(self, change: Awaitable[None]) -> None:
        try:
            await change
        except ConfiguredHostReadOnly as exc:
            raise ApiError("InvalidOperation", f"{exc.name} is a host of the config file; tag it there") from None
        except InstanceNotRegistered as exc:
            raise ApiError("InstanceNotRegistered", f"No registered instance named {exc.name}") from None
        except TooManyTags as exc:
            raise ApiError(
                "TagLimitExceeded", f"{exc.name} would have {exc.count} tags; the limit is {exc.limit}"
            ) from None
