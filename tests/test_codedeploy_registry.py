"""On-premises instances and deployment configurations made through the CodeDeploy API, with boto3's real client
against a running deploybot: registered hosts show in ``deploybot hosts`` and get deployments; API-made
configurations drive deployments and are the only ones that can be deleted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_codedeploy import Served, call, serving

from engine.core.requests import DeployRequest


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as running:
        yield running


def _code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


async def test_registered_instance_gets_a_token_shows_in_hosts_and_is_deployed_to(served: Served) -> None:
    client = served.client()
    answer = await call(client.register_on_premises_instance, instanceName="edge-1", iamUserArn="arn:aws:iam::1:user/e")
    token = answer["ResponseMetadata"]["HTTPHeaders"]["x-deploybot-agent-token"]
    assert served.deployer.fleet.authenticate(token) == "edge-1"  # how the instance's agent will authenticate
    await call(
        client.add_tags_to_on_premises_instances,
        instanceNames=["edge-1"],
        tags=[{"Key": "env", "Value": "staging"}, {"Key": "rack", "Value": "r7"}],
    )
    hosts = {h["name"]: h for h in await served.deployer.hosts()}
    assert (hosts["edge-1"]["source"], hosts["edge-1"]["tags"]) == ("api", {"env": "staging", "rack": "r7"})
    assert hosts["s1"]["source"] == "config"

    agents = type(served.agents)(served.deployer, ["edge-1"], lambda *_: None)
    try:
        created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
        waiter = client.get_waiter("deployment_successful")
        await call(waiter.wait, deploymentId=created["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    finally:
        await agents.close()
    targets = await call(client.list_deployment_targets, deploymentId=created["deploymentId"])
    assert targets["targetIds"] == ["s1", "s2", "edge-1"]  # the staging tag selector now matches edge-1 too

    token = served.deployer.fleet.token_for("edge-1")
    assert served.deployer.fleet.authenticate(token) == "edge-1"
    await call(client.deregister_on_premises_instance, instanceName="edge-1")
    assert "edge-1" not in {h["name"] for h in await served.deployer.hosts()}
    assert served.deployer.fleet.authenticate(token) is None  # its agent is refused from now on
    doc = await served.deployer.plan(DeployRequest("app", "staging"))
    assert [t for batch in doc["batches"] for t in batch] == ["s1", "s2"]


async def test_registering_never_hands_out_a_token_the_name_already_holds(served: Served) -> None:
    client = served.client()
    earlier = served.deployer.fleet.token_for("edge-9")  # e.g. issued by POST /api/v1/agent-tokens before
    answer = await call(client.register_on_premises_instance, instanceName="edge-9")
    token = answer["ResponseMetadata"]["HTTPHeaders"]["x-deploybot-agent-token"]
    assert token != earlier
    assert served.deployer.fleet.authenticate(earlier) is None
    assert served.deployer.fleet.authenticate(token) == "edge-9"
    await call(client.deregister_on_premises_instance, instanceName="edge-9")
    again = await call(client.register_on_premises_instance, instanceName="edge-9")
    assert again["ResponseMetadata"]["HTTPHeaders"]["x-deploybot-agent-token"] not in (earlier, token)


async def test_listing_getting_and_tagging_instances(served: Served) -> None:
    client = served.client()
    for name, tags in (("edge-1", {"env": "edge", "role": "web"}), ("edge-2", {"env": "edge"}), ("edge-3", {})):
        await call(client.register_on_premises_instance, instanceName=name)
        if tags:
            await call(
                client.add_tags_to_on_premises_instances,
                instanceNames=[name],
                tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            )
    await call(client.deregister_on_premises_instance, instanceName="edge-3")

    async def names(**kwargs: Any) -> list[str]:
        return list((await call(client.list_on_premises_instances, **kwargs))["instanceNames"])

    assert await names() == ["edge-1", "edge-2", "edge-3", "p1", "p2", "p3", "p4", "s1", "s2"]
    assert await names(registrationStatus="Deregistered") == ["edge-3"]
    assert await names(tagFilters=[{"Key": "role", "Type": "KEY_ONLY"}]) == ["edge-1"]
    assert await names(tagFilters=[{"Value": "edge", "Type": "VALUE_ONLY"}]) == ["edge-1", "edge-2"]
    staging = [{"Key": "env", "Value": "staging", "Type": "KEY_AND_VALUE"}]
    assert await names(tagFilters=staging, registrationStatus="Registered") == ["s1", "s2"]

    await call(client.remove_tags_from_on_premises_instances, instanceNames=["edge-1"], tags=[{"Key": "role"}])
    info = (await call(client.get_on_premises_instance, instanceName="edge-1"))["instanceInfo"]
    assert info["tags"] == [{"Key": "env", "Value": "edge"}]
    assert info["registerTime"].timestamp() > 0 and "deregisterTime" not in info
    gone = (await call(client.get_on_premises_instance, instanceName="edge-3"))["instanceInfo"]
    assert gone["deregisterTime"] >= gone["registerTime"]
    batch = await call(client.batch_get_on_premises_instances, instanceNames=["s1", "nope", "edge-2"])
    assert [i["instanceName"] for i in batch["instanceInfos"]] == ["s1", "edge-2"]


@pytest.mark.parametrize(
    ("operation", "kwargs", "code"),
    [
        ("register_on_premises_instance", {"instanceName": "s1"}, "InstanceNameAlreadyRegisteredException"),
        ("register_on_premises_instance", {"instanceName": "edge-1"}, "InstanceNameAlreadyRegisteredException"),
        ("register_on_premises_instance", {"instanceName": "../x"}, "InvalidInstanceNameException"),
        (
            "register_on_premises_instance",
            {"instanceName": "x", "iamUserArn": "arn:aws:iam::1:user/a", "iamSessionArn": "arn:aws:sts::1:x"},
            "MultipleIamArnsProvidedException",
        ),
        (
            "register_on_premises_instance",
            {"instanceName": "x", "iamUserArn": "arn:aws:iam::1:user/edge"},
            "IamUserArnAlreadyRegisteredException",
        ),
        ("deregister_on_premises_instance", {"instanceName": "ghost"}, "InstanceNotRegisteredException"),
        ("deregister_on_premises_instance", {"instanceName": "s1"}, "InvalidOperationException"),
        ("get_on_premises_instance", {"instanceName": "ghost"}, "InstanceNotRegisteredException"),
        ("list_on_premises_instances", {"registrationStatus": "Maybe"}, "InvalidRegistrationStatusException"),
        ("list_on_premises_instances", {"tagFilters": [{"Key": "a", "Type": "ANY"}]}, "InvalidTagFilterException"),
        (
            "add_tags_to_on_premises_instances",
            {"instanceNames": ["edge-1"], "tags": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]},
            "TagLimitExceededException",
        ),
        ("add_tags_to_on_premises_instances", {"instanceNames": ["edge-1"], "tags": []}, "TagRequiredException"),
        (
            "add_tags_to_on_premises_instances",
            {"instanceNames": ["ghost"], "tags": [{"Key": "a", "Value": "b"}]},
            "InstanceNotRegisteredException",
        ),
    ],
)
async def test_instance_errors_are_modeled(served: Served, operation: str, kwargs: dict, code: str) -> None:
    client = served.client()
    await call(client.register_on_premises_instance, instanceName="edge-1", iamUserArn="arn:aws:iam::1:user/edge")
    with pytest.raises(ClientError) as info:
        await call(getattr(client, operation), **kwargs)
    assert _code(info) == code
    assert info.value.response["Error"]["Message"]


async def test_api_configs_drive_deployments_and_only_they_can_be_deleted(served: Served) -> None:
    client = served.client()
    created = await call(
        client.create_deployment_config,
        deploymentConfigName="TwoAtATime",
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 2},
    )
    assert created["deploymentConfigId"] == "TwoAtATime"
    info = (await call(client.get_deployment_config, deploymentConfigName="TwoAtATime"))["deploymentConfigInfo"]
    assert (info["minimumHealthyHosts"], info["computePlatform"]) == ({"type": "HOST_COUNT", "value": 2}, "Server")
    assert info["createTime"].timestamp() > 0
    assert "TwoAtATime" in (await call(client.list_deployment_configs))["deploymentConfigsList"]

    plan = await served.deployer.plan(DeployRequest("app", "production", config_name="TwoAtATime"))
    assert plan["batches"] == [["p1", "p2"], ["p3", "p4"]]  # 4 hosts, 2 kept healthy: two at a time
    served.agents.delay = 0.2
    started = await call(
        client.create_deployment,
        applicationName="app",
        deploymentGroupName="app-production",
        deploymentConfigName="TwoAtATime",
    )
    with pytest.raises(client.exceptions.DeploymentConfigInUseException):
        await call(client.delete_deployment_config, deploymentConfigName="TwoAtATime")
    waiter = client.get_waiter("deployment_successful")
    await call(waiter.wait, deploymentId=started["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 20})
    deployment = (await call(client.get_deployment, deploymentId=started["deploymentId"]))["deploymentInfo"]
    assert deployment["deploymentConfigName"] == "TwoAtATime"
    await call(client.delete_deployment_config, deploymentConfigName="TwoAtATime")
    with pytest.raises(client.exceptions.DeploymentConfigDoesNotExistException):
        await call(client.get_deployment_config, deploymentConfigName="TwoAtATime")


async def test_traffic_configs_for_lambda_and_ecs(served: Served) -> None:
    client = served.client()
    routing = {"type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": 25, "linearInterval": 2}}
    await call(
        client.create_deployment_config,
        deploymentConfigName="Quarterly",
        computePlatform="ECS",
        trafficRoutingConfig=routing,
    )
    info = (await call(client.get_deployment_config, deploymentConfigName="Quarterly"))["deploymentConfigInfo"]
    assert (info["computePlatform"], info["trafficRoutingConfig"]) == ("ECS", routing)
    assert "minimumHealthyHosts" not in info


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"deploymentConfigName": "CodeDeployDefault.Mine"}, "InvalidDeploymentConfigNameException"),
        (
            {"deploymentConfigName": "CodeDeployDefault.AllAtOnce"},  # built-in names are reserved either way
            "InvalidDeploymentConfigNameException",
        ),
        (
            {"deploymentConfigName": "Mine", "minimumHealthyHosts": {"type": "FLEET_PERCENT", "value": 100}},
            "InvalidMinimumHealthyHostValueException",
        ),
        ({"deploymentConfigName": "Mine"}, "InvalidMinimumHealthyHostValueException"),  # a server config needs one
        (
            {
                "deploymentConfigName": "Mine",
                "computePlatform": "Lambda",
                "trafficRoutingConfig": {"type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": 10}},
            },
            "InvalidTrafficRoutingConfigurationException",
        ),
        (
            {"deploymentConfigName": "Mine", "computePlatform": "Lambda"},
            "InvalidTrafficRoutingConfigurationException",
        ),
        (
            {
                "deploymentConfigName": "Mine",
                "minimumHealthyHosts": {"type": "HOST_COUNT", "value": 1},
                "zonalConfig": {"monitorDurationInSeconds": 60},
            },
            "InvalidZonalDeploymentConfigurationException",
        ),
    ],
)
async def test_config_creation_errors(served: Served, kwargs: dict, code: str) -> None:
    with pytest.raises(ClientError) as info:
        await call(served.client().create_deployment_config, **kwargs)
    assert _code(info) == code


async def test_builtin_and_existing_configs(served: Served) -> None:
    client = served.client()
    with pytest.raises(ClientError) as builtin:
        await call(client.delete_deployment_config, deploymentConfigName="CodeDeployDefault.OneAtATime")
    assert _code(builtin) == "InvalidOperationException" and "built in" in builtin.value.response["Error"]["Message"]
    mine = {"deploymentConfigName": "Mine", "minimumHealthyHosts": {"type": "FLEET_PERCENT", "value": 50}}
    await call(client.create_deployment_config, **mine)
    with pytest.raises(client.exceptions.DeploymentConfigAlreadyExistsException):
        await call(client.create_deployment_config, **mine)
    with pytest.raises(client.exceptions.DeploymentConfigDoesNotExistException):
        await call(client.delete_deployment_config, deploymentConfigName="Nope")
    assert "Mine" in served.deployer.registry.deployment_configs()
