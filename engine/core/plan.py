"""What a deployment will do when nothing fails: host batches, events per target, traffic steps (pure).

The plan is the dry run behind ``deploybot plan`` and the runner's starting schedule. It never predicts
failures; the state machine decides what happens when a host fails (the stop rule of reference §6.1).

Batches: in CodeDeploy a new host starts as soon as one finishes, but with uniform hosts that is the same as
fixed batches of ``max_concurrent`` hosts, in target order, which is what users can reason about.
Blue/green on hosts: the deployment configuration batches the install on the replacement fleet; traffic then
moves either with a traffic configuration (deploybot extension: canary/linear on hosts) or, without one, batch
by batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.configs import (
    DeploymentConfig,
    IncompatibleDeploymentConfig,
    MinimumHealthyHosts,
    TrafficStep,
    max_concurrent,
    minimum_healthy_count,
    start_problem,
    traffic_steps,
)
from engine.core.lifecycle import FleetRole, event_order
from engine.core.model import DeploymentType, ErrorCode, LifecycleEvent, Platform


def host_batches(targets: Sequence[str], mhh: MinimumHealthyHosts) -> tuple[tuple[str, ...], ...]:
    """Targets cut into batches of ``max_concurrent`` (at least 1), in order; () for no targets."""
    size = max(max_concurrent(mhh, len(targets)), 1)
    return tuple(tuple(targets[i : i + size]) for i in range(0, len(targets), size))


def batch_traffic_steps(batches: Sequence[Sequence[str]]) -> tuple[TrafficStep, ...]:
    """Traffic moved to replacement hosts batch by batch (blue/green without a traffic configuration)."""
    total = sum(len(b) for b in batches)
    steps, done = [], 0
    for batch in batches:
        done += len(batch)
        steps.append(TrafficStep(100 if done == total else done * 100 // total, 0))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class Plan:
    """``events`` run on each target of ``batches`` (the replacement fleet in blue/green), ``original_events``
    on each original host afterwards. ``problem`` is set exactly when ``startable`` is false."""

    application: str
    environment: str
    group: str
    config: DeploymentConfig
    minimum_healthy: int
    batches: tuple[tuple[str, ...], ...]
    events: tuple[LifecycleEvent, ...]
    traffic_steps: tuple[TrafficStep, ...]
    startable: bool
    problem: ErrorCode | None
    platform: Platform = Platform.SERVER
    deployment_type: DeploymentType = DeploymentType.IN_PLACE
    traffic_config: DeploymentConfig | None = None
    original_events: tuple[LifecycleEvent, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for batch in self.batches for t in batch)

    @property
    def traffic_wait_seconds(self) -> int:
        """Time spent waiting between traffic shifts (the part of the duration hooks do not decide)."""
        return sum(step.wait_seconds for step in self.traffic_steps)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``deploybot plan --json`` and the API."""
        return {
            "application": self.application,
            "environment": self.environment,
            "group": self.group,
            "platform": str(self.platform),
            "deployment_type": str(self.deployment_type),
            "config": self.config.name,
            "traffic_config": self.traffic_config.name if self.traffic_config else None,
            "minimum_healthy": self.minimum_healthy,
            "batches": [list(b) for b in self.batches],
            "events": [str(e) for e in self.events],
            "original_events": [str(e) for e in self.original_events],
            "traffic_steps": [{"percent": s.percent, "wait_seconds": s.wait_seconds} for s in self.traffic_steps],
            "traffic_wait_seconds": self.traffic_wait_seconds,
            "startable": self.startable,
            "problem": None if self.problem is None else str(self.problem),
        }


def build_plan(
    *,
    application: str,
    environment: str,
    group: str,
    platform: Platform,
    deployment_type: DeploymentType,
    config: DeploymentConfig,
    targets: Sequence[str] = (),
    traffic_config: DeploymentConfig | None = None,
    with_load_balancer: bool = False,
    rollback: bool = False,
) -> Plan:
    """Plan a deployment of one group.

    ``config`` is the resolved deployment configuration (see ``configs.config_for_group``); ``targets`` the
    host names in scheduling order (server; the replacement fleet for blue/green) or the one function/service
    (Lambda/ECS, may be empty). ``traffic_config`` only for server blue/green. Raises
    IncompatibleDeploymentConfig when a configuration cannot apply to this group.
    """
    if platform is not Platform.SERVER:
        if config.traffic_routing is None or config.compute_platform is not platform:
            raise IncompatibleDeploymentConfig(config.name, platform, "deployment")
        return Plan(
            application,
            environment,
            group,
            config,
            minimum_healthy=0,
            batches=(tuple(targets),) if targets else (),
            events=event_order(platform, deployment_type),
            traffic_steps=traffic_steps(config.traffic_routing),
            startable=True,
            problem=None,
            platform=platform,
            deployment_type=deployment_type,
        )

    mhh = config.minimum_healthy_hosts
    if mhh is None:
        raise IncompatibleDeploymentConfig(config.name, platform, "deployment")
    blue_green = deployment_type is DeploymentType.BLUE_GREEN
    if traffic_config is not None and (not blue_green or traffic_config.traffic_routing is None):
        raise IncompatibleDeploymentConfig(traffic_config.name, platform, "traffic")
    problem = start_problem(mhh, len(targets))
    batches = host_batches(targets, mhh) if problem is None else ()
    if blue_green:
        events = event_order(platform, deployment_type, role=FleetRole.REPLACEMENT, rollback=rollback)
        original = event_order(platform, deployment_type, role=FleetRole.ORIGINAL, rollback=rollback)
        if traffic_config is not None:
            steps = traffic_steps(traffic_config.traffic_routing)
        else:
            steps = batch_traffic_steps(batches)
    else:
        events = event_order(platform, deployment_type, with_load_balancer=with_load_balancer)
        original, steps = (), ()
    return Plan(
        application,
        environment,
        group,
        config,
        minimum_healthy=minimum_healthy_count(mhh, len(targets)),
        batches=batches,
        events=events,
        traffic_steps=steps if problem is None else (),
        startable=problem is None,
        problem=problem,
        platform=platform,
        deployment_type=deployment_type,
        traffic_config=traffic_config,
        original_events=original,
    )
