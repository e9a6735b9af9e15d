"""EC2 instances as deployment targets, selected by tags (a group's ``targets: {ec2_tags: {...}}``).

CodeDeploy's ``ec2TagFilters`` with KEY_AND_VALUE filters ANDed: an instance is a target when it carries every tag
and is running. The answer is asked again at each deployment, so the fleet follows the Auto Scaling group.
"""

from __future__ import annotations

from collections.abc import Mapping

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsClients, aws_error

COMPONENT = "ec2"


async def instances_with_tags(clients: AwsClients, tags: Mapping[str, str]) -> tuple[str, ...]:
    """Ids of the running instances carrying all ``tags``, sorted; () for no tags (an empty selector matches
    nothing, as for declared hosts). Every page is read (moto answers in one). Raises AdapterError when EC2
    cannot be asked."""
    if not tags:
        return ()
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in sorted(tags.items())]
    filters.append({"Name": "instance-state-name", "Values": ["running"]})
    client = await clients.get("ec2")
    found: set[str] = set()
    try:
        async for page in client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                found.update(instance["InstanceId"] for instance in reservation.get("Instances", []))
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(COMPONENT, exc) from exc
    return tuple(sorted(found))
