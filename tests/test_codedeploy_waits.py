"""Per-instance reports, the blue/green waits (ContinueDeployment, SkipWaitTimeForInstanceTermination) and the
Lambda/ECS hook callback (PutLifecycleEventHookExecutionStatus), with boto3's real client against a running
deploybot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_codedeploy import Served, call, serving

BLUE_GREEN = """
server: {data_dir: var}
hosts: [{name: b1, port: 9901}, {name: b2, port: 9902}, {name: b3, port: 9903}, {name: b4, port: 9904}]
applications:
  app:
    platform: server
    revision: rev-a
    environments: [prod]
    deployment_groups:
      prod:
        deployment_type: blue-green
        deployment_config: CodeDeployDefault.AllAtOnce
        traffic_config: CodeDeployDefault.LambdaAllAtOnce
        targets: {hosts: [b1, b2, b3, b4]}
        load_balancer: {type: haproxy, port: 9910}
        blue_green: {ready_action: STOP_DEPLOYMENT, ready_wait_minutes: 30, termination_wait_minutes: 30}
"""


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as running:
        yield running


async def until_status(served: Served, deployment_id: str, status: str) -> dict[str, Any]:
    client = served.client()
    async with asyncio.timeout(15):
        while True:
            info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
            if info["status"] == status:
                return dict(info)
            await asyncio.sleep(0.1)


async def test_deployment_instances_report_lifecycle_events(served: Served) -> None:
    served.agents.behaviour = lambda host, event, sha: "exit 2" if (host, event) == ("s2", "ValidateService") else None
    client = served.client()
    created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    deployment_id = created["deploymentId"]
    await until_status(served, deployment_id, "Succeeded")  # AllAtOnce: one healthy host is enough

    async def listed(**kwargs: Any) -> list[str]:
        return list(
            (await call(client.list_deployment_instances, deploymentId=deployment_id, **kwargs))["instancesList"]
        )

    assert await listed() == ["s1", "s2"]
    assert await listed(instanceStatusFilter=["Failed"]) == ["s2"]
    assert await listed(instanceTypeFilter=["Blue"]) == []  # in-place: no Blue/Green labels
    summary = (await call(client.get_deployment_instance, deploymentId=deployment_id, instanceId="s2"))[
        "instanceSummary"
    ]
    assert (summary["instanceId"], summary["status"], "instanceType" in summary) == ("s2", "Failed", False)
    failed = [e for e in summary["lifecycleEvents"] if e["status"] == "Failed"]
    assert [(e["lifecycleEventName"], e["diagnostics"]["errorCode"]) for e in failed] == [
        ("ValidateService", "ScriptFailed")
    ]
    assert failed[0]["diagnostics"]["message"] == "exit 2"
    assert summary["lastUpdatedAt"] >= failed[0]["startTime"]
    batch = await call(client.batch_get_deployment_instances, deploymentId=deployment_id, instanceIds=["s1", "p1"])
    assert [s["instanceId"] for s in batch["instancesSummary"]] == ["s1"]
    assert "p1" in batch["errorMessage"]
    with pytest.raises(client.exceptions.InstanceDoesNotExistException):
        await call(client.get_deployment_instance, deploymentId=deployment_id, instanceId="p1")
    with pytest.raises(client.exceptions.InvalidInstanceStatusException):
        await call(client.list_deployment_instances, deploymentId=deployment_id, instanceStatusFilter=["Sideways"])
    with pytest.raises(client.exceptions.UnsupportedActionForDeploymentTypeException):
        await call(client.skip_wait_time_for_instance_termination, deploymentId=deployment_id)


@pytest.mark.parametrize("end_wait", ["skip", "continue"])
async def test_blue_green_ready_and_termination_waits(tmp_path: Path, end_wait: str) -> None:
    async with serving(tmp_path, config=BLUE_GREEN, hosts=("b1", "b2", "b3", "b4")) as served:
        client = served.client()
        created = await call(client.create_deployment, applicationName="app", deploymentGroupName="prod")
        deployment_id = created["deploymentId"]
        await until_status(served, deployment_id, "Ready")  # replacement installed, waiting to take traffic
        with pytest.raises(client.exceptions.DeploymentIsNotInReadyStateException):
            await call(client.skip_wait_time_for_instance_termination, deploymentId=deployment_id)
        with pytest.raises(client.exceptions.InvalidDeploymentWaitTypeException):
            await call(client.continue_deployment, deploymentId=deployment_id, deploymentWaitType="SOON")
        await call(client.continue_deployment, deploymentId=deployment_id, deploymentWaitType="READY_WAIT")
        await until_status(served, deployment_id, "Baking")  # traffic moved; the original fleet is kept a while

        blue = await call(client.list_deployment_instances, deploymentId=deployment_id, instanceTypeFilter=["Blue"])
        green = await call(client.list_deployment_instances, deploymentId=deployment_id, instanceTypeFilter=["Green"])
        assert (blue["instancesList"], green["instancesList"]) == (["b1", "b2"], ["b3", "b4"])
        target = await call(client.get_deployment_target, deploymentId=deployment_id, targetId="b3")
        assert target["deploymentTarget"]["instanceTarget"]["instanceLabel"] == "Green"
        with pytest.raises(client.exceptions.DeploymentIsNotInReadyStateException):
            await call(client.continue_deployment, deploymentId=deployment_id)  # READY_WAIT is over

        if end_wait == "skip":
            await call(client.skip_wait_time_for_instance_termination, deploymentId=deployment_id)
        else:
            await call(client.continue_deployment, deploymentId=deployment_id, deploymentWaitType="TERMINATION_WAIT")
        await until_status(served, deployment_id, "Succeeded")  # 30 minutes of waiting skipped
        with pytest.raises(client.exceptions.DeploymentAlreadyCompletedException):
            await call(client.skip_wait_time_for_instance_termination, deploymentId=deployment_id)


async def test_hook_status_callbacks(served: Served) -> None:
    client = served.client()
    created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    deployment_id = created["deploymentId"]
    hooks = served.deployer.hooks
    at = served.deployer.clock.now()
    execution, _ = await hooks.start(deployment_id, "fn:live", "BeforeAllowTraffic", "check-fn", at=at)
    waiting = asyncio.ensure_future(hooks.wait(execution, 10))
    answer = await call(
        client.put_lifecycle_event_hook_execution_status,
        lifecycleEventHookExecutionId=execution.execution_id,
        status="Succeeded",
    )
    assert answer["lifecycleEventHookExecutionId"] == execution.execution_id
    assert await waiting == "Succeeded"  # the waiting hook got the callback
    log = await served.deployer.event_log(deployment_id)
    assert any(e["kind"] == "hook.status" and e["actor"] == "alice" for e in log)
    repeat = {"lifecycleEventHookExecutionId": execution.execution_id, "status": "Succeeded"}  # the same, again
    answer = await call(client.put_lifecycle_event_hook_execution_status, **repeat)
    assert answer["lifecycleEventHookExecutionId"] == execution.execution_id
    kinds = [e["kind"] for e in await served.deployer.event_log(deployment_id) if e["kind"].startswith("hook.")]
    assert kinds == ["hook.status", "hook.status_repeated"]

    again = {"lifecycleEventHookExecutionId": execution.execution_id, "status": "Failed"}  # a status is final
    with pytest.raises(client.exceptions.LifecycleEventAlreadyCompletedException):
        await call(client.put_lifecycle_event_hook_execution_status, **again)
    with pytest.raises(client.exceptions.InvalidLifecycleEventHookExecutionStatusException):
        await call(client.put_lifecycle_event_hook_execution_status, **{**again, "status": "Pending"})
    with pytest.raises(client.exceptions.InvalidLifecycleEventHookExecutionIdException):
        await call(client.put_lifecycle_event_hook_execution_status, status="Succeeded")
    with pytest.raises(client.exceptions.UnsupportedActionForDeploymentTypeException):  # agents report server hooks
        await call(client.put_lifecycle_event_hook_execution_status, deploymentId=deployment_id, **again)
    with pytest.raises(ClientError) as info:
        await call(client.put_lifecycle_event_hook_execution_status, deploymentId="d-AAAAAAAAA", **again)
    assert info.value.response["Error"]["Code"] == "DeploymentDoesNotExistException"
