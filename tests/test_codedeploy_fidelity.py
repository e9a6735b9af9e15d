"""The CodeDeploy API answers what botocore's service model says, checked with boto3's real client (issue 20, item 5).

Every response a ``ModelOracle`` client receives is checked against its operation's output shape by botocore's own
``ParamValidator`` on the raw JSON body (boto3's parser silently drops fields the model lacks, so only the raw body
shows them): no unknown member, every member of the right type. Lambda deployments run against moto in server mode.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.validate import ParamValidator
from conftest import FakeClock, eventually
from test_codedeploy import Served, call, serving
from test_codedeploy_waits import BLUE_GREEN, until_status
from test_service import CONFIG

from bot.codedeploy.shapes import script_name
from engine.adapters.aws.accounts import AwsClients
from engine.agent.hooks import HookRunner
from engine.agent.output import ScriptLog
from engine.core.appspec.model import HookScript
from engine.core.model import LifecycleEvent
from tests.aws_fixtures import (
    EcsSetup,
    LambdaSetup,
    create_ecs_service,
    create_hook_function,
    create_lambda_function,
    lambda_appspec_text,
)
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401


class ModelOracle:
    """boto3's client, plus every answer it received checked against the service model's output shape."""

    def __init__(self, served: Served) -> None:
        self.client = served.client()
        self.problems: list[str] = []
        self.raw: dict[str, list[Any]] = {}  # operation → the raw JSON bodies answered, in order
        self.client.meta.events.register("after-call.codedeploy", self._check)

    def _check(self, http_response: Any, model: Any, **_: Any) -> None:
        if http_response.status_code != 200:
            return
        text = http_response.content.decode() or "{}"
        body = json.loads(text)
        self.raw.setdefault(model.name, []).append(body)
        if model.output_shape is None:
            if body != {}:
                self.problems.append(f"{model.name} has no output in the model, answered {text}")
            return
        report = ParamValidator().validate(body, model.output_shape)
        if report.has_errors():
            self.problems.append(f"{model.name}: {report.generate_report()}")

    def assert_conforms(self) -> None:
        assert self.problems == [], "\n".join(self.problems)
        assert self.raw, "no answer was checked"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as running:
        yield running


def epoch(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


# -- ListDeployments(createTimeRange) ----------------------------------------------------------------------------


async def test_list_deployments_honours_create_time_range(tmp_path: Path) -> None:
    clock = FakeClock()
    async with serving(tmp_path, clock=clock) as served:
        oracle = ModelOracle(served)
        client = oracle.client
        early = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
        clock.jump(3600)  # the second deployment is created an hour later
        late = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-production")
        created = {
            d: (await served.deployer.get(d))["created_at"] for d in (early["deploymentId"], late["deploymentId"])
        }
        early_at, late_at = created[early["deploymentId"]], created[late["deploymentId"]]
        assert late_at - early_at >= 3600

        async def listed(**time_range: datetime.datetime) -> list[str]:
            answer = await call(client.list_deployments, applicationName="app", createTimeRange=time_range)
            return sorted(answer["deployments"])

        assert await listed() == sorted(created)  # an open range
        assert await listed(start=epoch(late_at - 60)) == [late["deploymentId"]]
        assert await listed(end=epoch(early_at + 60)) == [early["deploymentId"]]
        assert await listed(start=epoch(early_at - 60), end=epoch(early_at + 60)) == [early["deploymentId"]]
        assert await listed(start=epoch(late_at + 60)) == []
        with pytest.raises(client.exceptions.InvalidTimeRangeException):
            await listed(start=epoch(late_at), end=epoch(early_at))
        oracle.assert_conforms()


# -- ListDeploymentTargets(targetFilters) ------------------------------------------------------------------------


async def test_list_deployment_targets_filters_by_target_status(served: Served) -> None:
    served.agents.behaviour = lambda host, event, sha: "exit 2" if (host, event) == ("s2", "ValidateService") else None
    oracle = ModelOracle(served)
    client = oracle.client
    created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    deployment_id = created["deploymentId"]
    await until_status(served, deployment_id, "Succeeded")  # AllAtOnce: one healthy host is enough

    async def listed(filters: dict[str, list[str]]) -> list[str]:
        answer = await call(client.list_deployment_targets, deploymentId=deployment_id, targetFilters=filters)
        return list(answer["targetIds"])

    assert await listed({}) == ["s1", "s2"]
    assert await listed({"TargetStatus": ["Failed"]}) == ["s2"]
    assert await listed({"TargetStatus": ["Succeeded"]}) == ["s1"]
    assert await listed({"TargetStatus": ["Succeeded", "Failed"]}) == ["s1", "s2"]
    assert await listed({"TargetStatus": ["InProgress"]}) == []
    assert await listed({"ServerInstanceLabel": ["Blue"]}) == []  # in-place: no target is Blue or Green
    with pytest.raises(client.exceptions.InvalidInstanceStatusException):
        await listed({"TargetStatus": ["Sideways"]})
    with pytest.raises(client.exceptions.InvalidTargetFilterNameException):
        await listed({"Colour": ["Blue"]})
    oracle.assert_conforms()


async def test_list_deployment_targets_filters_by_server_instance_label(tmp_path: Path) -> None:
    async with serving(tmp_path, config=BLUE_GREEN, hosts=("b1", "b2", "b3", "b4")) as served:
        oracle = ModelOracle(served)
        client = oracle.client
        created = await call(client.create_deployment, applicationName="app", deploymentGroupName="prod")
        deployment_id = created["deploymentId"]
        await until_status(served, deployment_id, "Ready")  # the replacement is installed, waiting for traffic

        async def listed(filters: dict[str, list[str]]) -> list[str]:
            answer = await call(client.list_deployment_targets, deploymentId=deployment_id, targetFilters=filters)
            return list(answer["targetIds"])

        assert await listed({"ServerInstanceLabel": ["Green"]}) == ["b3", "b4"]
        assert await listed({"ServerInstanceLabel": ["Blue"]}) == ["b1", "b2"]
        # Both filters: a Green target that succeeded (its install is done; the Blue ones wait for the reroute).
        assert await listed({"ServerInstanceLabel": ["Green"], "TargetStatus": ["Succeeded"]}) == ["b3", "b4"]
        with pytest.raises(client.exceptions.InvalidInstanceTypeException):
            await listed({"ServerInstanceLabel": ["Purple"]})
        await call(client.stop_deployment, deploymentId=deployment_id)
        oracle.assert_conforms()


# -- Lambda targets, computePlatform, and a failed Lambda hook -----------------------------------------------------

LAMBDA_APP = """  fn:
    platform: lambda
    environments: [live]
    deployment_groups:
      live: {deployment_config: CodeDeployDefault.LambdaAllAtOnce}
"""


def lambda_config(endpoint: str) -> str:
    return (
        CONFIG % {"heartbeat": 60} + LAMBDA_APP + f"aws:\n  default: {{region: {REGION}, endpoint_url: '{endpoint}'}}\n"
    )


async def deploy_lambda(oracle: ModelOracle, setup: LambdaSetup, hooks: dict[str, str]) -> str:
    content = lambda_appspec_text(setup, hooks)
    revision = {"revisionType": "AppSpecContent", "appSpecContent": {"content": content}}
    created = await call(
        oracle.client.create_deployment, applicationName="fn", deploymentGroupName="live", revision=revision
    )
    return str(created["deploymentId"])


async def test_a_lambda_target_is_a_lambda_target_with_its_function(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    setup = await create_lambda_function(aws)
    async with serving(tmp_path, config=lambda_config(moto_reset)) as served:
        oracle = ModelOracle(served)
        client = oracle.client
        deployment_id = await deploy_lambda(oracle, setup, {})
        await until_status(served, deployment_id, "Succeeded")

        info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
        assert info["computePlatform"] == "Lambda"
        assert "fileExistsBehavior" not in info  # a server setting: files are copied only onto hosts
        targets = (await call(client.list_deployment_targets, deploymentId=deployment_id))["targetIds"]
        assert targets == [setup.target]
        target = (await call(client.get_deployment_target, deploymentId=deployment_id, targetId=setup.target))[
            "deploymentTarget"
        ]
        assert target["deploymentTargetType"] == "LambdaTarget"
        assert "instanceTarget" not in target and "ecsTarget" not in target
        lambda_target = target["lambdaTarget"]
        assert (lambda_target["targetId"], lambda_target["status"]) == (setup.target, "Succeeded")
        assert lambda_target["lambdaFunctionInfo"] == {
            "functionName": setup.function_name,
            "functionAlias": setup.alias,
            "currentVersion": "1",
            "targetVersion": "2",
            "targetVersionWeight": 100.0,  # all traffic on the target version once it succeeded
        }
        batch = await call(client.batch_get_deployment_targets, deploymentId=deployment_id, targetIds=targets)
        assert [t["deploymentTargetType"] for t in batch["deploymentTargets"]] == ["LambdaTarget"]
        with pytest.raises(client.exceptions.InvalidComputePlatformException):
            await call(client.list_deployment_instances, deploymentId=deployment_id)
        oracle.assert_conforms()


async def test_a_failed_lambda_hook_speaks_of_the_function_not_hosts(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "check-before")
    async with serving(tmp_path, config=lambda_config(moto_reset)) as served:
        oracle = ModelOracle(served)
        client = oracle.client
        deployment_id = await deploy_lambda(oracle, setup, {"BeforeAllowTraffic": "check-before"})

        def waiting() -> list[dict[str, Any]]:
            return [e for e in served.deployer.hooks.pending(deployment_id) if e["state"] == "waiting"]

        await eventually(waiting, "BeforeAllowTraffic waiting for its status")
        [execution] = waiting()
        await call(
            client.put_lifecycle_event_hook_execution_status,
            deploymentId=deployment_id,
            lifecycleEventHookExecutionId=execution["execution_id"],
            status="Failed",
        )
        await until_status(served, deployment_id, "Failed")

        info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
        message = info["errorInformation"]["message"]
        assert "check-before" in message, message
        assert "host" not in message, message  # a Lambda deployment has functions, not hosts
        target = (await call(client.get_deployment_target, deploymentId=deployment_id, targetId=setup.target))[
            "deploymentTarget"
        ]["lambdaTarget"]
        assert target["status"] == "Failed"
        assert target["lambdaFunctionInfo"]["targetVersionWeight"] == 0.0  # traffic never moved
        [failed] = [e for e in target["lifecycleEvents"] if e["status"] == "Failed"]
        assert failed["lifecycleEventName"] == "BeforeAllowTraffic"
        assert failed["diagnostics"]["scriptName"] == ""  # a hook function is no script
        oracle.assert_conforms()


def ecs_config(endpoint: str, setup: EcsSetup) -> str:
    blue, green = setup.target_groups
    return (
        CONFIG % {"heartbeat": 60} + "  shop:\n"
        "    platform: ecs\n"
        "    environments: [prod]\n"
        "    deployment_groups:\n"
        "      prod:\n"
        "        deployment_config: CodeDeployDefault.ECSAllAtOnce\n"
        f"        cluster: {setup.cluster}\n"
        f"        service: {setup.service}\n"
        "        load_balancer:\n"
        "          type: elbv2\n"
        f"          listener_arn: {setup.listener_arn}\n"
        f"          target_groups: [{blue}, {green}]\n"
        f"aws:\n  default: {{region: {REGION}, endpoint_url: '{endpoint}'}}\n"
    )


async def test_an_ecs_target_is_an_ecs_target_with_its_task_sets(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    setup = await create_ecs_service(aws)
    content = (
        "version: 0.0\n"
        "Resources:\n"
        "  - TargetService:\n"
        "      Type: AWS::ECS::Service\n"
        "      Properties:\n"
        f'        TaskDefinition: "{setup.family}:2"\n'
        "        LoadBalancerInfo:\n"
        f'          ContainerName: "{setup.container_name}"\n'
        f"          ContainerPort: {setup.container_port}\n"
    )
    async with serving(tmp_path, config=ecs_config(moto_reset, setup)) as served:
        oracle = ModelOracle(served)
        client = oracle.client
        created = await call(
            client.create_deployment,
            applicationName="shop",
            deploymentGroupName="prod",
            revision={"revisionType": "AppSpecContent", "appSpecContent": {"content": content}},
        )
        deployment_id = created["deploymentId"]
        await until_status(served, deployment_id, "Succeeded")
        info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
        assert info["computePlatform"] == "ECS"
        assert (await call(client.list_deployment_targets, deploymentId=deployment_id))["targetIds"] == [setup.target]
        target = (await call(client.get_deployment_target, deploymentId=deployment_id, targetId=setup.target))[
            "deploymentTarget"
        ]
        assert target["deploymentTargetType"] == "ECSTarget"
        assert "instanceTarget" not in target and "lambdaTarget" not in target
        ecs_target = target["ecsTarget"]
        assert (ecs_target["targetId"], ecs_target["status"]) == (setup.target, "Succeeded")
        assert ecs_target["taskSetsInfo"] == [
            {"taskSetLabel": "Blue", "trafficWeight": 0.0},  # all traffic moved to the replacement
            {"taskSetLabel": "Green", "trafficWeight": 100.0},
        ]
        oracle.assert_conforms()


# -- deploymentInfo: computePlatform and the settings kept with the deployment ----------------------------------


async def test_deployment_info_carries_the_settings_kept_with_the_deployment(served: Served) -> None:
    oracle = ModelOracle(served)
    client = oracle.client
    overridden = await call(
        client.create_deployment,
        applicationName="app",
        deploymentGroupName="app-staging",
        fileExistsBehavior="OVERWRITE",
        ignoreApplicationStopFailures=True,
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_STOP_ON_REQUEST", "DEPLOYMENT_FAILURE"]},
    )
    info = (await call(client.get_deployment, deploymentId=overridden["deploymentId"]))["deploymentInfo"]
    assert info["computePlatform"] == "Server"
    assert (info["fileExistsBehavior"], info["ignoreApplicationStopFailures"]) == ("OVERWRITE", True)
    assert info["autoRollbackConfiguration"] == {
        "enabled": True,
        "events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_REQUEST"],
    }

    # Without overrides, the group's own settings: production rolls back on failure, staging does not.
    plain = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-production")
    info = (await call(client.get_deployment, deploymentId=plain["deploymentId"]))["deploymentInfo"]
    assert info["computePlatform"] == "Server"
    assert (info["fileExistsBehavior"], info["ignoreApplicationStopFailures"]) == ("DISALLOW", False)
    assert info["autoRollbackConfiguration"] == {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]}
    batch = await call(client.batch_get_deployments, deploymentIds=[overridden["deploymentId"]])
    assert batch["deploymentsInfo"][0]["fileExistsBehavior"] == "OVERWRITE"
    oracle.assert_conforms()


# -- BatchGetDeployments ------------------------------------------------------------------------------------------


async def test_batch_get_deployments_answers_the_known_ones_and_keeps_to_25(served: Served) -> None:
    oracle = ModelOracle(served)
    client = oracle.client
    created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    known = created["deploymentId"]
    unknown = "d-AAAAAAAAA"
    batch = await call(client.batch_get_deployments, deploymentIds=[unknown, known])
    assert [d["deploymentId"] for d in batch["deploymentsInfo"]] == [known]  # the unknown id is left out
    alone = await call(client.batch_get_deployments, deploymentIds=[unknown])
    assert alone["deploymentsInfo"] == []
    with pytest.raises(client.exceptions.InvalidDeploymentIdException):
        await call(client.batch_get_deployments, deploymentIds=[known, "not-an-id"])
    many = [known] + [f"d-{n:09d}" for n in range(24)]
    assert len((await call(client.batch_get_deployments, deploymentIds=many))["deploymentsInfo"]) == 1
    with pytest.raises(client.exceptions.BatchLimitExceededException) as info:
        await call(client.batch_get_deployments, deploymentIds=[*many, "d-ZZZZZZZZZ"])
    assert "25" in info.value.response["Error"]["Message"]
    oracle.assert_conforms()


# -- diagnostics.scriptName ---------------------------------------------------------------------------------------


async def agent_failure(tmp_path: Path, location: str, *, create: bool) -> str:
    """The message the real agent's HookRunner reports when the script at ``location`` fails (or is missing), run
    in a revision unpacked where the agent unpacks it (``.../deployment-archive``)."""
    archive = tmp_path / "agent" / "d-XXXXXXXXX" / "deployment-archive"
    (archive / location).parent.mkdir(parents=True)
    if create:
        (archive / location).write_text("#!/bin/sh\necho starting\nexit 3\n")
        (archive / location).chmod(0o755)
    log = ScriptLog(tmp_path / "agent" / "scripts.log")
    outcome = await HookRunner().run_event(
        LifecycleEvent.APPLICATION_START, [HookScript(location, timeout=30)], archive_dir=archive, env={}, log=log
    )
    assert not outcome.succeeded
    return outcome.message


@pytest.mark.parametrize("create", [True, False], ids=["script-failed", "script-missing"])
async def test_diagnostics_name_the_failing_script(tmp_path: Path, served: Served, create: bool) -> None:
    message = await agent_failure(tmp_path, "scripts/start_server.sh", create=create)
    served.agents.behaviour = lambda host, event, sha: message if event == "ApplicationStart" else None
    oracle = ModelOracle(served)
    client = oracle.client
    created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    await until_status(served, created["deploymentId"], "Failed")
    target = (await call(client.get_deployment_target, deploymentId=created["deploymentId"], targetId="s1"))[
        "deploymentTarget"
    ]["instanceTarget"]
    [failed] = [e for e in target["lifecycleEvents"] if e["status"] == "Failed"]
    assert failed["diagnostics"]["scriptName"] == "scripts/start_server.sh"
    assert failed["diagnostics"]["message"] == message
    passed = [e for e in target["lifecycleEvents"] if e["status"] == "Succeeded"]
    assert passed and all(e["diagnostics"]["scriptName"] == "" for e in passed)
    oracle.assert_conforms()


@pytest.mark.parametrize(
    ("message", "script"),
    [
        ("Script at specified location: scripts/a.sh failed with exit code 3", "scripts/a.sh"),
        ("Script at specified location: scripts/a.sh run as user app failed with exit code 1", "scripts/a.sh"),
        ("Script at specified location: b.sh failed to complete in 30 seconds", "b.sh"),
        ("Script at specified location: b.sh failed to close STDOUT", "b.sh"),
        ("Unable to set script at specified location: c d.sh as executable", "c d.sh"),
        ("Script location ../x.sh resolves to /etc/x.sh, outside the revision (/r): refused", "../x.sh"),
        ("Script does not exist at specified location: /root/d-1/deployment-archive/bin/go.sh", "bin/go.sh"),
        ("2 script(s) succeeded", ""),
        ("check-before (execution abc) reported Failed", ""),
        ("", ""),
    ],
)
def test_script_name_is_read_from_the_agents_words(message: str, script: str) -> None:
    assert script_name(message) == script


# -- RegisterOnPremisesInstance -------------------------------------------------------------------------------------


async def test_register_on_premises_instance_answers_the_models_empty_output(served: Served) -> None:
    oracle = ModelOracle(served)
    client = oracle.client
    answer = await call(client.register_on_premises_instance, instanceName="edge-4")
    token = answer["ResponseMetadata"]["HTTPHeaders"]["x-deploybot-agent-token"]
    assert served.deployer.fleet.authenticate(token) == "edge-4"  # the agent's token travels in the header
    assert oracle.raw["RegisterOnPremisesInstance"] == [{}]  # and the body is the operation's (empty) output
    assert token not in json.dumps(oracle.raw)
    oracle.assert_conforms()
