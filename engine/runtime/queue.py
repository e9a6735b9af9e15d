"""One deployment in flight per deployment group; the rest wait their turn (FIFO, a rollback first).

The lock serializes every decision to start a deployment — a new request, a deployment ending, an approval
completing, a lock released or expiring — so two of them can never start two deployments of one group. The
Deployer registers how a group's next deployment starts (``serve``); the release flow only asks for held work to
start (``start_held``) and runs its lock-expiry timers here (``spawn``), so it never needs the Deployer itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

StartNext = Callable[[str], Awaitable[None]]


class GroupQueue:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._in_flight: dict[str, str] = {}  # group name -> the deployment it runs
        self._background: set[asyncio.Task[None]] = set()
        self._start_next: StartNext | None = None

    def serve(self, start_next: StartNext) -> None:
        """How a free group's next deployment starts (called with ``lock`` held)."""
        self._start_next = start_next

    def in_flight(self, group_name: str) -> str | None:
        return self._in_flight.get(group_name)

    def occupy(self, group_name: str, deployment_id: str) -> None:
        self._in_flight[group_name] = deployment_id

    def vacate(self, group_name: str, deployment_id: str) -> None:
        if self._in_flight.get(group_name) == deployment_id:
            del self._in_flight[group_name]

    async def start_next(self, group_name: str) -> None:
        """Start the group's next deployment if it is free; the caller holds ``lock``."""
        assert self._start_next is not None, "GroupQueue.serve was not called"
        await self._start_next(group_name)

    async def start_held(self, group_name: str) -> None:
        """Start the group's next deployment if it is free (after whatever held it let go)."""
        async with self.lock:
            await self.start_next(group_name)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in the background until it ends or the queue closes."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
