"""ElbRouter against moto in server mode: what the router did is read back with describe_target_health and
describe_listeners (moto sends no traffic and calls every registered running target healthy: components.md §4)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import HANG_GUARD

from engine.adapters.aws.accounts import AwsAccounts, AwsClients
from engine.adapters.aws.elbv2 import (
    ElbGroup,
    ElbRouter,
    build_elb_routers,
    check_weights,
    forward_weights,
    listener_weights,
    target_description,
)
from engine.core.config.model import (
    Application,
    AwsAccount,
    DeploymentGroup,
    EngineConfig,
    Host,
    LoadBalancer,
    ServerSettings,
)
from engine.core.errors import AdapterError
from engine.core.model import DeploymentType, Platform
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

HOSTS = {name: Host(name, port=8080) for name in ("10.0.1.10", "10.0.1.11", "10.0.2.10", "10.0.2.11")}
BLUE_HOSTS = ("10.0.1.10", "10.0.1.11")
GREEN_HOSTS = ("10.0.2.10", "10.0.2.11")


@dataclass
class Balancer:
    vpc: str
    subnet: str
    blue: str
    green: str
    instance_tg: str
    listener: str


@pytest.fixture
async def balancer(aws: AwsClients) -> Balancer:  # noqa: F811
    ec2, elb = await aws.get("ec2"), await aws.get("elbv2")
    vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
    subnets = [
        (await ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}"))["Subnet"][
            "SubnetId"
        ]
        for i, az in ((1, "a"), (2, "b"))
    ]
    lb = (await elb.create_load_balancer(Name="web", Subnets=subnets, Type="application"))["LoadBalancers"][0]

    async def target_group(name: str, kind: str) -> str:
        answer = await elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc, TargetType=kind)
        arn: str = answer["TargetGroups"][0]["TargetGroupArn"]
        return arn

    blue, green = await target_group("web-blue", "ip"), await target_group("web-green", "ip")
    instance_tg = await target_group("web-instances", "instance")
    listener = await elb.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": blue}],
    )
    return Balancer(vpc, subnets[0], blue, green, instance_tg, listener["Listeners"][0]["ListenerArn"])


def router(clients: AwsClients, group: ElbGroup, **options: Any) -> ElbRouter:
    options = {"hosts": HOSTS, "poll_interval": 0.01, "allow_timeout": 1.0, **options}
    return ElbRouter(clients, group, **options)


async def health(clients: AwsClients, target_group: str) -> dict[str, str]:
    answer = await (await clients.get("elbv2")).describe_target_health(TargetGroupArn=target_group)
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in answer["TargetHealthDescriptions"]}


async def weights(clients: AwsClients, listener: str) -> dict[str, int]:
    answer = await (await clients.get("elbv2")).describe_listeners(ListenerArns=[listener])
    return forward_weights(answer["Listeners"][0]["DefaultActions"])


# -- pure rules --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "host", "expected"),
    [
        ("10.0.1.10", Host("10.0.1.10", port=8080), {"Id": "10.0.1.10", "Port": 8080}),
        ("10.0.1.10", None, {"Id": "10.0.1.10"}),
        ("web-1", Host("web-1", tags={"instance_id": "i-0123456789abcdef0"}), {"Id": "i-0123456789abcdef0"}),
        ("i-0123456789abcdef0", None, {"Id": "i-0123456789abcdef0"}),
        ("fd00::5", Host("fd00::5", port=80), {"Id": "fd00::5", "Port": 80}),
    ],
)
def test_host_to_target_rule(name: str, host: Host | None, expected: dict[str, Any]) -> None:
    assert target_description(name, host) == expected


def test_a_host_that_is_neither_an_instance_nor_an_ip_is_refused() -> None:
    with pytest.raises(AdapterError, match=r"web-1.*instance_id tag.*not an IP"):
        target_description("web-1", Host("web-1"))


@pytest.mark.parametrize("percent", [-1, 101, 50.5, True, "50"])
def test_listener_weights_refuse_what_aws_would(percent: Any) -> None:
    with pytest.raises(AdapterError, match="0-100"):
        listener_weights(percent)


@pytest.mark.parametrize(
    ("weights", "match"),
    [({"a": 1000, "b": -900}, "outside 0-999"), ({"a": 60, "b": 60}, "add up to 100"), ({"a": 50.0}, "outside")],
)
def test_check_weights(weights: dict[str, Any], match: str) -> None:
    with pytest.raises(AdapterError, match=match):
        check_weights(weights)


# -- in place ----------------------------------------------------------------------------------------------------


async def test_in_place_block_deregisters_and_allow_registers(aws: AwsClients, balancer: Balancer) -> None:  # noqa: F811
    # An hour's delay: block() returns within the hang guard only because an unused target is not waited for.
    group = ElbGroup("web-staging", (balancer.blue,), deregistration_delay=3600.0)
    elb = router(aws, group)
    for host in BLUE_HOSTS:
        await elb.allow("web-staging", host)
    assert await health(aws, balancer.blue) == dict.fromkeys(BLUE_HOSTS, "healthy")

    async with asyncio.timeout(HANG_GUARD):
        await elb.block("web-staging", "10.0.1.10")
    assert await health(aws, balancer.blue) == {"10.0.1.11": "healthy"}

    await elb.block("web-staging", "10.0.1.10")  # re-issued after a restart: already gone is fine
    await elb.allow("web-staging", "10.0.1.10")
    assert await health(aws, balancer.blue) == dict.fromkeys(BLUE_HOSTS, "healthy")


async def test_instance_targets_by_tag_and_by_id(aws: AwsClients, balancer: Balancer) -> None:  # noqa: F811
    ec2 = await aws.get("ec2")
    started = await ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, SubnetId=balancer.subnet)
    tagged, bare = sorted(i["InstanceId"] for i in started["Instances"])
    hosts = {"web-1": Host("web-1", tags={"instance_id": tagged})}
    elb = router(aws, ElbGroup("web", (balancer.instance_tg,)), hosts=hosts)
    await elb.allow("web", "web-1")
    await elb.allow("web", bare)  # a host found by ec2_tags is named by its instance id
    assert await health(aws, balancer.instance_tg) == {tagged: "healthy", bare: "healthy"}
    await elb.block("web", "web-1")
    assert await health(aws, balancer.instance_tg) == {bare: "healthy"}


async def test_a_target_that_never_turns_healthy_times_out_with_its_reason(
    aws: AwsClients,  # noqa: F811
    balancer: Balancer,
) -> None:
    ec2 = await aws.get("ec2")
    started = await ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=balancer.subnet)
    instance = started["Instances"][0]["InstanceId"]
    elb = router(aws, ElbGroup("web", (balancer.instance_tg,)), allow_timeout=0.2)
    await elb.allow("web", instance)
    await ec2.stop_instances(InstanceIds=[instance])  # moto: a stopped instance is `unused`, Target.InvalidState
    with pytest.raises(AdapterError, match=rf"{instance}: unused Target.InvalidState"):
        await elb.until_healthy(balancer.instance_tg, [instance])
    with pytest.raises(AdapterError, match=r"InvalidTarget: .*not in a running state"):
        await elb.allow("web", instance)


async def test_a_router_refuses_another_group(aws: AwsClients, balancer: Balancer) -> None:  # noqa: F811
    elb = router(aws, ElbGroup("web", (balancer.blue,)))
    with pytest.raises(AdapterError, match="not 'api'"):
        await elb.allow("api", "10.0.1.10")


# -- blue/green --------------------------------------------------------------------------------------------------


def blue_green(balancer: Balancer) -> ElbGroup:
    return ElbGroup("web-prod", (balancer.blue, balancer.green), balancer.listener, deregistration_delay=0.5)


async def test_listener_weights_step_and_roll_back(aws: AwsClients, balancer: Balancer) -> None:  # noqa: F811
    elb = router(aws, blue_green(balancer))
    await elb.prepare("web-prod", BLUE_HOSTS, GREEN_HOSTS)
    assert await health(aws, balancer.blue) == dict.fromkeys(BLUE_HOSTS, "healthy")
    assert await health(aws, balancer.green) == dict.fromkeys(GREEN_HOSTS, "healthy")

    seen = []
    for percent in (10, 50, 100, 0):
        await elb.set_weight("web-prod", percent)
        seen.append(await weights(aws, balancer.listener))
        assert await elb.verify_weight("web-prod", percent) is True
        assert await elb.verify_weight("web-prod", (percent + 50) % 100) is False
        assert await elb.verify_weight("web-prod", abs(percent - 1)) is False  # exact: one point off holds the step
    assert seen == [
        {balancer.blue: 90, balancer.green: 10},
        {balancer.blue: 50, balancer.green: 50},
        {balancer.blue: 0, balancer.green: 100},
        {balancer.blue: 100, balancer.green: 0},
    ]


async def test_invalid_weights_are_refused_before_calling_aws(aws: AwsClients, balancer: Balancer) -> None:  # noqa: F811
    elb = router(aws, blue_green(balancer))
    await elb.prepare("web-prod", BLUE_HOSTS, GREEN_HOSTS)
    await elb.set_weight("web-prod", 30)
    for bad in (101, -5, 12.5):
        with pytest.raises(AdapterError, match="0-100"):
            await elb.set_weight("web-prod", bad)  # type: ignore[arg-type]
    assert await weights(aws, balancer.listener) == {balancer.blue: 70, balancer.green: 30}


async def test_sides_swap_with_the_next_deployment_and_survive_a_restart(
    aws: AwsClients,  # noqa: F811
    balancer: Balancer,
) -> None:
    first = router(aws, blue_green(balancer))
    await first.prepare("web-prod", BLUE_HOSTS, GREEN_HOSTS)
    await first.set_weight("web-prod", 100)
    for host in BLUE_HOSTS:  # the original fleet's BlockTraffic after the shift
        await first.block("web-prod", host)
    assert await health(aws, balancer.blue) == {}

    # The next deployment installs on the blue hosts: green is now the original side.
    second = router(aws, blue_green(balancer))
    await second.prepare("web-prod", GREEN_HOSTS, BLUE_HOSTS)
    await second.set_weight("web-prod", 20)
    assert await weights(aws, balancer.listener) == {balancer.blue: 20, balancer.green: 80}

    # A server restarted mid-shift finds the same sides from the registrations, although weights are near even.
    await second.set_weight("web-prod", 50)
    resumed = router(aws, blue_green(balancer))
    await resumed.prepare("web-prod", GREEN_HOSTS, BLUE_HOSTS)
    await resumed.set_weight("web-prod", 0, wait=False)  # rollback: all back on the original (green) side
    assert await weights(aws, balancer.listener) == {balancer.blue: 0, balancer.green: 100}
    assert await health(aws, balancer.green) == dict.fromkeys(GREEN_HOSTS, "healthy")


async def test_a_rollback_brings_back_an_original_fleet_that_was_blocked(
    aws: AwsClients,  # noqa: F811
    balancer: Balancer,
) -> None:
    elb = router(aws, blue_green(balancer))
    await elb.prepare("web-prod", BLUE_HOSTS, GREEN_HOSTS)
    await elb.set_weight("web-prod", 100)
    await elb.block("web-prod", "10.0.1.10")
    assert await health(aws, balancer.blue) == {"10.0.1.11": "healthy"}
    await elb.set_weight("web-prod", 0, wait=False)
    assert await health(aws, balancer.blue) == dict.fromkeys(BLUE_HOSTS, "healthy")


async def test_set_weight_needs_prepared_sides(aws: AwsClients, balancer: Balancer) -> None:  # noqa: F811
    elb = router(aws, blue_green(balancer))
    assert await elb.verify_weight("web-prod", 0) is None
    with pytest.raises(AdapterError, match="no original/replacement sides"):
        await elb.set_weight("web-prod", 10)
    in_place = router(aws, ElbGroup("web", (balancer.blue,)))
    with pytest.raises(AdapterError, match="two target groups and listener"):
        await in_place.prepare("web", BLUE_HOSTS, GREEN_HOSTS)


# -- from the config ---------------------------------------------------------------------------------------------


def group(name: str, lb: LoadBalancer | None, *, platform: Platform = Platform.SERVER, **extra: Any) -> DeploymentGroup:
    return DeploymentGroup(
        name=name,
        application="web",
        environment=name,
        platform=platform,
        deployment_type=DeploymentType.BLUE_GREEN if lb and lb.extra.get("listener_arn") else DeploymentType.IN_PLACE,
        deployment_config="CodeDeployDefault.AllAtOnce",
        traffic_config=None,
        hosts=tuple(HOSTS),
        load_balancer=lb,
        extra=extra,
    )


def config_with(groups: Sequence[DeploymentGroup]) -> EngineConfig:
    app = Application("web", Platform.SERVER, tuple(g.name for g in groups), {g.name: g for g in groups})
    return EngineConfig(
        source="test.yml",
        server=ServerSettings(),
        applications={"web": app},
        hosts=HOSTS,
        deployment_configs={},
        aws_accounts={"prod": AwsAccount("prod", region="eu-west-1")},
    )


async def test_build_elb_routers_one_per_elbv2_server_group() -> None:
    config = config_with(
        [
            group("staging", LoadBalancer("elbv2", extra={"target_groups": ["tg-a"]}), aws_account="prod"),
            group("prod", LoadBalancer("elbv2", extra={"target_groups": ["tg-b", "tg-g"], "listener_arn": "l-1"})),
            group("dev", LoadBalancer("haproxy", port=9000)),
            group("none", None),
        ]
    )
    accounts = AwsAccounts(dict(config.aws_accounts))
    routers = build_elb_routers(config, accounts)
    assert sorted(routers) == ["prod", "staging"]
    staging, prod = routers["staging"], routers["prod"]
    assert isinstance(staging, ElbRouter) and isinstance(prod, ElbRouter)
    assert staging.group == ElbGroup("staging", ("tg-a",), None, 5.0)
    assert staging.clients.account == AwsAccount("prod", region="eu-west-1")
    assert prod.group.blue_green and prod.clients.account.name == "default"
    assert prod.hosts == HOSTS
    await accounts.close()
