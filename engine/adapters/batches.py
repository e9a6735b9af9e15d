"""Writes that arrive together go to the store together: one transaction for all the callers waiting meanwhile.

An agent's result POST and its heartbeat each need one write, and a fleet of hundreds sends them in bursts. A
``WriteBatches`` keeps one writer task: a caller's item waits while a batch is being written, and everything that
arrived meanwhile is written next, in arrival order, in one ``write`` call. Each caller gets the result ``write``
returned for its item (or its exception); ``after`` then runs once for the batch, with the callers already answered,
before the next batch is written. A caller cancelled while waiting does not cancel the write: its item is written
and ``after`` runs all the same (what it says happened, happens).

Writes that arrive a few milliseconds apart rather than together (1,000 agents' heartbeats: 200 a second, one at a
time) would still each get a transaction of their own. For them, ``gather`` is awaited each time the writer wakes
from idle, before it takes its batch: what arrives meanwhile joins it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class WriteBatches(Generic[T, R]):
    """See the module docstring."""

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[list[R]]],
        *,
        after: Callable[[list[T], list[R]], Awaitable[None]] | None = None,
        gather: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._write = write
        self._after = after
        self._gather = gather
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else waits; its result."""
        written: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())
        # Not shielded: a shield's extra hop would let whatever ``after`` wakes run before this caller answers.
        # A cancelled caller cancels ``written`` alone; the writer skips it (below) and still writes the item.
        return await written

    async def _drain(self) -> None:
        if self._gather is not None:
            try:
                await self._gather()
            except Exception:  # what waits is written all the same: its callers must not wait for ever
                log.exception("while gathering a batch of %d writes", len(self._waiting))
        while self._waiting:
            batch, self._waiting = self._waiting, []
            items = [item for item, _ in batch]
            try:
                results = await self._write(items)
            except Exception as exc:  # every caller of the batch hears it; the next batch is tried all the same
                for _, written in batch:
                    if not written.done():  # done: its caller was cancelled
                        written.set_exception(exc)
                continue
            for (_, written), result in zip(batch, results, strict=True):
                if not written.done():
                    written.set_result(result)
            if self._after is not None:
                # ``set_result`` only schedules the callers: one turn of the loop lets them answer before ``after``
                # runs (the engine, for agents' results: no agent's answer waits for it).
                await asyncio.sleep(0)
                try:
                    await self._after(items, results)
                except Exception:  # the writer must outlive it: callers are waiting for the next batch
                    log.exception("after a batch of %d writes", len(items))
