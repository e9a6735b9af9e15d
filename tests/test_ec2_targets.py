"""instances_with_tags against moto in server mode: every tag must match, only running instances count."""

from __future__ import annotations

import pytest

from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.ec2 import instances_with_tags
from engine.core.config.model import AwsAccount
from engine.core.errors import AdapterError
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401


async def launch(clients: AwsClients, count: int, **tags: str) -> list[str]:
    ec2 = await clients.get("ec2")
    answer = await ec2.run_instances(
        ImageId="ami-12345678",
        MinCount=count,
        MaxCount=count,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )
    return [instance["InstanceId"] for instance in answer["Instances"]]


async def test_running_instances_with_all_tags_sorted(aws: AwsClients) -> None:  # noqa: F811
    web_prod = await launch(aws, 3, app="web", env="prod")
    await launch(aws, 2, app="web", env="staging")
    await launch(aws, 1, app="api", env="prod")
    stopped, terminated = await launch(aws, 2, app="web", env="prod")
    ec2 = await aws.get("ec2")
    await ec2.stop_instances(InstanceIds=[stopped])
    await ec2.terminate_instances(InstanceIds=[terminated])

    assert await instances_with_tags(aws, {"app": "web", "env": "prod"}) == tuple(sorted(web_prod))
    assert len(await instances_with_tags(aws, {"app": "web"})) == 5
    assert await instances_with_tags(aws, {"app": "web", "env": "qa"}) == ()


async def test_instances_of_every_reservation(aws: AwsClients) -> None:  # noqa: F811
    launched = [i for _ in range(3) for i in await launch(aws, 4, role="worker")]  # three reservations
    found = await instances_with_tags(aws, {"role": "worker"})
    assert found == tuple(sorted(launched)) and len(found) == 12


async def test_no_tags_select_nothing(aws: AwsClients) -> None:  # noqa: F811
    await launch(aws, 1, app="web")
    assert await instances_with_tags(aws, {}) == ()


async def test_an_unreachable_endpoint_is_an_adapter_error(aws_env: None) -> None:  # noqa: F811
    from botocore.config import Config

    clients = AwsClients(
        AwsAccount("broken", region=REGION, endpoint_url="http://127.0.0.1:9"),
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    try:
        with pytest.raises(AdapterError, match=r"^ec2: "):
            await instances_with_tags(clients, {"app": "web"})
    finally:
        await clients.close()
