"""What the store's record mixins share: the row type, WHERE-clause builders, the accessors they call, and
*programs* (transactions of several statements written once for both databases).

The accessors (``_fetch`` / ``_fetch_one`` / ``_change`` / ``_insert``) are declared here for type checkers;
SqliteStore (engine/store/sqlite.py) defines them on its one writer thread, PostgresStore (engine/store/postgres.py)
on its asyncpg pool. The SQL the mixins give them is written to mean the same on SQLite (>= 3.35) and PostgreSQL:
``?`` placeholders (PostgresStore numbers them), ``INSERT ... ON CONFLICT ... DO ...`` (never ``INSERT OR``),
``RETURNING``, no ``rowid``, no ``IN ()`` (``in_clause`` writes a false condition instead), reserved words quoted
(``"user"``).

A transaction that reads and then writes is a *program*: a generator that yields ``Fetch`` / ``Change`` /
``Serialize`` / ``Notify`` steps and gets each one's result back, so its logic is written once and each store
drives it (sans-I/O, as h11 does). ``_transact`` runs one: here for SQLite (on the writer thread, in
``BEGIN IMMEDIATE``: SQLite's one writer already serializes it, so ``Serialize`` costs nothing); PostgresStore runs
it in one transaction on one connection, where ``Serialize(keys)`` takes transaction-scoped advisory locks so two
replicas' read-then-write on the same keys cannot interleave, as they cannot on SQLite.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sqlite3
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

from sqlite_utils import Database

from engine.core.leases import Lease, LeaseLost
from engine.core.snapshot import EncodedJson, encode
from engine.store.migrations import JSON_COLUMNS

T = TypeVar("T")

Row = dict[str, Any]


def to_json(value: Any) -> str | None:
    """A JSON column's text (None stays NULL; text already encoded goes as it is)."""
    if isinstance(value, EncodedJson):
        return str(value)
    return None if value is None else encode(value)


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


# -- fencing: a write made for a lease holder is done only while the lease still says so (engine/core/leases.py)

FENCE: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("deploybot_fence", default=None)
"""The lease the writes of the running code are made under (set by ``fencing``); None: not fenced."""

FENCE_CHECK = "SELECT 1 FROM group_leases WHERE group_name = ? AND owner = ? AND generation = ?"
"""The guard each fenced write transaction runs first: no row, and the write is refused (``LeaseLost``)."""


@contextlib.contextmanager
def fencing(lease: Lease) -> Iterator[None]:
    """Every store write made inside (by this task, and tasks it starts meanwhile) runs ``FENCE_CHECK`` for ``lease``
    first, in its own transaction."""
    token = FENCE.set(lease)
    try:
        yield
    finally:
        FENCE.reset(token)


@contextlib.contextmanager
def unfenced() -> Iterator[None]:
    """Writes made inside are not fenced, whatever the caller's fence (a store method that must never be refused)."""
    token = FENCE.set(None)
    try:
        yield
    finally:
        FENCE.reset(token)


def fence_params(lease: Lease) -> tuple[str, str, int]:
    return (lease.group, lease.owner, lease.generation)


def check_fence(conn: sqlite3.Connection) -> None:
    """Refuse the write transaction open on ``conn`` (SQLite) when the fence of the running code no longer holds."""
    lease = FENCE.get()
    if lease is not None and conn.execute(FENCE_CHECK, fence_params(lease)).fetchone() is None:
        raise LeaseLost(lease.group, lease.owner, lease.generation)


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[sqlite3.Connection]:
    """One write transaction; IMMEDIATE takes the write lock up front, so read-then-write cannot go stale. Fenced
    (``fencing``): refused with ``LeaseLost`` unless the lease still holds, checked under that same lock."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        check_fence(db.conn)
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
        where.append(in_clause(column, len(values)))
        params.extend(values)
    return " AND ".join(where), params


def in_clause(column: str, n: int) -> str:
    """``column IN (?, ...)`` for ``n`` values; for none, a condition that is always false (PostgreSQL refuses
    ``IN ()``)."""
    return f"{column} IN ({placeholders(n)})" if n else "1 = 0"


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


ValuesTable = Callable[[str, Sequence[str], Sequence[Sequence[Any]]], tuple[str, list[Any]]]
"""``(table, columns, rows) -> (sql, params)``: ``rows`` as a subquery with those columns, typed as ``table``'s
columns of the same names, that one statement joins or inserts (``SqlAccess._values``)."""
ROWS_PER_STATEMENT = 500
"""Rows per table of parameters, and names or ids per ``IN (...)``: a bound on one statement's parameters and size,
far under SQLite's 32,766 parameters and asyncpg's 32,767."""


def chunks(items: Sequence[T], size: int = ROWS_PER_STATEMENT) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def check_columns(table: str, given: Iterable[str], known: Iterable[str]) -> None:
    """ValueError naming the columns of ``given`` that ``table`` does not have (a caller's typo, not user input)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown {table} columns: {', '.join(unknown)}")


# -- programs: read-then-write transactions, written once, driven by each store


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run ``sql``; its rows (``table``'s JSON columns decoded)."""

    table: str
    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Change:
    """Run one write statement; the number of rows it changed."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Serialize:
    """What follows reads rows of these keys and writes depending on what it read: no other program serializing on
    one of them may run in between (SQLite: its one writer does that already; PostgreSQL: advisory locks)."""

    keys: Collection[str]


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the other servers on the same database, once the transaction commits: each of ``payloads`` on
    ``channel`` (PostgreSQL NOTIFY, heard through ``PostgresStore.listen``). SQLite: nothing (one server)."""

    channel: str
    payloads: Collection[str]


Step: TypeAlias = Fetch | Change | Serialize | Notify
Program: TypeAlias = Generator[Step, Any, T]
"""A transaction: yields steps, is sent each step's result (rows, a row count, None), returns its value."""


def run_program(conn: sqlite3.Connection, program: Program[T]) -> T:
    """Drive ``program`` on SQLite inside the caller's write transaction."""
    try:
        step = next(program)
        while True:
            result: Any
            if isinstance(step, Fetch):
                result = read_rows(step.table, conn.execute(step.sql, step.params))
            elif isinstance(step, Change):
                result = conn.execute(step.sql, step.params).rowcount
            else:
                result = None  # Serialize: one writer, nothing runs in between anyway; Notify: no other server
            step = program.send(result)
    except StopIteration as done:
        return done.value


class SqlAccess:
    """The base of every record mixin of the stores (releases, registry, tokens, intents, hooks, commands)."""

    _row_lock: ClassVar[str] = ""
    """Appended to a ``SELECT`` that picks one row to take from a queue (a command to claim). SQLite: nothing (its
    one writer takes them in turn); PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so concurrent claimers each get
    another row instead of waiting for, then re-taking, the same one."""

    def _values(self) -> ValuesTable | None:
        """How this store takes many rows in one statement (a table of parameters to join), for a write that would
        otherwise run a statement per row; None: a statement per row. PostgreSQL has one: each statement there is a
        round trip to the database (a burst of 400 results was 800 of them, 0.4 s with the database 0.5 ms away).
        SQLite has none: a statement is a call into the library, and one of 400 rows cost as much as 400 of one
        (prepared anew for each batch's size, and slower than a plain statement for a batch of a few)."""
        return None

    async def _transact(self, program: Callable[[], Program[T]]) -> T:
        """Run the program made by ``program`` in one write transaction; its value. (SQLite; PostgresStore overrides
        this, and may call ``program`` again to retry a transaction PostgreSQL aborted for a deadlock.)"""

        def run(db: Database) -> T:
            with write_transaction(db) as conn:
                return run_program(conn, program())

        return await self._run(run)

    if TYPE_CHECKING:
        _columns: Mapping[str, frozenset[str]]  # each table's columns, read from the migrated schema

        async def _run(self, fn: Callable[[Database], T]) -> T: ...
        async def _fetch(
            self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False
        ) -> list[Row]: ...
        async def _fetch_one(
            self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False
        ) -> Row | None: ...
        async def _fetch_all(self, reads: Sequence[Fetch]) -> list[list[Row]]: ...
        async def _change(self, sql: str, params: Sequence[Any] = ()) -> int: ...
        async def _insert(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]: ...
