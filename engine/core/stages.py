"""The executable shape of one deployment: an ordered list of stages the state machine walks (pure).

A deployment of any platform is a sequence of three kinds of stage:

- ``TargetStage``: a set of targets (hosts, a Lambda function, an ECS service) each running an ordered list of
  lifecycle events, started in waves that respect the minimum-healthy-hosts rule;
- ``TrafficStage``: traffic moved to the replacement in steps (canary / linear / all at once) with waits between;
- ``WaitStage``: a pause that a person or a timer ends (blue/green ready wait, termination wait, watch window).

``deployment_stages`` builds the list from a group's settings. Keeping it separate from the machine means the
machine has one generic walk instead of a branch per platform, and ``plan`` shows exactly what will run.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.core.configs import MinimumHealthyHosts, MinimumHealthyHostsType, TrafficStep
from engine.core.lifecycle import FleetRole, event_order
from engine.core.model import DeploymentType, LifecycleEvent, Platform

ALL_AT_ONCE = MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 0)


class WaitKind(enum.StrEnum):
    READY = "ready"  # blue/green: replacement installed, waiting for "continue" (deploymentReadyOption)
    TERMINATION = "termination"  # blue/green: original fleet kept for a fast reroute before it is released
    WATCH = "watch"  # deploybot: alarms stay armed for a while after success


@dataclass(frozen=True, slots=True)
class TargetStage:
    name: str
    targets: tuple[str, ...]
    events: tuple[LifecycleEvent, ...]
    health: MinimumHealthyHosts = ALL_AT_ONCE
    enforce_health: bool = True  # False for the original fleet's block-traffic pass: every host must succeed
    ends_reroute: bool = False  # once passed, the original fleet can no longer take traffic back


@dataclass(frozen=True, slots=True)
class TrafficStage:
    name: str
    steps: tuple[TrafficStep, ...]


@dataclass(frozen=True, slots=True)
class WaitStage:
    name: str
    kind: WaitKind
    seconds: float
    stop_on_timeout: bool = False  # READY with STOP_DEPLOYMENT: the wait ending without "continue" stops it
    ends_reroute: bool = False  # Lambda/ECS: the original version or task set is released when the wait ends


Stage = TargetStage | TrafficStage | WaitStage


@dataclass(frozen=True, slots=True)
class StageOptions:
    """What a group contributes to the stage list (all of it comes from config; nothing is read here)."""

    platform: Platform
    deployment_type: DeploymentType
    health: MinimumHealthyHosts
    traffic_steps: tuple[TrafficStep, ...] = (TrafficStep(100, 0),)
    with_load_balancer: bool = False
    ready_wait_seconds: float | None = None  # None: continue at once (CONTINUE_DEPLOYMENT)
    termination_wait_seconds: float = 0.0
    stop_original: bool = False  # blue/green TERMINATE: stop the original fleet's application after the wait
    provisioned_fleet: bool = False  # blue/green copy_auto_scaling_group: both fleets are named when it starts
    watch_seconds: float = 0.0


def deployment_stages(options: StageOptions, targets: Sequence[str], original: Sequence[str] = ()) -> tuple[Stage, ...]:
    """The stages of one deployment: ``targets`` receive the revision, ``original`` (blue/green) give way."""
    targets = tuple(targets)
    stages: list[Stage]
    if options.platform is Platform.SERVER and options.deployment_type is DeploymentType.IN_PLACE:
        events = event_order(Platform.SERVER, DeploymentType.IN_PLACE, with_load_balancer=options.with_load_balancer)
        stages = [TargetStage("install", targets, events, options.health)]
    elif options.platform is Platform.SERVER:
        stages = _server_blue_green(options, targets, tuple(original))
    else:
        stages = _serverless(options, targets)
    if options.watch_seconds > 0:
        stages.append(WaitStage("watch", WaitKind.WATCH, options.watch_seconds))
    return tuple(stages)


def _server_blue_green(options: StageOptions, green: tuple[str, ...], blue: tuple[str, ...]) -> list[Stage]:
    replacement = event_order(Platform.SERVER, DeploymentType.BLUE_GREEN, role=FleetRole.REPLACEMENT)
    before_allow = replacement.index(LifecycleEvent.BEFORE_ALLOW_TRAFFIC)
    install_events = replacement[: before_allow + 1]
    after_allow = tuple(e for e in replacement[before_allow + 1 :] if e is LifecycleEvent.AFTER_ALLOW_TRAFFIC)
    stages: list[Stage] = [TargetStage("install", green, install_events, options.health)]
    if options.ready_wait_seconds is not None:
        stages.append(WaitStage("ready", WaitKind.READY, options.ready_wait_seconds, stop_on_timeout=True))
    stages.append(TrafficStage("traffic", options.traffic_steps))
    stages.append(TargetStage("after-allow", green, after_allow))
    if blue or options.provisioned_fleet:
        stages.append(
            TargetStage(
                "block-original",
                blue,
                event_order(Platform.SERVER, DeploymentType.BLUE_GREEN, role=FleetRole.ORIGINAL),
                enforce_health=False,
            )
        )
    if options.termination_wait_seconds > 0:
        stages.append(WaitStage("termination", WaitKind.TERMINATION, options.termination_wait_seconds))
    if options.stop_original and blue and not options.provisioned_fleet:
        # On hosts "terminate" means stopping the old application: ApplicationStop runs the original fleet's own
        # (last successful) scripts. After this a rollback has to redeploy.
        stop = (LifecycleEvent.APPLICATION_STOP,)
        stages.append(TargetStage("stop-original", blue, stop, enforce_health=False, ends_reroute=True))
    return stages


def _serverless(options: StageOptions, targets: tuple[str, ...]) -> list[Stage]:
    """Lambda and ECS: hooks up to BeforeAllowTraffic, the weighted shift, then AfterAllowTraffic."""
    events = event_order(options.platform, options.deployment_type)
    cut = events.index(LifecycleEvent.ALLOW_TRAFFIC)
    stages: list[Stage] = [
        TargetStage("prepare", targets, events[:cut]),
        TrafficStage("traffic", options.traffic_steps),
        TargetStage("after-allow", targets, events[cut + 1 :]),
    ]
    if options.termination_wait_seconds > 0:
        stages.append(
            WaitStage("termination", WaitKind.TERMINATION, options.termination_wait_seconds, ends_reroute=True)
        )
    return stages


REPLACEMENT_STAGES = ("install", "after-allow")
ORIGINAL_STAGES = ("block-original",)


def with_fleets(stages: Sequence[Stage], original: Sequence[str], replacement: Sequence[str]) -> tuple[Stage, ...]:
    """A server blue/green deployment's stages with its two fleets named: a provisioned green fleet
    (copy_auto_scaling_group) is only known once its instances run, after the stages were stored."""
    named: list[Stage] = []
    for stage in stages:
        if isinstance(stage, TargetStage) and stage.name in REPLACEMENT_STAGES:
            stage = replace(stage, targets=tuple(replacement))
        elif isinstance(stage, TargetStage) and stage.name in ORIGINAL_STAGES:
            stage = replace(stage, targets=tuple(original))
        named.append(stage)
    return tuple(named)


def has_original_fleet(stages: Sequence[Stage]) -> bool:
    """A server blue/green deployment: after its traffic stage an original fleet gives way by BlockTraffic, and until
    then it serves (Lambda and ECS have no such fleet: their original is a version or a task set)."""
    traffic_at = next((i for i, s in enumerate(stages) if isinstance(s, TrafficStage)), None)
    return traffic_at is not None and any(
        isinstance(s, TargetStage) and LifecycleEvent.BLOCK_TRAFFIC in s.events for s in stages[traffic_at + 1 :]
    )


def blue_green_rollback_stages(original: Sequence[str], replacement: Sequence[str]) -> tuple[Stage, ...]:
    """The rollback of a server blue/green deployment whose traffic was already rerouted (reference §4.2):
    the original hosts run the allow-traffic events, the replacement hosts the block-traffic ones."""
    rollback_original = event_order(Platform.SERVER, DeploymentType.BLUE_GREEN, role=FleetRole.ORIGINAL, rollback=True)
    rollback_replacement = event_order(
        Platform.SERVER, DeploymentType.BLUE_GREEN, role=FleetRole.REPLACEMENT, rollback=True
    )
    return (
        TargetStage("allow-original", tuple(original), rollback_original, enforce_health=False),
        TargetStage("block-replacement", tuple(replacement), rollback_replacement, enforce_health=False),
    )
