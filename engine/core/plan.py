"""What a deployment will do when nothing fails: host batches, events per target, traffic steps (pure).

The plan is the dry run behind ``deploybot plan``. It is read off the very stages the state machine walks
(engine/core/stages.py) and the batches and the start check come from running that machine (engine/core/simulate.py),
so the plan and a deployment cannot disagree: there is no second definition of batching or traffic here. It never
predicts failures; the machine decides what happens when a host fails (the stop rule of reference §6.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.configs import DeploymentConfig, TrafficStep, minimum_healthy_count
from engine.core.model import DeploymentStatus, DeploymentType, ErrorCode, LifecycleEvent, Platform
from engine.core.simulate import simulate
from engine.core.stages import Stage, TargetStage, TrafficStage


@dataclass(frozen=True, slots=True)
class Plan:
    """``events`` run on each target of ``batches`` (the fleet that receives the revision), ``original_events`` on
    each host of ``original`` (the blue/green fleet that gives way) afterwards. ``problem`` is set exactly when
    ``startable`` is false."""

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
    original: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for batch in self.batches for t in batch)

    @property
    def traffic_wait_seconds(self) -> float:
        """Time spent waiting between traffic shifts (the part of the duration hooks do not decide); the machine
        moves on at once after the last shift, so a wait there would never be spent."""
        return sum(step.wait_seconds for step in self.traffic_steps[:-1])

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
    stages: Sequence[Stage],
    *,
    application: str,
    environment: str,
    group: str,
    platform: Platform,
    deployment_type: DeploymentType,
    config: DeploymentConfig,
    traffic_config: DeploymentConfig | None = None,
) -> Plan:
    """Plan a deployment of one group from the stages it would run (``Blueprint.stages_for``).

    ``config`` and ``traffic_config`` are only named in the plan: what they mean is already in ``stages``, and they
    were checked against the group when resolved (``configs.config_for_group``, ``traffic_config_for_hosts``).
    """
    stages = tuple(stages)
    fleets = [s.targets for s in stages if isinstance(s, TargetStage)]
    installed = fleets[0] if fleets else ()
    original = next((f for f in fleets if f != installed), ())
    first = next((s for s in stages if isinstance(s, TargetStage)), None)
    run = simulate(stages)
    problem = run.error_code if run.status is DeploymentStatus.FAILED else None
    if problem is ErrorCode.NO_INSTANCES and platform is not Platform.SERVER:
        problem = None  # the Lambda function is named by the AppSpec, which only a deployment reads
    steps = tuple(step for s in stages if isinstance(s, TrafficStage) for step in s.steps)
    return Plan(
        application,
        environment,
        group,
        config,
        minimum_healthy=_minimum_healthy(first),
        batches=tuple(wave for wave in run.waves if set(wave) <= set(installed)) if problem is None else (),
        events=_fleet_events(stages, installed, receives_traffic=True),
        traffic_steps=steps if problem is None else (),
        startable=problem is None,
        problem=problem,
        platform=platform,
        deployment_type=deployment_type,
        traffic_config=traffic_config,
        original_events=_fleet_events(stages, original, receives_traffic=False) if original else (),
        original=original,
    )


def _minimum_healthy(stage: TargetStage | None) -> int:
    """The machine's minimum for the first stage: its health rule, or every host when it does not enforce one."""
    if stage is None:
        return 0
    n = len(stage.targets)
    return minimum_healthy_count(stage.health, n) if stage.enforce_health else n


def _fleet_events(
    stages: tuple[Stage, ...], fleet: tuple[str, ...], *, receives_traffic: bool
) -> tuple[LifecycleEvent, ...]:
    """The events one host of ``fleet`` goes through, in stage order. A traffic stage is the AllowTraffic event of
    the fleet that receives the revision: stages.py cuts that fleet's event order exactly there."""
    events: list[LifecycleEvent] = []
    for stage in stages:
        if isinstance(stage, TargetStage) and stage.targets == fleet:
            events.extend(stage.events)
        elif isinstance(stage, TrafficStage) and receives_traffic:
            events.append(LifecycleEvent.ALLOW_TRAFFIC)
    return tuple(events)
