"""Per-user API tokens in the store (the table of migration 0004): rows keyed by id, found by the token's sha256.

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py) like ``ReleaseRecords``: the SQL
lives here (``"user"`` quoted: a reserved word in PostgreSQL); the rules (expiry,
revocation, the bootstrap token, how a token is made and hashed) live in engine/runtime/tokens.py. The plaintext of
a token never reaches this module.
"""

from __future__ import annotations

from engine.store.statements import Row, SqlAccess, placeholders

_COLUMNS = 'id, "user", name, token_sha256, created_at, expires_at, revoked_at, last_used_at'


class TokenRecords(SqlAccess):
    """API token rows (only their sha256, never a token)."""

    async def insert_api_token(
        self,
        token_id: str,
        *,
        user: str,
        name: str,
        token_sha256: str,
        created_at: float,
        expires_at: float | None = None,
    ) -> bool:
        """Add a token; False (and nothing changed) when a token with this hash is already known, revoked or not,
        so two servers registering the same bootstrap token at once agree on one row."""
        sql = f"INSERT INTO api_tokens ({_COLUMNS}) VALUES ({placeholders(8)}) ON CONFLICT DO NOTHING"
        params = (token_id, user, name, token_sha256, created_at, expires_at, None, None)
        return await self._change(sql, params) == 1

    async def api_token_by_hash(self, token_sha256: str) -> Row | None:
        return await self._fetch_one("api_tokens", "SELECT * FROM api_tokens WHERE token_sha256 = ?", (token_sha256,))

    async def get_api_token(self, token_id: str) -> Row | None:
        return await self._fetch_one("api_tokens", "SELECT * FROM api_tokens WHERE id = ?", (token_id,))

    async def list_api_tokens(self, *, user: str | None = None) -> list[Row]:
        """Every token (revoked and expired ones too), oldest first; only ``user``'s when given."""
        if user is None:
            return await self._fetch("api_tokens", "SELECT * FROM api_tokens ORDER BY created_at, id")
        sql = 'SELECT * FROM api_tokens WHERE "user" = ? ORDER BY created_at, id'
        return await self._fetch("api_tokens", sql, (user,))

    async def revoke_api_token(self, token_id: str, *, at: float) -> Row | None:
        """Mark the token revoked at ``at`` unless it already is (the first revocation stays); the row after, or
        None when there is no such token."""
        sql = "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        await self._change(sql, (at, token_id))
        return await self.get_api_token(token_id)

    async def touch_api_token(self, token_id: str, *, at: float) -> None:
        """Record a use of the token (``last_used_at``); never moves it backwards."""
        sql = "UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)"
        await self._change(sql, (at, token_id, at))
