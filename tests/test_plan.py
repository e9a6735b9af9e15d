"""The dry-run plan: host batches, events per target, traffic steps and the start check."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.core.configs import (
    BUILTIN_CONFIGS,
    DeploymentConfig,
    IncompatibleDeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
    TrafficStep,
)
from engine.core.lifecycle import FleetRole, event_order
from engine.core.model import DeploymentType, ErrorCode, LifecycleEvent, Platform
from engine.core.plan import Plan, batch_traffic_steps, build_plan, host_batches

P = "CodeDeployDefault."
HOST_COUNT, FLEET_PERCENT = MinimumHealthyHostsType.HOST_COUNT, MinimumHealthyHostsType.FLEET_PERCENT


def _hosts(n: int) -> tuple[str, ...]:
    return tuple(f"web-{i}" for i in range(1, n + 1))


def _mhh(name: str) -> MinimumHealthyHosts:
    mhh = BUILTIN_CONFIGS[P + name].minimum_healthy_hosts
    assert mhh is not None
    return mhh


@pytest.mark.parametrize(
    ("mhh", "n", "sizes"),
    [
        (_mhh("OneAtATime"), 3, [1, 1, 1]),
        (_mhh("OneAtATime"), 1, [1]),
        (_mhh("HalfAtATime"), 9, [4, 4, 1]),
        (_mhh("HalfAtATime"), 10, [5, 5]),
        (_mhh("HalfAtATime"), 1, [1]),  # cannot start, but batches are never empty
        (_mhh("AllAtOnce"), 20, [20]),
        (MinimumHealthyHosts(HOST_COUNT, 6), 9, [3, 3, 3]),
        (MinimumHealthyHosts(FLEET_PERCENT, 40), 9, [5, 4]),
        (MinimumHealthyHosts(FLEET_PERCENT, 95), 10, [1] * 10),
        (_mhh("AllAtOnce"), 0, []),
    ],
)
def test_host_batches(mhh: MinimumHealthyHosts, n: int, sizes: list[int]) -> None:
    batches = host_batches(_hosts(n), mhh)
    assert [len(b) for b in batches] == sizes
    assert tuple(t for b in batches for t in b) == _hosts(n)  # every target once, in order


def test_batch_traffic_steps() -> None:
    assert batch_traffic_steps([("a",), ("b",), ("c",)]) == (
        TrafficStep(33, 0),
        TrafficStep(66, 0),
        TrafficStep(100, 0),
    )
    assert batch_traffic_steps([("a", "b")]) == (TrafficStep(100, 0),)
    assert batch_traffic_steps([]) == ()


def _plan(config: str | DeploymentConfig, n: int = 3, **kw: Any) -> Plan:
    """A plan for the group hello-staging with ``n`` hosts; ``kw`` overrides build_plan's other arguments."""
    options: dict[str, Any] = {
        "application": "hello",
        "environment": "staging",
        "group": "hello-staging",
        "config": BUILTIN_CONFIGS[P + config] if isinstance(config, str) else config,
        "platform": Platform.SERVER,
        "deployment_type": DeploymentType.IN_PLACE,
        "targets": _hosts(n),
    }
    return build_plan(**(options | kw))


def test_in_place_one_at_a_time_with_load_balancer() -> None:
    plan = _plan("OneAtATime", 3, with_load_balancer=True)
    assert (plan.application, plan.environment, plan.group) == ("hello", "staging", "hello-staging")
    assert plan.minimum_healthy == 2
    assert plan.batches == (("web-1",), ("web-2",), ("web-3",))
    assert plan.events == event_order(Platform.SERVER, DeploymentType.IN_PLACE, with_load_balancer=True)
    assert plan.events[0] is LifecycleEvent.BEFORE_BLOCK_TRAFFIC
    assert (plan.traffic_steps, plan.original_events) == ((), ())
    assert (plan.startable, plan.problem) == (True, None)
    assert plan.targets == _hosts(3)


def test_in_place_without_load_balancer_has_no_traffic_events() -> None:
    plan = _plan("AllAtOnce", 4)
    assert plan.batches == (_hosts(4),)
    assert LifecycleEvent.ALLOW_TRAFFIC not in plan.events and plan.minimum_healthy == 0


@pytest.mark.parametrize(
    ("config", "n", "problem", "minimum"),
    [
        (DeploymentConfig("Strict", Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 95)), 10, "invalid", 10),
        ("HalfAtATime", 1, "invalid", 1),
        ("OneAtATime", 0, "none", 0),
    ],
)
def test_plan_that_cannot_start(config: str | DeploymentConfig, n: int, problem: str, minimum: int) -> None:
    plan = _plan(config, n)
    expected = ErrorCode.HEALTH_CONSTRAINTS_INVALID if problem == "invalid" else ErrorCode.NO_INSTANCES
    assert (plan.startable, plan.problem, plan.minimum_healthy) == (False, expected, minimum)
    assert plan.batches == () and plan.traffic_steps == ()


def test_blue_green_without_traffic_config_moves_traffic_per_batch() -> None:
    plan = _plan("HalfAtATime", 4, deployment_type=DeploymentType.BLUE_GREEN)
    assert plan.batches == (("web-1", "web-2"), ("web-3", "web-4"))
    assert plan.events == event_order(Platform.SERVER, DeploymentType.BLUE_GREEN, role=FleetRole.REPLACEMENT)
    assert plan.original_events == event_order(Platform.SERVER, DeploymentType.BLUE_GREEN, role=FleetRole.ORIGINAL)
    assert plan.traffic_steps == (TrafficStep(50, 0), TrafficStep(100, 0))


def test_blue_green_hosts_with_a_lambda_traffic_config() -> None:
    traffic = BUILTIN_CONFIGS[P + "LambdaCanary10Percent5Minutes"]
    plan = _plan("AllAtOnce", 4, deployment_type=DeploymentType.BLUE_GREEN, traffic_config=traffic)
    assert plan.batches == (_hosts(4),)
    assert plan.traffic_config is traffic
    assert plan.traffic_steps == (TrafficStep(10, 300), TrafficStep(100, 0))
    assert plan.traffic_wait_seconds == 300


def test_blue_green_rollback_swaps_fleet_events() -> None:
    plan = _plan("AllAtOnce", 2, deployment_type=DeploymentType.BLUE_GREEN, rollback=True)
    assert plan.events[0] is LifecycleEvent.BEFORE_BLOCK_TRAFFIC
    assert plan.original_events[1] is LifecycleEvent.ALLOW_TRAFFIC


@pytest.mark.parametrize(
    ("platform", "name", "steps"),
    [
        (Platform.LAMBDA, "LambdaLinear10PercentEvery2Minutes", 10),
        (Platform.LAMBDA, "LambdaAllAtOnce", 1),
        (Platform.ECS, "ECSCanary10Percent15Minutes", 2),
    ],
)
def test_lambda_and_ecs_plans(platform: Platform, name: str, steps: int) -> None:
    plan = _plan(name, 0, platform=platform, deployment_type=DeploymentType.BLUE_GREEN, targets=("my-fn",))
    assert plan.batches == (("my-fn",),)
    assert plan.events == event_order(platform, DeploymentType.BLUE_GREEN)
    assert len(plan.traffic_steps) == steps and plan.traffic_steps[-1] == TrafficStep(100, 0)
    assert (plan.startable, plan.minimum_healthy) == (True, 0)


@pytest.mark.parametrize(
    ("config", "kw"),
    [
        ("LambdaAllAtOnce", {}),  # a traffic config as a server deployment config
        ("AllAtOnce", {"platform": Platform.LAMBDA}),
        ("ECSAllAtOnce", {"platform": Platform.LAMBDA}),
        ("AllAtOnce", {"traffic_config": BUILTIN_CONFIGS[P + "ECSAllAtOnce"]}),  # traffic config on in-place
        (
            "AllAtOnce",
            {"deployment_type": DeploymentType.BLUE_GREEN, "traffic_config": BUILTIN_CONFIGS[P + "OneAtATime"]},
        ),
    ],
)
def test_incompatible_configs_are_refused(config: str, kw: dict[str, Any]) -> None:
    with pytest.raises(IncompatibleDeploymentConfig):
        _plan(config, 2, **kw)


def test_as_dict_is_json() -> None:
    traffic = DeploymentConfig(
        "HostLinear", Platform.SERVER, traffic_routing=TrafficRouting(TrafficRoutingType.LINEAR, 50, 1)
    )
    plan = _plan("OneAtATime", 2, deployment_type=DeploymentType.BLUE_GREEN, traffic_config=traffic)
    data = json.loads(json.dumps(plan.as_dict()))
    assert data["config"] == P + "OneAtATime" and data["traffic_config"] == "HostLinear"
    assert data["batches"] == [["web-1"], ["web-2"]]
    assert data["events"][-1] == "AfterAllowTraffic" and data["original_events"][0] == "BeforeBlockTraffic"
    assert data["traffic_steps"] == [{"percent": 50, "wait_seconds": 60}, {"percent": 100, "wait_seconds": 0}]
    assert (data["startable"], data["problem"], data["traffic_wait_seconds"]) == (True, None, 60)
