"""Deployment configurations: CodeDeploy's built-ins by exact name, custom ones, and their arithmetic (pure).

A configuration says either how many hosts must stay healthy while a fleet is updated in batches
("hosts" kind, reference §6.1, §6.2) or how traffic moves to the new version over time ("traffic" kind, §6.3).
deploybot also lets a server blue/green group shift traffic to its replacement hosts with a traffic
configuration (:func:`traffic_config_for_hosts`); CodeDeploy itself only does that for Lambda and ECS.

Rules worth knowing before changing anything here:

- FLEET_PERCENT becomes a host count at deployment start, **rounding up** (``ceil(n·p/100)``).
- OneAtATime is ``MOST_CONCURRENCY``/1: every host but one stays healthy, so ``min = n - 1`` (§10 item 2;
  the health page's "99%" would round up to ``n`` and fail every deployment).
- ``min >= n`` (with ``n > 0``) means nothing can start: ``HEALTH_CONSTRAINTS_INVALID``. HalfAtATime on one
  host is such a case (``ceil(0.5) = 1``); CodeDeploy fails it the same way.
- Linear shifting reaches 100 % after ``(ceil(100/p) - 1) * interval`` minutes; the last step may be smaller.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from engine.core.errors import EngineError, UnknownDeploymentConfig
from engine.core.model import ErrorCode, Platform

BUILTIN_PREFIX = "CodeDeployDefault."
MAX_NAME_LENGTH = 100
MAX_TRAFFIC_SPAN_MINUTES = 2880
DEFAULT_SERVER_CONFIG = "CodeDeployDefault.OneAtATime"


class MinimumHealthyHostsType(enum.StrEnum):
    HOST_COUNT = "HOST_COUNT"
    FLEET_PERCENT = "FLEET_PERCENT"
    MOST_CONCURRENCY = "MOST_CONCURRENCY"  # only OneAtATime uses it; users cannot set it


@dataclass(frozen=True, slots=True)
class MinimumHealthyHosts:
    type: MinimumHealthyHostsType
    value: int


class TrafficRoutingType(enum.StrEnum):
    ALL_AT_ONCE = "AllAtOnce"
    CANARY = "TimeBasedCanary"
    LINEAR = "TimeBasedLinear"


@dataclass(frozen=True, slots=True)
class TrafficRouting:
    """``percentage`` and ``interval_minutes`` are 0 for AllAtOnce."""

    type: TrafficRoutingType
    percentage: int = 0
    interval_minutes: float = 0  # whole minutes in CodeDeploy; deploybot also takes fractions (0.5 = 30 s)


@dataclass(frozen=True, slots=True)
class TrafficStep:
    """``percent``: cumulative share on the replacement after this step; ``wait_seconds``: wait after it."""

    percent: int
    wait_seconds: float


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    name: str
    compute_platform: Platform
    minimum_healthy_hosts: MinimumHealthyHosts | None = None
    traffic_routing: TrafficRouting | None = None

    @property
    def kind(self) -> str:
        """``"hosts"`` when it batches a fleet by minimum healthy hosts, else ``"traffic"``."""
        return "hosts" if self.minimum_healthy_hosts is not None else "traffic"

    @property
    def is_builtin(self) -> bool:
        return self.name.startswith(BUILTIN_PREFIX)


class IncompatibleDeploymentConfig(EngineError):
    """A known configuration used where it cannot apply (e.g. OneAtATime as a traffic configuration).

    ``usage`` is ``"deployment"`` or ``"traffic"``; ``platform`` is the deployment group's platform.
    """

    def __init__(self, name: str, platform: Platform, usage: str) -> None:
        self.name = name
        self.platform = platform
        self.usage = usage
        super().__init__(f"{name} cannot be the {usage} configuration of a {platform} deployment group")


# -------------------------------------------------------------------------------- built-ins


def _hosts(name: str, kind: MinimumHealthyHostsType, value: int) -> DeploymentConfig:
    return DeploymentConfig(BUILTIN_PREFIX + name, Platform.SERVER, MinimumHealthyHosts(kind, value))


def _traffic(
    name: str, platform: Platform, kind: TrafficRoutingType, percentage: int = 0, minutes: int = 0
) -> DeploymentConfig:
    return DeploymentConfig(BUILTIN_PREFIX + name, platform, traffic_routing=TrafficRouting(kind, percentage, minutes))


_L, _E = Platform.LAMBDA, Platform.ECS
_CANARY, _LINEAR, _ALL = TrafficRoutingType.CANARY, TrafficRoutingType.LINEAR, TrafficRoutingType.ALL_AT_ONCE

_BUILTINS = (
    _hosts("OneAtATime", MinimumHealthyHostsType.MOST_CONCURRENCY, 1),
    _hosts("HalfAtATime", MinimumHealthyHostsType.FLEET_PERCENT, 50),
    _hosts("AllAtOnce", MinimumHealthyHostsType.HOST_COUNT, 0),
    _traffic("LambdaCanary10Percent5Minutes", _L, _CANARY, 10, 5),
    _traffic("LambdaCanary10Percent10Minutes", _L, _CANARY, 10, 10),
    _traffic("LambdaCanary10Percent15Minutes", _L, _CANARY, 10, 15),
    _traffic("LambdaCanary10Percent30Minutes", _L, _CANARY, 10, 30),
    _traffic("LambdaLinear10PercentEvery1Minute", _L, _LINEAR, 10, 1),  # singular "Minute", as AWS spells it
    _traffic("LambdaLinear10PercentEvery2Minutes", _L, _LINEAR, 10, 2),
    _traffic("LambdaLinear10PercentEvery3Minutes", _L, _LINEAR, 10, 3),
    _traffic("LambdaLinear10PercentEvery10Minutes", _L, _LINEAR, 10, 10),
    _traffic("LambdaAllAtOnce", _L, _ALL),
    _traffic("ECSCanary10Percent5Minutes", _E, _CANARY, 10, 5),
    _traffic("ECSCanary10Percent15Minutes", _E, _CANARY, 10, 15),
    _traffic("ECSLinear10PercentEvery1Minutes", _E, _LINEAR, 10, 1),  # plural "Minutes", as AWS spells it
    _traffic("ECSLinear10PercentEvery3Minutes", _E, _LINEAR, 10, 3),
    _traffic("ECSAllAtOnce", _E, _ALL),
)

BUILTIN_CONFIGS: Mapping[str, DeploymentConfig] = MappingProxyType({c.name: c for c in _BUILTINS})
"""Every CodeDeploy built-in configuration, keyed by its exact name, server first, then Lambda, then ECS."""

_DEFAULT_CONFIGS = MappingProxyType(
    {
        Platform.SERVER: DEFAULT_SERVER_CONFIG,
        Platform.LAMBDA: BUILTIN_PREFIX + "LambdaAllAtOnce",
        Platform.ECS: BUILTIN_PREFIX + "ECSAllAtOnce",
    }
)


def default_config_name(platform: Platform) -> str:
    """The configuration used when neither the deployment nor its group names one."""
    return _DEFAULT_CONFIGS[platform]


# -------------------------------------------------------------------------------- lookup


def resolve_config(name: str, custom: Mapping[str, DeploymentConfig] = MappingProxyType({})) -> DeploymentConfig:
    """Built-in or custom configuration by exact (case-sensitive) name; raises UnknownDeploymentConfig."""
    found = BUILTIN_CONFIGS.get(name) or custom.get(name)
    if found is None:
        raise UnknownDeploymentConfig(name)
    return found


def close_config_names(
    name: str, custom: Mapping[str, DeploymentConfig] = MappingProxyType({}), limit: int = 3
) -> list[str]:
    """Known names that look like ``name`` (for "did you mean"); also matches without the built-in prefix."""
    known = [*BUILTIN_CONFIGS, *custom]
    by_lower = {k.lower(): k for k in known} | {k.removeprefix(BUILTIN_PREFIX).lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(by_lower), n=limit * 2, cutoff=0.6)
    return list(dict.fromkeys(by_lower[h] for h in hits))[:limit]


def config_for_group(
    name: str, platform: Platform, custom: Mapping[str, DeploymentConfig] = MappingProxyType({})
) -> DeploymentConfig:
    """The deployment configuration of a group: hosts kind for server, own platform's for Lambda/ECS.

    Raises UnknownDeploymentConfig or IncompatibleDeploymentConfig.
    """
    config = resolve_config(name, custom)
    if platform is Platform.SERVER:
        fits = config.minimum_healthy_hosts is not None
    else:
        fits = config.compute_platform is platform and config.traffic_routing is not None
    if not fits:
        raise IncompatibleDeploymentConfig(name, platform, "deployment")
    return config


def traffic_config_for_hosts(
    name: str, custom: Mapping[str, DeploymentConfig] = MappingProxyType({})
) -> DeploymentConfig:
    """A traffic configuration for a server blue/green group (deploybot extension to CodeDeploy).

    Any configuration with traffic routing fits, whatever its platform: the Lambda and ECS built-ins and
    custom server/Lambda/ECS traffic configurations. Raises UnknownDeploymentConfig or
    IncompatibleDeploymentConfig.
    """
    config = resolve_config(name, custom)
    if config.traffic_routing is None:
        raise IncompatibleDeploymentConfig(name, Platform.SERVER, "traffic")
    return config


# -------------------------------------------------------------------------------- arithmetic


def minimum_healthy_count(mhh: MinimumHealthyHosts, fleet_size: int) -> int:
    """Hosts that must stay healthy in a fleet of ``fleet_size`` (fixed at deployment start)."""
    n = max(fleet_size, 0)
    match mhh.type:
        case MinimumHealthyHostsType.HOST_COUNT:
            return mhh.value
        case MinimumHealthyHostsType.FLEET_PERCENT:
            return -(-n * mhh.value // 100)  # ceil without floats
        case MinimumHealthyHostsType.MOST_CONCURRENCY:
            return max(n - mhh.value, 0)
    raise AssertionError(mhh.type)


def max_concurrent(mhh: MinimumHealthyHosts, fleet_size: int) -> int:
    """Hosts that may be deployed at once when all start healthy: ``n - min``, within ``0..n``."""
    n = max(fleet_size, 0)
    return min(max(n - minimum_healthy_count(mhh, n), 0), n)


def start_problem(mhh: MinimumHealthyHosts, fleet_size: int) -> ErrorCode | None:
    """Why a deployment to ``fleet_size`` hosts cannot start, or None: no hosts, or ``min ≥ n``."""
    if fleet_size <= 0:
        return ErrorCode.NO_INSTANCES
    if minimum_healthy_count(mhh, fleet_size) >= fleet_size:
        return ErrorCode.HEALTH_CONSTRAINTS_INVALID
    return None


def traffic_steps(routing: TrafficRouting | None) -> tuple[TrafficStep, ...]:
    """The shifts of a traffic configuration; the first happens when AllowTraffic starts."""
    if routing is None or routing.type is TrafficRoutingType.ALL_AT_ONCE:
        return (TrafficStep(100, 0),)
    wait = routing.interval_minutes * 60
    if routing.type is TrafficRoutingType.CANARY:
        return (TrafficStep(routing.percentage, wait), TrafficStep(100, 0))
    shares = range(routing.percentage, 100, routing.percentage)
    return (*(TrafficStep(p, wait) for p in shares), TrafficStep(100, 0))


def traffic_span_minutes(routing: TrafficRouting | None) -> float:
    """Minutes from the first shift to the last (the limit is 2880)."""
    return sum(step.wait_seconds for step in traffic_steps(routing)) / 60


# -------------------------------------------------------------------------------- validation


def validate_custom_config(config: DeploymentConfig) -> list[str]:
    """Problems of a user-defined configuration, as messages; an empty list means valid. Never raises.

    The caller (the config loader) attaches file:line to each message. Server configurations need
    minimum_healthy_hosts, or (deploybot's extension for blue/green host groups) traffic_routing; Lambda and
    ECS configurations need traffic_routing and may not have minimum_healthy_hosts.
    """
    problems: list[str] = []
    if not config.name:
        problems.append("the name is empty")
    if config.name.startswith(BUILTIN_PREFIX):
        problems.append(f"custom configuration names may not start with {BUILTIN_PREFIX!r}")
    if len(config.name) > MAX_NAME_LENGTH:
        problems.append(f"the name is {len(config.name)} characters long; the limit is {MAX_NAME_LENGTH}")
    mhh, routing = config.minimum_healthy_hosts, config.traffic_routing
    if config.compute_platform is Platform.SERVER:
        if mhh is None and routing is None:
            problems.append("a server configuration needs minimum_healthy_hosts (or traffic_routing)")
    else:
        if mhh is not None:
            problems.append(f"a {config.compute_platform} configuration takes no minimum_healthy_hosts")
        if routing is None:
            problems.append(f"a {config.compute_platform} configuration needs traffic_routing")
    if mhh is not None:
        problems.extend(_minimum_healthy_problems(mhh))
    if routing is not None:
        problems.extend(_traffic_routing_problems(routing))
    return problems


def _minimum_healthy_problems(mhh: MinimumHealthyHosts) -> list[str]:
    match mhh.type:
        case MinimumHealthyHostsType.FLEET_PERCENT if not 0 <= mhh.value <= 99:
            return [f"FLEET_PERCENT must be 0-99, not {mhh.value}"]
        case MinimumHealthyHostsType.HOST_COUNT if mhh.value < 0:
            return [f"HOST_COUNT must be 0 or more, not {mhh.value}"]
        case MinimumHealthyHostsType.MOST_CONCURRENCY:
            return [f"MOST_CONCURRENCY is reserved for {DEFAULT_SERVER_CONFIG}; use HOST_COUNT or FLEET_PERCENT"]
    return []


def _traffic_routing_problems(routing: TrafficRouting) -> list[str]:
    if routing.type is TrafficRoutingType.ALL_AT_ONCE:
        if routing.percentage or routing.interval_minutes:
            return ["AllAtOnce traffic routing takes no percentage or interval"]
        return []
    problems = []
    if not 1 <= routing.percentage <= 99:
        problems.append(f"{routing.type} percentage must be 1-99, not {routing.percentage}")
    if routing.interval_minutes <= 0:
        problems.append(f"{routing.type} interval must be more than 0 minutes, not {routing.interval_minutes}")
    if not problems and traffic_span_minutes(routing) > MAX_TRAFFIC_SPAN_MINUTES:
        span = traffic_span_minutes(routing)
        problems.append(
            f"{routing.type} takes {span:g} minutes from the first shift to the last; "
            f"the limit is {MAX_TRAFFIC_SPAN_MINUTES}"
        )
    return problems


# -------------------------------------------------------------------------------- explain


def describe(config: DeploymentConfig, fleet_size: int | None = None) -> dict[str, Any]:
    """The data of ``deploybot configs explain --json`` (JSON-ready; only the fields that apply).

    hosts kind with a fleet size: ``minimum_healthy_count``, ``max_concurrent``, ``batch_sizes`` and the start
    check ``startable`` / ``problem`` (an ErrorCode value or None). traffic kind: ``traffic_steps`` and
    ``traffic_minutes``. A server configuration with both gets both.
    """
    data: dict[str, Any] = {
        "name": config.name,
        "kind": config.kind,
        "compute_platform": str(config.compute_platform),
        "builtin": config.name in BUILTIN_CONFIGS,
    }
    mhh = config.minimum_healthy_hosts
    if mhh is not None:
        data["minimum_healthy_hosts"] = {"type": str(mhh.type), "value": mhh.value}
        if fleet_size is not None:
            at_once = max_concurrent(mhh, fleet_size)
            problem = start_problem(mhh, fleet_size)
            full, rest = divmod(fleet_size, at_once) if at_once else (0, 0)
            data |= {
                "hosts": fleet_size,
                "minimum_healthy_count": minimum_healthy_count(mhh, fleet_size),
                "max_concurrent": at_once,
                "batch_sizes": [at_once] * full + ([rest] if rest else []) if problem is None else [],
                "startable": problem is None,
                "problem": None if problem is None else str(problem),
            }
    if config.traffic_routing is not None:
        routing = config.traffic_routing
        data["traffic_routing"] = {
            "type": str(routing.type),
            "percentage": routing.percentage,
            "interval_minutes": routing.interval_minutes,
        }
        data["traffic_steps"] = [{"percent": s.percent, "wait_seconds": s.wait_seconds} for s in traffic_steps(routing)]
        data["traffic_minutes"] = traffic_span_minutes(routing)
    return data
