"""The replicas on one database (the ``replicas`` table of migration 0008): each running ``deploybot serve`` writes
its row at start and refreshes ``last_seen`` every few seconds (engine/runtime/replicas.py), so any replica can say
which are alive. A record mixin of both stores like ``ReleaseRecords``; on SQLite there is one row, the server's own.
"""

from __future__ import annotations

from engine.store.statements import Row, SqlAccess


class ReplicaRecords(SqlAccess):
    """Replica rows: registered, seen, listed, forgotten."""

    async def register_replica(self, replica_id: str, *, url: str, version: str, at: float) -> None:
        """Write the replica's row (started and seen now); a row of that id already there is replaced."""
        sql = (
            "INSERT INTO replicas (id, url, started_at, last_seen, version) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET url = excluded.url, started_at = excluded.started_at,"
            " last_seen = excluded.last_seen, version = excluded.version"
        )
        await self._change(sql, (replica_id, url, at, at, version))

    async def touch_replica(self, replica_id: str, *, at: float) -> bool:
        """Record that the replica is alive at ``at``; False when its row is gone (someone forgot it)."""
        return await self._change("UPDATE replicas SET last_seen = ? WHERE id = ?", (at, replica_id)) == 1

    async def list_replicas(self) -> list[Row]:
        """Every registered replica, the oldest started first."""
        return await self._fetch("replicas", "SELECT * FROM replicas ORDER BY started_at, id")

    async def forget_replica(self, replica_id: str) -> bool:
        return await self._change("DELETE FROM replicas WHERE id = ?", (replica_id,)) == 1

    async def forget_replicas_seen_before(self, at: float) -> int:
        """Drop the rows of replicas not seen since ``at`` (long dead: a killed replica never removes its own)."""
        return await self._change("DELETE FROM replicas WHERE last_seen < ?", (at,))
