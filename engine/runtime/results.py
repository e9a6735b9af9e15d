"""Where the executors (the agents' fleet, the Lambda/ECS drivers) deliver the outcome of a lifecycle event.

They are made before the Deployer that consumes their results, so the composition root hands them ``deliver`` and
the Deployer subscribes when it is made: neither side is wired by assigning attributes afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.ports import OnResult


class CommandResults:
    def __init__(self) -> None:
        self._consumer: OnResult | None = None

    def subscribe(self, consumer: OnResult) -> None:
        self._consumer = consumer

    async def deliver(self, command: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """A result that arrives before anyone subscribed has no deployment to go to (nothing runs yet)."""
        if self._consumer is not None:
            await self._consumer(command, result)
