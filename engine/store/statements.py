"""What the store's record mixins share: the row type, WHERE-clause builders, and the SqliteStore accessors they
call (declared here for type checkers; SqliteStore defines them and runs them on its one writer thread)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlite_utils import Database

from engine.store.migrations import JSON_COLUMNS

T = TypeVar("T")

Row = dict[str, Any]


def to_json(value: Any) -> str | None:
    """A JSON column's text (None stays NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


def encode_fields(table: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with the table's JSON columns encoded."""
    json_columns = JSON_COLUMNS.get(table, frozenset())
    return {k: to_json(v) if k in json_columns else v for k, v in fields.items()}


def read_rows(table: str, cursor: sqlite3.Cursor) -> list[Row]:
    """The cursor's rows as dicts, the table's JSON columns decoded."""
    names = [d[0] for d in cursor.description]
    json_columns = JSON_COLUMNS.get(table, frozenset())
    decoded = [name for name in dict.fromkeys(names) if name in json_columns]  # found once, not per row
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        for column in decoded:
            if row[column] is not None:
                row[column] = json.loads(row[column])
        rows.append(row)
    return rows


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[sqlite3.Connection]:
    """One write transaction; IMMEDIATE takes the write lock up front, so read-then-write cannot go stale."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db.conn
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def where_clause(**equal: str | Sequence[str] | None) -> tuple[str, list[Any]]:
    """A WHERE clause (``1 = 1`` when empty) for the given column filters; None means "any",
    a sequence means "one of"."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    for column, value in equal.items():
        if value is None:
            continue
        values = (value,) if isinstance(value, str) else tuple(value)
        where.append(f"{column} IN ({placeholders(len(values))})")
        params.extend(values)
    return " AND ".join(where), params


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


class SqlAccess:
    """The base of every record mixin of SqliteStore (releases, registry, tokens, intents, hooks, commands)."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[Database], T]) -> T: ...
        async def _fetch(
            self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False
        ) -> list[Row]: ...
        async def _fetch_one(
            self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False
        ) -> Row | None: ...
        async def _change(self, sql: str, params: Sequence[Any] = ()) -> int: ...
        async def _insert(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]: ...
