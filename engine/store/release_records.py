"""The release flow's records in the store: environment locks, approvals (append only) and webhook deliveries.

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py), kept apart so each module holds one
concern; it uses the store's ``_fetch`` / ``_change`` / ``_insert`` (on SQLite, its one writer thread), with SQL both
databases read alike (engine/store/statements.py).
"""

from __future__ import annotations

from typing import Any

from engine.store.statements import Row, SqlAccess, placeholders, where_clause


class ReleaseRecords(SqlAccess):
    """Locks, approvals and deliveries."""

    # -- locks

    async def put_lock(
        self,
        application: str,
        environment: str,
        *,
        owner: str,
        created_at: float,
        reason: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        """Set (or replace) the environment's lock; whether a lock may be replaced is policy, not ours.
        Expiry is data: the caller compares ``expires_at`` with its clock."""
        sql = (
            "INSERT INTO locks (application, environment, owner, reason, created_at, expires_at)"
            f" VALUES ({placeholders(6)}) ON CONFLICT (application, environment) DO UPDATE SET owner = excluded.owner,"
            " reason = excluded.reason, created_at = excluded.created_at, expires_at = excluded.expires_at"
        )
        await self._change(sql, (application, environment, owner, reason, created_at, expires_at))

    async def get_lock(self, application: str, environment: str) -> Row | None:
        sql = "SELECT * FROM locks WHERE application = ? AND environment = ?"
        return await self._fetch_one("locks", sql, (application, environment))

    async def delete_lock(self, application: str, environment: str, *, created_at: float | None = None) -> bool:
        """Remove the lock; given ``created_at``, only that very lock (not one set again in the meantime)."""
        sql = "DELETE FROM locks WHERE application = ? AND environment = ?"
        params: tuple[Any, ...] = (application, environment)
        if created_at is not None:
            sql += " AND created_at = ?"
            params = (*params, created_at)
        return await self._change(sql, params) == 1

    async def list_locks(self) -> list[Row]:
        return await self._fetch("locks", "SELECT * FROM locks ORDER BY application, environment")

    # -- approvals (append only)

    async def add_approval(
        self,
        deployment_id: str,
        *,
        application: str,
        environment: str,
        revision_sha256: str,
        actor: str,
        decision: str,
        created_at: float,
        expires_at: float | None = None,
        reason: str | None = None,
    ) -> int:
        """Record one approve/reject decision; its id."""
        sql = (
            "INSERT INTO approvals (deployment_id, application, environment, revision_sha256, actor, decision,"
            f" reason, created_at, expires_at) VALUES ({placeholders(9)})"
        )
        row = (deployment_id, application, environment, revision_sha256, actor, decision, reason)
        return (await self._insert(sql, [(*row, created_at, expires_at)]))[0]

    async def list_approvals(
        self,
        *,
        application: str | None = None,
        environment: str | None = None,
        revision_sha256: str | None = None,
        deployment_id: str | None = None,
    ) -> list[Row]:
        """Decisions matching every given filter, oldest first."""
        where, params = where_clause(
            application=application,
            environment=environment,
            revision_sha256=revision_sha256,
            deployment_id=deployment_id,
        )
        return await self._fetch("approvals", f"SELECT * FROM approvals WHERE {where} ORDER BY id", params)

    # -- webhook deliveries

    async def record_delivery(self, delivery_id: str, source: str, at: float) -> bool:
        """Remember a webhook delivery id; False when it was seen before (a retry to ignore)."""
        sql = "INSERT INTO deliveries (id, source, received_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
        return await self._change(sql, (delivery_id, source, at)) == 1
