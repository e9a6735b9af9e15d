"""The lease keeper: which deployment groups this replica drives, renewing their leases and noticing a lost one.

A replica drives a group's deployments only while it holds the group's lease (engine/core/leases.py). ``acquire``
takes a free or expired one (a new tenure, a new generation); ``round`` (every third of the lease time, from the
Deployer's loop on a shared store) renews every held lease and reports those lost: refused by the store (another
replica took it over) or not renewed in time by this replica's own clock (the store could not be reached). The
Deployer steps down from a lost group: it cancels its runner there without side effects, and the new owner resumes
the stored state.

``fenced(target, lease)`` wraps the store, or an executor that writes to it, so that every call made through it is
fenced by the lease (the store's ``fencing``): a runner handed fenced parts cannot write once its lease is gone,
however long it was paused. Only the calls are fenced, never tasks that outlive them.

A replica id (``new_replica_id``) names this process: made when ``deploybot serve`` starts, never reused.
"""

from __future__ import annotations

import functools
import inspect
import logging
import secrets
import socket
import string
from collections import Counter
from typing import Any, TypeVar, cast

from engine.core.leases import Lease, lapsed, renew_interval
from engine.ports import Clock, LeaseRecords

log = logging.getLogger(__name__)

T = TypeVar("T")


def new_replica_id(port: int | None = None) -> str:
    """``<hostname>:<port>:<6 random characters>``: who holds a lease, readable in ``deploybot replicas``."""
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"{socket.gethostname()}:{port if port is not None else '-'}:{suffix}"


class Fenced:
    """``target`` whose coroutine methods run under ``store.fencing(lease)``; anything else passes through. Each call
    that went through is counted in ``calls`` under (group, generation)."""

    def __init__(self, target: Any, store: LeaseRecords, lease: Lease, calls: Counter[tuple[str, int]]) -> None:
        self._target = target
        self._store = store
        self.lease = lease
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not inspect.iscoroutinefunction(value):
            return value

        @functools.wraps(value)
        async def fenced_call(*args: Any, **kwargs: Any) -> Any:
            with self._store.fencing(self.lease):
                result = await value(*args, **kwargs)
            self._calls[(self.lease.group, self.lease.generation)] += 1
            return result

        return fenced_call


class Ownership:
    """The leases this replica holds (see the module docstring)."""

    def __init__(self, store: LeaseRecords, clock: Clock, replica_id: str, lease_seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self._held: dict[str, Lease] = {}
        self._renewed_at: dict[str, float] = {}  # monotonic: when the last successful take or renewal was sent
        self.calls: Counter[tuple[str, int]] = Counter()
        """Fenced calls that went through, by (group, generation): what this replica did under each tenure."""

    @property
    def interval(self) -> float:
        """Seconds between rounds: renewals and the look for groups to take over."""
        return renew_interval(self.lease_seconds)

    def lease(self, group: str) -> Lease | None:
        return self._held.get(group)

    def held(self) -> dict[str, Lease]:
        return dict(self._held)

    def fenced(self, target: T, lease: Lease) -> T:
        """``target`` with every call fenced by ``lease`` (see ``Fenced``)."""
        return cast(T, Fenced(target, self.store, lease, self.calls))

    async def acquire(self, group: str) -> Lease | None:
        """The group's lease: the one held, or a new tenure when it is free or expired; None when another replica
        holds it."""
        held = self._held.get(group)
        if held is not None:
            return held
        sent = self.clock.monotonic()
        lease = await self.store.acquire_lease(group, self.replica_id, seconds=self.lease_seconds, now=self.clock.now())
        if lease is not None:
            self._held[group] = lease
            self._renewed_at[group] = sent
            log.info("%s took the lease of %s (generation %d)", self.replica_id, group, lease.generation)
        return lease

    async def release(self, group: str) -> None:
        """Let the group's lease go (nothing more to drive there), so any replica may take it at once."""
        lease = self.forget(group)
        if lease is not None:
            await self.store.release_lease(lease)
            log.info("%s released the lease of %s (generation %d)", self.replica_id, group, lease.generation)

    def forget(self, group: str) -> Lease | None:
        """Stop holding the group's lease without writing (it is lost already)."""
        self._renewed_at.pop(group, None)
        return self._held.pop(group, None)

    async def renew(self) -> dict[str, str]:
        """Renew every held lease; the groups lost since the last round, each with why (forgotten already)."""
        lost: dict[str, str] = {}
        for group, lease in list(self._held.items()):
            sent = self.clock.monotonic()
            try:
                renewed = await self.store.renew_lease(lease, seconds=self.lease_seconds, now=self.clock.now())
            except Exception as exc:  # the store out of reach: still ours until our own clock says it may not be
                log.warning("%s could not renew the lease of %s: %s", self.replica_id, group, exc)
                if self._held.get(group) is lease and lapsed(self._renewed_at[group], self.lease_seconds, sent):
                    lost[group] = f"its lease could not be renewed for {self.lease_seconds:g} s ({exc})"
                continue
            if self._held.get(group) is not lease:
                continue  # released or re-taken meanwhile
            if renewed is None:
                lost[group] = f"another replica holds its lease now (generation {lease.generation} is over)"
            else:
                self._held[group] = renewed
                self._renewed_at[group] = sent
        for group in lost:
            self.forget(group)
        return lost
