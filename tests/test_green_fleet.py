"""Blue/green that provisions its green fleet (``green_fleet_provisioning: copy_auto_scaling_group``).

The config is checked where it is read (FILE:LINE:COL); the Auto Scaling adapter is driven against moto in server
mode; and whole deployments run in a real ``deploybot serve`` against moto's EC2, Auto Scaling and ELBv2, with real
agents named by the copy's instance ids, started by the test once the copy's instances exist (as an instance's
user data would start its agent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, eventually

from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.autoscaling import COPIED_OF_TAG, AutoScalingGreenFleet, copy_request
from engine.adapters.aws.elbv2 import ElbGroup, ElbRouter
from engine.core.config.parse import parse_config
from engine.core.configs import MinimumHealthyHosts, MinimumHealthyHostsType
from engine.core.errors import AdapterError, ConfigError
from engine.core.events import StartRollback, StopRequested
from engine.core.machine import DeploymentMachine
from engine.core.model import DeploymentStatus, DeploymentType, ErrorCode, LifecycleEvent, Platform
from engine.core.stages import ALL_AT_ONCE, StageOptions, TargetStage, deployment_stages, with_fleets
from engine.ports import StepWrite
from engine.runtime.blueprint import (
    Blueprint,
    blue_green_roles,
    current_auto_scaling_group,
    unsettled_green_fleets,
)
from engine.runtime.dry_run import dry_run
from engine.runtime.runner import DeploymentRunner
from engine.store.sqlite import SqliteStore
from tests.aws_fixtures import forward_action, listener_weights_now
from tests.e2e_support import DeploybotServer, write_revision
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

# -- the config ---------------------------------------------------------------------------------------------------

PREFIX = """\
aws:
  default: {region: us-east-1}
applications:
  web:
    environments: [production]
    deployment_groups:
      production:
        deployment_type: blue-green
"""
GROUP = "applications.web.deployment_groups.production"
ELBV2 = "        load_balancer: {type: elbv2, listener_arn: arn:listener, target_groups: [arn:blue, arn:green]}\n"


def problems_of(body: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(PREFIX + body, filename="deploybot.yml")
    assert all(p.file == "deploybot.yml" for p in caught.value.problems)
    return [(p.line, p.column, p.message, p.path) for p in caught.value.problems]


def test_copy_auto_scaling_group_parses_without_targets() -> None:
    config = parse_config(
        PREFIX + ELBV2 + "        blue_green:\n"
        "          green_fleet_provisioning: COPY_AUTO_SCALING_GROUP\n"
        "          auto_scaling_group: web-asg\n"
        "          terminate_action: terminate\n"
        "          termination_wait_minutes: 5\n"
    )
    options = config.group("web", "production").blue_green
    assert options.green_fleet_provisioning == "copy_auto_scaling_group" and options.copies_auto_scaling_group
    assert options.auto_scaling_group == "web-asg"
    assert (options.terminate_action, options.termination_wait_minutes) == ("TERMINATE", 5)


def test_a_bad_green_fleet_option_is_located() -> None:
    found = problems_of(
        ELBV2 + "        blue_green: {green_fleet_provisioning: copy_asg, auto_scaling_group: web-asg}\n"
    )
    bad = [p for p in found if p[3] == f"{GROUP}.blue_green.green_fleet_provisioning"]
    assert [p[:2] for p in bad] == [(10, 48)], found
    assert bad[0][2].startswith("expected one of discover_existing, copy_auto_scaling_group, got 'copy_asg'")
    # without the copy, the group name is a setting that would do nothing, and the group needs its targets
    assert any("auto_scaling_group applies only with" in message for _, _, message, _ in found), found
    assert any("missing required key 'targets'" in message for _, _, message, _ in found), found


def test_copy_auto_scaling_group_without_a_group_to_copy_is_refused() -> None:
    found = problems_of(ELBV2 + "        blue_green: {green_fleet_provisioning: copy_auto_scaling_group}\n")
    assert found == [
        (
            10,
            48,
            "green_fleet_provisioning: copy_auto_scaling_group needs auto_scaling_group: the name of the Auto "
            "Scaling group each deployment copies",
            f"{GROUP}.blue_green.auto_scaling_group",
        )
    ]


def test_copy_auto_scaling_group_without_an_elbv2_load_balancer_is_refused() -> None:
    body = (
        "        load_balancer: {type: haproxy, port: 9300}\n"
        "        blue_green: {green_fleet_provisioning: copy_auto_scaling_group, auto_scaling_group: web-asg}\n"
    )
    found = problems_of(body)
    assert found == [
        (
            10,
            48,
            "green_fleet_provisioning: copy_auto_scaling_group needs a load_balancer of type elbv2 (two target "
            "groups and a listener) to move the traffic to the copy",
            f"{GROUP}.blue_green.green_fleet_provisioning",
        )
    ]


def test_copy_auto_scaling_group_with_targets_is_refused() -> None:
    body = (
        ELBV2 + "        targets: {ec2_tags: {app: web}}\n"
        "        blue_green: {green_fleet_provisioning: copy_auto_scaling_group, auto_scaling_group: web-asg}\n"
    )
    found = problems_of(body)
    assert [(line, column, path) for line, column, _, path in found] == [(10, 9, f"{GROUP}.targets")]
    assert "leave targets out" in found[0][2]


# -- the stages -----------------------------------------------------------------------------------------------------


def test_a_provisioned_fleet_is_named_when_the_deployment_starts() -> None:
    options = StageOptions(
        Platform.SERVER,
        DeploymentType.BLUE_GREEN,
        MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 0),
        with_load_balancer=True,
        stop_original=True,
        provisioned_fleet=True,
    )
    stored = deployment_stages(options, (), ())
    assert [s.name for s in stored] == ["install", "traffic", "after-allow", "block-original"]  # no stop-original
    named = with_fleets(stored, ("i-old1",), ("i-new1", "i-new2"))
    targets = {s.name: s.targets for s in named if isinstance(s, TargetStage)}
    assert targets == {
        "install": ("i-new1", "i-new2"),
        "after-allow": ("i-new1", "i-new2"),
        "block-original": ("i-old1",),
    }


# -- the Auto Scaling adapter against moto --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsgSetup:
    asg: str
    template_id: str
    subnets: tuple[str, ...]
    listener_arn: str
    target_groups: tuple[str, str]  # (blue: serving the original instances, green)


async def create_asg_behind_alb(clients: AwsClients, *, size: int = 2, name: str = "web-asg") -> AsgSetup:
    """A launch template, an Auto Scaling group of ``size`` instances in two subnets, an ALB with a blue and a
    green target group and a listener forwarding everything to blue, where the group's instances are registered."""
    ec2 = await clients.get("ec2")
    elbv2 = await clients.get("elbv2")
    autoscaling = await clients.get("autoscaling")
    vpc = (await ec2.create_vpc(CidrBlock="10.2.0.0/16"))["Vpc"]["VpcId"]
    subnets: list[str] = []
    for i, zone in ((1, "a"), (2, "b")):
        subnet = await ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.2.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")
        subnets.append(subnet["Subnet"]["SubnetId"])
    template = await ec2.create_launch_template(
        LaunchTemplateName="web", LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"}
    )
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    await autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": "$Latest"},
        MinSize=size,
        MaxSize=size + 2,
        DesiredCapacity=size,
        VPCZoneIdentifier=",".join(subnets),
        Tags=[{"Key": "app", "Value": "web", "PropagateAtLaunch": True}],
    )
    alb = await elbv2.create_load_balancer(Name="web-alb", Subnets=subnets, Type="application")
    target_groups: list[str] = []
    for color in ("blue", "green"):
        group = await elbv2.create_target_group(
            Name=f"web-{color}", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance"
        )
        target_groups.append(group["TargetGroups"][0]["TargetGroupArn"])
    listener = await elbv2.create_listener(
        LoadBalancerArn=alb["LoadBalancers"][0]["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[forward_action({target_groups[0]: 100, target_groups[1]: 0})],
    )
    setup = AsgSetup(
        name, template_id, tuple(subnets), listener["Listeners"][0]["ListenerArn"], (target_groups[0], target_groups[1])
    )
    originals = await asg_instances(clients, name)
    await elbv2.register_targets(TargetGroupArn=target_groups[0], Targets=[{"Id": i} for i in originals])
    return setup


async def describe_asg(clients: AwsClients, name: str) -> dict[str, Any] | None:
    autoscaling = await clients.get("autoscaling")
    groups = (await autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name]))["AutoScalingGroups"]
    return dict(groups[0]) if groups else None


async def asg_instances(clients: AwsClients, name: str) -> tuple[str, ...]:
    group = await describe_asg(clients, name)
    assert group is not None, f"no Auto Scaling group {name}"
    return tuple(sorted(i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"))


async def running(clients: AwsClients, instances: tuple[str, ...]) -> dict[str, str]:
    ec2 = await clients.get("ec2")
    answer = await ec2.describe_instances(InstanceIds=list(instances))
    return {i["InstanceId"]: i["State"]["Name"] for r in answer["Reservations"] for i in r["Instances"]}


class RecordingRouter:
    """A TrafficRouter that only records what it was asked (the adapter must hand every call on)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def prepare(self, group: str, original: Any, replacement: Any) -> None:
        self.calls.append(("prepare", group, tuple(original), tuple(replacement)))

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        self.calls.append(("set_weight", group, percent, wait))

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        self.calls.append(("verify_weight", group, percent))
        return True

    async def block(self, group: str, target: str) -> None:
        self.calls.append(("block", group, target))

    async def allow(self, group: str, target: str) -> None:
        self.calls.append(("allow", group, target))


async def test_provision_copies_the_group_and_waits_for_its_instances(aws: AwsClients) -> None:  # noqa: F811
    setup = await create_asg_behind_alb(aws)
    fleet = AutoScalingGreenFleet(aws, RecordingRouter(), clock=FakeClock(auto=True))
    original, replacement = await fleet.provision("web-production", "web-asg", "CodeDeploy_web-production_d-1")
    assert original == await asg_instances(aws, "web-asg")
    assert len(replacement) == 2 and not set(replacement) & set(original)
    copy = await describe_asg(aws, "CodeDeploy_web-production_d-1")
    assert copy is not None
    assert (copy["MinSize"], copy["MaxSize"], copy["DesiredCapacity"]) == (2, 4, 2)
    assert copy["LaunchTemplate"]["LaunchTemplateId"] == setup.template_id
    assert set(copy["VPCZoneIdentifier"].split(",")) == set(setup.subnets)
    assert not copy.get("TargetGroupARNs")  # the router registers the copy's instances itself
    tags = {t["Key"]: t["Value"] for t in copy["Tags"]}
    assert tags["app"] == "web" and tags[COPIED_OF_TAG] == "web-asg"
    # asked again (a resumed deployment), the copy is found, not made twice
    again = await fleet.provision("web-production", "web-asg", "CodeDeploy_web-production_d-1")
    assert again == (original, replacement)


async def test_retire_terminates_or_keeps_the_original_and_discard_deletes_the_copy(
    aws: AwsClients,  # noqa: F811
) -> None:
    await create_asg_behind_alb(aws)
    fleet = AutoScalingGreenFleet(aws, RecordingRouter(), clock=FakeClock(auto=True))
    original, replacement = await fleet.provision("g", "web-asg", "copy-1")
    await fleet.retire("g", "web-asg", terminate=False)
    assert await describe_asg(aws, "web-asg") is not None
    await fleet.retire("g", "web-asg", terminate=True)
    assert await describe_asg(aws, "web-asg") is None
    assert set((await running(aws, original)).values()) <= {"shutting-down", "terminated"}
    await fleet.discard("g", "copy-1")
    assert await describe_asg(aws, "copy-1") is None
    assert set((await running(aws, replacement)).values()) <= {"shutting-down", "terminated"}
    await fleet.discard("g", "copy-1")  # gone already: done


async def test_copying_a_missing_group_is_an_adapter_error(aws: AwsClients) -> None:  # noqa: F811
    fleet = AutoScalingGreenFleet(aws, RecordingRouter(), clock=FakeClock(auto=True))
    with pytest.raises(AdapterError, match=r"^autoscaling: Auto Scaling group 'nope' not found"):
        await fleet.provision("g", "nope", "copy-1")


def test_a_copy_keeps_size_template_and_placement_but_not_the_load_balancers() -> None:
    source = {
        "AutoScalingGroupName": "web-asg",
        "MinSize": 1,
        "MaxSize": 3,
        "DesiredCapacity": 2,
        "LaunchConfigurationName": "web-lc",
        "AvailabilityZones": ["us-east-1a"],
        "TargetGroupARNs": ["arn:blue"],
        "LoadBalancerNames": ["classic"],
        "HealthCheckType": "ELB",
        "HealthCheckGracePeriod": 300,
        "Tags": [{"Key": "aws:cloudformation:stack-name", "Value": "s"}, {"Key": "team", "Value": "a"}],
    }
    request = copy_request(source, "copy")
    assert request["LaunchConfigurationName"] == "web-lc" and request["AvailabilityZones"] == ["us-east-1a"]
    assert (request["MinSize"], request["MaxSize"], request["DesiredCapacity"]) == (1, 3, 2)
    assert "TargetGroupARNs" not in request and "LoadBalancerNames" not in request
    assert [t["Key"] for t in request["Tags"]] == ["team", COPIED_OF_TAG]
    assert all(t["ResourceId"] == "copy" for t in request["Tags"])


async def test_the_router_calls_go_to_the_groups_elbv2_router(aws: AwsClients) -> None:  # noqa: F811
    router = RecordingRouter()
    fleet = AutoScalingGreenFleet(aws, router, clock=FakeClock(auto=True))
    await fleet.prepare("g", ["i-1"], ["i-2"])
    await fleet.set_weight("g", 40, wait=False)
    assert await fleet.verify_weight("g", 40) is True
    await fleet.block("g", "i-1")
    await fleet.allow("g", "i-2")
    assert router.calls == [
        ("prepare", "g", ("i-1",), ("i-2",)),
        ("set_weight", "g", 40, False),
        ("verify_weight", "g", 40),
        ("block", "g", "i-1"),
        ("allow", "g", "i-2"),
    ]


# -- whole deployments: deploybot serve, moto, real agents ----------------------------------------------------------

GROUP_NAME = "web-production"


def server_config(endpoint: str, setup: AsgSetup, *, terminate_action: str) -> str:
    blue, green = setup.target_groups
    return (
        "server: {data_dir: var}\n"
        f"aws:\n  default: {{region: {REGION}, endpoint_url: '{endpoint}'}}\n"
        "applications:\n"
        "  web:\n"
        "    platform: server\n"
        "    environments: [production]\n"
        "    deployment_groups:\n"
        "      production:\n"
        "        deployment_type: blue-green\n"
        "        load_balancer:\n"
        "          type: elbv2\n"
        f"          listener_arn: {setup.listener_arn}\n"
        f"          target_groups: [{blue}, {green}]\n"
        "          deregistration_delay: 0.2\n"
        "        blue_green:\n"
        "          green_fleet_provisioning: copy_auto_scaling_group\n"
        f"          auto_scaling_group: {setup.asg}\n"
        f"          terminate_action: {terminate_action}\n"
        "          termination_wait_minutes: 0\n"
        "        auto_rollback: {enabled: true, events: [DEPLOYMENT_FAILURE]}\n"
    )


class Scene:
    """A running ``deploybot serve`` over the moto fleet, and the agents the test started for instances."""

    def __init__(self, tmp_path: Path, clients: AwsClients, endpoint: str, setup: AsgSetup, terminate: str) -> None:
        workdir = tmp_path / "server"
        workdir.mkdir()
        self.tmp_path = tmp_path
        self.clients = clients
        self.setup = setup
        self.server = DeploybotServer(workdir, server_config(endpoint, setup, terminate_action=terminate))

    async def start_agents(self, instances: tuple[str, ...]) -> None:
        """Each instance's agent joins with a token from the API, as an autoscaled instance's would."""
        for name in instances:
            status, issued = await asyncio.to_thread(self.server.api, "POST", "/api/v1/agent-tokens", {"name": name})
            assert status == 201, issued
            self.server.run_agent(name)

    async def deploy(self, name: str, hooks: dict[str, str]) -> tuple[dict[str, Any], str, tuple[str, ...]]:
        """Deploy a revision and start the agents of the copy it makes: (the final document, the copy, its
        instances)."""
        revision = write_revision(self.tmp_path, name, hooks)
        deployment = await asyncio.to_thread(self.server.deploy, "web", "production", revision)
        copy = f"CodeDeploy_{GROUP_NAME}_{deployment['id']}"

        async def copy_in_service() -> bool:
            group = await describe_asg(self.clients, copy)
            return group is not None and len(await asg_instances(self.clients, copy)) == group["DesiredCapacity"]

        await eventually(copy_in_service, f"{copy} InService", poll=0.1)
        instances = await asg_instances(self.clients, copy)
        await self.start_agents(instances)
        final = await asyncio.to_thread(self.server.wait_final, deployment["id"], 120)
        return final, copy, instances

    async def registered(self, target_group: str) -> tuple[str, ...]:
        elbv2 = await self.clients.get("elbv2")
        health = await elbv2.describe_target_health(TargetGroupArn=target_group)
        return tuple(sorted(d["Target"]["Id"] for d in health["TargetHealthDescriptions"]))


@pytest.fixture
async def scene_factory(tmp_path: Path, aws: AwsClients, moto_reset: str) -> Any:  # noqa: F811
    scenes: list[Scene] = []

    async def make(terminate: str) -> Scene:
        setup = await create_asg_behind_alb(aws)
        scene = Scene(tmp_path, aws, moto_reset, setup, terminate)
        scenes.append(scene)
        await asyncio.to_thread(scene.server.start)
        await scene.start_agents(await asg_instances(aws, setup.asg))
        return scene

    yield make
    for scene in scenes:
        await asyncio.to_thread(scene.server.cleanup)


async def asg_gone(clients: AwsClients, name: str) -> bool:
    return await describe_asg(clients, name) is None


async def test_a_deployment_copies_the_group_shifts_to_the_copy_and_terminates_the_original(
    scene_factory: Any,
    aws: AwsClients,  # noqa: F811
) -> None:
    scene = await scene_factory("TERMINATE")
    blue, green = scene.setup.target_groups
    originals = await asg_instances(aws, "web-asg")

    final, copy, replacement = await scene.deploy("v1", {"ApplicationStart": "exit 0"})

    assert final["status"] == "Succeeded", final
    assert sorted(t["name"] for t in final["targets"]) == sorted((*originals, *replacement))
    assert not set(replacement) & set(originals)
    assert await listener_weights_now(aws, scene.setup.listener_arn) == {blue: 0, green: 100}
    assert await scene.registered(green) == replacement
    assert await scene.registered(blue) == ()  # the original fleet gave way (BlockTraffic)
    await eventually(lambda: asg_gone(aws, "web-asg"), "the original Auto Scaling group deleted", poll=0.1)
    assert set((await running(aws, originals)).values()) <= {"shutting-down", "terminated"}

    # The copy is the group's Auto Scaling group now: the next deployment copies it, and retires it.
    final, second_copy, second = await scene.deploy("v2", {"ApplicationStart": "exit 0"})
    assert final["status"] == "Succeeded", final
    made = await describe_asg(aws, second_copy)
    assert made is not None and {t["Key"]: t["Value"] for t in made["Tags"]}[COPIED_OF_TAG] == copy
    assert await listener_weights_now(aws, scene.setup.listener_arn) == {blue: 100, green: 0}
    assert await scene.registered(blue) == second
    await eventually(lambda: asg_gone(aws, copy), "the first copy deleted", poll=0.1)


async def test_keep_alive_keeps_the_original_group_running(scene_factory: Any, aws: AwsClients) -> None:  # noqa: F811
    scene = await scene_factory("KEEP_ALIVE")
    blue, green = scene.setup.target_groups
    originals = await asg_instances(aws, "web-asg")

    final, copy, replacement = await scene.deploy("v1", {"ApplicationStart": "exit 0"})

    assert final["status"] == "Succeeded", final
    assert await listener_weights_now(aws, scene.setup.listener_arn) == {blue: 0, green: 100}
    assert await scene.registered(green) == replacement
    await eventually(lambda: scene_logged(scene, final["id"], "green_fleet.retired"), "the original retired")
    assert await asg_instances(aws, "web-asg") == originals
    assert set((await running(aws, originals)).values()) == {"running"}
    assert await describe_asg(aws, copy) is not None


async def test_a_failing_hook_on_the_copy_deletes_it_and_leaves_traffic_on_the_original(
    scene_factory: Any,
    aws: AwsClients,  # noqa: F811
) -> None:
    scene = await scene_factory("TERMINATE")
    blue, green = scene.setup.target_groups
    originals = await asg_instances(aws, "web-asg")

    final, copy, replacement = await scene.deploy("bad", {"ValidateService": "echo broken >&2; exit 1"})

    assert final["status"] == "Failed", final
    assert "ValidateService failed" in final["error"]["message"], final
    await eventually(lambda: asg_gone(aws, copy), "the copy deleted", poll=0.1)
    assert set((await running(aws, replacement)).values()) <= {"shutting-down", "terminated"}
    assert await listener_weights_now(aws, scene.setup.listener_arn) == {blue: 100, green: 0}
    assert await scene.registered(blue) == originals
    assert await asg_instances(aws, "web-asg") == originals
    assert set((await running(aws, originals)).values()) == {"running"}
    # The automatic rollback is the reroute itself: no rollback deployment runs hooks on the deleted copy.
    await eventually(lambda: scene_logged(scene, final["id"], "rollback.rerouted"), "the rollback logged", poll=0.1)
    status, listed = await asyncio.to_thread(scene.server.api, "GET", "/api/v1/deployments?application=web")
    assert status == 200 and [d["id"] for d in listed["deployments"]] == [final["id"]], listed


async def scene_logged(scene: Scene, deployment_id: str, kind: str) -> bool:
    status, body = await asyncio.to_thread(scene.server.api, "GET", f"/api/v1/deployments/{deployment_id}/log")
    return status == 200 and any(entry["kind"] == kind for entry in body)


# -- the runner's sequencing, on a fake clock -----------------------------------------------------------------------

T0 = 1_700_000_000.0


class FakeAgents:
    """The agents' fleet: every lifecycle event succeeds at once; ``online`` says whose agent has talked to us."""

    def __init__(self, online: set[str] | None = None) -> None:
        self.online = online  # None: everyone
        self.runner: DeploymentRunner | None = None
        self.store: SqliteStore | None = None
        self.ran: list[tuple[str, LifecycleEvent]] = []
        self._tasks: set[asyncio.Future[None]] = set()

    def last_seen(self, host: str) -> float | None:
        return T0 if self.online is None or host in self.online else None

    async def dispatch(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        assert self.runner is not None
        self.ran.append((target, event))
        task = asyncio.ensure_future(self.runner.record_result(target, event, {"status": "Succeeded"}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def dispatch_runs(
        self,
        deployment_id: str,
        runs: Sequence[tuple[str, Sequence[LifecycleEvent]]],
        spec: Mapping[str, Any],
        *,
        step: StepWrite | None = None,
    ) -> None:
        if step is not None:  # as the fleet does: the step that decided on the runs is written before they run
            assert self.store is not None
            await self.store.save_progress(step.deployment_id, step.rows, **step.fields)
        for target, run in runs:
            await self.dispatch(deployment_id, target, run[0], spec)

    def queued_ahead(self, deployment_id: str, target: str, event: LifecycleEvent) -> bool:
        return False  # one event at a time (dispatch_runs above): nothing is queued ahead

    async def cancel(self, deployment_id: str) -> None:
        pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    yield store
    await store.close()


async def provisioning_runner(
    store: SqliteStore,
    clients: AwsClients,
    setup: AsgSetup,
    clock: FakeClock,
    agents: FakeAgents,
    *,
    termination_wait: float = 0.0,
    terminate: bool = True,
    agent_wait: float = 600.0,
    rollbacks: list[StartRollback] | None = None,
) -> DeploymentRunner:
    """The runner of a blue/green deployment of ``web-production`` that copies ``web-asg`` (its row stored)."""
    options = StageOptions(
        Platform.SERVER,
        DeploymentType.BLUE_GREEN,
        ALL_AT_ONCE,
        with_load_balancer=True,
        termination_wait_seconds=termination_wait,
        stop_original=terminate,
        provisioned_fleet=True,
    )
    stages = deployment_stages(options, (), ())
    elb = ElbRouter(
        clients, ElbGroup(GROUP_NAME, setup.target_groups, setup.listener_arn, deregistration_delay=0), clock=clock
    )
    router = AutoScalingGreenFleet(clients, elb, clock=clock)
    spec = {"green_fleet": {"auto_scaling_group": setup.asg, "terminate": terminate}}
    row = {"id": "d-1", "application": "web", "environment": "production", "group_name": GROUP_NAME}
    await store.create_deployment(row | {"status": "Created", "created_at": T0, "state": {"spec": spec}})

    async def nothing(deployment_id: str) -> None:
        pass

    async def no_rollback(deployment_id: str, command: StartRollback) -> None:
        if rollbacks is not None:
            rollbacks.append(command)

    runner = DeploymentRunner(
        "d-1",
        DeploymentMachine(stages),
        store=store,
        executor=agents,
        router=router,
        group=GROUP_NAME,
        spec=spec,
        clock=clock,
        on_change=nothing,
        on_rollback=no_rollback,
        on_finish=nothing,
        roles=blue_green_roles(stages),
        fleet=agents,  # type: ignore[arg-type]
        agent_wait=agent_wait,
    )
    agents.runner, agents.store = runner, store
    return runner


async def log_kinds(store: SqliteStore) -> list[str]:
    return [entry["kind"] for entry in await store.read_log(deployment_id="d-1")]


async def test_the_original_is_terminated_only_after_the_termination_wait(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    setup = await create_asg_behind_alb(aws)
    blue, green = setup.target_groups
    originals = await asg_instances(aws, setup.asg)
    clock = FakeClock(T0)
    agents = FakeAgents()
    runner = await provisioning_runner(store, aws, setup, clock, agents, termination_wait=600)
    assert await current_auto_scaling_group(store, GROUP_NAME, "web-asg") == "web-asg"
    running_task = asyncio.ensure_future(runner.run())
    try:
        await eventually(lambda: runner.machine.state.timer is not None, "the termination wait")
        copy = "CodeDeploy_web-production_d-1"
        replacement = await asg_instances(aws, copy)
        assert runner.machine.stage is not None and runner.machine.stage.name == "termination"
        assert await listener_weights_now(aws, setup.listener_arn) == {blue: 0, green: 100}
        assert {target for target, _ in agents.ran} == {*originals, *replacement}
        assert await asg_instances(aws, setup.asg) == originals  # kept for a fast reroute during the wait
        await clock.advance(599)
        assert await describe_asg(aws, setup.asg) is not None
        await clock.advance(1)
        await asyncio.wait_for(runner.finished.wait(), 30)
    finally:
        running_task.cancel()
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    assert await describe_asg(aws, setup.asg) is None
    stored = await store.get_deployment("d-1")
    assert stored is not None
    assert stored["state"]["spec"]["green_fleet"] == {
        "auto_scaling_group": "web-asg",
        "terminate": True,
        "source": "web-asg",
        "copy": copy,
        "settled": True,
    }
    assert "green_fleet.retired" in await log_kinds(store)
    assert await current_auto_scaling_group(store, GROUP_NAME, "web-asg") == copy  # what the next one copies


async def test_agents_that_never_come_online_stop_the_deployment_and_discard_the_copy(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    setup = await create_asg_behind_alb(aws)
    blue, green = setup.target_groups
    originals = await asg_instances(aws, setup.asg)
    clock = FakeClock(T0, auto=True)
    runner = await provisioning_runner(store, aws, setup, clock, FakeAgents(set(originals)), agent_wait=120)
    await runner.run()
    state = runner.machine.state
    assert state.status is DeploymentStatus.STOPPED and state.error_code is ErrorCode.AGENT_ISSUE
    assert "did not come online within 120 s" in state.message and "CodeDeploy_web-production_d-1" in state.message
    assert await describe_asg(aws, "CodeDeploy_web-production_d-1") is None
    assert await listener_weights_now(aws, setup.listener_arn) == {blue: 100, green: 0}
    assert await asg_instances(aws, setup.asg) == originals
    assert (await log_kinds(store))[-1] == "green_fleet.discarded"


async def test_a_stop_while_waiting_for_the_agents_discards_the_copy(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    setup = await create_asg_behind_alb(aws)
    originals = await asg_instances(aws, setup.asg)
    clock = FakeClock(T0)
    runner = await provisioning_runner(store, aws, setup, clock, FakeAgents(set(originals)))
    running_task = asyncio.ensure_future(runner.run())
    try:
        await clock.sleeping(1)  # the runner polls for the copy's agents
        assert await describe_asg(aws, "CodeDeploy_web-production_d-1") is not None
        runner.post(StopRequested(actor="alice"))
        await asyncio.wait_for(runner.finished.wait(), 30)
    finally:
        running_task.cancel()
    state = runner.machine.state
    assert state.status is DeploymentStatus.STOPPED and state.error_code is ErrorCode.MANUAL_STOP
    assert await describe_asg(aws, "CodeDeploy_web-production_d-1") is None
    assert await asg_instances(aws, setup.asg) == originals


async def test_a_missing_auto_scaling_group_stops_the_deployment_before_anything_changes(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    setup = await create_asg_behind_alb(aws)
    autoscaling = await aws.get("autoscaling")
    await autoscaling.delete_auto_scaling_group(AutoScalingGroupName=setup.asg, ForceDelete=True)
    runner = await provisioning_runner(store, aws, setup, FakeClock(T0, auto=True), FakeAgents())
    await runner.run()
    state = runner.machine.state
    assert state.status is DeploymentStatus.STOPPED and state.error_code is ErrorCode.INTERNAL_ERROR
    assert state.message == (
        "the green fleet could not be provisioned: autoscaling: Auto Scaling group 'web-asg' not found"
    )


async def test_the_plan_shows_the_copy_and_the_group_it_replaces(store: SqliteStore) -> None:
    config = parse_config(
        PREFIX + ELBV2 + "        blue_green: {green_fleet_provisioning: copy_auto_scaling_group, "
        "auto_scaling_group: web-asg, terminate_action: TERMINATE, termination_wait_minutes: 5}\n"
    )
    group = config.group("web", "production")
    blueprint = Blueprint(config, store)
    plan = await dry_run(group, None, configs={}, file_configs={}, blueprint=blueprint)
    assert plan["startable"] is True and plan["problem"] is None
    assert plan["batches"] == [["copy of web-asg"]] and plan["original"] == ["web-asg"]
    assert plan["events"][-3:] == ["BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
    assert plan["original_events"] == ["BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic"]
    assert [s["name"] for s in plan["stages"]][-1] == "termination"  # then the original group is deleted
    # once a deployment succeeded, its copy is what the next one copies
    spec = {"green_fleet": {"auto_scaling_group": "web-asg", "copy": "CodeDeploy_web-production_d-1"}}
    row = {"id": "d-1", "application": "web", "environment": "production", "group_name": GROUP_NAME}
    await store.create_deployment(row | {"status": "Succeeded", "created_at": T0, "state": {"spec": spec}})
    plan = await dry_run(group, None, configs={}, file_configs={}, blueprint=blueprint)
    assert plan["batches"] == [["copy of CodeDeploy_web-production_d-1"]]
    assert plan["original"] == ["CodeDeploy_web-production_d-1"]


async def test_without_a_router_that_can_copy_the_deployment_stops_before_anything_runs(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    setup = await create_asg_behind_alb(aws)
    agents = FakeAgents()
    runner = await provisioning_runner(store, aws, setup, FakeClock(T0, auto=True), agents)
    runner.router = RecordingRouter()  # a plain TrafficRouter: no Auto Scaling behind it
    await runner.run()
    state = runner.machine.state
    assert state.status is DeploymentStatus.STOPPED and state.error_code is ErrorCode.INTERNAL_ERROR
    assert state.message == "web-production has no router that can copy its fleet"
    assert agents.ran == []  # the placeholder fleet never reached an agent


async def test_the_next_deployment_settles_what_a_dead_server_left(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    """The server stored d-0's success and died before deleting its original group: d-1 deletes it first, then
    copies d-0's copy (the group's current Auto Scaling group) and, succeeding, retires that."""
    setup = await create_asg_behind_alb(aws)
    clock = FakeClock(T0, auto=True)
    earlier_copy = "CodeDeploy_web-production_d-0"
    await AutoScalingGreenFleet(aws, RecordingRouter(), clock=clock).provision(GROUP_NAME, setup.asg, earlier_copy)
    plan = {"auto_scaling_group": setup.asg, "terminate": True, "source": setup.asg, "copy": earlier_copy}
    row = {"id": "d-0", "application": "web", "environment": "production", "group_name": GROUP_NAME}
    await store.create_deployment(
        row | {"status": "Succeeded", "created_at": T0 - 60, "state": {"spec": {"green_fleet": plan}}}
    )

    runner = await provisioning_runner(store, aws, setup, clock, FakeAgents())
    await runner.run()

    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    assert await describe_asg(aws, setup.asg) is None  # d-0's original, left behind
    made = await describe_asg(aws, "CodeDeploy_web-production_d-1")
    assert made is not None and {t["Key"]: t["Value"] for t in made["Tags"]}[COPIED_OF_TAG] == earlier_copy
    assert await describe_asg(aws, earlier_copy) is None  # retired by d-1
    earlier = await store.get_deployment("d-0")
    assert earlier is not None and earlier["state"]["spec"]["green_fleet"]["settled"] is True
    assert await unsettled_green_fleets(store, GROUP_NAME) == []


async def test_a_rollback_after_the_shift_reroutes_to_the_original_and_deletes_the_copy(
    store: SqliteStore,
    aws: AwsClients,  # noqa: F811
) -> None:
    setup = await create_asg_behind_alb(aws)
    blue, green = setup.target_groups
    originals = await asg_instances(aws, setup.asg)
    clock = FakeClock(T0)
    rollbacks: list[StartRollback] = []
    runner = await provisioning_runner(
        store, aws, setup, clock, FakeAgents(), termination_wait=600, rollbacks=rollbacks
    )
    running_task = asyncio.ensure_future(runner.run())
    try:
        await eventually(lambda: runner.machine.state.timer is not None, "the termination wait")
        assert await listener_weights_now(aws, setup.listener_arn) == {blue: 0, green: 100}
        runner.post(StopRequested(rollback=True, actor="alice"))
        await asyncio.wait_for(runner.finished.wait(), 30)
    finally:
        running_task.cancel()
    assert runner.machine.state.status is DeploymentStatus.STOPPED
    assert [command.rerouted for command in rollbacks] == [True]
    assert await listener_weights_now(aws, setup.listener_arn) == {blue: 100, green: 0}
    elbv2 = await aws.get("elbv2")
    health = await elbv2.describe_target_health(TargetGroupArn=blue)
    assert sorted(d["Target"]["Id"] for d in health["TargetHealthDescriptions"]) == list(originals)
    assert await describe_asg(aws, "CodeDeploy_web-production_d-1") is None
    assert await asg_instances(aws, setup.asg) == originals
