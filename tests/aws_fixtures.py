"""Real moto resources for the Lambda and ECS platform tests (and the end-to-end tests that reuse them).

Each ``create_*`` function builds, through the same ``AwsClients`` the engine uses, the AWS side a deployment group
points at, and returns a small frozen record of the names and ARNs a test needs. The ``*_spec`` functions build the
deployment ``spec`` a driver receives (the shape engine/runtime/blueprint.py produces for Lambda and ECS), and
the ``*_now`` functions read back what moto holds, so tests assert on describe calls, never on what was sent.

moto traps handled here (shared/reference/components.md §4): Lambda functions must be created after the non-Docker
backend is configured (``tests.moto_support`` does that before every test); ECS task sets need FARGATE (moto has
no EC2 instances) and a container ``memory``; ELBv2 needs a VPC with two subnets in different zones.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapters.aws.accounts import AwsAccounts, AwsClients
from engine.adapters.aws.hook_executions import HookExecutions
from engine.core.config.model import DeploymentGroup, LoadBalancer
from engine.core.model import DeploymentType, Platform

ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


@dataclass(frozen=True, slots=True)
class LambdaSetup:
    """A function with published versions "1" and "2" and an alias pointing at "1"."""

    function_name: str
    alias: str
    current_version: str = "1"
    target_version: str = "2"

    @property
    def target(self) -> str:
        return f"{self.function_name}:{self.alias}"


@dataclass(frozen=True, slots=True)
class EcsSetup:
    """An EXTERNAL-controller ECS service behind an ALB with two target groups and two listeners.

    The original task set (externalId ``original_external_id``, task definition ``family:1``) takes all production
    and test traffic through ``target_groups[0]``; ``family:2`` is registered for the deployment to roll out."""

    cluster: str
    service: str
    family: str
    container_name: str
    container_port: int
    listener_arn: str
    test_listener_arn: str
    target_groups: tuple[str, str]
    original_task_set_arn: str
    original_external_id: str
    subnets: tuple[str, ...]

    @property
    def target(self) -> str:
        return f"{self.cluster}:{self.service}"

    def ecs_config(self, *, with_test_listener: bool = True) -> dict[str, Any]:
        """``spec["ecs"]``: what the blueprint derives from the group's config."""
        return {
            "cluster": self.cluster,
            "service": self.service,
            "listener_arn": self.listener_arn,
            "test_listener_arn": self.test_listener_arn if with_test_listener else None,
            "target_groups": list(self.target_groups),
        }


def handler_zip(body: str = "def handler(event, context):\n    return event\n") -> bytes:
    """A deployment package holding ``handler.py`` (moto's non-Docker backend never runs it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", body)
    return buffer.getvalue()


async def create_lambda_role(clients: AwsClients, name: str = "deploybot-lambda") -> str:
    """An IAM role for functions (moto requires an existing role); returns its ARN."""
    iam = await clients.get("iam")
    role = await iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(ROLE_POLICY))
    return str(role["Role"]["Arn"])


async def create_lambda_function(
    clients: AwsClients, name: str = "api", alias: str = "live", *, role_arn: str | None = None
) -> LambdaSetup:
    """``name`` with versions 1 and 2 (different code) and ``alias`` → 1, like a function before a deployment."""
    role_arn = role_arn or await create_lambda_role(clients, f"{name}-role")
    client = await clients.get("lambda")
    await client.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role_arn,
        Handler="handler.handler",
        Code={"ZipFile": handler_zip()},
    )
    await client.publish_version(FunctionName=name)
    await client.update_function_code(FunctionName=name, ZipFile=handler_zip("def handler(e, c):\n    return 2\n"))
    await client.publish_version(FunctionName=name)
    await client.create_alias(FunctionName=name, Name=alias, FunctionVersion="1")
    return LambdaSetup(name, alias)


async def create_hook_function(clients: AwsClients, name: str, *, role_arn: str | None = None) -> str:
    """A lifecycle hook function (moto echoes its payload; the test plays the function's callback)."""
    role_arn = role_arn or await create_lambda_role(clients, f"{name}-role")
    client = await clients.get("lambda")
    await client.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role_arn,
        Handler="handler.handler",
        Code={"ZipFile": handler_zip()},
    )
    return name


async def create_ecs_service(
    clients: AwsClients,
    *,
    cluster: str = "prod",
    service: str = "api",
    family: str = "api",
    container_name: str = "web",
    container_port: int = 8080,
    desired_count: int = 2,
) -> EcsSetup:
    """VPC, two subnets, an ALB with blue/green target groups and production (80) / test (8080) listeners, an ECS
    cluster and an EXTERNAL service whose original task set serves ``family:1`` through the blue target group."""
    ec2 = await clients.get("ec2")
    elbv2 = await clients.get("elbv2")
    ecs = await clients.get("ecs")
    vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
    subnets: list[str] = []
    for i, zone in ((1, "a"), (2, "b")):
        subnet = await ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{zone}")
        subnets.append(subnet["Subnet"]["SubnetId"])
    alb = await elbv2.create_load_balancer(Name=f"{service}-alb", Subnets=subnets, Type="application")
    target_groups: list[str] = []
    for color in ("blue", "green"):
        group = await elbv2.create_target_group(
            Name=f"{service}-{color}", Protocol="HTTP", Port=container_port, VpcId=vpc, TargetType="ip"
        )
        target_groups.append(group["TargetGroups"][0]["TargetGroupArn"])
    blue = target_groups[0]
    listeners: list[str] = []
    for port in (80, 8080):  # production, test
        listener = await elbv2.create_listener(
            LoadBalancerArn=alb["LoadBalancers"][0]["LoadBalancerArn"],
            Protocol="HTTP",
            Port=port,
            DefaultActions=[forward_action({blue: 100, target_groups[1]: 0})],
        )
        listeners.append(listener["Listeners"][0]["ListenerArn"])
    await ecs.create_cluster(clusterName=cluster)
    for version in (1, 2):
        await ecs.register_task_definition(
            family=family,
            containerDefinitions=[
                {
                    "name": container_name,
                    "image": f"acme/{family}:{version}",
                    "memory": 512,  # required: moto 5.2.5 refuses the definition (older moto: a 500 at create_task_set)
                    "portMappings": [{"containerPort": container_port}],
                }
            ],
        )
    await ecs.create_service(
        cluster=cluster,
        serviceName=service,
        taskDefinition=f"{family}:1",
        desiredCount=desired_count,
        launchType="FARGATE",
        deploymentController={"type": "EXTERNAL"},
    )
    original = (
        await ecs.create_task_set(
            cluster=cluster,
            service=service,
            taskDefinition=f"{family}:1",
            externalId="original",
            launchType="FARGATE",
            loadBalancers=[{"targetGroupArn": blue, "containerName": container_name, "containerPort": container_port}],
            scale={"value": 100, "unit": "PERCENT"},
        )
    )["taskSet"]["taskSetArn"]
    await ecs.update_service_primary_task_set(cluster=cluster, service=service, primaryTaskSet=original)
    return EcsSetup(
        cluster=cluster,
        service=service,
        family=family,
        container_name=container_name,
        container_port=container_port,
        listener_arn=listeners[0],
        test_listener_arn=listeners[1],
        target_groups=(target_groups[0], target_groups[1]),
        original_task_set_arn=original,
        original_external_id="original",
        subnets=tuple(subnets),
    )


def forward_action(weights: dict[str, int]) -> dict[str, Any]:
    """A weighted forward listener action, as the ECS router writes it."""
    return {
        "Type": "forward",
        "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": arn, "Weight": weight} for arn, weight in weights.items()],
            "TargetGroupStickinessConfig": {"Enabled": False},
        },
    }


# -- groups, accounts, results --------------------------------------------------------------------------------


class SharedAccounts(AwsAccounts):
    """``AwsAccounts`` whose every account name gives the test's own clients: a driver and the test's assertions
    then share one set of moto clients (making clients is the slow part of a test). Closing is the owner's job."""

    def __init__(self, clients: AwsClients) -> None:
        super().__init__({clients.account.name: clients.account})
        self.shared = clients

    def clients(self, name: str = "default") -> AwsClients:
        return self.shared

    async def close(self) -> None:
        """The clients belong to whoever made them (the ``aws`` fixture)."""


def lambda_group(setup: LambdaSetup) -> DeploymentGroup:
    return DeploymentGroup(
        name=f"{setup.function_name}-test",
        application=setup.function_name,
        environment="test",
        platform=Platform.LAMBDA,
        deployment_type=DeploymentType.BLUE_GREEN,
        deployment_config="CodeDeployDefault.LambdaLinear10PercentEvery1Minute",
        traffic_config=None,
        extra={"aws_account": "default"},
    )


def ecs_group(setup: EcsSetup) -> DeploymentGroup:
    """An ECS group; the load balancer keys mirror ``spec["ecs"]`` (the loader's spelling is the lead's call)."""
    return DeploymentGroup(
        name=f"{setup.service}-test",
        application=setup.service,
        environment="test",
        platform=Platform.ECS,
        deployment_type=DeploymentType.BLUE_GREEN,
        deployment_config="CodeDeployDefault.ECSCanary10Percent5Minutes",
        traffic_config=None,
        load_balancer=LoadBalancer(
            type="elbv2",
            extra={
                "listener_arn": setup.listener_arn,
                "test_listener_arn": setup.test_listener_arn,
                "target_groups": list(setup.target_groups),
            },
        ),
        extra={"aws_account": "default", "cluster": setup.cluster, "service": setup.service},
    )


class ResultInbox:
    """An ``OnResult`` that keeps every (command, result) a driver reports, for a test to await."""

    def __init__(self) -> None:
        self.results: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._queue: asyncio.Queue[tuple[dict[str, Any], dict[str, Any]]] = asyncio.Queue()

    async def __call__(self, command: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        item = (dict(command), dict(result))
        self.results.append(item)
        self._queue.put_nowait(item)

    async def next(self, timeout: float = 10.0) -> tuple[dict[str, Any], dict[str, Any]]:
        return await asyncio.wait_for(self._queue.get(), timeout)


async def pending_hooks(
    hooks: HookExecutions, deployment_id: str, count: int = 1, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The deployment's hook executions once ``count`` of them wait for a callback (each is registered just
    before its function is invoked)."""
    async with asyncio.timeout(timeout):
        while len(found := hooks.pending(deployment_id)) < count:
            await asyncio.sleep(0.01)
    return found


# -- deployment specs ------------------------------------------------------------------------------------------


def lambda_spec(
    setup: LambdaSetup,
    deployment_id: str = "d-LAMBDA0001",
    *,
    hooks: dict[str, list[str]] | None = None,
    hook_timeout_seconds: float = 3600.0,
) -> dict[str, Any]:
    """The ``spec`` a Lambda executor/router receives for ``setup`` (CurrentVersion 1 → TargetVersion 2)."""
    return {
        "deployment_id": deployment_id,
        "application_name": setup.function_name,
        "deployment_group_name": "test",
        "revision": {"sha256": "0" * 64},
        "aws_account": "default",
        "hook_timeout_seconds": hook_timeout_seconds,
        "appspec": {
            "version": 0.0,
            "function_name": setup.function_name,
            "alias": setup.alias,
            "current_version": setup.current_version,
            "target_version": setup.target_version,
            "hooks": dict(hooks or {}),
        },
    }


def ecs_spec(
    setup: EcsSetup,
    deployment_id: str = "d-ECS000001",
    *,
    hooks: dict[str, list[str]] | None = None,
    hook_timeout_seconds: float = 3600.0,
    with_test_listener: bool = True,
) -> dict[str, Any]:
    """The ``spec`` an ECS executor/router receives for ``setup``: roll out ``family:2``."""
    return {
        "deployment_id": deployment_id,
        "application_name": setup.service,
        "deployment_group_name": "test",
        "revision": {"sha256": "0" * 64},
        "aws_account": "default",
        "hook_timeout_seconds": hook_timeout_seconds,
        "appspec": {
            "version": 0.0,
            "task_definition": f"{setup.family}:2",
            "container_name": setup.container_name,
            "container_port": setup.container_port,
            "platform_version": None,
            "network_configuration": None,
            "capacity_provider_strategy": [],
            "hooks": dict(hooks or {}),
        },
        "ecs": setup.ecs_config(with_test_listener=with_test_listener),
    }


# -- what moto holds now -----------------------------------------------------------------------------------------


async def alias_now(clients: AwsClients, setup: LambdaSetup) -> tuple[str, dict[str, float]]:
    """(FunctionVersion, AdditionalVersionWeights) of the alias."""
    client = await clients.get("lambda")
    alias = await client.get_alias(FunctionName=setup.function_name, Name=setup.alias)
    return str(alias["FunctionVersion"]), dict(alias.get("RoutingConfig", {}).get("AdditionalVersionWeights", {}))


async def listener_weights_now(clients: AwsClients, listener_arn: str) -> dict[str, int]:
    """Target group ARN → weight of the listener's forward action."""
    elbv2 = await clients.get("elbv2")
    action = (await elbv2.describe_listeners(ListenerArns=[listener_arn]))["Listeners"][0]["DefaultActions"][0]
    groups = action.get("ForwardConfig", {}).get("TargetGroups")
    if groups:
        return {g["TargetGroupArn"]: int(g.get("Weight", 1)) for g in groups}
    return {action["TargetGroupArn"]: 100}


async def task_sets_now(clients: AwsClients, setup: EcsSetup) -> list[dict[str, Any]]:
    """The service's task sets as moto describes them."""
    ecs = await clients.get("ecs")
    return list((await ecs.describe_task_sets(cluster=setup.cluster, service=setup.service))["taskSets"])


def lambda_appspec_text(setup: LambdaSetup, hooks: Mapping[str, str] | None = None) -> str:
    """A Lambda AppSpec moving ``setup``'s alias from its current to its target version, with ``hooks`` (event ->
    function)."""
    lines = [
        "version: 0.0",
        "Resources:",
        f"  - {setup.function_name}:",
        "      Type: AWS::Lambda::Function",
        "      Properties:",
        f"        Name: {setup.function_name}",
        f"        Alias: {setup.alias}",
        f'        CurrentVersion: "{setup.current_version}"',
        f'        TargetVersion: "{setup.target_version}"',
    ]
    if hooks:
        lines += ["Hooks:", *(f"  - {event}: {function}" for event, function in hooks.items())]
    return "\n".join(lines) + "\n"


def lambda_appspec(tmp_path: Path, setup: LambdaSetup, hooks: Mapping[str, str] | None = None) -> Path:
    """``lambda_appspec_text`` written to ``tmp_path/appspec.yml``."""
    path = tmp_path / "appspec.yml"
    path.write_text(lambda_appspec_text(setup, hooks))
    return path
