"""What the CodeDeploy API registers, as values: revisions registered with an application, on-premises instances
and API-made deployment configurations, with the errors the registry raises (pure: no I/O).

The registry (engine/runtime/registry.py) stores and mirrors these; the API front turns the errors into AWS error names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.core.configs import (
    DeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
)
from engine.core.errors import EngineError, NotFound
from engine.core.model import Platform

MAX_INSTANCE_TAGS = 10  # CodeDeploy's limit per on-premises instance


# -- errors (data only; the API chooses the words and the AWS names) ---------------------------------------------


class InstanceAlreadyRegistered(EngineError):
    def __init__(self, name: str, *, in_config: bool = False) -> None:
        self.name, self.in_config = name, in_config
        where = "declared in the config file" if in_config else "already registered"
        super().__init__(f"instance {name!r} is {where}")


class InstanceNotRegistered(NotFound):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"instance {name!r} is not registered")


class ConfiguredHostReadOnly(EngineError):
    """A host of the config file cannot be deregistered or re-tagged through the API."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"host {name!r} is declared in the config file; change it there")


class IamArnAlreadyRegistered(EngineError):
    def __init__(self, arn: str, holder: str) -> None:
        self.arn, self.holder = arn, holder
        super().__init__(f"IAM ARN {arn} is already registered for instance {holder!r}")


class TooManyTags(EngineError):
    def __init__(self, name: str, count: int, limit: int = MAX_INSTANCE_TAGS) -> None:
        self.name, self.count, self.limit = name, count, limit
        super().__init__(f"instance {name!r} would have {count} tags; the limit is {limit}")


class DeploymentConfigExists(EngineError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"deployment configuration {name!r} already exists")


class DeploymentConfigReadOnly(EngineError):
    """``origin`` is ``"built-in"`` or ``"config file"``."""

    def __init__(self, name: str, origin: str) -> None:
        self.name, self.origin = name, origin
        super().__init__(f"deployment configuration {name!r} is {origin} and cannot be deleted")


class DeploymentConfigInUse(EngineError):
    def __init__(self, name: str, users: tuple[str, ...]) -> None:
        self.name, self.users = name, users
        super().__init__(f"deployment configuration {name!r} is used by {', '.join(users)}")


class InvalidDeploymentConfig(EngineError):
    def __init__(self, name: str, problems: tuple[str, ...]) -> None:
        self.name, self.problems = name, problems
        super().__init__(f"deployment configuration {name!r}: {'; '.join(problems)}")


class ApplicationExists(EngineError):
    """CreateApplication/UpdateApplication: the name is taken (``in_config``: by an application of the config file)."""

    def __init__(self, name: str, *, in_config: bool = False) -> None:
        self.name, self.in_config = name, in_config
        super().__init__(f"application {name!r} already exists" + (" in the config file" if in_config else ""))


class DeploymentGroupExists(EngineError):
    """Deployment group names are unique across deploybot (deployments are kept by group name): ``holder`` is the
    application that has one called ``name``."""

    def __init__(self, name: str, holder: str) -> None:
        self.name, self.holder = name, holder
        super().__init__(f"deployment group {name!r} already exists in application {holder!r}")


class ConfiguredResourceReadOnly(EngineError):
    """An application or group of the config file cannot be changed, deleted or tagged through the API, and no
    group can be added to such an application: ``group`` None means the application itself; ``source`` is the
    config file."""

    def __init__(self, application: str, group: str | None, source: str) -> None:
        self.application, self.group, self.source = application, group, source
        what = f"deployment group {group} of application {application}" if group else f"application {application}"
        super().__init__(f"{what} comes from the config file {source}; change it there")


class ResourceBusy(EngineError):
    """An application or group with deployments that have not ended cannot be renamed or deleted."""

    def __init__(self, what: str, deployments: tuple[str, ...]) -> None:
        self.what, self.deployments = what, deployments
        super().__init__(f"{what} has deployments that have not ended: {', '.join(deployments)}")


class TagsInvalid(EngineError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# -- values ------------------------------------------------------------------------------------------------------


MAX_RESOURCE_TAGS = 50  # CodeDeploy's limit per application, deployment group or configuration


@dataclass(frozen=True, slots=True)
class ApiApplication:
    """An application created through the API; its groups are ``ApiGroup``s."""

    id: str  # CreateApplication's applicationId; kept across renames
    name: str
    platform: Platform
    created_at: float
    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ApiGroup:
    """A deployment group created through the API: ``definition`` is its CreateDeploymentGroup members
    (engine/core/api_groups.py), as last given."""

    application: str
    name: str
    definition: Mapping[str, Any]
    created_at: float
    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RegisteredRevision:
    application: str
    key: str
    location: Mapping[str, Any]
    sha256: str | None
    description: str | None
    registered_at: float
    first_used_at: float | None = None
    last_used_at: float | None = None


@dataclass(frozen=True, slots=True)
class OnPremInstance:
    name: str
    iam_arn: str | None
    tags: Mapping[str, str]
    registered_at: float
    deregistered_at: float | None = None

    @property
    def registered(self) -> bool:
        return self.deregistered_at is None

    def matches(self, selector: Mapping[str, str]) -> bool:
        """Same rule as a config host: every tag of a non-empty selector, with its value."""
        return bool(selector) and all(self.tags.get(k) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class ApiConfig:
    config: DeploymentConfig
    created_at: float


def revision_key(location: Mapping[str, Any]) -> str:
    """The natural key of a revision location: its canonical JSON, inline AppSpec text replaced by its sha256."""
    slim = {}
    for name, value in location.items():
        if isinstance(value, Mapping) and "content" in value:
            value = {"sha256": hashlib.sha256(str(value["content"]).encode()).hexdigest()}
        slim[name] = value
    return json.dumps(slim, sort_keys=True, separators=(",", ":"))


def config_definition(config: DeploymentConfig) -> dict[str, Any]:
    mhh, routing = config.minimum_healthy_hosts, config.traffic_routing
    return {
        "minimum_healthy_hosts": {"type": str(mhh.type), "value": mhh.value} if mhh else None,
        "traffic_routing": {
            "type": str(routing.type),
            "percentage": routing.percentage,
            "interval_minutes": routing.interval_minutes,
        }
        if routing
        else None,
    }


def config_from_row(row: Mapping[str, Any]) -> DeploymentConfig:
    definition = row["definition"] or {}
    mhh = definition.get("minimum_healthy_hosts")
    routing = definition.get("traffic_routing")
    return DeploymentConfig(
        row["name"],
        Platform(row["compute_platform"]),
        MinimumHealthyHosts(MinimumHealthyHostsType(mhh["type"]), int(mhh["value"])) if mhh else None,
        TrafficRouting(TrafficRoutingType(routing["type"]), int(routing["percentage"]), routing["interval_minutes"])
        if routing
        else None,
    )


def revision_from_row(row: Mapping[str, Any]) -> RegisteredRevision:
    return RegisteredRevision(
        row["application"],
        row["revision_key"],
        row["location"],
        row["revision_sha256"],
        row["description"],
        row["registered_at"],
        row["first_used_at"],
        row["last_used_at"],
    )


def instance_from_row(row: Mapping[str, Any]) -> OnPremInstance:
    return OnPremInstance(
        row["name"], row["iam_arn"], dict(row["tags"] or {}), row["registered_at"], row["deregistered_at"]
    )


class ResourceKind(StrEnum):
    """What TagResource and friends may name (the resource type of a CodeDeploy ARN)."""

    APPLICATION = "application"
    DEPLOYMENT_GROUP = "deploymentgroup"
    DEPLOYMENT_CONFIG = "deploymentconfig"


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """One taggable resource: an application (``name``), a group (``group`` of application ``name``) or a
    deployment configuration (``name``)."""

    kind: ResourceKind
    name: str
    group: str | None = None


def application_from_row(row: Mapping[str, Any]) -> ApiApplication:
    return ApiApplication(
        row["id"], row["name"], Platform(row["compute_platform"]), row["created_at"], dict(row["tags"] or {})
    )


def group_from_row(row: Mapping[str, Any]) -> ApiGroup:
    return ApiGroup(
        row["application"], row["name"], dict(row["definition"] or {}), row["created_at"], dict(row["tags"] or {})
    )


def tags_problem(tags: Mapping[str, str]) -> str | None:
    """Why these tags cannot be kept on a resource (CodeDeploy's limits), or None."""
    if len(tags) > MAX_RESOURCE_TAGS:
        return f"a resource holds at most {MAX_RESOURCE_TAGS} tags; this would have {len(tags)}"
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or key.lower().startswith("aws:"):
            return f"tag key {key!r}: 1-128 characters, not starting with aws:"
        if len(value) > 256:
            return f"tag {key!r}: values are at most 256 characters"
    return None
