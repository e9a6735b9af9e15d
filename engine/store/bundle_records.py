"""Revision bundles in the database (the tables of migration 0008), so that every replica can serve any bundle.

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py) like ``ReleaseRecords``. A bundle is
kept as chunks of at most ``CHUNK_BYTES`` (``revision_bundle_chunks``, keyed by sha256 and position) and one
``revision_bundles`` row written last, in the transaction that wrote the chunks: a row there means the whole bundle
is here, and two replicas storing the same bundle at once serialize on its sha256 (the second finds it stored).
Reading is chunk by chunk, so a bundle of hundreds of MiB never sits in memory whole. Only PostgreSQL servers use
these tables (engine/runtime/revisions.py: on SQLite the data directory is the only copy, one server reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from engine.store.statements import Change, Fetch, Program, Row, Serialize, SqlAccess

CHUNK_BYTES = 1 << 20
"""The size of a stored chunk (1 MiB): large enough to keep the row count low, small enough for one round trip."""


class BundleRecords(SqlAccess):
    """Revision bundles as chunked rows."""

    async def put_bundle(
        self, sha256: str, size: int, chunks: Callable[[], Iterator[bytes]], *, created_at: float
    ) -> bool:
        """Store the bundle whose bytes ``chunks()`` yields (each at most ``CHUNK_BYTES``; called again should the
        transaction be retried), unless it is stored already; True when this call stored it."""

        def store() -> Program[bool]:
            yield Serialize([f"revision_bundle:{sha256}"])
            found = yield Fetch("revision_bundles", "SELECT sha256 FROM revision_bundles WHERE sha256 = ?", (sha256,))
            if found:
                return False
            yield Change("DELETE FROM revision_bundle_chunks WHERE sha256 = ?", (sha256,))  # none, unless half-made
            count = 0
            for seq, data in enumerate(chunks()):
                sql = "INSERT INTO revision_bundle_chunks (sha256, seq, data) VALUES (?, ?, ?)"
                yield Change(sql, (sha256, seq, data))
                count += 1
            sql = "INSERT INTO revision_bundles (sha256, size, chunks, created_at) VALUES (?, ?, ?, ?)"
            yield Change(sql, (sha256, size, count, created_at))
            return True

        return await self._transact(store)

    async def get_bundle(self, sha256: str) -> Row | None:
        """The bundle's row (sha256, size, chunks, created_at), or None when the database does not hold it."""
        return await self._fetch_one("revision_bundles", "SELECT * FROM revision_bundles WHERE sha256 = ?", (sha256,))

    async def bundle_chunk(self, sha256: str, seq: int) -> bytes | None:
        """The ``seq``-th chunk (from 0) of a stored bundle."""
        sql = "SELECT data FROM revision_bundle_chunks WHERE sha256 = ? AND seq = ?"
        row = await self._fetch_one("revision_bundle_chunks", sql, (sha256, seq))
        return None if row is None else bytes(row["data"])
