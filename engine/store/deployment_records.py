"""Revisions, deployments, their target events and the append-only event log: the DeploymentStore port's SQL, one
copy for both stores (SQLite and PostgreSQL run it through the same accessors; see statements.SqlAccess).

Rows come back in the order they were written where timestamps tie: ``_row_order`` names the column that tells
(SQLite's ``rowid``; PostgreSQL's hidden ``row_order`` identity, never returned in rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from engine.core.model import FINAL_STATUSES
from engine.ports import DeploymentView, StepWrite
from engine.store.statements import (
    Change,
    Fetch,
    Program,
    Row,
    SqlAccess,
    ValuesTable,
    check_columns,
    chunks,
    encode_fields,
    in_clause,
    placeholders,
    to_json,
    where_clause,
)

_TARGET_EVENT_KEY = ("deployment_id", "target", "event")
_LOG_INSERT = f"INSERT INTO event_log (deployment_id, at, actor, kind, data) VALUES ({placeholders(5)})"


def _log_row(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """An event-log entry (keys as ``append_log``'s arguments) as ``_LOG_INSERT``'s parameters."""
    return (entry.get("deployment_id"), entry["at"], entry["actor"], entry["kind"], to_json(entry.get("data")))


class DeploymentRows(SqlAccess):
    """The deployments' own tables (revisions, deployments, target_events, event_log)."""

    _row_order: ClassVar[str] = "rowid"

    # -- revisions

    async def put_revision(
        self,
        sha256: str,
        *,
        source: str,
        commit: str | None,
        size: int,
        created_at: float,
        appspec: Mapping[str, Any] | None = None,
        platform: str = "server",
        location: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store a revision once per content hash; True when it was new. A ``location`` (where it was fetched
        from) replaces the stored one even when the content was already known: the latest fetch is where it is."""
        sql = (
            'INSERT INTO revisions (sha256, source, "commit", size, created_at, appspec, platform, location)'
            f" VALUES ({placeholders(8)}) ON CONFLICT DO NOTHING"
        )
        params = (sha256, source, commit, size, created_at, to_json(appspec), platform, to_json(location))
        new = await self._change(sql, params) == 1
        if not new and location is not None:
            await self._change("UPDATE revisions SET location = ? WHERE sha256 = ?", (to_json(location), sha256))
        return new

    async def get_revision(self, sha256: str) -> Row | None:
        return await self._fetch_one("revisions", "SELECT * FROM revisions WHERE sha256 = ?", (sha256,))

    async def list_revisions(self, limit: int = 50) -> list[Row]:
        sql = f"SELECT * FROM revisions ORDER BY created_at DESC, {self._row_order} DESC LIMIT ?"
        return await self._fetch("revisions", sql, (limit,))

    # -- deployments

    async def create_deployment(self, record: Mapping[str, Any], *, log: Mapping[str, Any] | None = None) -> None:
        """Insert a new deployment, and ``log``, its first event-log entry (keys as ``append_log``'s arguments; its
        ``deployment_id`` is the new one's), in the same transaction: a deployment never exists without the entry
        that says who asked for it, and starting one costs one write less. A duplicate id raises the database's
        integrity error."""
        check_columns("deployments", record, self._columns["deployments"])
        row = encode_fields("deployments", record)
        columns = ", ".join(f'"{c}"' for c in row)
        insert = f"INSERT INTO deployments ({columns}) VALUES ({placeholders(len(row))})"

        def create() -> Program[None]:
            yield Change(insert, [*row.values()])
            if log is not None:
                yield Change(_LOG_INSERT, _log_row({**log, "deployment_id": record["id"]}))

        await self._transact(create)

    async def get_deployment(self, deployment_id: str) -> Row | None:
        return await self._fetch_one("deployments", "SELECT * FROM deployments WHERE id = ?", (deployment_id,))

    async def update_deployment(
        self, deployment_id: str, *, if_status: Sequence[str] | None = None, **fields: Any
    ) -> bool:
        """Set the given columns; False when no such deployment exists, or (``if_status``) when its status is not one
        of those: a change decided on a status read earlier is made only while that status still holds."""
        if not fields:
            return await self.get_deployment(deployment_id) is not None
        return await self._change(*deployment_update(self._columns, deployment_id, fields, if_status=if_status)) == 1

    async def list_deployments(
        self,
        *,
        application: str | None = None,
        environment: str | None = None,
        group_name: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[Row]:
        where, params = where_clause(
            application=application, environment=environment, group_name=group_name, status=status
        )
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT * FROM deployments WHERE {where} ORDER BY created_at {order}, {self._row_order} {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return await self._fetch("deployments", sql, params)

    async def last_successful(self, group_name: str) -> Row | None:
        """The group's most recently finished Succeeded deployment (its revision is "last successful")."""
        sql = (
            "SELECT * FROM deployments WHERE group_name = ? AND status = 'Succeeded'"
            f" ORDER BY COALESCE(ended_at, created_at) DESC, {self._row_order} DESC LIMIT 1"
        )
        return await self._fetch_one("deployments", sql, (group_name,))

    async def unfinished_deployments(self) -> list[Row]:
        """Deployments to resume after a restart, oldest first."""
        sql = (
            f"SELECT * FROM deployments WHERE status NOT IN ({placeholders(len(FINAL_STATUSES))})"
            f" ORDER BY created_at, {self._row_order}"
        )
        return await self._fetch("deployments", sql, sorted(FINAL_STATUSES))

    async def owing_wind_up(self, group_name: str | None = None) -> list[Row]:
        """Ended deployments whose wind-up was cut short (``wind_up`` still set; of one group, or all), oldest
        first: what a restart, or the group's next owner, finishes."""
        where, params = (
            ("wind_up IS NOT NULL", [])
            if group_name is None
            else ("wind_up IS NOT NULL AND group_name = ?", [group_name])
        )
        return await self._fetch(
            "deployments", f"SELECT * FROM deployments WHERE {where} ORDER BY created_at, {self._row_order}", params
        )

    async def wound_up(self, deployment_id: str, *, log: Mapping[str, Any]) -> None:
        """The deployment's wind-up is done: clear what it owed and append ``log``, the entry of its end (keys as
        ``append_log``'s), in one transaction, so the end is logged exactly when nothing is owed any more."""
        clear = deployment_update(self._columns, deployment_id, {"wind_up": None})

        def write() -> Program[None]:
            yield Change(*clear)
            yield Change(_LOG_INSERT, _log_row({**log, "deployment_id": deployment_id}))

        await self._transact(write)

    # -- target events

    async def upsert_target_event(self, deployment_id: str, target: str, event: str, **fields: Any) -> None:
        """Create the (deployment, target, event) row or change only the given fields of it."""
        await self._change(
            *target_event_upsert(self._columns, deployment_id, {"target": target, "event": event, **fields})
        )

    async def save_progress(
        self, deployment_id: str, rows: Sequence[Mapping[str, Any]], **deployment: Any
    ) -> bool | None:
        """The target rows and ``update_deployment(**deployment)`` in one transaction: a step of a deployment is one
        write, not one per table. False when the deployment row is missing, None without ``deployment``."""
        step = StepWrite(deployment_id, rows, deployment)
        return await self._transact(step_program(self._columns, step, self._values()))

    async def list_target_events(self, deployment_id: str) -> list[Row]:
        return await self._fetch("target_events", self._target_events_sql, (deployment_id,))

    @property
    def _target_events_sql(self) -> str:
        return f"SELECT * FROM target_events WHERE deployment_id = ? ORDER BY target, seq, {self._row_order}"

    async def get_deployment_view(self, deployment_id: str) -> DeploymentView | None:
        """The deployment, its targets' events and its revision, read together (one trip to the store; one
        snapshot): what its document is made of. None when there is no such deployment."""
        revision = "SELECT * FROM revisions WHERE sha256 = (SELECT revision_sha256 FROM deployments WHERE id = ?)"
        rows, events, revisions = await self._fetch_all(
            [
                Fetch("deployments", "SELECT * FROM deployments WHERE id = ?", (deployment_id,)),
                Fetch("target_events", self._target_events_sql, (deployment_id,)),
                Fetch("revisions", revision, (deployment_id,)),
            ]
        )
        if not rows:
            return None
        return DeploymentView(rows[0], events, revisions[0] if revisions else None)

    # -- event log (append only: the database refuses UPDATE and DELETE of it)

    async def append_log(
        self,
        kind: str,
        *,
        at: float,
        actor: str,
        deployment_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        entry = {"kind": kind, "at": at, "actor": actor, "deployment_id": deployment_id, "data": data}
        return (await self.append_logs([entry]))[0]

    async def append_logs(self, entries: Iterable[Mapping[str, Any]]) -> list[int]:
        """Append many entries (keys as ``append_log``'s arguments) in one transaction; returns their ids."""
        return await self._insert(_LOG_INSERT, [_log_row(entry) for entry in entries])

    async def read_log(self, *, deployment_id: str | None = None, after_id: int = 0, limit: int = 1000) -> list[Row]:
        where, params = where_clause(deployment_id=deployment_id)
        sql = f"SELECT * FROM event_log WHERE id > ? AND {where} ORDER BY id LIMIT ?"
        return await self._fetch("event_log", sql, (after_id, *params, limit))


# -- a deployment's step as statements: ``save_progress`` runs them alone, ``enqueue_command_runs`` (command_records)
# first in its own transaction

Columns = Mapping[str, frozenset[str]]
"""Each table's columns, read from the migrated schema (the stores' ``_columns``)."""


def step_program(
    columns: Columns, step: StepWrite, values: ValuesTable | None = None
) -> Callable[[], Program[bool | None]]:
    """``save_progress``'s statements as a program: False when the deployment row is missing, None without fields.
    A statement per row, or on a store that takes many rows in one statement (``values``: ``SqlAccess._values``),
    one per set of columns the rows give (``target_event_upserts``)."""
    if values is None:
        statements = [target_event_upsert(columns, step.deployment_id, row) for row in step.rows]
    else:
        statements = target_event_upserts(columns, step.deployment_id, step.rows, values)
    if step.fields:
        statements.append(deployment_update(columns, step.deployment_id, step.fields))

    def write() -> Program[bool | None]:
        changed = []
        for sql, params in statements:
            changed.append((yield Change(sql, params)))
        return changed[-1] == 1 if step.fields else None

    return write


def deployment_update(
    columns: Columns, deployment_id: str, fields: Mapping[str, Any], *, if_status: Sequence[str] | None = None
) -> tuple[str, tuple[Any, ...]]:
    check_columns("deployments", fields, columns["deployments"] - {"id"})
    row = encode_fields("deployments", fields)
    assignments = ", ".join(f'"{c}" = ?' for c in row)
    sql, params = f"UPDATE deployments SET {assignments} WHERE id = ?", (*row.values(), deployment_id)
    if if_status is not None:
        sql += f" AND {in_clause('status', len(if_status))}"
        params = (*params, *if_status)
    return sql, params


def target_event_upserts(
    columns: Columns, deployment_id: str, rows: Sequence[Mapping[str, Any]], values: ValuesTable
) -> list[tuple[str, tuple[Any, ...]]]:
    """``target_event_upsert`` of every row, as an upsert per set of columns the rows give (per
    ``ROWS_PER_STATEMENT``): each (target, event) once, with what all its rows say, a later one's value of a column
    winning, which is what the upserts one by one leave (and one statement may not upsert a row twice)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        merged.setdefault((row["target"], row["event"]), {}).update(row)
    by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in merged.values():
        by_fields.setdefault(tuple(sorted(row.keys() - {"target", "event"})), []).append(row)
    statements = []
    for fields, group in by_fields.items():
        names = [*_TARGET_EVENT_KEY, *fields]
        for chunk in chunks(group):
            chunk_rows = [(deployment_id, row["target"], row["event"], *(row[f] for f in fields)) for row in chunk]
            table, params = values("target_events", names, chunk_rows)
            statements.append((_target_events_upsert(columns, fields, f"SELECT * FROM {table} AS v"), tuple(params)))
    return statements


def target_event_upsert(columns: Columns, deployment_id: str, row: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    fields = {k: v for k, v in row.items() if k not in ("target", "event")}
    source = f"VALUES ({placeholders(len(_TARGET_EVENT_KEY) + len(fields))})"
    return _target_events_upsert(columns, fields, source), (
        deployment_id,
        row["target"],
        row["event"],
        *fields.values(),
    )


def _target_events_upsert(columns: Columns, fields: Iterable[str], source: str) -> str:
    """Insert the rows of ``source`` (the key, then ``fields``) into target_events; a row there already takes their
    ``fields`` and keeps the rest."""
    fields = list(fields)
    check_columns("target_events", fields, columns["target_events"] - {*_TARGET_EVENT_KEY})
    on_conflict = "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in fields) if fields else "NOTHING"
    return (
        f"INSERT INTO target_events ({', '.join([*_TARGET_EVENT_KEY, *fields])}) {source}"
        f" ON CONFLICT (deployment_id, target, event) DO {on_conflict}"
    )
