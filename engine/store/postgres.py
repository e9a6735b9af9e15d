"""PostgresStore: all of deploybot's state in a PostgreSQL database, behind the same Store port as SqliteStore.

Theory of operation: an asyncpg pool; every public method is a coroutine, as on SqliteStore. The record mixins
(releases, registry, tokens, intents, hook executions, the agents' command queue) are SqliteStore's own, unchanged:
their SQL is written to mean the same on both databases (engine/store/statements.py), and this class gives them the
accessors they call:

- ``_fetch`` / ``_fetch_one`` / ``_change`` / ``_insert`` number the ``?`` placeholders (``$1..$n``), decode the
  table's JSON columns (migrations.JSON_COLUMNS) and leave out the columns SQLite does not have
  (pg_migrations.HIDDEN_COLUMNS). ``_insert`` returns each row's identity (SQLite's rowid), one transaction for all.
- ``_transact`` runs a *program* (a read-then-write transaction) on one connection in one transaction. SQLite's
  single writer makes such a transaction atomic for free; here ``Serialize(keys)`` takes transaction-scoped advisory
  locks (in key order), single statements re-check their ``WHERE`` on rows changed meanwhile (READ COMMITTED), and a
  command is claimed ``FOR UPDATE SKIP LOCKED`` (``_row_lock``). A transaction PostgreSQL aborts for a deadlock or a
  serialization failure is run again, from the start, a few times.

Differences a caller may see: a duplicate deployment id raises ``asyncpg.UniqueViolationError`` (an
``IntegrityConstraintViolationError``) where SQLite raises ``sqlite3.IntegrityError``; PostgreSQL text cannot hold
NUL, so a NUL character in a value is stored as U+FFFD. The store never reads the clock (timestamps come from the
caller). ``listen`` hears what other servers ``Notify`` (e.g. that a host got a command: command_records'
COMMANDS_QUEUED), for waking long polls across replicas; with ``own=False``, not what this store's own pool sent
(``OwnBackends``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from engine.core.errors import EngineError
from engine.core.leases import Lease, LeaseLost
from engine.store.migrations import JSON_COLUMNS
from engine.store.pg_migrations import HIDDEN_COLUMNS, applied_migrations, apply_migrations
from engine.store.records import Records
from engine.store.statements import (
    FENCE,
    FENCE_CHECK,
    Change,
    Fetch,
    Notify,
    Program,
    Serialize,
    Step,
    ValuesTable,
    fence_params,
)

T = TypeVar("T")
Row = dict[str, Any]
log = logging.getLogger(__name__)

_RETRIES = 5  # runs of a transaction PostgreSQL aborted for a deadlock or a serialization failure
_INSERT_INTO = re.compile(r'^\s*INSERT\s+INTO\s+"?(\w+)"?', re.IGNORECASE)


class PostgresUnusable(EngineError):
    """The PostgreSQL database cannot be used (.url without any password, .reason, .fix); one line for the
    operator."""

    def __init__(self, url: str, reason: str, fix: str) -> None:
        self.url, self.reason, self.fix = url, reason, fix
        super().__init__(f"cannot use the PostgreSQL database {url}: {reason}; {fix}")


def shown_url(url: str) -> str:
    """``url`` without its password, if it has one (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


@functools.lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders numbered ``$1..$n`` as PostgreSQL wants them (none inside quotes)."""
    out: list[str] = []
    quote: str | None = None
    n = 0
    for char in sql:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(char)
    return "".join(out)


def _param(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    if isinstance(value, list):  # an array (``_values``)
        return [_param(item) for item in value]
    return value


def _unnest_table(
    types: Mapping[str, Mapping[str, str]], table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> tuple[str, list[Any]]:
    """``rows`` as a table to join or insert (``SqlAccess._values``): one array per column, typed as ``table``'s
    column (``types``, read from the schema), ``unnest``-ed: a fixed statement whatever the number of rows (prepared
    once), with the types a ``VALUES`` list of parameters lacks."""
    arrays = ", ".join(f"?::{types[table][column]}[]" for column in columns)
    subquery = f"(SELECT * FROM unnest({arrays}) AS t({', '.join(columns)}))"
    return subquery, [list(column) for column in zip(*rows, strict=True)]


def _params(params: Sequence[Any]) -> list[Any]:
    return [_param(value) for value in params]


def _rows(table: str, records: Iterable[Any]) -> list[Row]:
    """asyncpg records as dicts: hidden columns left out, the table's JSON columns decoded."""
    json_columns = JSON_COLUMNS.get(table, frozenset())
    rows = []
    for record in records:
        row = {key: value for key, value in record.items() if key not in HIDDEN_COLUMNS}
        for column in json_columns:
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
        rows.append(row)
    return rows


def _count(status: str) -> int:
    """The row count of a command status (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _check_fence(conn: Any, lease: Lease) -> None:
    """The fence of a write (statements.FENCE_CHECK), in its transaction. ``FOR SHARE`` holds the lease row until the
    write commits: a takeover (which updates the row) waits for it, so no write of an old tenure lands after one."""
    if await conn.fetchval(numbered(FENCE_CHECK) + " FOR SHARE", *fence_params(lease)) is None:
        raise LeaseLost(lease.group, lease.owner, lease.generation)


LISTEN_APPLICATION = "deploybot-listen"
"""The ``application_name`` of LISTEN connections (as pg_stat_activity shows them)."""
_Heard = Callable[[str, int], None]  # a notification's payload, and the server process id of the backend that sent it
_LISTEN_CHECK_SECONDS = 5.0  # how often an idle LISTEN connection is asked whether it is still there
_RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0)  # waits between attempts to reopen one (the last repeats)

_UNREACHABLE_FIX = (
    "check store.url (host, port, database, user), that PostgreSQL is running and reachable, and the password "
    "(PGPASSWORD, or the variable store.password_env names)"
)


async def _nothing_to_reset(conn: Any) -> None:
    """The pool's reset of a connection it takes back, after asyncpg's own step (which rolls back a transaction left
    open): nothing. The store never changes a session otherwise (its advisory locks are its transactions', LISTEN
    has connections of its own, no ``SET``, no cursor outside a transaction), and the default reset query
    (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) was one more round trip per store call:
    7,919 of them in three deployments of 1,000 hosts."""
    del conn


class OwnBackends:
    """The server process ids of the pool's connections, as they come and go: PostgreSQL names the backend that sent
    each notification, so a listener can tell what this store said itself from what other replicas said.

    A connection's id is noted when the pool makes it (``note``, from the pool's ``init``) and dropped when it
    closes. An id the operating system gives again to another replica's new backend in the moment before a closed one is
    dropped would hide that backend's notification: what it said is then found by the lease round instead."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def note(self, conn: Any) -> None:
        pid = conn.get_server_pid()
        self.pids.add(pid)
        conn.add_termination_listener(lambda _conn: self.pids.discard(pid))


class PostgresStore(Records):
    """The persistence port of the engine on PostgreSQL; see the module docstring."""

    backend = "postgresql"  # what /healthz and `deploybot replicas` report

    _row_lock = " FOR UPDATE SKIP LOCKED"
    _row_order = "row_order"  # the hidden identity that keeps insertion order (SQLite: rowid)
    _lease_clock = "extract(epoch from clock_timestamp())::double precision"  # one clock for every replica
    shared = True

    def __init__(
        self,
        pool: Any,
        url: str,
        password: str | None,
        columns: Mapping[str, frozenset[str]],
        identities: Mapping[str, str],
        own_backends: OwnBackends | None = None,
        types: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._pool = pool
        self._own_backends = own_backends or OwnBackends()
        self._types = types or {}  # table -> column -> its type (information_schema's data_type)
        self._url = url
        self._password = password
        self._columns = columns  # read from the migrated schema, so a new column needs no code change here
        self._identities = identities  # table -> its identity column (what _insert returns)
        self._listeners: dict[int, Any] = {}  # listen() number -> its current connection
        self._listening: list[asyncio.Task[None]] = []
        self._listen_numbers = itertools.count()
        self._closed = False

    # -- lifecycle

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        init: bool = False,
        min_size: int = 1,
        max_size: int = 10,
        on_statement: Callable[[str], None] | None = None,
    ) -> PostgresStore:
        """Connect and migrate (pg_migrations: every pending script in one transaction, under an advisory lock, so
        replicas starting together take turns). ``password`` is used when the server asks for one (else asyncpg's
        PGPASSWORD and ~/.pgpass). ``init`` is accepted as ``SqliteStore.open``'s: an empty PostgreSQL database
        is what a new server starts on (the operator created it), so there is no lost-file case to guard here.
        ``on_statement`` sees the SQL of every statement the pool's connections run (for tracing and tests).

        Raises ``PostgresUnusable`` (one sentence: which database, what is wrong, what to do) when the database
        cannot be reached, does not exist, or refuses the user.
        """
        del init
        shown = shown_url(url)
        own_backends = OwnBackends()

        async def made(conn: Any) -> None:
            """Each connection the pool makes: its backend noted as this store's, its statements traced if asked."""
            own_backends.note(conn)
            if on_statement is not None:
                trace = on_statement
                conn.add_query_logger(lambda query: trace(query.query))

        try:
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=min_size,
                max_size=max_size,
                timeout=10,
                init=made,
                reset=_nothing_to_reset,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise PostgresUnusable(shown, str(exc) or type(exc).__name__, _UNREACHABLE_FIX) from exc
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
                columns: dict[str, set[str]] = {}
                identities: dict[str, str] = {}
                types: dict[str, dict[str, str]] = {}
                for record in await conn.fetch(
                    "SELECT table_name, column_name, is_identity, data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema()"
                ):
                    table, column = record["table_name"], record["column_name"]
                    types.setdefault(table, {})[column] = record["data_type"]
                    if record["is_identity"] == "YES":
                        identities[table] = column
                    if column not in HIDDEN_COLUMNS:
                        columns.setdefault(table, set()).add(column)
        except asyncpg.PostgresError as exc:
            await pool.close()
            raise PostgresUnusable(shown, str(exc), "check that the user may create tables in it") from exc
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url, password, {t: frozenset(c) for t, c in columns.items()}, identities, own_backends, types)

    async def close(self) -> None:
        """Close the pool (waiting for calls in flight); later calls raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        for task in self._listening:
            task.cancel()
        await asyncio.gather(*self._listening, return_exceptions=True)
        for conn in self._listeners.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._listeners.clear()
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return self._url

    async def applied_migrations(self) -> list[str]:
        async with self._acquire() as conn:
            return await applied_migrations(conn)

    async def listen(
        self,
        channel: str,
        callback: Callable[[str], None],
        *,
        reopened: Callable[[], None] | None = None,
        own: bool = True,
    ) -> None:
        """Call ``callback(payload)`` for each NOTIFY on ``channel`` (from any server, once its transaction has
        committed) until the store closes; on a connection of its own, which the pool would otherwise hand out.
        ``own=False``: not for what this store's pool sent (``OwnBackends``).

        A LISTEN connection that drops (the server restarted, a proxy cut it, an idle timeout) is reopened, retrying
        until it is back; what was notified meanwhile is lost, so ``reopened()`` is called then: look once for what
        may have been missed. The first connection is made before this returns (an unreachable database raises)."""
        self._check_open()
        ours = None if own else self._own_backends.pids

        def heard(payload: str, sender: int) -> None:
            if ours is None or sender not in ours:
                callback(payload)

        number = next(self._listen_numbers)
        self._listeners[number] = await self._listen_on(channel, heard)
        self._listening.append(asyncio.ensure_future(self._keep_listening(number, channel, heard, reopened)))

    async def _listen_on(self, channel: str, heard: _Heard) -> Any:
        conn = await asyncpg.connect(
            self._url, password=self._password, timeout=10, server_settings={"application_name": LISTEN_APPLICATION}
        )
        try:
            await conn.add_listener(channel, lambda _conn, sender, _channel, payload: heard(payload, sender))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _keep_listening(
        self, number: int, channel: str, heard: _Heard, reopened: Callable[[], None] | None
    ) -> None:
        """Watch listen connection ``number``; reopen it when it drops (see ``listen``)."""
        while not self._closed:
            conn = self._listeners[number]
            dropped = asyncio.Event()
            conn.add_termination_listener(lambda _conn, event=dropped: event.set())
            while not dropped.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dropped.wait(), _LISTEN_CHECK_SECONDS)
                    break
                try:
                    await asyncio.wait_for(conn.execute("SELECT 1"), _LISTEN_CHECK_SECONDS)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    break
            with contextlib.suppress(Exception):
                await conn.close()
            log.warning("the LISTEN connection for %s dropped; reopening it", channel)
            for attempt in itertools.count():
                try:
                    self._listeners[number] = await self._listen_on(channel, heard)
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    wait = _RECONNECT_SECONDS[min(attempt, len(_RECONNECT_SECONDS) - 1)]
                    log.warning("reopening the LISTEN connection for %s failed (%s); again in %g s", channel, exc, wait)
                    await asyncio.sleep(wait)
            log.info("listening on %s again", channel)
            if reopened is not None:
                reopened()

    # -- the accessors of the record mixins

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"PostgresStore({shown_url(self._url)}) is closed")

    def _acquire(self) -> Any:
        self._check_open()
        return self._pool.acquire()

    async def _write(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(conn)`` on a pooled connection, run again when PostgreSQL aborted it for a deadlock or a
        serialization failure; a full disk is an OSError(ENOSPC), as on SQLite (the doors answer it as such)."""
        lease = FENCE.get()
        for attempt in range(_RETRIES):
            try:
                async with self._acquire() as conn:
                    if lease is None:
                        return await work(conn)
                    async with conn.transaction():  # the work's own transaction becomes a savepoint in this one
                        await _check_fence(conn, lease)
                        return await work(conn)
            except asyncpg.exceptions.TransactionRollbackError:
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
            except asyncpg.exceptions.DiskFullError as exc:
                raise OSError(errno.ENOSPC, f"{exc} ({shown_url(self._url)})") from exc
        raise AssertionError("unreachable")

    async def _fetch(self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False) -> list[Row]:
        """Rows of ``sql``, ``table``'s JSON columns decoded; ``write`` for ``... RETURNING`` statements."""
        if not write:
            async with self._acquire() as conn:
                return _rows(table, await conn.fetch(numbered(sql), *_params(params)))

        async def fetch(conn: Any) -> list[Row]:
            return _rows(table, await conn.fetch(numbered(sql), *_params(params)))

        return await self._write(fetch)

    async def _fetch_one(self, table: str, sql: str, params: Sequence[Any] = (), *, write: bool = False) -> Row | None:
        rows = await self._fetch(table, sql, params, write=write)
        return rows[0] if rows else None

    async def _fetch_all(self, reads: Sequence[Fetch]) -> list[list[Row]]:
        """The rows of each read, on one connection and one snapshot (another replica's write lands before all of
        them or after)."""
        async with self._acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return [_rows(read.table, await conn.fetch(numbered(read.sql), *_params(read.params))) for read in reads]

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement (its own transaction); the number of rows it changed."""

        async def change(conn: Any) -> int:
            return _count(await conn.execute(numbered(sql), *_params(params)))

        return await self._write(change)

    async def _insert(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert rows in one transaction; their identities (0 for a table without one, or a row not inserted)."""
        match = _INSERT_INTO.match(sql)
        identity = self._identities.get(match.group(1)) if match and "RETURNING" not in sql.upper() else None
        statement = numbered(sql) + (f" RETURNING {identity}" if identity else "")

        async def insert(conn: Any) -> list[int]:
            ids: list[int] = []
            async with conn.transaction():
                for row in rows:
                    if identity:
                        ids.append(int(await conn.fetchval(statement, *_params(row)) or 0))
                    else:
                        await conn.execute(statement, *_params(row))
                        ids.append(0)
            return ids

        return await self._write(insert)

    def _values(self) -> ValuesTable:
        return functools.partial(_unnest_table, self._types)

    async def _transact(self, program: Callable[[], Program[T]]) -> T:
        """Run the program made by ``program`` in one transaction on one connection (see the module docstring)."""

        async def run(conn: Any) -> T:
            async with conn.transaction():
                steps = program()
                try:
                    step = next(steps)
                    while True:
                        step = steps.send(await self._step(conn, step))
                except StopIteration as done:
                    return done.value

        return await self._write(run)

    async def _step(self, conn: Any, step: Step) -> Any:
        if isinstance(step, Fetch):
            return _rows(step.table, await conn.fetch(numbered(step.sql), *_params(step.params)))
        if isinstance(step, Change):
            return _count(await conn.execute(numbered(step.sql), *_params(step.params)))
        if isinstance(step, Serialize):
            for key in sorted(set(step.keys)):  # one order for every transaction: no deadlock between them
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
            return None
        if isinstance(step, Notify):
            if step.payloads:
                sql = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload"
                await conn.execute(sql, step.channel, list(step.payloads))
            return None
        raise TypeError(f"not a program step: {step!r}")
