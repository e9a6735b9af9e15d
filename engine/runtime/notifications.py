"""Telling the Notifiers (Slack thread, GitHub status, metrics) that a deployment changed, without a read per step.

Each notification reads the whole deployment document (row, every target event, revision), which costs more than
the transition that caused it: with 20 hosts AllAtOnce a deployment takes ~50 steps, and building ~50 documents
was a sizeable share of the server's CPU. So:

  - A change of anything a notifier reacts to — the deployment's status, stage, traffic, pause, error, or any
    host's overall status (started, failed, done) — is delivered at once.
  - A change that only moves a host from one lifecycle event to the next is delivered at once too, unless another
    was delivered less than ``interval`` seconds ago (longer for a large deployment, whose documents are dear to
    read: ``COST_SHARE``); then one delivery of the latest document follows when the interval is up. Per-host
    progress inside a burst thus arrives merged, never lost, and at most that late.

Deliveries for one deployment are serialized, so notifiers see its documents in order. The interval is the event
loop's time by default, not the engine's Clock: it is a throttle on our own work, not part of any deployment (tests
hand in a fake ``timer`` to move it themselves).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.ports import Notifier


class Timer(Protocol):
    """The two readings of time the throttle needs (the engine's ``Clock`` has both)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class _LoopTime:
    """The event loop's own time: what a throttle of our own work runs on."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.05
"""Seconds between two deliveries that only report progress (at least: see ``COST_SHARE``)."""
COST_SHARE = 10
"""Progress deliveries of a deployment are spaced by at least this many times what the last one took: a 1,000-host
document costs ~10 ms to read, and one every 50 ms would spend a fifth of the server on it."""


@dataclass(slots=True)
class _Deployment:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    milestones: Hashable | None = None  # what the last delivery showed notifiers, as a signature
    delivered_at: float = float("-inf")
    changes: int = 0  # changed() calls so far
    delivered: int = 0  # changes shown by the last delivery (its document is read after they happened)
    trailing: asyncio.Task[None] | None = None
    cost: float = 0.0  # seconds the last delivery took to read the document

    def progress_interval(self, interval: float) -> float:
        """``interval``, or longer for a deployment whose documents are dear to read: reading them takes at most
        1/COST_SHARE of the time, however many hosts they hold."""
        return max(interval, self.cost * COST_SHARE)


class Notifications:
    """Delivers ``fetch(deployment_id)`` to every notifier as described in the module docstring."""

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        fetch: Callable[[str], Awaitable[Mapping[str, Any]]],
        *,
        interval: float = PROGRESS_INTERVAL,
        timer: Timer | None = None,
    ) -> None:
        self.notifiers = notifiers
        self._fetch = fetch
        self.interval = interval
        self._timer = timer or _LoopTime()
        self._deployments: dict[str, _Deployment] = {}

    async def changed(
        self, deployment_id: str, milestones: Hashable | None = None, *, group: str | None = None
    ) -> None:
        """``milestones``: a signature of what notifiers react to, None when unknown (always delivered at once).
        ``group``: the deployment's group, when known; no notifier following it, nothing is read or delivered."""
        if not self.notifiers or (group is not None and not any(n.follows(group) for n in self.notifiers)):
            return
        state = self._deployments.setdefault(deployment_id, _Deployment())
        state.changes += 1
        if milestones is not None and milestones == state.milestones:
            due = state.delivered_at + state.progress_interval(self.interval)
            if self._timer.monotonic() < due:
                if state.trailing is None:
                    state.trailing = asyncio.ensure_future(self._trailing(deployment_id, state, due))
                return
        await self._deliver(deployment_id, state, milestones)

    async def _trailing(self, deployment_id: str, state: _Deployment, due: float) -> None:
        await self._timer.sleep(max(0.0, due - self._timer.monotonic()))
        state.trailing = None
        if state.changes > state.delivered:  # else a later delivery already showed the latest document
            try:
                await self._deliver(deployment_id, state, state.milestones)
            except Exception:  # nobody awaits this task: say so here, the next change delivers again
                log.exception("could not notify about deployment %s", deployment_id)

    async def _deliver(self, deployment_id: str, state: _Deployment, milestones: Hashable | None) -> None:
        async with state.lock:
            state.milestones = milestones
            state.delivered_at = self._timer.monotonic()
            state.delivered = state.changes
            document = await self._fetch(deployment_id)
            state.cost = self._timer.monotonic() - state.delivered_at  # the read alone: notifiers may wait on the net
            group = str(document.get("group"))
            for notifier in self.notifiers:
                if not notifier.follows(group):  # e.g. the triggers of another group: not its business
                    continue
                try:
                    await notifier.deployment_changed(document)
                except Exception:  # a broken notifier must never break a deployment
                    log.exception("notifier %r failed", notifier)
        if milestones is None and state.trailing is None and not state.lock.locked():
            # Unknown to the runner (finished, queued, stopped): nothing to coalesce with any more.
            self._deployments.pop(deployment_id, None)

    async def close(self) -> None:
        """Cancel pending trailing deliveries (shutdown)."""
        for state in self._deployments.values():
            if state.trailing is not None:
                state.trailing.cancel()
