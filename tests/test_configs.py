"""Deployment configurations: built-ins by exact name, min-healthy arithmetic, traffic steps, validation."""

from __future__ import annotations

import json

import pytest

from engine.core.configs import (
    BUILTIN_CONFIGS,
    DEFAULT_SERVER_CONFIG,
    DeploymentConfig,
    IncompatibleDeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
    TrafficStep,
    close_config_names,
    config_for_group,
    default_config_name,
    describe,
    max_concurrent,
    minimum_healthy_count,
    resolve_config,
    start_problem,
    traffic_config_for_hosts,
    traffic_span_minutes,
    traffic_steps,
    validate_custom_config,
)
from engine.core.errors import UnknownDeploymentConfig
from engine.core.model import ErrorCode, Platform

P = "CodeDeployDefault."
HOST_COUNT, FLEET_PERCENT, MOST_CONCURRENCY = (
    MinimumHealthyHostsType.HOST_COUNT,
    MinimumHealthyHostsType.FLEET_PERCENT,
    MinimumHealthyHostsType.MOST_CONCURRENCY,
)
CANARY, LINEAR, ALL = TrafficRoutingType.CANARY, TrafficRoutingType.LINEAR, TrafficRoutingType.ALL_AT_ONCE
FLEETS = (1, 2, 3, 4, 9, 10, 20, 100)


def _mhh(name: str) -> MinimumHealthyHosts:
    mhh = BUILTIN_CONFIGS[P + name].minimum_healthy_hosts
    assert mhh is not None
    return mhh


# ---------------------------------------------------------------------------------------------- built-in names


EXPECTED_BUILTINS = {
    "OneAtATime": (Platform.SERVER, MinimumHealthyHosts(MOST_CONCURRENCY, 1), None),
    "HalfAtATime": (Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 50), None),
    "AllAtOnce": (Platform.SERVER, MinimumHealthyHosts(HOST_COUNT, 0), None),
    "LambdaCanary10Percent5Minutes": (Platform.LAMBDA, None, TrafficRouting(CANARY, 10, 5)),
    "LambdaCanary10Percent10Minutes": (Platform.LAMBDA, None, TrafficRouting(CANARY, 10, 10)),
    "LambdaCanary10Percent15Minutes": (Platform.LAMBDA, None, TrafficRouting(CANARY, 10, 15)),
    "LambdaCanary10Percent30Minutes": (Platform.LAMBDA, None, TrafficRouting(CANARY, 10, 30)),
    "LambdaLinear10PercentEvery1Minute": (Platform.LAMBDA, None, TrafficRouting(LINEAR, 10, 1)),
    "LambdaLinear10PercentEvery2Minutes": (Platform.LAMBDA, None, TrafficRouting(LINEAR, 10, 2)),
    "LambdaLinear10PercentEvery3Minutes": (Platform.LAMBDA, None, TrafficRouting(LINEAR, 10, 3)),
    "LambdaLinear10PercentEvery10Minutes": (Platform.LAMBDA, None, TrafficRouting(LINEAR, 10, 10)),
    "LambdaAllAtOnce": (Platform.LAMBDA, None, TrafficRouting(ALL)),
    "ECSCanary10Percent5Minutes": (Platform.ECS, None, TrafficRouting(CANARY, 10, 5)),
    "ECSCanary10Percent15Minutes": (Platform.ECS, None, TrafficRouting(CANARY, 10, 15)),
    "ECSLinear10PercentEvery1Minutes": (Platform.ECS, None, TrafficRouting(LINEAR, 10, 1)),
    "ECSLinear10PercentEvery3Minutes": (Platform.ECS, None, TrafficRouting(LINEAR, 10, 3)),
    "ECSAllAtOnce": (Platform.ECS, None, TrafficRouting(ALL)),
}


def test_builtins_are_exactly_codedeploys() -> None:
    assert set(BUILTIN_CONFIGS) == {P + name for name in EXPECTED_BUILTINS}


@pytest.mark.parametrize("short", EXPECTED_BUILTINS)
def test_builtin_parameters(short: str) -> None:
    platform, mhh, routing = EXPECTED_BUILTINS[short]
    config = BUILTIN_CONFIGS[P + short]
    assert (config.name, config.compute_platform) == (P + short, platform)
    assert (config.minimum_healthy_hosts, config.traffic_routing) == (mhh, routing)
    assert config.kind == ("hosts" if mhh else "traffic")
    assert config.is_builtin


@pytest.mark.parametrize(
    "wrong",
    ["LambdaLinear10PercentEvery1Minutes", "ECSLinear10PercentEvery1Minute", "ECSCanary10Percent10Minutes"],
)
def test_misspelt_builtins_do_not_exist(wrong: str) -> None:
    """The singular/plural quirk is AWS's: the Lambda name says Minute, the ECS name Minutes."""
    with pytest.raises(UnknownDeploymentConfig) as caught:
        resolve_config(P + wrong)
    assert caught.value.name == P + wrong


def test_defaults_per_platform() -> None:
    assert DEFAULT_SERVER_CONFIG == P + "OneAtATime"
    assert default_config_name(Platform.SERVER) == DEFAULT_SERVER_CONFIG
    assert all(default_config_name(p) in BUILTIN_CONFIGS for p in Platform)
    assert BUILTIN_CONFIGS[default_config_name(Platform.ECS)].compute_platform is Platform.ECS


# ---------------------------------------------------------------------------------------------- min / max


# fleet size -> (minimum healthy, max at once) for each EC2 built-in
MIN_MAX = {
    "OneAtATime": {1: (0, 1), 2: (1, 1), 3: (2, 1), 4: (3, 1), 9: (8, 1), 10: (9, 1), 20: (19, 1), 100: (99, 1)},
    "HalfAtATime": {
        1: (1, 0),
        2: (1, 1),
        3: (2, 1),
        4: (2, 2),
        9: (5, 4),
        10: (5, 5),
        20: (10, 10),
        100: (50, 50),
    },
    "AllAtOnce": {n: (0, n) for n in FLEETS},
}


@pytest.mark.parametrize(("short", "n"), [(s, n) for s in MIN_MAX for n in FLEETS])
def test_builtin_min_and_max(short: str, n: int) -> None:
    mhh = _mhh(short)
    assert (minimum_healthy_count(mhh, n), max_concurrent(mhh, n)) == MIN_MAX[short][n]


@pytest.mark.parametrize(
    ("mhh", "n", "minimum", "at_once"),
    [
        (MinimumHealthyHosts(HOST_COUNT, 6), 9, 6, 3),  # "up to three"
        (MinimumHealthyHosts(FLEET_PERCENT, 40), 9, 4, 5),  # "min 4, up to five"
        (MinimumHealthyHosts(FLEET_PERCENT, 95), 10, 10, 0),  # rounds up to 10: cannot start
        (MinimumHealthyHosts(FLEET_PERCENT, 50), 9, 5, 4),  # HalfAtATime: 4 at a time, needs 5
        (MinimumHealthyHosts(HOST_COUNT, 9), 10, 9, 1),
        (MinimumHealthyHosts(HOST_COUNT, 12), 10, 12, 0),  # more than the fleet: never negative
        (MinimumHealthyHosts(FLEET_PERCENT, 99), 100, 99, 1),
        (MinimumHealthyHosts(FLEET_PERCENT, 1), 100, 1, 99),
        (MinimumHealthyHosts(FLEET_PERCENT, 0), 7, 0, 7),
        (MinimumHealthyHosts(FLEET_PERCENT, 33), 3, 1, 2),  # 0.99 rounds up to 1
        (MinimumHealthyHosts(MOST_CONCURRENCY, 1), 0, 0, 0),
        (MinimumHealthyHosts(HOST_COUNT, 0), 0, 0, 0),
    ],
)
def test_reference_examples(mhh: MinimumHealthyHosts, n: int, minimum: int, at_once: int) -> None:
    assert minimum_healthy_count(mhh, n) == minimum
    assert max_concurrent(mhh, n) == at_once


@pytest.mark.parametrize(
    ("mhh", "n", "problem"),
    [
        (MinimumHealthyHosts(FLEET_PERCENT, 95), 10, ErrorCode.HEALTH_CONSTRAINTS_INVALID),
        (MinimumHealthyHosts(FLEET_PERCENT, 50), 1, ErrorCode.HEALTH_CONSTRAINTS_INVALID),  # HalfAtATime, 1 host
        (MinimumHealthyHosts(HOST_COUNT, 3), 3, ErrorCode.HEALTH_CONSTRAINTS_INVALID),
        (MinimumHealthyHosts(HOST_COUNT, 2), 3, None),
        (MinimumHealthyHosts(MOST_CONCURRENCY, 1), 1, None),  # OneAtATime on one host can start
        (MinimumHealthyHosts(HOST_COUNT, 0), 1, None),
        (MinimumHealthyHosts(HOST_COUNT, 0), 0, ErrorCode.NO_INSTANCES),
        (MinimumHealthyHosts(MOST_CONCURRENCY, 1), 0, ErrorCode.NO_INSTANCES),
    ],
)
def test_start_check(mhh: MinimumHealthyHosts, n: int, problem: ErrorCode | None) -> None:
    assert start_problem(mhh, n) == problem


# ---------------------------------------------------------------------------------------------- traffic


def _steps(*pairs: tuple[int, int]) -> tuple[TrafficStep, ...]:
    return tuple(TrafficStep(p, w) for p, w in pairs)


def _linear10(minutes: int) -> tuple[TrafficStep, ...]:
    return _steps(*((p, minutes * 60) for p in range(10, 100, 10)), (100, 0))


BUILTIN_STEPS = {
    "LambdaCanary10Percent5Minutes": _steps((10, 300), (100, 0)),
    "LambdaCanary10Percent10Minutes": _steps((10, 600), (100, 0)),
    "LambdaCanary10Percent15Minutes": _steps((10, 900), (100, 0)),
    "LambdaCanary10Percent30Minutes": _steps((10, 1800), (100, 0)),
    "LambdaLinear10PercentEvery1Minute": _linear10(1),
    "LambdaLinear10PercentEvery2Minutes": _linear10(2),
    "LambdaLinear10PercentEvery3Minutes": _linear10(3),
    "LambdaLinear10PercentEvery10Minutes": _linear10(10),
    "LambdaAllAtOnce": _steps((100, 0)),
    "ECSCanary10Percent5Minutes": _steps((10, 300), (100, 0)),
    "ECSCanary10Percent15Minutes": _steps((10, 900), (100, 0)),
    "ECSLinear10PercentEvery1Minutes": _linear10(1),
    "ECSLinear10PercentEvery3Minutes": _linear10(3),
    "ECSAllAtOnce": _steps((100, 0)),
}


@pytest.mark.parametrize("short", BUILTIN_STEPS)
def test_builtin_traffic_steps(short: str) -> None:
    assert traffic_steps(BUILTIN_CONFIGS[P + short].traffic_routing) == BUILTIN_STEPS[short]


@pytest.mark.parametrize(
    ("routing", "steps", "span"),
    [
        (None, _steps((100, 0)), 0),
        (TrafficRouting(LINEAR, 30, 2), _steps((30, 120), (60, 120), (90, 120), (100, 0)), 6),
        (TrafficRouting(LINEAR, 33, 1), _steps((33, 60), (66, 60), (99, 60), (100, 0)), 3),
        (TrafficRouting(LINEAR, 25, 4), _steps((25, 240), (50, 240), (75, 240), (100, 0)), 12),
        (TrafficRouting(LINEAR, 50, 5), _steps((50, 300), (100, 0)), 5),
        (TrafficRouting(LINEAR, 40, 1), _steps((40, 60), (80, 60), (100, 0)), 2),
        (TrafficRouting(LINEAR, 99, 7), _steps((99, 420), (100, 0)), 7),
        (TrafficRouting(CANARY, 25, 45), _steps((25, 2700), (100, 0)), 45),
        (TrafficRouting(CANARY, 99, 1), _steps((99, 60), (100, 0)), 1),
    ],
)
def test_custom_traffic_steps(routing: TrafficRouting | None, steps: tuple[TrafficStep, ...], span: int) -> None:
    assert traffic_steps(routing) == steps
    assert traffic_span_minutes(routing) == span


def test_linear_one_percent_has_a_hundred_steps() -> None:
    steps = traffic_steps(TrafficRouting(LINEAR, 1, 1))
    assert [s.percent for s in steps] == list(range(1, 101))
    assert steps[-1].wait_seconds == 0 and {s.wait_seconds for s in steps[:-1]} == {60}


# ---------------------------------------------------------------------------------------------- lookup


SERVER_TRAFFIC = DeploymentConfig("HostCanary", Platform.SERVER, traffic_routing=TrafficRouting(CANARY, 20, 2))
CUSTOM = {
    "ThreeAtATime": DeploymentConfig("ThreeAtATime", Platform.SERVER, MinimumHealthyHosts(HOST_COUNT, 3)),
    "HostCanary": SERVER_TRAFFIC,
    "EcsSlow": DeploymentConfig("EcsSlow", Platform.ECS, traffic_routing=TrafficRouting(LINEAR, 20, 30)),
}


def test_resolve_builtin_custom_and_unknown() -> None:
    assert resolve_config(P + "HalfAtATime") is BUILTIN_CONFIGS[P + "HalfAtATime"]
    assert resolve_config("ThreeAtATime", CUSTOM) is CUSTOM["ThreeAtATime"]
    with pytest.raises(UnknownDeploymentConfig) as caught:
        resolve_config("ThreeAtATime")
    assert caught.value.name == "ThreeAtATime"
    with pytest.raises(UnknownDeploymentConfig):
        resolve_config(P + "halfatatime")  # names are case-sensitive


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("CodeDeployDefault.OneAtATme", P + "OneAtATime"),
        ("halfatatime", P + "HalfAtATime"),
        ("LambdaLinear10PercentEvery1Minutes", P + "LambdaLinear10PercentEvery1Minute"),
        ("threeatatime", "ThreeAtATime"),
    ],
)
def test_close_names(typed: str, expected: str) -> None:
    close = close_config_names(typed, CUSTOM)
    assert expected in close and len(close) <= 3


def test_close_names_none_for_nonsense() -> None:
    assert close_config_names("zzzzqqqq") == []


@pytest.mark.parametrize(
    ("name", "platform", "fits"),
    [
        (P + "OneAtATime", Platform.SERVER, True),
        ("ThreeAtATime", Platform.SERVER, True),
        (P + "LambdaAllAtOnce", Platform.SERVER, False),
        ("HostCanary", Platform.SERVER, False),
        (P + "LambdaCanary10Percent5Minutes", Platform.LAMBDA, True),
        (P + "ECSAllAtOnce", Platform.LAMBDA, False),
        (P + "AllAtOnce", Platform.LAMBDA, False),
        (P + "ECSAllAtOnce", Platform.ECS, True),
        ("EcsSlow", Platform.ECS, True),
        (P + "LambdaAllAtOnce", Platform.ECS, False),
    ],
)
def test_config_for_group(name: str, platform: Platform, fits: bool) -> None:
    if fits:
        assert config_for_group(name, platform, CUSTOM).name == name
    else:
        with pytest.raises(IncompatibleDeploymentConfig) as caught:
            config_for_group(name, platform, CUSTOM)
        assert (caught.value.name, caught.value.platform, caught.value.usage) == (name, platform, "deployment")


@pytest.mark.parametrize(
    "name", [P + "LambdaLinear10PercentEvery1Minute", P + "ECSCanary10Percent5Minutes", "HostCanary", "EcsSlow"]
)
def test_traffic_configs_apply_to_host_fleets(name: str) -> None:
    config = traffic_config_for_hosts(name, CUSTOM)
    assert config.traffic_routing is not None and config.name == name


@pytest.mark.parametrize("name", [P + "OneAtATime", "ThreeAtATime"])
def test_host_configs_are_not_traffic_configs(name: str) -> None:
    with pytest.raises(IncompatibleDeploymentConfig) as caught:
        traffic_config_for_hosts(name, CUSTOM)
    assert caught.value.usage == "traffic"


def test_traffic_config_for_hosts_unknown() -> None:
    with pytest.raises(UnknownDeploymentConfig):
        traffic_config_for_hosts("NoSuchThing", CUSTOM)


# ---------------------------------------------------------------------------------------------- validation


def _server(mhh: MinimumHealthyHosts | None, name: str = "Mine") -> DeploymentConfig:
    return DeploymentConfig(name, Platform.SERVER, mhh)


def _traffic(routing: TrafficRouting | None, platform: Platform = Platform.LAMBDA) -> DeploymentConfig:
    return DeploymentConfig("Mine", platform, traffic_routing=routing)


@pytest.mark.parametrize(
    "config",
    [
        _server(MinimumHealthyHosts(HOST_COUNT, 0)),
        _server(MinimumHealthyHosts(HOST_COUNT, 500)),
        _server(MinimumHealthyHosts(FLEET_PERCENT, 0)),
        _server(MinimumHealthyHosts(FLEET_PERCENT, 99)),
        _server(MinimumHealthyHosts(FLEET_PERCENT, 50), name="x" * 100),
        SERVER_TRAFFIC,
        DeploymentConfig("Both", Platform.SERVER, MinimumHealthyHosts(HOST_COUNT, 1), TrafficRouting(LINEAR, 10, 1)),
        _traffic(TrafficRouting(ALL)),
        _traffic(TrafficRouting(CANARY, 1, 1), Platform.ECS),
        _traffic(TrafficRouting(CANARY, 99, 2880)),
        _traffic(TrafficRouting(LINEAR, 10, 320)),  # 9 x 320 = 2880 minutes: just inside
        _traffic(TrafficRouting(LINEAR, 99, 2880)),
    ],
)
def test_valid_custom_configs(config: DeploymentConfig) -> None:
    assert validate_custom_config(config) == []


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (_server(MinimumHealthyHosts(HOST_COUNT, 1), name=P + "Mine"), "may not start with 'CodeDeployDefault.'"),
        (_server(MinimumHealthyHosts(HOST_COUNT, 1), name="x" * 101), "101 characters"),
        (_server(MinimumHealthyHosts(HOST_COUNT, 1), name=""), "name is empty"),
        (_server(MinimumHealthyHosts(FLEET_PERCENT, 100)), "FLEET_PERCENT must be 0-99, not 100"),
        (_server(MinimumHealthyHosts(FLEET_PERCENT, -1)), "FLEET_PERCENT must be 0-99, not -1"),
        (_server(MinimumHealthyHosts(HOST_COUNT, -1)), "HOST_COUNT must be 0 or more"),
        (_server(MinimumHealthyHosts(MOST_CONCURRENCY, 1)), "MOST_CONCURRENCY is reserved"),
        (_server(None), "server configuration needs minimum_healthy_hosts"),
        (_traffic(None), "lambda configuration needs traffic_routing"),
        (
            DeploymentConfig("M", Platform.ECS, MinimumHealthyHosts(HOST_COUNT, 1), TrafficRouting(ALL)),
            "ecs configuration takes no minimum_healthy_hosts",
        ),
        (_traffic(TrafficRouting(CANARY, 0, 5)), "percentage must be 1-99, not 0"),
        (_traffic(TrafficRouting(LINEAR, 100, 5)), "percentage must be 1-99, not 100"),
        (_traffic(TrafficRouting(LINEAR, 10, 0)), "interval must be more than 0 minutes"),
        (_traffic(TrafficRouting(LINEAR, 10, 321)), "2889 minutes"),
        (_traffic(TrafficRouting(CANARY, 10, 2881)), "the limit is 2880"),
        (_traffic(TrafficRouting(ALL, 10, 0)), "AllAtOnce traffic routing takes no percentage"),
    ],
)
def test_invalid_custom_configs(config: DeploymentConfig, fragment: str) -> None:
    problems = validate_custom_config(config)
    assert len(problems) == 1, problems
    assert fragment in problems[0]


def test_validation_reports_every_problem() -> None:
    config = DeploymentConfig(P + "x" * 100, Platform.SERVER, MinimumHealthyHosts(FLEET_PERCENT, 100))
    assert len(validate_custom_config(config)) == 3


# ---------------------------------------------------------------------------------------------- describe


def test_describe_hosts_config() -> None:
    data = describe(BUILTIN_CONFIGS[P + "HalfAtATime"], 9)
    assert data == {
        "name": P + "HalfAtATime",
        "kind": "hosts",
        "compute_platform": "server",
        "builtin": True,
        "minimum_healthy_hosts": {"type": "FLEET_PERCENT", "value": 50},
        "hosts": 9,
        "minimum_healthy_count": 5,
        "max_concurrent": 4,
        "batch_sizes": [4, 4, 1],
        "startable": True,
        "problem": None,
    }
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("mhh", "n", "problem"),
    [(MinimumHealthyHosts(FLEET_PERCENT, 95), 10, "HEALTH_CONSTRAINTS_INVALID"), (None, 0, "NO_INSTANCES")],
)
def test_describe_cannot_start(mhh: MinimumHealthyHosts | None, n: int, problem: str) -> None:
    config = _server(mhh or MinimumHealthyHosts(HOST_COUNT, 0))
    data = describe(config, n)
    assert (data["startable"], data["problem"], data["batch_sizes"]) == (False, problem, [])


def test_describe_without_fleet_size_has_no_host_fields() -> None:
    data = describe(BUILTIN_CONFIGS[P + "OneAtATime"])
    assert data["minimum_healthy_hosts"] == {"type": "MOST_CONCURRENCY", "value": 1}
    assert "max_concurrent" not in data and "traffic_steps" not in data


def test_describe_traffic_config() -> None:
    data = describe(BUILTIN_CONFIGS[P + "ECSCanary10Percent15Minutes"], 5)
    assert data["kind"] == "traffic"
    assert data["traffic_steps"] == [{"percent": 10, "wait_seconds": 900}, {"percent": 100, "wait_seconds": 0}]
    assert data["traffic_minutes"] == 15
    assert "minimum_healthy_hosts" not in data and "max_concurrent" not in data
