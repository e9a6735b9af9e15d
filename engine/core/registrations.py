"""What the CodeDeploy API registers, as values: revisions registered with an application, on-premises instances
and API-made deployment configurations, with the errors the registry raises (pure: no I/O).

The registry (engine/runtime/registry.py) stores and mirrors these; the API front turns the errors into AWS error names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
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


# -- values ------------------------------------------------------------------------------------------------------


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
