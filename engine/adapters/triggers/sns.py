"""Trigger messages published to an SNS topic through aioboto3, as CodeDeploy publishes them.

The message is the CodeDeploy-shaped JSON (engine/core/triggers.py) and the subject names the event. The topic's
region comes from its ARN; credentials, profile and ``endpoint_url`` from the group's ``aws`` account. A throttled
or unreachable SNS is retried by the outbox; a topic that does not exist or may not be published to is not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsClients, aws_error
from engine.core.config.model import AwsAccount
from engine.core.triggers import SNS_TOPIC_ARN, DeliveryFailed

COMPONENT = "sns"
_PERMANENT = frozenset(
    {"NotFound", "NotFoundException", "AuthorizationError", "InvalidParameter", "InvalidParameterValue"}
)


class SnsTriggerSender:
    """``TriggerSender`` for ``sns`` targets: one set of clients per (account, topic region), made on first use."""

    def __init__(self, accounts: Mapping[str, AwsAccount]) -> None:
        self.accounts = dict(accounts)
        self._clients: dict[tuple[str, str], AwsClients] = {}

    def _clients_for(self, account_name: str, region: str) -> AwsClients:
        key = (account_name, region)
        if key not in self._clients:
            account = self.accounts.get(account_name) or AwsAccount(account_name)
            self._clients[key] = AwsClients(
                AwsAccount(account.name, region=region, profile=account.profile, endpoint_url=account.endpoint_url)
            )
        return self._clients[key]

    async def send(self, delivery: Mapping[str, Any]) -> None:
        topic = str(delivery["target"]["address"])
        match = SNS_TOPIC_ARN.match(topic)
        if match is None:
            raise DeliveryFailed(f"{topic!r} is not an SNS topic ARN", permanent=True)
        clients = self._clients_for(str(delivery.get("aws_account") or "default"), match["region"])
        try:
            client = await clients.get("sns")
            await client.publish(
                TopicArn=topic,
                Message=json.dumps(delivery["message"]),
                Subject=str(delivery.get("subject") or delivery["event"])[:100],
                MessageAttributes={"event": {"DataType": "String", "StringValue": str(delivery["event"])}},
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise DeliveryFailed(str(aws_error(COMPONENT, exc)), permanent=code in _PERMANENT) from exc
        except BotoCoreError as exc:
            raise DeliveryFailed(str(aws_error(COMPONENT, exc))) from exc

    async def close(self) -> None:
        for clients in self._clients.values():
            await clients.close()
        self._clients.clear()
