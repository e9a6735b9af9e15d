"""A throwaway PostgreSQL for the tests, and the fixtures that run one test body against both stores.

``postgres_server`` (session): ``initdb`` + ``pg_ctl`` in a temp dir, on a free port, trust auth, as the ``postgres``
user when the tests run as root (PostgreSQL refuses root); stopped and removed at the end. It is skipped, with the
reason, only when the PostgreSQL binaries are not installed (``make system-deps`` installs them).

``store_database`` (parametrized ``sqlite`` / ``postgres``): a fresh database of that kind per test, as an
``Opener`` (``await opener.open()`` is another store on the same database: a second server or a restart).
``raw_execute`` runs SQL past the store (what another program, or a careless human, would do) and
``integrity_errors()`` is what either database raises for a broken constraint or trigger.

Imported by tests/conftest.py, so every test file may ask for these fixtures; the engine and asyncpg are imported
only when a fixture or helper is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest

if TYPE_CHECKING:
    from engine.store.postgres import PostgresStore
    from engine.store.sqlite import SqliteStore

AnyStore: TypeAlias = "SqliteStore | PostgresStore"


def integrity_errors() -> tuple[type[Exception], ...]:
    """A broken constraint or a refusing trigger, on SQLite or PostgreSQL."""
    import asyncpg

    return (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)


_BINDIRS = (
    os.environ.get("PG_BINDIR", ""),
    "/usr/lib/postgresql/15/bin",
    *(str(path) for path in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)),
)


def _bindir() -> Path | None:
    for candidate in _BINDIRS:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@dataclasses.dataclass
class PostgresServer:
    """A running throwaway cluster: trust auth for ``user`` on 127.0.0.1:``port``."""

    bindir: Path
    port: int
    user: str = "postgres"
    host: str = "127.0.0.1"
    _names: Iterator[int] = dataclasses.field(default_factory=itertools.count)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def new_database(self, *, icu_locale: str | None = None) -> str:
        """A new empty database (sorting text as ``icu_locale`` says, when given, as a production one may); its
        URL."""
        name = f"deploybot_test_{os.getpid()}_{next(self._names)}"
        locale = ("--template=template0", "--locale-provider=icu", f"--icu-locale={icu_locale}") if icu_locale else ()
        self._run("createdb", *locale, name)
        return self.url(name)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), "-h", self.host, "-p", str(self.port), "-U", self.user, *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` as the postgres user when we are root (initdb and pg_ctl refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    from conftest import free_port

    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found): run `make system-deps`")
    # As root the cluster runs as postgres, which must reach it: under /tmp, whatever TMPDIR says.
    root = Path(tempfile.mkdtemp(prefix="deploybot-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
    subprocess.run(_as_postgres([*initdb, "--locale=C"]), check=True, capture_output=True, timeout=120)
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    for attempt in range(3):  # the free port may be taken by another process before the server binds it
        port = free_port()
        # A test cluster: durability is not what is tested here, speed is welcome.
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        options += " -c full_page_writes=off -c max_connections=200"
        started = subprocess.run(_as_postgres([*pg_ctl, "-o", options, "start"]), capture_output=True, timeout=90)
        if started.returncode == 0:
            break
        if attempt == 2:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.decode(errors='replace')}")
    try:
        yield PostgresServer(bindir, port)
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(_as_postgres([*pg_ctl, "-m", "fast", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass
class Opener:
    """A database of one kind (``sqlite`` or ``postgres``) made for one test."""

    kind: str
    open: Callable[[], Awaitable[AnyStore]]
    """Another store on the same database."""


@pytest.fixture(params=["sqlite", "postgres"])
def store_database(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    from engine.store.postgres import PostgresStore
    from engine.store.sqlite import SqliteStore

    if request.param == "sqlite":
        path = tmp_path / "state.db"
        return Opener("sqlite", lambda: SqliteStore.open(path))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    return Opener("postgres", lambda: PostgresStore.open(url))


async def raw_rows(store: AnyStore, sql: str) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts, read on a connection of its own to ``store``'s database, past the store."""
    import asyncpg

    from engine.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql).fetchall()]
    conn = await asyncpg.connect(store.url)
    try:
        return [dict(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def raw_execute(store: AnyStore, sql: str) -> Any:
    """Run ``sql`` on a connection of its own to ``store``'s database, past the store."""
    import asyncpg

    from engine.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            return conn.execute(sql).fetchall()
    conn = await asyncpg.connect(store.url)
    try:
        return await conn.execute(sql)
    finally:
        await conn.close()
