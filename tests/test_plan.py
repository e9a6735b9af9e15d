"""The dry-run plan, read off the stages the machine walks: batches, events per target, traffic steps, start check.

The central property: for every kind of deployment configuration, what the plan shows is what the real machine
does when driven to its end by engine/core/simulate.py with nothing failing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.core.configs import (
    BUILTIN_CONFIGS,
    DeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
    TrafficStep,
    traffic_steps,
)
from engine.core.events import Command, RunEvent, ShiftTraffic
from engine.core.lifecycle import FleetRole, event_order
from engine.core.model import DeploymentStatus, DeploymentType, ErrorCode, LifecycleEvent, Platform
from engine.core.plan import Plan, build_plan
from engine.core.simulate import simulate
from engine.core.stages import (
    ALL_AT_ONCE,
    Stage,
    StageOptions,
    WaitStage,
    blue_green_rollback_stages,
    deployment_stages,
)

P = "CodeDeployDefault."
E = LifecycleEvent
HOST_COUNT, FLEET_PERCENT = MinimumHealthyHostsType.HOST_COUNT, MinimumHealthyHostsType.FLEET_PERCENT
IN_PLACE, BLUE_GREEN = DeploymentType.IN_PLACE, DeploymentType.BLUE_GREEN
HOST_LINEAR = DeploymentConfig(
    "HostLinear", Platform.SERVER, traffic_routing=TrafficRouting(TrafficRoutingType.LINEAR, 30, 0.5)
)
HOST_CANARY = DeploymentConfig(
    "HostCanary", Platform.SERVER, traffic_routing=TrafficRouting(TrafficRoutingType.CANARY, 20, 1)
)


def _config(config: str | DeploymentConfig) -> DeploymentConfig:
    return BUILTIN_CONFIGS[P + config] if isinstance(config, str) else config


def _hosts(n: int, prefix: str = "web") -> tuple[str, ...]:
    return tuple(f"{prefix}-{i}" for i in range(1, n + 1))


def _stages(
    config: str | DeploymentConfig,
    n: int = 3,
    *,
    platform: Platform = Platform.SERVER,
    deployment_type: DeploymentType = IN_PLACE,
    traffic: str | DeploymentConfig | None = None,
    targets: tuple[str, ...] | None = None,
    **options: Any,
) -> tuple[Stage, ...]:
    """The stages of a group, with its options turned into StageOptions as Blueprint.stage_options does. Blue/green
    installs on ``n`` green hosts and takes traffic from ``n`` blue ones."""
    resolved = _config(config)
    routing = _config(traffic).traffic_routing if traffic is not None else resolved.traffic_routing
    stage_options = StageOptions(
        platform,
        deployment_type,
        resolved.minimum_healthy_hosts or ALL_AT_ONCE,
        traffic_steps=traffic_steps(routing),
        **options,
    )
    if platform is Platform.SERVER and deployment_type is BLUE_GREEN:
        return deployment_stages(stage_options, _hosts(n, "green"), _hosts(n, "blue"))
    return deployment_stages(stage_options, targets if targets is not None else _hosts(n))


def _plan(config: str | DeploymentConfig, n: int = 3, **kw: Any) -> Plan:
    """A plan for the group hello-staging, from the stages ``_stages`` builds with the same arguments."""
    traffic = kw.get("traffic")
    return build_plan(
        _stages(config, n, **kw),
        application="hello",
        environment="staging",
        group="hello-staging",
        platform=kw.get("platform", Platform.SERVER),
        deployment_type=kw.get("deployment_type", IN_PLACE),
        config=_config(config),
        traffic_config=_config(traffic) if traffic is not None else None,
    )


def _machine_events(commands: list[Command], target: str, *, receives_traffic: bool) -> tuple[LifecycleEvent, ...]:
    """The events the machine ran on ``target``; its traffic shifts count as the AllowTraffic of the fleet they
    move traffic to."""
    seen: list[LifecycleEvent] = []
    for command in commands:
        if isinstance(command, RunEvent) and command.target == target:
            seen.append(command.event)
        elif isinstance(command, ShiftTraffic) and receives_traffic and (not seen or seen[-1] is not E.ALLOW_TRAFFIC):
            seen.append(E.ALLOW_TRAFFIC)
    return tuple(seen)


def _case(config: str | DeploymentConfig, n: int = 5, **kw: Any) -> Any:
    name = config if isinstance(config, str) else config.name
    extras = ",".join(f"{k}={v.name if isinstance(v, DeploymentConfig) else v}" for k, v in kw.items())
    return pytest.param(config, n, kw, id=f"{name}-{n}" + (f"-{extras}" if extras else ""))


_SERVER_HOSTS = ("OneAtATime", "HalfAtATime", "AllAtOnce")
_TRAFFIC_FOR_HOSTS = (
    *(name.removeprefix(P) for name in BUILTIN_CONFIGS if BUILTIN_CONFIGS[name].traffic_routing is not None),
    HOST_LINEAR,
    HOST_CANARY,
)
CASES = [
    *(_case(name, n) for name in _SERVER_HOSTS for n in (1, 2, 5, 9)),
    _case("OneAtATime", 3, with_load_balancer=True),
    _case(DeploymentConfig("Count6", Platform.SERVER, MinimumHealthyHosts(HOST_COUNT, 6)), 9),
    _case(DeploymentConfig("Percent40", Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 40)), 9),
    _case(DeploymentConfig("Percent95", Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 95)), 30),
    *(_case(name, 4, deployment_type=BLUE_GREEN) for name in _SERVER_HOSTS),
    *(_case("HalfAtATime", 4, deployment_type=BLUE_GREEN, traffic=t) for t in _TRAFFIC_FOR_HOSTS),
    _case("OneAtATime", 3, deployment_type=BLUE_GREEN, traffic=HOST_LINEAR, ready_wait_seconds=600),
    _case(
        "AllAtOnce",
        2,
        deployment_type=BLUE_GREEN,
        traffic=HOST_CANARY,
        termination_wait_seconds=300,
        stop_original=True,
        watch_seconds=120,
    ),
    *(
        _case(name.removeprefix(P), 1, platform=config.compute_platform, deployment_type=BLUE_GREEN)
        for name, config in BUILTIN_CONFIGS.items()
        if config.compute_platform is not Platform.SERVER
    ),
    _case("ECSCanary10Percent5Minutes", 1, platform=Platform.ECS, deployment_type=BLUE_GREEN, watch_seconds=60),
    _case(
        "LambdaLinear10PercentEvery1Minute",
        1,
        platform=Platform.LAMBDA,
        deployment_type=BLUE_GREEN,
        termination_wait_seconds=60,
    ),
]


@pytest.mark.parametrize(("config", "n", "kw"), CASES)
def test_the_plan_is_what_the_machine_does(config: str | DeploymentConfig, n: int, kw: dict[str, Any]) -> None:
    stages = _stages(config, n, **kw)
    plan = _plan(config, n, **kw)
    machine = simulate(stages)
    assert plan.startable is (machine.status is DeploymentStatus.SUCCEEDED)
    assert plan.problem is machine.error_code  # HalfAtATime on 1 host: both refuse it as HEALTH_CONSTRAINTS_INVALID
    assert [step.percent for step in plan.traffic_steps] == machine.traffic
    if not plan.startable:
        assert plan.batches == () and machine.waves == []
        return
    timed_waits = sum(s.seconds for s in stages if isinstance(s, WaitStage) and not s.stop_on_timeout)
    assert plan.traffic_wait_seconds + timed_waits == machine.waited
    assert list(plan.batches) == machine.waves[: len(plan.batches)]
    assert set(plan.targets) | set(plan.original) == set(machine.attempted)
    for target in plan.targets:
        assert _machine_events(machine.commands, target, receives_traffic=True) == plan.events
    for target in plan.original:
        assert _machine_events(machine.commands, target, receives_traffic=False) == plan.original_events


def test_blue_green_without_traffic_config_moves_all_traffic_at_once() -> None:
    """The old plan showed 50 % then 100 % here (a step per batch); the machine has always moved 100 % at once."""
    plan = _plan("HalfAtATime", 4, deployment_type=BLUE_GREEN)
    assert plan.batches == (("green-1", "green-2"), ("green-3", "green-4"))
    assert plan.traffic_steps == (TrafficStep(100, 0),)
    assert simulate(_stages("HalfAtATime", 4, deployment_type=BLUE_GREEN)).traffic == [100]
    assert plan.events == event_order(Platform.SERVER, BLUE_GREEN, role=FleetRole.REPLACEMENT)
    assert plan.original == _hosts(4, "blue")
    assert plan.original_events == event_order(Platform.SERVER, BLUE_GREEN, role=FleetRole.ORIGINAL)


@pytest.mark.parametrize(
    ("config", "n", "sizes"),
    [
        ("OneAtATime", 3, [1, 1, 1]),
        ("OneAtATime", 1, [1]),
        ("HalfAtATime", 9, [4, 4, 1]),
        ("HalfAtATime", 10, [5, 5]),
        ("AllAtOnce", 20, [20]),
        (DeploymentConfig("Count6", Platform.SERVER, MinimumHealthyHosts(HOST_COUNT, 6)), 9, [3, 3, 3]),
        (DeploymentConfig("Percent40", Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 40)), 9, [5, 4]),
        (DeploymentConfig("Percent95", Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 95)), 30, [1] * 30),
    ],
)
def test_batch_sizes(config: str | DeploymentConfig, n: int, sizes: list[int]) -> None:
    plan = _plan(config, n)
    assert [len(b) for b in plan.batches] == sizes
    assert plan.targets == _hosts(n)  # every target once, in order


def test_in_place_one_at_a_time_with_load_balancer() -> None:
    plan = _plan("OneAtATime", 3, with_load_balancer=True)
    assert (plan.application, plan.environment, plan.group) == ("hello", "staging", "hello-staging")
    assert plan.minimum_healthy == 2
    assert plan.batches == (("web-1",), ("web-2",), ("web-3",))
    assert plan.events == event_order(Platform.SERVER, IN_PLACE, with_load_balancer=True)
    assert plan.events[0] is E.BEFORE_BLOCK_TRAFFIC
    assert (plan.traffic_steps, plan.original_events, plan.original) == ((), (), ())
    assert (plan.startable, plan.problem) == (True, None)


def test_in_place_without_load_balancer_has_no_traffic_events() -> None:
    plan = _plan("AllAtOnce", 4)
    assert plan.batches == (_hosts(4),)
    assert E.ALLOW_TRAFFIC not in plan.events and plan.minimum_healthy == 0


@pytest.mark.parametrize(
    ("config", "n", "kw", "problem", "minimum"),
    [
        (DeploymentConfig("Strict", Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 95)), 10, {}, "invalid", 10),
        ("HalfAtATime", 1, {}, "invalid", 1),
        ("OneAtATime", 0, {}, "none", 0),
        ("AllAtOnce", 0, {"deployment_type": BLUE_GREEN}, "none", 0),  # no idle side to install on
    ],
)
def test_plan_that_cannot_start(
    config: str | DeploymentConfig, n: int, kw: dict[str, Any], problem: str, minimum: int
) -> None:
    plan = _plan(config, n, **kw)
    expected = ErrorCode.HEALTH_CONSTRAINTS_INVALID if problem == "invalid" else ErrorCode.NO_INSTANCES
    assert (plan.startable, plan.problem, plan.minimum_healthy) == (False, expected, minimum)
    assert plan.batches == () and plan.traffic_steps == ()
    assert simulate(_stages(config, n, **kw)).error_code is expected  # the machine refuses it the same way


def test_blue_green_hosts_with_a_lambda_traffic_config() -> None:
    plan = _plan("AllAtOnce", 4, deployment_type=BLUE_GREEN, traffic="LambdaCanary10Percent5Minutes")
    assert plan.batches == (_hosts(4, "green"),)
    assert plan.traffic_config is BUILTIN_CONFIGS[P + "LambdaCanary10Percent5Minutes"]
    assert plan.traffic_steps == (TrafficStep(10, 300), TrafficStep(100, 0))
    assert plan.traffic_wait_seconds == 300


def test_a_ready_wait_does_not_hide_the_traffic_steps() -> None:
    plan = _plan("AllAtOnce", 2, deployment_type=BLUE_GREEN, traffic=HOST_CANARY, ready_wait_seconds=600)
    assert [s.percent for s in plan.traffic_steps] == [20, 100] and plan.startable


def test_terminate_shows_the_original_fleet_stopping() -> None:
    plan = _plan("AllAtOnce", 2, deployment_type=BLUE_GREEN, termination_wait_seconds=60, stop_original=True)
    assert plan.original_events == (E.BEFORE_BLOCK_TRAFFIC, E.BLOCK_TRAFFIC, E.AFTER_BLOCK_TRAFFIC, E.APPLICATION_STOP)


def test_blue_green_rollback_plan_allows_the_original_fleet_first() -> None:
    stages = blue_green_rollback_stages(_hosts(2, "blue"), _hosts(2, "green"))
    plan = build_plan(
        stages,
        application="hello",
        environment="staging",
        group="hello-staging",
        platform=Platform.SERVER,
        deployment_type=BLUE_GREEN,
        config=_config("AllAtOnce"),
    )
    assert plan.batches == (_hosts(2, "blue"),) and plan.minimum_healthy == 2  # every host must succeed
    assert plan.events == event_order(Platform.SERVER, BLUE_GREEN, role=FleetRole.ORIGINAL, rollback=True)
    assert plan.original == _hosts(2, "green")
    assert plan.original_events == event_order(Platform.SERVER, BLUE_GREEN, role=FleetRole.REPLACEMENT, rollback=True)


@pytest.mark.parametrize(
    ("platform", "name", "steps"),
    [
        (Platform.LAMBDA, "LambdaLinear10PercentEvery2Minutes", 10),
        (Platform.LAMBDA, "LambdaAllAtOnce", 1),
        (Platform.ECS, "ECSCanary10Percent15Minutes", 2),
    ],
)
def test_lambda_and_ecs_plans(platform: Platform, name: str, steps: int) -> None:
    plan = _plan(name, 1, platform=platform, deployment_type=BLUE_GREEN, targets=("my-fn",))
    assert plan.batches == (("my-fn",),)
    assert plan.events == event_order(platform, BLUE_GREEN)
    assert len(plan.traffic_steps) == steps and plan.traffic_steps[-1] == TrafficStep(100, 0)
    assert (plan.startable, plan.minimum_healthy) == (True, 0)


def test_a_lambda_group_that_names_no_function_can_still_start() -> None:
    """Its function comes from the AppSpec, which only a deployment reads."""
    plan = _plan("LambdaCanary10Percent5Minutes", 0, platform=Platform.LAMBDA, deployment_type=BLUE_GREEN)
    assert (plan.startable, plan.problem, plan.batches) == (True, None, ())
    assert plan.events == event_order(Platform.LAMBDA, BLUE_GREEN)
    assert plan.traffic_steps == (TrafficStep(10, 300), TrafficStep(100, 0))


def test_as_dict_is_json_with_the_same_fields() -> None:
    traffic = DeploymentConfig(
        "HostLinear50", Platform.SERVER, traffic_routing=TrafficRouting(TrafficRoutingType.LINEAR, 50, 1)
    )
    plan = _plan("OneAtATime", 2, deployment_type=BLUE_GREEN, traffic=traffic)
    data = json.loads(json.dumps(plan.as_dict()))
    assert sorted(data) == sorted(
        [
            "application",
            "environment",
            "group",
            "platform",
            "deployment_type",
            "config",
            "traffic_config",
            "minimum_healthy",
            "batches",
            "events",
            "original_events",
            "traffic_steps",
            "traffic_wait_seconds",
            "startable",
            "problem",
        ]
    )
    assert data["config"] == P + "OneAtATime" and data["traffic_config"] == "HostLinear50"
    assert data["batches"] == [["green-1"], ["green-2"]]
    assert data["events"][-1] == "AfterAllowTraffic" and data["original_events"][0] == "BeforeBlockTraffic"
    assert data["traffic_steps"] == [{"percent": 50, "wait_seconds": 60}, {"percent": 100, "wait_seconds": 0}]
    assert (data["startable"], data["problem"], data["traffic_wait_seconds"]) == (True, None, 60)
