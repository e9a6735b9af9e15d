"""Lambda/ECS lifecycle hook executions in the store (the table of migration 0006): one row per (deployment, target,
event, function), found by its execution id.

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py) like ``IntentRecords``. Every
change is one statement (re-checked against a concurrent change on PostgreSQL), so ``add_hook_execution`` (insert
unless that hook already has an execution) and ``move_hook_execution`` (change the state only from the states given)
are atomic: a status callback racing the timeout, or two callbacks racing each other, see one winner. What the
states mean, and which moves are allowed, is engine/adapters/aws/hook_executions.py's business; the table's triggers
only keep an ended execution as it ended.
"""

from __future__ import annotations

from collections.abc import Collection

from engine.core.model import FINAL_STATUSES
from engine.store.statements import Row, SqlAccess, in_clause, placeholders, where_clause

_COLUMNS = "execution_id, deployment_id, target, event, function, state, started_at, updated_at"
_ENDED = tuple(sorted(str(status) for status in FINAL_STATUSES))


class HookExecutionRecords(SqlAccess):
    """Hook execution rows: added once per hook, moved between states, listed by deployment and state."""

    async def add_hook_execution(
        self,
        execution_id: str,
        *,
        deployment_id: str,
        target: str,
        event: str,
        function: str,
        state: str,
        at: float,
    ) -> tuple[Row, bool]:
        """The execution of this (deployment, target, event, function) and whether this call added it (False: it
        was stored before, perhaps by an earlier server, and the row is that one's, untouched)."""
        sql = f"INSERT INTO hook_executions ({_COLUMNS}) VALUES ({placeholders(8)}) ON CONFLICT DO NOTHING"
        added = await self._change(sql, (execution_id, deployment_id, target, event, function, state, at, at)) == 1
        key = "deployment_id = ? AND target = ? AND event = ? AND function = ?"
        row = await self._fetch_one(
            "hook_executions", f"SELECT * FROM hook_executions WHERE {key}", (deployment_id, target, event, function)
        )
        assert row is not None  # inserted just now, or there before; executions are never deleted
        return row, added

    async def get_hook_execution(self, execution_id: str) -> Row | None:
        sql = "SELECT * FROM hook_executions WHERE execution_id = ?"
        return await self._fetch_one("hook_executions", sql, (execution_id,))

    async def move_hook_execution(
        self,
        execution_id: str,
        state: str,
        *,
        at: float,
        only_from: Collection[str],
        status: str | None = None,
        detail: str | None = None,
    ) -> Row | None:
        """Put the execution in ``state`` (with the reported ``status`` / the ``detail`` of a failure), only when it
        is in one of ``only_from`` now. The row after, or None when nothing changed (no such execution, or another
        caller moved it first)."""
        states = tuple(only_from)
        sql = (
            "UPDATE hook_executions SET state = ?, status = ?, detail = ?, updated_at = ?"
            f" WHERE execution_id = ? AND {in_clause('state', len(states))} RETURNING *"
        )
        params = (state, status, detail, at, execution_id, *states)
        return await self._fetch_one("hook_executions", sql, params, write=True)

    async def list_hook_executions(
        self, *, deployment_id: str | None = None, states: Collection[str] | None = None, running_only: bool = False
    ) -> list[Row]:
        """Executions matching the filters, oldest first. ``running_only`` leaves out those of deployments that
        have ended (Succeeded, Failed, Stopped): a deployment that ended while its server was down, or that ended
        before its hook's stop was written, leaves nothing waiting."""
        where, params = where_clause(deployment_id=deployment_id, state=None if states is None else tuple(states))
        if running_only:
            where += (
                f" AND deployment_id NOT IN (SELECT id FROM deployments WHERE status IN ({placeholders(len(_ENDED))}))"
            )
            params.extend(_ENDED)
        sql = f"SELECT * FROM hook_executions WHERE {where} ORDER BY started_at, execution_id"
        return await self._fetch("hook_executions", sql, params)
