"""SqliteStore: all of deploybot's state in one SQLite file (WAL), behind an async API.

Theory of operation: the store owns exactly one connection, created inside — and only ever used from — one
thread (``OwnerThread``). Every public method is a coroutine that ships a small closure to that thread, so SQL never
blocks the event loop, writes are serialized without any Python lock, and SQLite's threading rules are kept by
construction. Writes run in ``BEGIN IMMEDIATE`` transactions so a second process (a CLI reading the same file, a
test) can only make us wait, never corrupt a read-modify-write. The write-ahead log is copied back into the file by
a thread of its own, a little at a time (engine/store/checkpointer.py), so no commit on the store's thread stops to
do it.

The store never reads the clock: every timestamp (float epoch seconds) comes from the caller, which owns time.
Structured fields are JSON columns: dicts in, dicts out. Rows come back as plain dicts keyed by column name.

The SQL itself is in the record mixins, shared with PostgresStore: deployment_records (revisions, deployments,
target events, the log), command_records (the agents' queue) and the others; this module is the connection, its
thread and the accessors they run through.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from sqlite_utils import Database

from engine.core.errors import EngineError
from engine.store.checkpointer import BACKSTOP_PAGES, EVERY_CALLS, WalCheckpointer
from engine.store.migrations import applied_migrations, apply_migrations
from engine.store.owner_thread import OwnerThread
from engine.store.records import Records
from engine.store.statements import Fetch, read_rows, write_transaction

T = TypeVar("T")
Row = dict[str, Any]


class DatabaseUnusable(EngineError):
    """The database file cannot be used as it is (.path, .reason, .fix); the message is one line for the operator."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        self.path, self.reason, self.fix = path, reason, fix
        super().__init__(f"cannot use the database {path}: {reason}; {fix}")


_UNREADABLE_FIX = "check that the file and its directory belong to the user running deploybot and are writable"
_DAMAGED_FIX = (
    "stop every deploybot using it, then restore it from a backup (or move it aside and run `deploybot serve "
    "--init` to start with an empty database)"
)


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> DatabaseUnusable:
    """SQLite's refusal in the operator's terms: damaged (restore it) or out of reach (fix permissions)."""
    reason = str(exc)
    reach = ("unable to open", "readonly", "read-only", "disk i/o error", "permission")
    if isinstance(exc, sqlite3.OperationalError) and any(word in reason.lower() for word in reach):
        return DatabaseUnusable(path, reason, _UNREADABLE_FIX)
    if "not a database" in reason or "malformed" in reason:
        reason = f"it is not an SQLite database or is damaged ({reason})"
    return DatabaseUnusable(path, reason, _DAMAGED_FIX)


def _refuse_empty(path: Path, init: bool) -> None:
    """A zero-byte database file is refused unless ``init`` (see ``SqliteStore.open``)."""
    if not init and path.is_file() and path.stat().st_size == 0:
        fix = (
            "if it was lost, restore it from a backup; if this is a new server, remove the file or run "
            "`deploybot serve --init` once to start with an empty database"
        )
        raise DatabaseUnusable(path, "the file is empty (0 bytes), not a database", fix)


def _owner_only(path: Path) -> None:
    """Create the database file 0600, or tighten an existing one and its -wal/-shm: it holds every deployment's output
    and the audit log. SQLite gives the -wal and -shm files it creates the database file's mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):  # another user's database: theirs to tighten
            os.chmod(file, 0o600)


class SqliteStore(Records):
    """The persistence port of the engine; see the module docstring for the threading model."""

    backend = "sqlite"  # what /healthz and `deploybot replicas` report

    def __init__(
        self,
        path: Path,
        thread: OwnerThread,
        db: Database,
        columns: Mapping[str, frozenset[str]],
        checkpointer: WalCheckpointer,
    ) -> None:
        self._path = path
        self._thread = thread
        self._db = db
        self._columns = columns  # read from the migrated schema, so a new column needs no code change here
        self._checkpointer = checkpointer
        self._closed = False

    # -- lifecycle

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        on_statement: Callable[[str], None] | None = None,
        init: bool = False,
        checkpoint_every: int = EVERY_CALLS,
    ) -> SqliteStore:
        """Open (creating dirs and file as needed) and migrate. ``on_statement`` sees every SQL statement run,
        on the store's thread (for tracing and for tests that check which thread touches the connection);
        ``checkpoint_every``: the calls between two wake-ups of the thread that copies the write-ahead log back
        (WalCheckpointer).

        Raises ``DatabaseUnusable`` (one sentence: which file, what is wrong, what to do) for a file that is not
        an SQLite database or is damaged, one that cannot be read or written, and a zero-byte file unless
        ``init``: an empty file where a database should be is more likely a lost one than a new one (a new server
        has no file at all), so starting afresh on it must be asked for (``deploybot serve --init``).
        """
        path = Path(path)
        thread = OwnerThread("deploybot-store")

        def connect() -> tuple[Database, dict[str, frozenset[str]]]:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _refuse_empty(path, init)
                _owner_only(path)
                conn = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
            except OSError as exc:
                raise DatabaseUnusable(path, exc.strerror or str(exc), _UNREADABLE_FIX) from exc
            except sqlite3.DatabaseError as exc:
                raise _unusable(path, exc) from exc
            try:
                if on_statement is not None:
                    conn.set_trace_callback(on_statement)
                db = Database(conn, execute_plugins=False)
                db.enable_wal()
                # WAL + NORMAL: a commit survives a crash of this process (kill -9); only power loss can drop
                # the last few, which is the usual trade for not fsyncing every target event.
                db.execute("PRAGMA synchronous=NORMAL")
                # The checkpointer's thread copies the log back first; this connection's checkpoint is the backstop.
                db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                apply_migrations(db)
                columns = {t.name: frozenset(c.name for c in t.columns) for t in db.tables}
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise _unusable(path, exc) from exc
            except BaseException:
                conn.close()
                raise
            return db, columns

        try:
            db, columns = await thread.run(connect)
        except BaseException:
            thread.stop()
            raise
        return cls(path, thread, db, columns, WalCheckpointer(path, every_calls=checkpoint_every))

    async def close(self) -> None:
        """Close after every call already submitted has finished; later calls raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._thread.run(self._db.close)
        finally:
            self._thread.stop()
            await asyncio.to_thread(self._checkpointer.stop)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def thread_ident(self) -> int:
        """``threading.get_ident()`` of the one thread that owns the connection."""
        return self._thread.ident

    @property
    def checkpointer(self) -> WalCheckpointer:
        """The thread that copies the write-ahead log back (engine/store/checkpointer.py)."""
        return self._checkpointer

    async def _run(self, fn: Callable[[Database], T]) -> T:
        if self._closed:
            raise RuntimeError(f"SqliteStore({self._path}) is closed")
        self._checkpointer.called()
        try:
            # The caller's context goes along: a fenced write (statements.fencing) is checked on the store's thread.
            return await self._thread.run(fn, self._db)
        except sqlite3.OperationalError as exc:
            if "disk is full" in str(exc):  # the doors answer a full disk as such (bot/http.py: 507)
                raise OSError(errno.ENOSPC, f"{exc} ({self._path})") from exc
            raise

    async def _fetch(self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False) -> list[Row]:
        """Rows of ``sql``, ``table``'s JSON columns decoded; ``write`` for ``... RETURNING`` statements."""

        def fetch(db: Database) -> list[Row]:
            if not write:
                return read_rows(table, db.conn.execute(sql, params))
            with write_transaction(db) as conn:
                return read_rows(table, conn.execute(sql, params))

        return await self._run(fetch)

    async def _fetch_one(self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False) -> Row | None:
        rows = await self._fetch(table, sql, params, write=write)
        return rows[0] if rows else None

    async def _fetch_all(self, reads: Sequence[Fetch]) -> list[list[Row]]:
        """The rows of each read, in one trip to the store's thread: a trip is a thread hand-off each way, which
        costs more than a small read. The thread runs every write too, so none comes between the reads."""

        def fetch(db: Database) -> list[list[Row]]:
            return [read_rows(read.table, db.conn.execute(read.sql, read.params)) for read in reads]

        return await self._run(fetch)

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; the number of rows it changed."""

        def change(db: Database) -> int:
            with write_transaction(db) as conn:
                return conn.execute(sql, params).rowcount

        return await self._run(change)

    async def _insert(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert rows in one transaction; their rowids."""

        def insert(db: Database) -> list[int]:
            with write_transaction(db) as conn:
                return [conn.execute(sql, row).lastrowid or 0 for row in rows]

        return await self._run(insert)

    async def applied_migrations(self) -> list[str]:
        return await self._run(applied_migrations)

    async def journal_mode(self) -> str:
        return await self._run(lambda db: db.conn.execute("PRAGMA journal_mode").fetchone()[0])
