"""Intents in the store (the table of migration 0005): one row per request a door took, found by its key.

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py) like ``ReleaseRecords``. Every
change is one statement (SQLite: on the store's single writer thread; PostgreSQL: an ``UPDATE`` re-checks its
``WHERE`` on a row another transaction changed meanwhile), so ``add_intent`` (insert unless the key exists) and
``move_intent`` (change the state only from the states given) are atomic, across servers too: two clicks, two
deliveries or a request and its replay racing each other see one winner. What the states mean is engine/core/intents.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from engine.store.statements import Row, SqlAccess, in_clause, placeholders, to_json, where_clause

_MISSING: Any = object()


class IntentRecords(SqlAccess):
    """Intent rows: added once per key, moved between states, listed by source, state and scope."""

    async def add_intent(
        self,
        key: str,
        *,
        source: str,
        kind: str,
        payload: Mapping[str, Any],
        at: float,
        scope: str | None = None,
        actor: str | None = None,
        state: str = "pending",
        not_before: float | None = None,
    ) -> tuple[Row, bool]:
        """The intent stored under ``key`` and whether this call added it (False: a retry, replay or redelivery of
        one already taken; the row is the first one's, untouched)."""
        columns = "key, source, kind, scope, actor, state, payload, created_at, updated_at, not_before"
        sql = f"INSERT INTO intents ({columns}) VALUES ({placeholders(10)}) ON CONFLICT DO NOTHING"
        params = (key, source, kind, scope, actor, state, to_json(dict(payload)), at, at, not_before)
        added = await self._change(sql, params) == 1
        row = await self.get_intent(key)
        assert row is not None  # inserted just now, or there before; intents are never deleted
        return row, added

    async def get_intent(self, key: str) -> Row | None:
        return await self._fetch_one("intents", "SELECT * FROM intents WHERE key = ?", (key,))

    async def move_intent(
        self,
        key: str,
        state: str,
        *,
        at: float,
        only_from: Collection[str] | None = None,
        outcome: Mapping[str, Any] | None = _MISSING,
        not_before: float | None = _MISSING,
        attempt: bool = False,
    ) -> Row | None:
        """Put the intent in ``state`` (and record ``outcome`` / ``not_before`` when given; ``attempt`` counts one
        more try); with ``only_from``, only when it is in one of those states now. The row after, or None when
        nothing changed (no such key, or another caller moved it first)."""
        sets, params = ["state = ?", "updated_at = ?"], [state, at]
        if outcome is not _MISSING:
            sets.append("outcome = ?")
            params.append(to_json(None if outcome is None else dict(outcome)))
        if not_before is not _MISSING:
            sets.append("not_before = ?")
            params.append(not_before)
        if attempt:
            sets.append("attempts = attempts + 1")
        sql = f"UPDATE intents SET {', '.join(sets)} WHERE key = ?"
        params.append(key)
        if only_from is not None:
            states = tuple(only_from)
            sql += f" AND {in_clause('state', len(states))}"
            params.extend(states)
        if await self._change(sql, params) != 1:
            return None
        return await self.get_intent(key)

    async def list_intents(
        self,
        *,
        source: str | None = None,
        kind: str | None = None,
        scope: str | None = None,
        states: Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """Intents matching every given filter, in arrival order (oldest first)."""
        where, params = where_clause(
            source=source, kind=kind, scope=scope, state=None if states is None else tuple(states)
        )
        sql = f"SELECT * FROM intents WHERE {where} ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return await self._fetch("intents", sql, params)
