"""Deployment groups' leases in the store: ``group_leases`` (engine/core/leases.py says what they mean).

A record mixin of both stores. Each change is one statement, so two replicas racing for a lease cannot both win:
taking it is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <expired, or mine> RETURNING``, which bumps the generation
(a new tenure); renewing is an ``UPDATE`` of the holder's own generation; releasing sets its expiry to 0 and keeps
the row, so generations only grow. Expiry is judged by ``_lease_clock``: the database's clock on PostgreSQL (one
clock for every replica), the caller's ``now`` on SQLite (one server).

``fencing(lease)`` (statements.py) makes every write of the code inside check the lease first, in the write's own
transaction; ``notify`` and ``listen`` carry the replicas' signals (core/leases.py's channels), nothing on SQLite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from engine.core.leases import Lease
from engine.core.model import FINAL_STATUSES, DeploymentStatus
from engine.store.statements import Notify, Program, Row, SqlAccess, fencing, in_clause

_NOT_TAKEN_OVER = sorted({*FINAL_STATUSES, DeploymentStatus.WAITING_APPROVAL})
"""Deployments that give a group no work for an owner: ended, or waiting for an approval (which starts them)."""


_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # epoch seconds by SQLite's own clock


def _lease(row: Row) -> Lease:
    return Lease(row["group_name"], row["owner"], int(row["generation"]), float(row["expires_at"]))


class LeaseRecords(SqlAccess):
    """Leases of deployment groups, fencing, and the replicas' signals."""

    _lease_clock: ClassVar[str | None] = None
    """SQL for "now" (epoch seconds) on the database's clock; None: the caller's ``now`` is used."""
    shared: ClassVar[bool] = False
    """Whether other servers may share this database (PostgreSQL): leases are renewed and taken over, signals sent."""

    def _now(self, now: float) -> tuple[str, list[Any]]:
        return ("?", [now]) if self._lease_clock is None else (self._lease_clock, [])

    async def acquire_lease(self, group: str, owner: str, *, seconds: float, now: float) -> Lease | None:
        """Take ``group``'s lease for ``seconds`` if it is free, expired or ``owner``'s: a new tenure (the generation
        bumped). None when another replica holds it. On an unshared store (SQLite: the data directory's lock lets
        one server at a time use it) the one server always may: a server killed without letting its leases go is
        followed by its own restart, which must not wait for them to run out."""
        clock, at = self._now(now)
        free = f"group_leases.expires_at <= {clock} OR group_leases.owner = excluded.owner" if self.shared else "1 = 1"
        sql = (
            f"INSERT INTO group_leases (group_name, owner, generation, expires_at) VALUES (?, ?, 1, {clock} + ?)"
            " ON CONFLICT (group_name) DO UPDATE SET owner = excluded.owner,"
            " generation = group_leases.generation + 1, expires_at = excluded.expires_at"
            f" WHERE {free}"
            " RETURNING group_name, owner, generation, expires_at"
        )
        params = (group, owner, *at, seconds, *(at if self.shared else ()))
        row = await self._fetch_one("group_leases", sql, params, write=True)
        return None if row is None else _lease(row)

    async def renew_lease(self, lease: Lease, *, seconds: float, now: float) -> Lease | None:
        """Extend a held lease by ``seconds`` from now, keeping its generation; None when it is not held any more
        (taken over, released). One whose time ran out but nobody took is renewed: nobody else has written."""
        clock, at = self._now(now)
        sql = (
            f"UPDATE group_leases SET expires_at = {clock} + ? WHERE group_name = ? AND owner = ? AND generation = ?"
            " RETURNING group_name, owner, generation, expires_at"
        )
        params = (*at, seconds, lease.group, lease.owner, lease.generation)
        row = await self._fetch_one("group_leases", sql, params, write=True)
        return None if row is None else _lease(row)

    async def release_lease(self, lease: Lease) -> bool:
        """Let the lease go (expired at once, the row and its generation kept); False when it was not held."""
        sql = "UPDATE group_leases SET expires_at = 0 WHERE group_name = ? AND owner = ? AND generation = ?"
        return await self._change(sql, (lease.group, lease.owner, lease.generation)) == 1

    async def list_leases(self, *, now: float | None = None) -> list[Row]:
        """Every group's lease, by group name: ``group_name``, ``owner``, ``generation``, ``expires_at`` (epoch
        seconds on the store's clock) and ``held`` (not expired by that clock; a released lease is not held).
        Without ``now``, SQLite's own clock judges (for display: ``deploybot replicas``, /healthz)."""
        clock, at = (_SQLITE_NOW, []) if now is None and self._lease_clock is None else self._now(now or 0.0)
        sql = (
            f"SELECT group_name, owner, generation, expires_at, {clock} AS store_now FROM group_leases"
            " ORDER BY group_name"
        )
        rows = await self._fetch("group_leases", sql, at)
        for row in rows:
            row["held"] = float(row["expires_at"]) > float(row.pop("store_now"))
        return rows

    async def groups_to_take_over(self, *, now: float) -> list[Row]:
        """The groups with work for an owner (a deployment queued or in flight, or one owing its wind-up):
        ``group_name``, ``owner`` (the lease's holder, None when it never had one) and ``free_in``, the seconds until
        its lease runs out by the store's clock (0 or less: free now, for the taking)."""
        clock, at = self._now(now)
        sql = (
            "SELECT deployments.group_name AS group_name, MIN(group_leases.owner) AS owner,"
            f" MIN(COALESCE(group_leases.expires_at - {clock}, 0)) AS free_in"
            " FROM deployments LEFT JOIN group_leases ON group_leases.group_name = deployments.group_name"
            f" WHERE NOT ({in_clause('deployments.status', len(_NOT_TAKEN_OVER))})"
            " OR deployments.wind_up IS NOT NULL"
            " GROUP BY deployments.group_name ORDER BY deployments.group_name"
        )
        rows = await self._fetch("group_leases", sql, (*at, *_NOT_TAKEN_OVER))
        return [
            {"group_name": str(row["group_name"]), "owner": row["owner"], "free_in": float(row["free_in"])}
            for row in rows
        ]

    def fencing(self, lease: Lease) -> contextlib.AbstractContextManager[None]:
        """Every write made inside is done only while ``lease`` still holds, else refused with ``LeaseLost``."""
        return fencing(lease)

    async def notify(self, channel: str, payloads: Collection[str]) -> None:
        """Tell the other replicas (``listen``) each of ``payloads`` on ``channel``; nothing on an unshared store."""
        if not self.shared or not payloads:
            return

        def send() -> Program[None]:
            yield Notify(channel, list(payloads))

        await self._transact(send)

    async def listen(
        self,
        channel: str,
        callback: Callable[[str], None],
        *,
        reopened: Callable[[], None] | None = None,
        own: bool = True,
    ) -> None:
        """Hear ``notify`` of other replicas (PostgresStore); an unshared store has nobody to hear."""
        del channel, callback, reopened, own
