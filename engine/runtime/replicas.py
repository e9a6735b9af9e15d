"""The replica registry: which servers share this database, whether each is alive, and what each drives.

Each ``deploybot serve`` writes its row (``replicas``: id, url, started_at, last_seen, version) when it starts and
refreshes ``last_seen`` every ``refresh_seconds`` on the engine's clock; a replica is *alive* while its last refresh
is at most ``ALIVE_PERIODS`` periods old (a killed one stops refreshing and is shown dead, then forgotten after
``FORGET_AFTER_SECONDS``). What a replica *owns* is the deployment groups whose lease it holds (the store's
``list_leases()``: engine/core/leases.py); without leases (a store that keeps none) ``owns`` is None. On SQLite
(``shared=False``) there is one replica, this server, and no refreshing: its row is written at start, any earlier
one forgotten. ``health()`` is what ``GET /healthz`` answers: the store reachable (else 503, so a load balancer
takes the replica out), its backend and migrations, and this replica's leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engine.ports import Clock, ReplicaRecords, Row

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
ALIVE_PERIODS = 3
"""A replica not seen for this many refresh periods is shown dead (a load balancer has taken it out by then)."""
FORGET_AFTER_SECONDS = 24 * 3600.0
STORE_CHECK_SECONDS = 2.0
"""How long the health check waits for the store before it calls it unreachable."""

LeaseLister = Callable[[], Awaitable[list[Row]]]


def is_alive(last_seen: float, now: float, refresh_seconds: float) -> bool:
    return now - last_seen <= ALIVE_PERIODS * refresh_seconds


def owned_groups(leases: list[Row], replica_id: str, now: float) -> list[dict[str, Any]]:
    """The groups whose unexpired lease ``replica_id`` holds, by name: {group, generation, expires_at}. A row's
    ``held`` (judged on the store's clock, engine/store/lease_records.py) decides; without it, ``now``."""
    owned = [
        {"group": row["group_name"], "generation": row["generation"], "expires_at": row["expires_at"]}
        for row in leases
        if row["owner"] == replica_id and row.get("held", row["expires_at"] > now)
    ]
    return sorted(owned, key=lambda lease: str(lease["group"]))


class ReplicaRegistry:
    """This server's row in ``replicas``, kept fresh; and the view of every replica (see the module docstring)."""

    def __init__(
        self,
        store: ReplicaRecords,
        clock: Clock,
        *,
        replica_id: str,
        url: str,
        version: str,
        refresh_seconds: float = REFRESH_SECONDS,
        leases: LeaseLister | None = None,
        shared: bool = True,
    ) -> None:
        self.store = store
        self.clock = clock
        self.replica_id = replica_id
        self.url = url
        self.version = version
        self.refresh_seconds = refresh_seconds
        self._leases = leases
        self.shared = shared
        self._refresher: asyncio.Task[None] | None = None

    @property
    def has_leases(self) -> bool:
        """Whether the store keeps group leases (what ``owns`` is read from)."""
        return self._leases is not None

    async def start(self) -> None:
        """Write this replica's row, forget long-dead ones, and refresh it from now on. Not ``shared`` (SQLite: the
        one server of its data directory), every earlier row is forgotten and nothing needs refreshing."""
        now = self.clock.now()
        await self.store.forget_replicas_seen_before(now - FORGET_AFTER_SECONDS if self.shared else float("inf"))
        await self.store.register_replica(self.replica_id, url=self.url, version=self.version, at=now)
        if self.shared and self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_every())

    async def close(self) -> None:
        """Stop refreshing and remove this replica's row (it is gone, not dead)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        with contextlib.suppress(Exception):  # the store may be out of reach: the row then ages into "dead"
            await self.store.forget_replica(self.replica_id)

    async def refresh(self) -> None:
        """Record that this replica is alive now (its row written again if someone removed it)."""
        now = self.clock.now()
        if not await self.store.touch_replica(self.replica_id, at=now):
            await self.store.register_replica(self.replica_id, url=self.url, version=self.version, at=now)

    async def _refresh_every(self) -> None:
        while True:
            await self.clock.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception:  # the store is out of reach: /healthz says so; the next round tries again
                log.warning("refreshing replica %s failed", self.replica_id, exc_info=True)

    async def _lease_rows(self) -> list[Row]:
        return [] if self._leases is None else await self._leases()

    async def replicas(self) -> list[dict[str, Any]]:
        """Every replica on the database: id, url, version, started_at, last_seen, alive, this (the one asked),
        owns (its groups, with their lease expiry; None when the store keeps no leases)."""
        rows = await self.store.list_replicas()
        leases = await self._lease_rows()
        now = self.clock.now()
        return [
            {
                "id": row["id"],
                "url": row["url"],
                "version": row["version"],
                "started_at": row["started_at"],
                "last_seen": row["last_seen"],
                "alive": row["id"] == self.replica_id or is_alive(row["last_seen"], now, self.refresh_seconds),
                "this": row["id"] == self.replica_id,
                "owns": owned_groups(leases, row["id"], now) if self.has_leases else None,
            }
            for row in rows
        ]

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the answer of /healthz): the store reachable (a query answered within STORE_CHECK_SECONDS),
        its backend and migrations, and the groups this replica holds the lease of."""
        store: dict[str, Any] = {"backend": self.store.backend}
        leases: dict[str, Any] = {"kept": self.has_leases}
        try:
            async with asyncio.timeout(STORE_CHECK_SECONDS):
                migrations = await self.store.applied_migrations()
                lease_rows = await self._lease_rows()
        except Exception as exc:  # unreachable, refused, timed out: whatever it is, this replica cannot serve
            store.update(reachable=False, error=f"{type(exc).__name__}: {exc}"[:300])
            return False, {"replica": self._itself(), "store": store, "leases": leases}
        latest = migrations[-1] if migrations else None
        store.update(reachable=True, migrations={"applied": len(migrations), "latest": latest})
        if self.has_leases:
            leases["owns"] = owned_groups(lease_rows, self.replica_id, self.clock.now())
        return True, {"replica": self._itself(), "store": store, "leases": leases}

    def _itself(self) -> dict[str, Any]:
        return {"id": self.replica_id, "url": self.url}
