"""boto3's real ``codedeploy`` client against deploybot's CodeDeploy-compatible API.

The whole app (create_app) is served on 127.0.0.1 by an AppRunner with a real Deployer; hosts are the scripted
agents of test_service. boto3 is synchronous, so its calls run in a thread while the event loop serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, WaiterError
from conftest import deployer_from, eventually
from test_service import CONFIG, ScriptedFleet, make_revision, never_fails

from bot.app import create_app
from bot.codedeploy import CODEDEPLOY, sigv4
from bot.settings import Settings
from engine.core.requests import DeployRequest
from engine.ports import Clock
from engine.runtime.deployer import Deployer

KEYS = "AKIDEPLOYBOT:s3cret:alice,AKIOTHER:other:bob"
HOSTS = ("s1", "s2", "p1", "p2", "p3", "p4")


@dataclass
class Served:
    deployer: Deployer
    url: str
    agents: ScriptedFleet
    app: web.Application

    def client(
        self,
        access_key: str = "AKIDEPLOYBOT",
        secret: str = "s3cret",
        session_token: str | None = None,
        region: str = "us-east-1",  # the server's default DEPLOYBOT_AWS_REGION
    ) -> Any:
        return boto3.client(
            "codedeploy",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            aws_session_token=session_token,
            config=Config(retries={"max_attempts": 1}),
        )


async def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return await asyncio.to_thread(functools.partial(fn, **kwargs))


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    config: str | None = None,
    hosts: tuple[str, ...] = HOSTS,
    keys: str = KEYS,
    admins: tuple[str, ...] = ("alice",),
    clock: Clock | None = None,
    **settings: Any,
) -> AsyncIterator[Served]:
    """The whole app on 127.0.0.1 with a real Deployer (test_service's config unless ``config`` is given) and
    scripted agents for ``hosts``; ``settings`` go to Settings (e.g. github_token, github_api_url).

    ``keys`` is DEPLOYBOT_AWS_KEYS. Every CodeDeploy call asks the policy, so the key these tests sign with (alice's)
    belongs to an admin: ``admins`` replaces the config's ``server.admins`` (empty: the config's own are kept).
    ``clock``: the Deployer's clock (the system's unless given)."""
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    text = CONFIG % {"heartbeat": 60} if config is None else config
    server = {"admins": admins} if admins else {}
    deployer = await deployer_from(text, tmp_path, clock=clock, **server)
    agents = ScriptedFleet(deployer, list(hosts), never_fails)
    app = create_app(Settings(data_dir=tmp_path / "var", aws_keys=keys, **settings), deployer=deployer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(deployer, f"http://127.0.0.1:{port}/codedeploy", agents, app)
    finally:
        await agents.close()
        await runner.cleanup()
        await deployer.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as running:
        yield running


async def test_applications_groups_and_configs(served: Served) -> None:
    client = served.client()
    assert (await call(client.list_applications))["applications"] == ["app"]
    app = (await call(client.get_application, applicationName="app"))["application"]
    assert (app["applicationName"], app["computePlatform"]) == ("app", "Server")
    batch = await call(client.batch_get_applications, applicationNames=["app"])
    assert [a["applicationName"] for a in batch["applicationsInfo"]] == ["app"]
    groups = await call(client.list_deployment_groups, applicationName="app")
    assert groups["deploymentGroups"] == ["app-staging", "app-production"]
    info = (await call(client.get_deployment_group, applicationName="app", deploymentGroupName="app-production"))[
        "deploymentGroupInfo"
    ]
    assert info["deploymentConfigName"] == "CodeDeployDefault.OneAtATime"
    assert info["autoRollbackConfiguration"] == {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]}
    assert info["onPremisesInstanceTagFilters"] == [{"Key": "env", "Value": "production", "Type": "KEY_AND_VALUE"}]
    assert info["deploymentStyle"]["deploymentType"] == "IN_PLACE"
    configs = (await call(client.list_deployment_configs))["deploymentConfigsList"]
    assert "CodeDeployDefault.HalfAtATime" in configs and "CodeDeployDefault.LambdaCanary10Percent5Minutes" in configs
    half = (await call(client.get_deployment_config, deploymentConfigName="CodeDeployDefault.HalfAtATime"))[
        "deploymentConfigInfo"
    ]
    assert half["minimumHealthyHosts"] == {"type": "FLEET_PERCENT", "value": 50}
    canary = await call(
        client.get_deployment_config, deploymentConfigName="CodeDeployDefault.ECSCanary10Percent5Minutes"
    )
    assert canary["deploymentConfigInfo"]["trafficRoutingConfig"] == {
        "type": "TimeBasedCanary",
        "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 5},
    }


@pytest.mark.parametrize(
    ("operation", "kwargs", "exception"),
    [
        ("get_application", {"applicationName": "nope"}, "ApplicationDoesNotExistException"),
        (
            "get_deployment_group",
            {"applicationName": "app", "deploymentGroupName": "nope"},
            "DeploymentGroupDoesNotExistException",
        ),
        ("get_deployment_config", {"deploymentConfigName": "Nope"}, "DeploymentConfigDoesNotExistException"),
        ("get_deployment", {"deploymentId": "d-AAAAAAAAA"}, "DeploymentDoesNotExistException"),
        ("get_deployment", {"deploymentId": "bogus"}, "InvalidDeploymentIdException"),
        (
            "create_deployment",
            {
                "applicationName": "app",
                "deploymentGroupName": "app-staging",
                "revision": {"revisionType": "GitHub", "gitHubLocation": {"repository": "a/b", "commitId": "abc"}},
            },
            "InvalidRevisionException",  # not a commit SHA
        ),
        (
            "create_deployment",
            {
                "applicationName": "app",
                "deploymentGroupName": "app-staging",
                "revision": {"revisionType": "S3", "s3Location": {"bucket": "deploybot", "key": "sha256:" + "0" * 64}},
            },
            "RevisionDoesNotExistException",
        ),
        ("batch_get_deployments", {"deploymentIds": []}, "DeploymentIdRequiredException"),
    ],
)
async def test_errors_are_modeled_exceptions(served: Served, operation: str, kwargs: dict, exception: str) -> None:
    client = served.client()
    with pytest.raises(getattr(client.exceptions, exception)) as info:
        await call(getattr(client, operation), **kwargs)
    assert info.value.response["Error"]["Message"]


async def test_unsupported_operation_is_a_clear_400(served: Served) -> None:
    """Every operation of botocore's model is answered (test_codedeploy_groups_api.py counts them); a name outside
    the model is a 400 naming it."""
    target = "CodeDeploy_20141006.LaunchRocket"
    request = AWSRequest(
        method="POST",
        url=served.url,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
        data=b"{}",
    )
    SigV4Auth(Credentials("AKIDEPLOYBOT", "s3cret"), "codedeploy", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    async with aiohttp.ClientSession() as session, session.post(served.url, data=b"{}", headers=headers) as response:
        body = await response.json(content_type=None)
    assert response.status == 400
    assert body["__type"] == "UnknownOperationException"
    assert "LaunchRocket" in body["message"]


async def test_temporary_credentials_are_accepted(served: Served) -> None:
    """boto3 with a session token sends (and signs) X-Amz-Security-Token; its value is not checked."""
    client = served.client(session_token="FwoGZXIvYXdzEBYaDAnything")
    assert (await call(client.list_applications))["applications"] == ["app"]


def test_an_unsigned_security_token_is_refused() -> None:
    keys = sigv4.parse_keys(KEYS)
    headers = {**_signed(b"{}"), "X-Amz-Security-Token": "added-after-signing"}
    with pytest.raises(sigv4.SignatureRejected) as info:
        sigv4.verify(keys, method="POST", url=_SIGNED_URL, headers=headers, body=b"{}")
    assert info.value.error == "IncompleteSignature"


@pytest.mark.parametrize(
    ("access_key", "secret", "code"),
    [
        ("AKIDEPLOYBOT", "wrong", "InvalidSignatureException"),
        ("AKIUNKNOWN", "s3cret", "UnrecognizedClientException"),
    ],
)
async def test_bad_credentials_are_refused(served: Served, access_key: str, secret: str, code: str) -> None:
    with pytest.raises(ClientError) as info:
        await call(served.client(access_key, secret).list_applications)
    assert info.value.response["Error"]["Code"] == code


def test_expired_signature_is_refused() -> None:
    keys = sigv4.parse_keys(KEYS)
    signed_at = "20260101T000000Z"
    headers = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEPLOYBOT/20260101/us-east-1/codedeploy/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-amz-target, Signature=00",
        "X-Amz-Date": signed_at,
        "X-Amz-Target": "CodeDeploy_20141006.ListApplications",
        "Host": "127.0.0.1",
    }
    later = datetime.datetime(2026, 1, 1, 0, 6, tzinfo=datetime.UTC)
    with pytest.raises(sigv4.SignatureRejected) as info:
        sigv4.verify(keys, method="POST", url="http://127.0.0.1/codedeploy", headers=headers, body=b"", now=later)
    assert (info.value.error, info.value.message.startswith("Signature expired")) == ("InvalidSignature", True)


def test_malformed_keys_are_rejected() -> None:
    assert sigv4.parse_keys(KEYS)["AKIOTHER"].actor == "bob"
    with pytest.raises(ValueError, match="ACCESS_KEY:SECRET:ACTOR"):
        sigv4.parse_keys("only-a-key")


async def test_create_deployment_waits_and_reports_targets(served: Served) -> None:
    client = served.client()
    created = await call(
        client.create_deployment, applicationName="app", deploymentGroupName="app-staging", description="via boto3"
    )
    deployment_id = created["deploymentId"]
    waiter = client.get_waiter("deployment_successful")
    await call(waiter.wait, deploymentId=deployment_id, WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
    assert info["status"] == "Succeeded"
    assert (info["applicationName"], info["deploymentGroupName"]) == ("app", "app-staging")
    assert info["deploymentConfigName"] == "CodeDeployDefault.AllAtOnce"
    assert (info["creator"], info["description"]) == ("user", "via boto3")
    assert info["deploymentOverview"]["Succeeded"] == 2
    assert info["createTime"] <= info["startTime"] <= info["completeTime"]
    assert "errorInformation" not in info and "rollbackInfo" not in info
    row = await served.deployer.store.get_deployment(deployment_id)
    assert row is not None and row["request"]["actor"] == "alice"  # the access key's actor

    targets = (await call(client.list_deployment_targets, deploymentId=deployment_id))["targetIds"]
    assert targets == ["s1", "s2"]
    got = await call(client.batch_get_deployment_targets, deploymentId=deployment_id, targetIds=targets)
    instance = got["deploymentTargets"][0]["instanceTarget"]
    assert (instance["targetId"], instance["status"]) == ("s1", "Succeeded")
    events = instance["lifecycleEvents"]
    assert events[0]["lifecycleEventName"] == "ApplicationStop"
    assert all(e["status"] == "Succeeded" and e["diagnostics"]["errorCode"] == "Success" for e in events)
    assert events[-1]["diagnostics"]["logTail"] == "s1 ValidateService"

    listed = await call(
        client.list_deployments,
        applicationName="app",
        deploymentGroupName="app-staging",
        includeOnlyStatuses=["Succeeded"],
    )
    assert listed["deployments"] == [deployment_id]
    batch = await call(client.batch_get_deployments, deploymentIds=[deployment_id])
    assert batch["deploymentsInfo"][0]["deploymentId"] == deployment_id


async def test_list_deployments_pages_with_next_token(served: Served) -> None:
    ids = []
    for revision in ("rev-a", "rev-b"):
        doc = await served.deployer.start(DeployRequest("app", "staging", revision=revision))
        ids.append(doc["id"])
    served.app[CODEDEPLOY].operations.page_size = 1
    paginator = served.client().get_paginator("list_deployments")
    pages = await call(lambda: list(paginator.paginate(applicationName="app")))
    assert len(pages) == 2
    assert sorted(d for p in pages for d in p["deployments"]) == sorted(ids)


async def test_stop_with_rollback_links_both_deployments(served: Served) -> None:
    client = served.client()
    first = await call(
        client.create_deployment,
        applicationName="app",
        deploymentGroupName="production",  # the environment name works too
        revision={"revisionType": "S3", "s3Location": {"bucket": "deploybot", "key": "rev-a"}},
    )
    waiter = client.get_waiter("deployment_successful")
    await call(waiter.wait, deploymentId=first["deploymentId"], WaiterConfig={"Delay": 1, "MaxAttempts": 20})
    served.agents.gate = asyncio.Event()  # hooks now wait: the next deployment is still running when stopped
    second = await call(
        client.create_deployment,
        applicationName="app",
        deploymentGroupName="app-production",
        revision={"revisionType": "S3", "s3Location": {"bucket": "deploybot", "key": "rev-b"}},
    )
    deployment_id = second["deploymentId"]
    await eventually(lambda: any(d == deployment_id for _, d, _ in served.agents.log), "a host to be at work")
    running = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
    assert running["status"] == "InProgress"
    stopped = await call(client.stop_deployment, deploymentId=deployment_id, autoRollbackEnabled=True)
    served.agents.gate.set()
    assert stopped["status"] == "Succeeded"
    info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
    assert info["status"] == "Stopped"
    assert info["errorInformation"]["code"] == "MANUAL_STOP"
    rollback_id = info["rollbackInfo"]["rollbackDeploymentId"]
    rollback = (await call(client.get_deployment, deploymentId=rollback_id))["deploymentInfo"]
    assert rollback["creator"] == "codeDeployRollback"
    assert rollback["rollbackInfo"]["rollbackTriggeringDeploymentId"] == deployment_id
    with pytest.raises(client.exceptions.DeploymentAlreadyCompletedException):
        await call(client.stop_deployment, deploymentId=deployment_id)


_SIGNED_URL = "http://127.0.0.1:8080/codedeploy/?a=1&b=two%20words"


def _signed(body: bytes, secret: str = "s3cret") -> dict[str, str]:
    request = AWSRequest(
        method="POST",
        url=_SIGNED_URL,
        headers={"X-Amz-Target": "CodeDeploy_20141006.ListApplications", "Content-Type": "application/json"},
        data=body,
    )
    SigV4Auth(Credentials("AKIDEPLOYBOT", secret), "codedeploy", "us-east-1").add_auth(request)
    return {**dict(request.headers.items()), "Host": "127.0.0.1:8080"}


@pytest.mark.parametrize(
    ("signed_body", "sent_body", "secret", "accepted"),
    [
        (b"{}", b"{}", "s3cret", True),
        (b"{}", b'{"applicationName": "x"}', "s3cret", False),  # body changed after signing
        (b"{}", b"{}", "other", False),
    ],
)
def test_verify_recomputes_the_signature(signed_body: bytes, sent_body: bytes, secret: str, accepted: bool) -> None:
    keys = sigv4.parse_keys(KEYS)
    url = _SIGNED_URL
    headers = _signed(signed_body, secret)
    if accepted:
        assert sigv4.verify(keys, method="POST", url=url, headers=headers, body=sent_body).actor == "alice"
    else:
        with pytest.raises(sigv4.SignatureRejected) as info:
            sigv4.verify(keys, method="POST", url=url, headers=headers, body=sent_body)
        assert info.value.error == "InvalidSignature"


async def test_failed_hook_shows_in_diagnostics(served: Served) -> None:
    # AllAtOnce needs no host to stay healthy: only when every host fails is the deployment Failed.
    served.agents.behaviour = lambda host, event, sha: "exit 3" if event == "ApplicationStart" else None
    client = served.client()
    created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
    deployment_id = created["deploymentId"]
    waiter = client.get_waiter("deployment_successful")
    with pytest.raises(WaiterError):
        await call(waiter.wait, deploymentId=deployment_id, WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    info = (await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"]
    assert info["status"] == "Failed" and info["errorInformation"]["code"]
    assert info["deploymentOverview"]["Failed"] == 2
    target = (await call(client.get_deployment_target, deploymentId=deployment_id, targetId="s2"))["deploymentTarget"]
    failed = [e for e in target["instanceTarget"]["lifecycleEvents"] if e["status"] == "Failed"]
    assert [e["lifecycleEventName"] for e in failed] == ["ApplicationStart"]
    assert failed[0]["diagnostics"]["errorCode"] == "ScriptFailed"
    assert failed[0]["diagnostics"]["message"] == "exit 3"
    with pytest.raises(client.exceptions.DeploymentAlreadyCompletedException):
        await call(client.continue_deployment, deploymentId=deployment_id)
    with pytest.raises(client.exceptions.InvalidDeploymentStatusException):
        await call(client.list_deployments, includeOnlyStatuses=["Sideways"])
    with pytest.raises(client.exceptions.DeploymentTargetDoesNotExistException):
        await call(client.get_deployment_target, deploymentId=deployment_id, targetId="p1")
