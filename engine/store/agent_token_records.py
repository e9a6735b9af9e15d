"""Agents' tokens in the database (the ``agent_tokens`` table of migration 0008): one row per host, found by the
token's sha256. Used by servers on PostgreSQL (engine/adapters/agent_tokens.py), where any replica must accept a token
another one issued; a single SQLite server keeps them in its data directory's 0600 file instead.

A record mixin of both stores like ``ReleaseRecords``. The token itself is stored because the server gives it back
(``deploybot agent-token NAME`` prints it, a local agent's token file is written from it): the table is readable only
by deploybot's database role (docs/postgresql.md). Every change tells the other replicas, on ``AGENT_TOKENS_CHANGED``
(payload: the host), so they drop or pick up the token at once.
"""

from __future__ import annotations

from engine.store.statements import Change, Fetch, Notify, Program, Row, Serialize, SqlAccess

AGENT_TOKENS_CHANGED = "deploybot_agent_tokens"
"""The NOTIFY channel of a change to a host's agent token (payload: the host's name)."""


class AgentTokenRecords(SqlAccess):
    """Agent token rows: issued once per host (the first replica to issue wins), rotated, revoked."""

    async def put_agent_token(
        self, host: str, *, token: str, token_sha256: str, at: float, replace: bool = False
    ) -> Row:
        """The host's token row after this call: the one given when the host had none (or ``replace``), else the one
        it holds (another replica issued it first: every replica then hands out the same token)."""

        def put() -> Program[Row]:
            yield Serialize([f"agent_token:{host}"])
            if replace:
                yield Change("DELETE FROM agent_tokens WHERE host = ?", (host,))
            sql = (
                "INSERT INTO agent_tokens (host, token, token_sha256, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (host) DO NOTHING"
            )
            added = yield Change(sql, (host, token, token_sha256, at))
            rows = yield Fetch("agent_tokens", "SELECT * FROM agent_tokens WHERE host = ?", (host,))
            if added:
                yield Notify(AGENT_TOKENS_CHANGED, [host])
            row: Row = rows[0]
            return row

        return await self._transact(put)

    async def delete_agent_token(self, host: str) -> bool:
        """Revoke the host's token; False when it had none."""

        def delete() -> Program[bool]:
            deleted = yield Change("DELETE FROM agent_tokens WHERE host = ?", (host,))
            if deleted:
                yield Notify(AGENT_TOKENS_CHANGED, [host])
            return bool(deleted)

        return await self._transact(delete)

    async def agent_token_of(self, host: str) -> Row | None:
        return await self._fetch_one("agent_tokens", "SELECT * FROM agent_tokens WHERE host = ?", (host,))

    async def agent_token_by_hash(self, token_sha256: str) -> Row | None:
        sql = "SELECT * FROM agent_tokens WHERE token_sha256 = ?"
        return await self._fetch_one("agent_tokens", sql, (token_sha256,))

    async def list_agent_tokens(self) -> list[Row]:
        return await self._fetch("agent_tokens", "SELECT * FROM agent_tokens ORDER BY host")
