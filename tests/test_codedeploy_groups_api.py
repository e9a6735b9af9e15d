"""Applications and deployment groups through the CodeDeploy API (issue 20, item 4), with boto3's real client and
the AWS CLI against a running deploybot: create, read back, update, deploy into, delete; the config file's are
read-only; tags; GitHub tokens and external ids; every operation of botocore's model answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import deployer_from
from test_codedeploy import Served, call, serving
from test_codedeploy_cli import REGION, aws
from test_codedeploy_fidelity import ModelOracle
from test_service import CONFIG

from bot.cli import main

ROLE = "arn:aws:iam::123456789012:role/codedeploy"
TOPIC = "arn:aws:sns:us-east-1:123456789012:deploys"
APP_ARN = "arn:aws:codedeploy:us-east-1:123456789012:application:{}"
GROUP_ARN = "arn:aws:codedeploy:us-east-1:123456789012:deploymentgroup:{}/{}"
CONFIG_ARN = "arn:aws:codedeploy:us-east-1:123456789012:deploymentconfig:{}"
EDGE_GROUP: dict[str, Any] = {  # every member deploybot runs or keeps, as Terraform would send them
    "deploymentConfigName": "CodeDeployDefault.AllAtOnce",
    "serviceRoleArn": ROLE,
    "onPremisesInstanceTagFilters": [{"Key": "env", "Value": "edge", "Type": "KEY_AND_VALUE"}],
    "deploymentStyle": {"deploymentType": "IN_PLACE", "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
    "autoRollbackConfiguration": {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]},
    "alarmConfiguration": {"enabled": False, "ignorePollAlarmFailure": False, "alarms": [{"name": "edge-5xx"}]},
    "triggerConfigurations": [
        {"triggerName": "ops", "triggerTargetArn": TOPIC, "triggerEvents": ["DeploymentFailure", "DeploymentSuccess"]}
    ],
    "loadBalancerInfo": {"targetGroupInfoList": [{"name": "edge-tg"}]},
    "outdatedInstancesStrategy": "UPDATE",
}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as running:
        yield running


def code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def message(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Message"])


async def create_edge(client: Any, group: str = "edge-staging", **members: Any) -> dict[str, Any]:
    await call(client.create_application, applicationName="edge", computePlatform="Server")
    return await call(
        client.create_deployment_group, applicationName="edge", deploymentGroupName=group, **{**EDGE_GROUP, **members}
    )


async def test_a_group_created_is_read_back_as_created(served: Served) -> None:
    oracle = ModelOracle(served)
    client = oracle.client
    created = await call(
        client.create_application,
        applicationName="edge",
        computePlatform="Server",
        tags=[{"Key": "team", "Value": "web"}],
    )
    app = (await call(client.get_application, applicationName="edge"))["application"]
    assert (app["applicationId"], app["applicationName"], app["computePlatform"]) == (
        created["applicationId"],
        "edge",
        "Server",
    )
    assert app["createTime"] and app["linkedToGitHub"] is False
    assert "edge" in (await call(client.list_applications))["applications"]

    group_created = await call(
        client.create_deployment_group, applicationName="edge", deploymentGroupName="edge-staging", **EDGE_GROUP
    )
    assert group_created["deploymentGroupId"] == "edge-edge-staging"
    info = (await call(client.get_deployment_group, applicationName="edge", deploymentGroupName="edge-staging"))[
        "deploymentGroupInfo"
    ]
    for member, value in EDGE_GROUP.items():
        assert info[member] == value, member
    assert (info["applicationName"], info["deploymentGroupName"], info["computePlatform"]) == (
        "edge",
        "edge-staging",
        "Server",
    )
    listed = await call(client.list_deployment_groups, applicationName="edge")
    assert listed["deploymentGroups"] == ["edge-staging"]
    batch = await call(
        client.batch_get_deployment_groups, applicationName="edge", deploymentGroupNames=["edge-staging"]
    )
    assert [g["deploymentGroupName"] for g in batch["deploymentGroupsInfo"]] == ["edge-staging"]
    oracle.assert_conforms()


async def test_update_replaces_what_it_names_and_renames(served: Served) -> None:
    oracle = ModelOracle(served)
    client = oracle.client
    await create_edge(client)
    answer = await call(
        client.update_deployment_group,
        applicationName="edge",
        currentDeploymentGroupName="edge-staging",
        newDeploymentGroupName="edge-canary",
        onPremisesTagSet={
            "onPremisesTagSetList": [
                [{"Key": "env", "Value": "edge", "Type": "KEY_AND_VALUE"}],
                [{"Key": "rack", "Value": "r7", "Type": "KEY_AND_VALUE"}],
            ]
        },
        onPremisesInstanceTagFilters=[],
        deploymentConfigName="CodeDeployDefault.OneAtATime",
    )
    assert answer["hooksNotCleanedUp"] == []
    with pytest.raises(client.exceptions.DeploymentGroupDoesNotExistException):
        await call(client.get_deployment_group, applicationName="edge", deploymentGroupName="edge-staging")
    info = (await call(client.get_deployment_group, applicationName="edge", deploymentGroupName="edge-canary"))[
        "deploymentGroupInfo"
    ]
    assert info["deploymentConfigName"] == "CodeDeployDefault.OneAtATime"
    assert len(info["onPremisesTagSet"]["onPremisesTagSetList"]) == 2
    assert info["onPremisesInstanceTagFilters"] == []
    assert info["triggerConfigurations"] == EDGE_GROUP["triggerConfigurations"]  # not named: unchanged
    group = served.deployer.config.group("edge", "edge-canary")
    assert dict(group.target_tags) == {"env": "edge", "rack": "r7"}

    await call(client.update_application, applicationName="edge", newApplicationName="edge2")
    assert (await call(client.list_deployment_groups, applicationName="edge2"))["deploymentGroups"] == ["edge-canary"]
    with pytest.raises(client.exceptions.ApplicationDoesNotExistException):
        await call(client.get_application, applicationName="edge")
    oracle.assert_conforms()


async def test_deploying_into_an_api_group_reaches_the_instances_its_tags_select(
    served: Served, tmp_path: Path
) -> None:
    client = served.client()
    await call(client.register_on_premises_instance, instanceName="edge-1")
    await call(
        client.add_tags_to_on_premises_instances, instanceNames=["edge-1"], tags=[{"Key": "env", "Value": "edge"}]
    )
    await create_edge(client)
    sha = (await served.deployer.store_revision(tmp_path / "rev-b", source="rev-b"))["sha256"]
    agents = type(served.agents)(served.deployer, ["edge-1"], lambda *_: None)
    try:
        created = await call(
            client.create_deployment,
            applicationName="edge",
            deploymentGroupName="edge-staging",
            revision={
                "revisionType": "S3",
                "s3Location": {"bucket": "deploybot", "key": f"sha256:{sha}", "bundleType": "tgz"},
            },
        )
        waiter = client.get_waiter("deployment_successful")
        await call(waiter.wait, deploymentId=created["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    finally:
        await agents.close()
    targets = await call(client.list_deployment_targets, deploymentId=created["deploymentId"])
    assert targets["targetIds"] == ["edge-1"]
    listed = await call(client.list_deployments, applicationName="edge", deploymentGroupName="edge-staging")
    assert listed["deployments"] == [created["deploymentId"]]


async def test_delete_removes_group_and_application_and_deleting_again_is_no_error(served: Served) -> None:
    client = served.client()
    await create_edge(client)
    assert (await call(client.delete_deployment_group, applicationName="edge", deploymentGroupName="edge-staging"))[
        "hooksNotCleanedUp"
    ] == []
    with pytest.raises(client.exceptions.DeploymentGroupDoesNotExistException):
        await call(client.get_deployment_group, applicationName="edge", deploymentGroupName="edge-staging")
    await call(client.delete_deployment_group, applicationName="edge", deploymentGroupName="edge-staging")
    await call(client.create_deployment_group, applicationName="edge", deploymentGroupName="edge-prod", **EDGE_GROUP)
    await call(client.delete_application, applicationName="edge")  # its groups go with it
    with pytest.raises(client.exceptions.ApplicationDoesNotExistException):
        await call(client.get_application, applicationName="edge")
    assert all(g.application != "edge" for g in served.deployer.config.groups())
    await call(client.delete_application, applicationName="edge")
    await create_edge(client, group="edge-prod")  # the names are free again


async def test_a_busy_group_is_neither_renamed_nor_deleted(served: Served, tmp_path: Path) -> None:
    client = served.client()
    await call(client.register_on_premises_instance, instanceName="edge-1")
    await call(
        client.add_tags_to_on_premises_instances, instanceNames=["edge-1"], tags=[{"Key": "env", "Value": "edge"}]
    )
    await create_edge(client)
    sha = (await served.deployer.store_revision(tmp_path / "rev-b", source="rev-b"))["sha256"]
    revision = {
        "revisionType": "S3",
        "s3Location": {"bucket": "deploybot", "key": f"sha256:{sha}", "bundleType": "tgz"},
    }
    created = await call(  # no agent answers: the deployment stays in progress
        client.create_deployment, applicationName="edge", deploymentGroupName="edge-staging", revision=revision
    )
    with pytest.raises(ClientError) as info:
        await call(client.delete_deployment_group, applicationName="edge", deploymentGroupName="edge-staging")
    assert code(info) == "InvalidOperationException" and created["deploymentId"] in message(info)
    with pytest.raises(ClientError) as info:
        await call(client.delete_application, applicationName="edge")
    assert code(info) == "InvalidOperationException"
    await call(client.stop_deployment, deploymentId=created["deploymentId"])


async def test_the_config_files_applications_and_groups_are_read_only(served: Served) -> None:
    client = served.client()
    source = served.deployer.config.source
    with pytest.raises(ClientError) as info:
        await call(client.update_application, applicationName="app", newApplicationName="app2")
    assert (code(info), message(info)) == (
        "InvalidOperationException",
        f"application app comes from the config file {source}; change it there",
    )
    with pytest.raises(ClientError) as info:
        await call(client.delete_application, applicationName="app")
    assert code(info) == "InvalidOperationException"
    with pytest.raises(ClientError) as info:
        await call(client.delete_deployment_group, applicationName="app", deploymentGroupName="app-staging")
    assert (code(info), message(info)) == (
        "InvalidOperationException",
        f"deployment group app-staging of application app comes from the config file {source}; change it there",
    )
    with pytest.raises(client.exceptions.InvalidInputException) as info:
        await call(
            client.update_deployment_group,
            applicationName="app",
            currentDeploymentGroupName="app-staging",
            deploymentConfigName="CodeDeployDefault.OneAtATime",
        )
    assert message(info).endswith("change it there")
    with pytest.raises(client.exceptions.InvalidInputException) as info:
        await call(client.create_deployment_group, applicationName="app", deploymentGroupName="app-qa", **EDGE_GROUP)
    assert "declare its groups there" in message(info)
    with pytest.raises(ClientError) as info:
        await call(client.tag_resource, ResourceArn=APP_ARN.format("app"), Tags=[{"Key": "a", "Value": "b"}])
    assert code(info) == "InvalidOperationException"
    assert (await call(client.list_tags_for_resource, ResourceArn=APP_ARN.format("app")))["Tags"] == []
    assert served.deployer.config.group("app", "staging").deployment_config == "CodeDeployDefault.AllAtOnce"


async def test_tags_on_applications_groups_and_configurations(served: Served) -> None:
    oracle = ModelOracle(served)
    client = oracle.client
    await create_edge(client)
    await call(
        client.create_deployment_config,
        deploymentConfigName="Two",
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 2},
    )
    for arn in (APP_ARN.format("edge"), GROUP_ARN.format("edge", "edge-staging"), CONFIG_ARN.format("Two")):
        await call(
            client.tag_resource, ResourceArn=arn, Tags=[{"Key": "team", "Value": "web"}, {"Key": "tier", "Value": "1"}]
        )
        await call(client.untag_resource, ResourceArn=arn, TagKeys=["tier", "absent"])
        assert (await call(client.list_tags_for_resource, ResourceArn=arn))["Tags"] == [{"Key": "team", "Value": "web"}]
    assert (await call(client.list_tags_for_resource, ResourceArn=CONFIG_ARN.format("CodeDeployDefault.OneAtATime")))[
        "Tags"
    ] == []
    # tags go with what they tag: made again under the same name, it has none
    await call(client.delete_application, applicationName="edge")
    await create_edge(client)
    assert (await call(client.list_tags_for_resource, ResourceArn=APP_ARN.format("edge")))["Tags"] == []
    oracle.assert_conforms()


@pytest.mark.parametrize(
    ("operation", "kwargs", "error"),
    [
        ("tag_resource", {"ResourceArn": "arn:aws:s3:::bucket", "Tags": [{"Key": "a", "Value": "b"}]}, "InvalidArn"),
        (
            "tag_resource",
            {"ResourceArn": "arn:aws:codedeploy:us-east-1:1:instance:edge-1", "Tags": [{"Key": "a", "Value": "b"}]},
            "ArnNotSupported",
        ),
        ("list_tags_for_resource", {"ResourceArn": APP_ARN.format("nope")}, "ApplicationDoesNotExist"),
        ("list_tags_for_resource", {"ResourceArn": GROUP_ARN.format("app", "nope")}, "DeploymentGroupDoesNotExist"),
        ("list_tags_for_resource", {"ResourceArn": CONFIG_ARN.format("nope")}, "DeploymentConfigDoesNotExist"),
        (
            "tag_resource",
            {"ResourceArn": APP_ARN.format("edge"), "Tags": [{"Key": "aws:x", "Value": "b"}]},
            "InvalidTagsToAdd",
        ),
        ("untag_resource", {"ResourceArn": APP_ARN.format("edge"), "TagKeys": []}, "TagRequired"),
        ("create_application", {"applicationName": "app"}, "ApplicationAlreadyExists"),
        ("create_application", {"applicationName": "EDGE"}, "ApplicationAlreadyExists"),
        ("create_application", {"applicationName": "has space"}, "InvalidApplicationName"),
        ("create_application", {"applicationName": "x", "computePlatform": "Mainframe"}, "InvalidComputePlatform"),
        ("create_application", {"applicationName": "x", "tags": [{"Key": "aws:x", "Value": "y"}]}, "InvalidTagsToAdd"),
        (
            "create_deployment_group",
            {"applicationName": "edge", "deploymentGroupName": "app-staging", "serviceRoleArn": ROLE},
            "DeploymentGroupAlreadyExists",
        ),
        (
            "create_deployment_group",
            {"applicationName": "nope", "deploymentGroupName": "g", "serviceRoleArn": ROLE},
            "ApplicationDoesNotExist",
        ),
        (
            "create_deployment_group",
            {
                "applicationName": "edge",
                "deploymentGroupName": "g",
                "serviceRoleArn": ROLE,
                "deploymentConfigName": "Nope",
            },
            "DeploymentConfigDoesNotExist",
        ),
        (
            "create_deployment_group",
            {
                "applicationName": "edge",
                "deploymentGroupName": "g",
                "serviceRoleArn": ROLE,
                "deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
            },
            "InvalidDeploymentStyle",
        ),
        (
            "create_deployment_group",
            {
                "applicationName": "edge",
                "deploymentGroupName": "g",
                "serviceRoleArn": ROLE,
                "onPremisesInstanceTagFilters": [
                    {"Key": "env", "Value": "a", "Type": "KEY_AND_VALUE"},
                    {"Key": "env", "Value": "b", "Type": "KEY_AND_VALUE"},
                ],
            },
            "InvalidTag",
        ),
        (
            "create_deployment_group",
            {
                "applicationName": "edge",
                "deploymentGroupName": "g",
                "serviceRoleArn": ROLE,
                "autoScalingGroups": ["asg"],
            },
            "InvalidAutoScalingGroup",
        ),
        (
            "create_deployment_group",
            {
                "applicationName": "edge",
                "deploymentGroupName": "g",
                "serviceRoleArn": ROLE,
                "alarmConfiguration": {"enabled": True, "alarms": [{"name": f"a{i}"} for i in range(11)]},
            },
            "AlarmsLimitExceeded",
        ),
        (
            "create_deployment_group",
            {"applicationName": "edge", "deploymentGroupName": "g", "serviceRoleArn": "not-an-arn"},
            "InvalidRole",
        ),
        (
            "update_deployment_group",
            {"applicationName": "edge", "currentDeploymentGroupName": "nope"},
            "DeploymentGroupDoesNotExist",
        ),
        (
            "update_deployment_group",
            {
                "applicationName": "edge",
                "currentDeploymentGroupName": "edge-staging",
                "newDeploymentGroupName": "app-staging",
            },
            "DeploymentGroupAlreadyExists",
        ),
        ("update_application", {"applicationName": "edge", "newApplicationName": "app"}, "ApplicationAlreadyExists"),
        ("update_application", {"applicationName": "nope", "newApplicationName": "x"}, "ApplicationDoesNotExist"),
    ],
)
async def test_errors_are_the_models(served: Served, operation: str, kwargs: dict[str, Any], error: str) -> None:
    client = served.client()
    await create_edge(client)
    with pytest.raises(ClientError) as info:
        await call(getattr(client, operation), **kwargs)
    assert code(info) == f"{error}Exception", message(info)
    assert message(info)
    assert getattr(client.exceptions, f"{error}Exception", None) is not None, "not an error of the model"


async def test_only_admins_make_and_delete(served: Served) -> None:
    bob = served.client("AKIOTHER", "other")
    with pytest.raises(ClientError) as info:
        await call(bob.create_application, applicationName="edge")
    assert code(info) == "AccessDeniedException"
    assert "codedeploy:CreateApplication" in message(info)
    await create_edge(served.client())
    with pytest.raises(ClientError) as info:
        await call(bob.delete_application, applicationName="edge")
    assert code(info) == "AccessDeniedException"
    assert (await call(bob.list_tags_for_resource, ResourceArn=APP_ARN.format("edge")))["Tags"] == []  # a read
    for operation, kwargs in (
        ("delete_git_hub_account_token", {"tokenName": "GITHUB_TOKEN"}),
        ("delete_resources_by_external_id", {"externalId": "stack-1"}),
        ("tag_resource", {"ResourceArn": APP_ARN.format("edge"), "Tags": [{"Key": "a", "Value": "b"}]}),
    ):
        with pytest.raises(ClientError) as info:
            await call(getattr(bob, operation), **kwargs)
        assert code(info) == "AccessDeniedException", operation


async def test_api_applications_and_groups_survive_a_restart(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        client = served.client()
        await create_edge(client)
        await call(
            client.tag_resource, ResourceArn=GROUP_ARN.format("edge", "edge-staging"), Tags=[{"Key": "k", "Value": "v"}]
        )
    again = await deployer_from(CONFIG % {"heartbeat": 60}, tmp_path)
    try:
        group = again.config.group("edge", "edge-staging")
        assert (group.deployment_config, dict(group.target_tags)) == ("CodeDeployDefault.AllAtOnce", {"env": "edge"})
        assert again.config.application("edge").environments == ("edge-staging",)
        api_group = again.registry.api_group("edge-staging")
        assert api_group is not None and dict(api_group.tags) == {"k": "v"}
    finally:
        await again.close()


async def test_github_credentials_are_listed_and_never_deleted(tmp_path: Path) -> None:
    async with serving(tmp_path, github_token="ghp_test") as served:
        client = served.client()
        assert (await call(client.list_git_hub_account_token_names))["tokenNameList"] == ["GITHUB_TOKEN"]
        with pytest.raises(client.exceptions.OperationNotSupportedException) as info:
            await call(client.delete_git_hub_account_token, tokenName="GITHUB_TOKEN")
        assert "GITHUB_TOKEN" in message(info) and "environment" in message(info)
        with pytest.raises(client.exceptions.GitHubAccountTokenDoesNotExistException):
            await call(client.delete_git_hub_account_token, tokenName="someone-elses")
        with pytest.raises(client.exceptions.GitHubAccountTokenNameRequiredException):
            await call(client.delete_git_hub_account_token)


async def test_without_github_credentials_no_token_is_listed(served: Served) -> None:
    assert (await call(served.client().list_git_hub_account_token_names))["tokenNameList"] == []


async def test_delete_resources_by_external_id_changes_nothing_and_is_audited(served: Served) -> None:
    oracle = ModelOracle(served)
    assert set(await call(oracle.client.delete_resources_by_external_id, externalId="stack-1")) == {"ResponseMetadata"}
    log = await served.deployer.store.read_log()
    entry = [e for e in log if e["kind"] == "resources.deleted_by_external_id"][-1]
    assert (entry["actor"], entry["data"]) == ("alice", {"external_id": "stack-1", "deleted": []})
    assert "app" in served.deployer.config.applications
    oracle.assert_conforms()


async def test_every_operation_of_botocores_model_answers(served: Served) -> None:
    """Each of the model's operations, sent by the real client without its parameters (validation off), is
    answered: a result or one of CodeDeploy's errors, never UnknownOperationException."""
    raw = boto3.client(
        "codedeploy",
        endpoint_url=served.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEPLOYBOT",
        aws_secret_access_key="s3cret",
        config=Config(retries={"max_attempts": 1}, parameter_validation=False),
    )
    operations = raw.meta.service_model.operation_names
    refused = []
    for operation in operations:
        try:
            await call(raw._make_api_call, operation_name=operation, api_params={})
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "UnknownOperationException":
                refused.append(operation)
    assert (len(operations), refused) == (47, [])


async def test_the_aws_cli_creates_reads_and_deletes_an_application(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYBOT_AWS_REGION", REGION)
    async with serving(tmp_path) as served:
        status, created, err = await aws(served, tmp_path, "create-application", "--application-name", "edge")
        assert status == 0, err
        status, got, err = await aws(served, tmp_path, "get-application", "--application-name", "edge")
        assert (status, got["application"]["applicationId"]) == (0, created["applicationId"]), err
        status, _, err = await aws(
            served,
            tmp_path,
            "create-deployment-group",
            "--application-name",
            "edge",
            "--deployment-group-name",
            "edge-staging",
            "--service-role-arn",
            ROLE,
            "--on-premises-instance-tag-filters",
            "Key=env,Value=edge,Type=KEY_AND_VALUE",
        )
        assert status == 0, err
        assert dict(served.deployer.config.group("edge", "edge-staging").target_tags) == {"env": "edge"}
        status, _, err = await aws(
            served, tmp_path, "update-application", "--application-name", "app", "--new-application-name", "x"
        )
        assert status != 0 and "comes from the config file" in err
        status, _, err = await aws(served, tmp_path, "delete-application", "--application-name", "edge")
        assert status == 0, err
        assert "edge" not in served.deployer.config.applications


async def test_deploybot_groups_lists_both_and_says_where_each_comes_from(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await create_edge(served.client())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEPLOYBOT_TOKEN", (await served.deployer.tokens.create("alice", name="test"))[1])
    server = served.url.removesuffix("/codedeploy")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["groups", "--json", "--server", server]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["application"], r["group"], r["source"]) for r in rows] == [
        ("app", "app-staging", "config file"),
        ("app", "app-production", "config file"),
        ("edge", "edge-staging", "API"),
    ]
    assert await asyncio.to_thread(main, ["groups", "edge", "--server", server]) == 0
    out = capsys.readouterr().out
    assert "edge-staging" in out and "API" in out and "app-staging" not in out
