"""What the store's record mixins share: the row type, WHERE-clause builders, and the SqliteStore accessors they
call (declared here for type checkers; SqliteStore defines them and runs them on its one writer thread)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

Row = dict[str, Any]


def to_json(value: Any) -> str | None:
    """A JSON column's text (None stays NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


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
    """The base of every record mixin of SqliteStore (ReleaseRecords, RegistryRecords, TokenRecords)."""

    if TYPE_CHECKING:

        async def _fetch(
            self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False
        ) -> list[Row]: ...
        async def _fetch_one(
            self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False
        ) -> Row | None: ...
        async def _change(self, sql: str, params: Sequence[Any] = ()) -> int: ...
        async def _insert(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]: ...
