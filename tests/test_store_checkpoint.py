"""The SQLite store's write-ahead log is copied back by the checkpointer's thread, a little at a time
(engine/store/checkpointer.py), not inside a commit on the store's thread: real SQLite files, the real store, its
threads as they run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import HANG_GUARD

from engine.store.checkpointer import WalCheckpointer
from engine.store.sqlite import SqliteStore

ENTRY = {"output": "x" * 2000}  # an audit-log entry: a few pages of log with its indexes


async def _write(store: SqliteStore, count: int) -> None:
    for index in range(count):
        await store.append_log("test.entry", at=float(index), actor="test", data=ENTRY)


async def _copied_all(store: SqliteStore) -> tuple[int, int, int]:
    """Wake the checkpointer until a checkpoint that started after the last write has run; its (busy, frames in the
    log, frames copied). The one running at the last write may have missed that write's frames: the next has not."""
    checkpointer = store.checkpointer
    for _ in range(3):
        done = checkpointer.checkpoints
        checkpointer.wake()
        assert await asyncio.to_thread(checkpointer.wait_for, done + 1, HANG_GUARD)
        assert checkpointer.last is not None
        if checkpointer.last[1] == checkpointer.last[2]:
            break
    assert checkpointer.last is not None
    return checkpointer.last


def _log_restarts(path: Path) -> int:
    """How many times the write-ahead log has started again from its beginning: the checkpoint sequence number of its
    header (bytes 12-15, big-endian; sqlite.org/fileformat2.html#the_write_ahead_log). Read without a connection,
    which would checkpoint the log itself."""
    with open(f"{path}-wal", "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


async def test_the_checkpointer_is_woken_every_so_many_calls(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "deploybot.db", checkpoint_every=16)
    try:
        await _write(store, 15)
        assert store.checkpointer.checkpoints == 0
        await _write(store, 1)  # the 16th call
        assert await asyncio.to_thread(store.checkpointer.wait_for, 1, HANG_GUARD)
        busy, frames, copied = store.checkpointer.last or (None, None, None)
        assert busy == 0 and frames and copied  # the entries' frames, copied on the checkpointer's own connection
        assert store.checkpointer.ident != store.thread_ident
    finally:
        await store.close()


async def test_a_log_copied_back_starts_again_from_its_beginning(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    store = await SqliteStore.open(path, checkpoint_every=10_000)  # only when woken here
    try:
        await _write(store, 60)  # about 370 pages of log: short of the writer's own checkpoint at 1,000
        restarts = _log_restarts(path)
        busy, frames, copied = await _copied_all(store)
        assert (busy, copied) == (0, frames) and frames > 300  # all of it, by the checkpointer alone
        await _write(store, 1)  # the next commit starts the log again from its beginning
        assert _log_restarts(path) == restarts + 1
        assert len(await store.read_log(limit=1000)) == 61  # nothing was lost on the way
    finally:
        await store.close()


async def test_closing_the_store_ends_its_checkpointer(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "deploybot.db", checkpoint_every=1)
    await _write(store, 1)
    assert await asyncio.to_thread(store.checkpointer.wait_for, 1, HANG_GUARD)
    ident = store.checkpointer.ident
    await store.close()
    assert ident not in {thread.ident for thread in threading.enumerate()}


async def test_a_failing_checkpoint_is_logged_once_and_so_is_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "deploybot.db"
    path.write_bytes(b"not a database at all\n" * 200)
    checkpointer = WalCheckpointer(path)
    try:
        with caplog.at_level(logging.INFO, logger="engine.store.checkpointer"):
            for attempt in (1, 2, 3):
                checkpointer.wake()
                assert await asyncio.to_thread(checkpointer.wait_for, 0, HANG_GUARD, failed=attempt)
            reason = checkpointer.failing
            assert reason is not None and "not a database" in reason
            path.unlink()
            with contextlib.closing(sqlite3.connect(path)) as database:  # the file made good again
                database.execute("PRAGMA journal_mode=WAL")
                database.execute("CREATE TABLE entries (text TEXT)")
                database.commit()
                checkpointer.wake()
                assert await asyncio.to_thread(checkpointer.wait_for, 1, HANG_GUARD)
        assert checkpointer.failing is None
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "engine.store.checkpointer"]
        assert said == [
            ("WARNING", f"could not checkpoint {path} (tried again at the next wake-up): {reason}"),
            ("INFO", f"checkpoints of {path} work again"),
        ]
    finally:
        checkpointer.stop()
