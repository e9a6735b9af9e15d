"""Opening the database: a damaged, unreachable or empty file is refused with one line saying which file and what to
do, by ``SqliteStore.open`` and by a real ``deploybot serve`` (issue 17, item 5); ``serve --init`` starts on an empty
file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import free_port

from engine.store.sqlite import DatabaseUnusable, SqliteStore

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "server: {data_dir: var}\nhosts:\n  - {name: web-1}\n"
DAMAGED = "stop every deploybot using it, then restore it from a backup"


# ---------------------------------------------------------------------------------------------------- the store


async def test_a_file_that_is_not_a_database_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    path.write_bytes(b"this is not SQLite\n" * 500)
    with pytest.raises(DatabaseUnusable) as caught:
        await SqliteStore.open(path)
    assert str(caught.value) == (
        f"cannot use the database {path}: it is not an SQLite database or is damaged (file is not a database); "
        "stop every deploybot using it, then restore it from a backup (or move it aside and run `deploybot serve "
        "--init` to start with an empty database)"
    )
    assert path.read_bytes() == b"this is not SQLite\n" * 500  # untouched


async def test_a_damaged_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    store = await SqliteStore.open(path)
    await store.close()
    with path.open("r+b") as file:  # keep the header, overwrite the schema page with garbage
        file.seek(100)
        file.write(b"\xff" * 3000)
    with pytest.raises(DatabaseUnusable) as caught:
        await SqliteStore.open(path)
    assert caught.value.path == path and DAMAGED in str(caught.value)


async def test_a_zero_byte_file_is_refused_unless_init(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    path.touch()
    with pytest.raises(DatabaseUnusable) as caught:
        await SqliteStore.open(path)
    assert caught.value.reason == "the file is empty (0 bytes), not a database"
    assert "`deploybot serve --init`" in str(caught.value)
    assert path.stat().st_size == 0
    store = await SqliteStore.open(path, init=True)
    await store.close()
    assert path.stat().st_size > 0
    store = await SqliteStore.open(path)  # a database now
    await store.close()


async def test_a_missing_file_is_a_new_database_without_init(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "new" / "deploybot.db")
    await store.close()
    with sqlite3.connect(tmp_path / "new" / "deploybot.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0


async def test_a_directory_where_the_file_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    path.mkdir()
    with pytest.raises(DatabaseUnusable) as caught:
        await SqliteStore.open(path)
    assert str(caught.value).startswith(f"cannot use the database {path}: ")
    assert caught.value.fix.startswith("check that the file and its directory belong to the user running deploybot")


# ---------------------------------------------------------------------------------------------------- deploybot serve


@dataclass
class Served:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)


def serve(workdir: Path, *extra: str, wrapper: Sequence[str] = (), env: dict[str, str] | None = None) -> Served:
    """``deploybot serve`` in ``workdir`` (its deploybot.yml), optionally under ``wrapper`` (a command that ends by
    running its arguments); its output is collected line by line."""
    argv = [*wrapper, sys.executable, "-m", "bot", "serve", "--config", str(workdir / "deploybot.yml")]
    argv += ["--port", str(free_port()), *extra]
    environ = {k: v for k, v in os.environ.items() if k not in ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL")}
    process = subprocess.Popen(
        argv,
        cwd=workdir,
        env={**environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            served.lines.append(line)
            if "listening on" in line:
                served.listening.set()

    threading.Thread(target=read, daemon=True).start()
    return served


def stop(served: Served) -> int:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    return served.process.wait(30)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "deploybot.yml").write_text(CONFIG)
    (tmp_path / "var").mkdir(mode=0o700)
    yield tmp_path


def refused(workdir: Path, *extra: str) -> tuple[int, str]:
    served = serve(workdir, *extra)
    code = served.process.wait(30)
    assert served.process.stderr is not None
    return code, served.process.stderr.read()


def test_serve_stops_on_a_corrupt_database_with_one_line(workdir: Path) -> None:
    database = workdir / "var" / "deploybot.db"
    database.write_bytes(b"\x00garbage" * 1000)
    code, stderr = refused(workdir)
    assert code == 1
    assert stderr.splitlines() == [
        f"error: cannot use the database {database}: it is not an SQLite database or is damaged (file is not a "
        "database); stop every deploybot using it, then restore it from a backup (or move it aside and run "
        "`deploybot serve --init` to start with an empty database)"
    ]


def test_serve_refuses_a_zero_byte_database_and_starts_on_it_with_init(workdir: Path) -> None:
    database = workdir / "var" / "deploybot.db"
    database.touch()
    code, stderr = refused(workdir)
    assert code == 1
    assert stderr.splitlines() == [
        f"error: cannot use the database {database}: the file is empty (0 bytes), not a database; if it was lost, "
        "restore it from a backup; if this is a new server, remove the file or run `deploybot serve --init` once "
        "to start with an empty database"
    ]
    assert database.stat().st_size == 0
    served = serve(workdir, "--init")
    try:
        assert served.listening.wait(30), "".join(served.lines)
        assert f"initialized an empty database in {database} (--init)\n" in served.lines
    finally:
        assert stop(served) == 0
    assert database.stat().st_size > 0


def _namespaces_work() -> bool:
    """Whether this machine lets an unprivileged user namespace make a read-only bind mount."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", 'mount --bind "$0" "$0"', "/tmp"]
    return subprocess.run(probe, capture_output=True, check=False, timeout=10).returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare and user namespaces for a read-only bind mount")
def test_serve_stops_on_a_database_it_cannot_write_with_one_line(workdir: Path) -> None:
    """The database file is a read-only bind mount in the server's own mount namespace (root ignores file modes)."""
    database = workdir / "var" / "deploybot.db"
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("CREATE TABLE kept (x)")
    read_only = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    served = serve(
        workdir, wrapper=["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", read_only, str(database)]
    )
    assert served.process.wait(30) == 1
    assert served.process.stderr is not None
    assert served.process.stderr.read().splitlines() == [
        f"error: cannot use the database {database}: Read-only file system; check that the file and its directory "
        "belong to the user running deploybot and are writable"
    ]
