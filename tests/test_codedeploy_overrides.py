"""CreateDeployment's per-deployment settings through boto3: fileExistsBehavior, ignoreApplicationStopFailures
and autoRollbackConfiguration change that one deployment (and are kept with it), not the group."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import WaiterError
from test_codedeploy import Served, call, serving

from engine.core.config.model import AlarmConfiguration
from engine.core.model import AutoRollback, AutoRollbackEvent
from engine.core.overrides import GroupOverrides


async def test_overrides_apply_to_one_deployment_only(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        await _check(served)


async def _check(served: Served) -> None:
    client = served.client()
    waiter = client.get_waiter("deployment_successful")
    first = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    await call(waiter.wait, deploymentId=first["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    served.agents.behaviour = lambda host, event, sha: "exit 4" if event == "ApplicationStart" else None

    # Staging has no automatic rollback configured; this one deployment asks for it.
    second = await call(
        client.create_deployment,
        applicationName="app",
        deploymentGroupName="app-staging",
        revision={"revisionType": "S3", "s3Location": {"bucket": "deploybot", "key": "rev-b"}},
        fileExistsBehavior="OVERWRITE",
        ignoreApplicationStopFailures=True,
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_FAILURE"]},
    )
    with pytest.raises(WaiterError):  # the waiter gives up on a Failed deployment
        await call(waiter.wait, deploymentId=second["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    info = (await call(client.get_deployment, deploymentId=second["deploymentId"]))["deploymentInfo"]
    assert info["status"] == "Failed"
    assert info["rollbackInfo"]["rollbackDeploymentId"], info
    row = await served.deployer.store.get_deployment(second["deploymentId"])
    assert row is not None
    spec = row["state"]["spec"]
    assert (spec["file_exists_behavior"], spec["ignore_application_stop_failures"]) == ("OVERWRITE", True)

    # The next deployment without overrides gets the group's settings again: no rollback on failure.
    third = await call(
        client.create_deployment,
        applicationName="app",
        deploymentGroupName="app-staging",
        revision={"revisionType": "S3", "s3Location": {"bucket": "deploybot", "key": "rev-b"}},
    )
    with pytest.raises(WaiterError):  # the waiter gives up on a Failed deployment
        await call(waiter.wait, deploymentId=third["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    info = (await call(client.get_deployment, deploymentId=third["deploymentId"]))["deploymentInfo"]
    assert info["status"] == "Failed"
    assert "rollbackDeploymentId" not in info.get("rollbackInfo", {}), info
    row = await served.deployer.store.get_deployment(third["deploymentId"])
    assert row is not None and row["state"]["spec"]["file_exists_behavior"] == "DISALLOW"


def test_overrides_survive_their_json_form() -> None:
    overrides = GroupOverrides(
        file_exists_behavior="RETAIN",
        ignore_application_stop_failures=False,
        auto_rollback=AutoRollback(True, frozenset({AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM})),
        alarms=AlarmConfiguration(True, True, ({"name": "api-5xx", "type": "cloudwatch"},)),
    )
    assert GroupOverrides.from_json(overrides.to_json()) == overrides
    assert GroupOverrides.from_json({}) == GroupOverrides()
    assert GroupOverrides().to_json() == {}
