"""SNS triggers against moto in server mode: a deployment publishes CodeDeploy-shaped messages to the topic, read
back through an SQS queue subscribed to it (never patched: the real aioboto3 calls reach moto over HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import deployer_from, eventually
from test_service import ScriptedFleet, make_revision, never_fails, wait_final

from bot.assembly import ServedDeployer
from engine.adapters.aws.accounts import AwsClients
from engine.core.requests import DeployRequest
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

CONFIG = """
server: {data_dir: var}
aws:
  default: {region: %(region)s, endpoint_url: "%(endpoint)s"}
hosts:
  - {name: web-1}
applications:
  app:
    revision: rev-a
    environments: [staging]
    deployment_groups:
      staging:
        targets: {hosts: [web-1]}
        triggers:
          - name: to-sns
            events: [DeploymentStart, DeploymentSuccess, InstanceSuccess]
            target: {sns: "%(topic)s"}
"""


async def _topic_with_queue(aws: AwsClients) -> tuple[str, str]:  # noqa: F811
    sns, sqs = await aws.get("sns"), await aws.get("sqs")
    topic = (await sns.create_topic(Name="deploys"))["TopicArn"]
    queue_url = (await sqs.create_queue(QueueName="deploys-inbox"))["QueueUrl"]
    queue_arn = (await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url


async def _received(aws: AwsClients, queue_url: str, into: list[dict[str, Any]]) -> int:  # noqa: F811
    sqs = await aws.get("sqs")
    answer = await sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    for message in answer.get("Messages", []):
        into.append(json.loads(message["Body"]))  # the SNS envelope: Subject, Message, MessageAttributes
        await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return len(into)


@pytest.mark.usefixtures("aws_env")
async def test_a_deployment_publishes_codedeploy_messages_to_the_topic(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    make_revision(tmp_path, "rev-a", "1")
    topic, queue_url = await _topic_with_queue(aws)
    config = CONFIG % {"region": REGION, "endpoint": moto_reset, "topic": topic}
    deployer = await deployer_from(config, tmp_path)
    assert isinstance(deployer, ServedDeployer)
    agents = ScriptedFleet(deployer, ["web-1"], never_fails)
    envelopes: list[dict[str, Any]] = []
    try:
        started = await deployer.start(DeployRequest("app", "staging", actor="alice"))
        doc = await wait_final(deployer, started["id"])
        await eventually(lambda: _more(aws, queue_url, envelopes), "three SNS messages")
        await _received(aws, queue_url, envelopes)  # and no more
    finally:
        await agents.close()
        await deployer.close()
    by_event = {e["MessageAttributes"]["event"]["Value"]: e for e in envelopes}
    assert set(by_event) == {"DeploymentStart", "DeploymentSuccess", "InstanceSuccess"}
    assert len(envelopes) == 3  # once per event
    success = by_event["DeploymentSuccess"]
    assert success["TopicArn"] == topic
    assert success["Subject"] == f"DeploymentSuccess: deploybot {doc['id']} in {REGION} to app"
    message = json.loads(success["Message"])
    assert message["eventTriggerName"] == "to-sns"
    assert message["region"] == REGION and message["accountId"] == topic.split(":")[4]
    assert message["deploymentId"] == doc["id"] and message["status"] == "Succeeded"
    assert message["applicationName"] == "app" and message["deploymentGroupName"] == "app-staging"
    assert message["deploymentOverview"] == {
        "Failed": "0",
        "InProgress": "0",
        "Pending": "0",
        "Skipped": "0",
        "Succeeded": "1",
    }
    instance = json.loads(by_event["InstanceSuccess"]["Message"])
    assert instance["instanceId"] == "web-1" and instance["instanceStatus"] == "Succeeded"
    assert [e["LifecycleEvent"] for e in instance["lifecycleEvents"]][-1] == "ValidateService"


async def _more(aws: AwsClients, queue_url: str, into: list[dict[str, Any]]) -> bool:  # noqa: F811
    return await _received(aws, queue_url, into) >= 3


@pytest.mark.usefixtures("aws_env")
async def test_an_unknown_topic_is_not_retried(tmp_path: Path, moto_reset: str) -> None:  # noqa: F811
    make_revision(tmp_path, "rev-a", "1")
    topic = "arn:aws:sns:us-east-1:123456789012:nobody-made-this"
    deployer = await deployer_from(CONFIG % {"region": REGION, "endpoint": moto_reset, "topic": topic}, tmp_path)
    assert isinstance(deployer, ServedDeployer)
    agents = ScriptedFleet(deployer, ["web-1"], never_fails)
    try:
        started = await deployer.start(DeployRequest("app", "staging"))
        doc = await wait_final(deployer, started["id"])

        async def failed() -> list[Any]:
            return await deployer.store.list_intents(source="trigger", states=["failed"])

        await eventually(lambda: _count(failed(), 3), "three entries given up")
        rows = await failed()
    finally:
        await agents.close()
        await deployer.close()
    assert doc["status"] == "Succeeded"
    assert all(r["attempts"] == 1 for r in rows)
    assert all("NotFound" in r["outcome"]["reason"] for r in rows)


async def _count(rows: Any, count: int) -> bool:
    return len(await rows) == count
