"""AWS clients for one configured account, made once and shared (aioboto3).

Every AWS adapter (S3, ELBv2, Lambda, ECS, CloudWatch, EC2) gets its clients here, so region, profile,
``endpoint_url`` and the retry policy are decided in one place. Credentials come from the standard chain
(environment, shared config/credentials files, instance or task role) or the account's named ``profile``.
Clients are expensive to make (each loads the service model), so they are created on first use and kept until
``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from engine.core.config.model import AwsAccount
from engine.core.errors import AdapterError

# Standard retries with a small budget: a throttled call is retried, but a deployment step never hangs for minutes
# behind an unreachable endpoint (connect and read timeouts bound each attempt).
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=5,
    read_timeout=30,
)


class AwsClients:
    """The clients of one account. ``await clients.get("lambda")`` returns a ready aiobotocore client."""

    def __init__(self, account: AwsAccount, *, config: Config = CLIENT_CONFIG) -> None:
        self.account = account
        self._session = aioboto3.Session(profile_name=account.profile, region_name=account.region)
        self._config = config
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def get(self, service: str) -> Any:
        async with self._lock:
            if service not in self._clients:
                client = self._session.client(service, endpoint_url=self.account.endpoint_url, config=self._config)
                self._clients[service] = await self._stack.enter_async_context(client)
            return self._clients[service]

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """``operation`` of ``service``'s client; an AWS failure raised as ``aws_error`` naming the service."""
        client = await self.get(service)
        try:
            result: dict[str, Any] = await getattr(client, operation)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(service, exc) from exc
        return result

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()


class AwsAccounts:
    """One ``AwsClients`` per account name, made on first use."""

    def __init__(self, accounts: dict[str, AwsAccount] | None = None) -> None:
        self._accounts = dict(accounts or {})
        self._clients: dict[str, AwsClients] = {}

    def clients(self, name: str = "default") -> AwsClients:
        if name not in self._clients:
            self._clients[name] = AwsClients(self._accounts.get(name) or AwsAccount(name))
        return self._clients[name]

    async def close(self) -> None:
        for clients in self._clients.values():
            await clients.close()
        self._clients.clear()


def aws_error(service: str, exc: Exception) -> AdapterError:
    """An AWS failure as an AdapterError naming the service, the AWS error code and message (plain words, at
    most 500 characters: an endpoint answering with an HTML error page must not flood a chat thread)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return AdapterError(service, f"{error.get('Code', 'Error')}: {plain_words(str(error.get('Message', exc)))}")
    if isinstance(exc, BotoCoreError):
        return AdapterError(service, plain_words(str(exc)))
    return AdapterError(service, f"{type(exc).__name__}: {plain_words(str(exc))}")


def plain_words(text: str, limit: int = 500) -> str:
    """``text`` without HTML tags and runs of whitespace, cut to ``limit`` characters."""
    words = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return words if len(words) <= limit else words[: limit - 1] + "…"
