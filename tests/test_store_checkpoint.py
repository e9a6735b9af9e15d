"""The SQLite store's write-ahead log is copied back by the checkpointer's thread (engine/store/checkpointer.py), not
inside a commit on the store's thread: real SQLite files, the real store, its threads as they run."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from conftest import HANG_GUARD

from engine.store.checkpointer import KEPT_BYTES, LOOK_EVERY
from engine.store.sqlite import SqliteStore

ENTRY = {"output": "x" * 2000}  # an audit-log entry: about 16 KiB of log with its pages and indexes


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


def _wal_size(path: Path) -> int:
    return os.stat(f"{path}-wal").st_size


async def test_the_checkpointer_copies_the_log_back_once_it_has_grown(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    store = await SqliteStore.open(path, checkpoint_after_bytes=256 * 1024)
    try:
        await _write(store, LOOK_EVERY * 2)  # about 1.6 MiB of log, looked at twice
        assert await asyncio.to_thread(store.checkpointer.wait_for, 1, HANG_GUARD)
        busy, frames, copied = await _copied_all(store)
        assert (busy, copied) == (0, frames) and frames > 0
        assert store.checkpointer.ident != store.thread_ident  # its own thread, on its own connection
    finally:
        await store.close()


async def test_a_log_copied_back_starts_again_and_its_file_is_cut_down(tmp_path: Path) -> None:
    path = tmp_path / "deploybot.db"
    store = await SqliteStore.open(path, checkpoint_after_bytes=64 * 1024 * 1024)  # only when woken
    try:
        await _write(store, 60)  # about 1.5 MiB of log: past the size it is cut down to, short of the backstop
        assert _wal_size(path) > KEPT_BYTES
        await _copied_all(store)
        await _write(store, 1)  # the next commit starts the log again from its beginning
        assert _wal_size(path) <= KEPT_BYTES
        assert len(await store.read_log(limit=1000)) == 61  # nothing was lost on the way
    finally:
        await store.close()


async def test_a_small_log_is_left_to_grow(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "deploybot.db")  # the default size: 2 MiB
    try:
        await _write(store, LOOK_EVERY)  # about 1 MiB
        assert store.checkpointer.checkpoints == 0
    finally:
        await store.close()


async def test_closing_the_store_ends_its_checkpointer(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "deploybot.db", checkpoint_after_bytes=1)
    await _write(store, LOOK_EVERY)
    assert await asyncio.to_thread(store.checkpointer.wait_for, 1, HANG_GUARD)
    ident = store.checkpointer.ident
    await store.close()
    assert ident not in {thread.ident for thread in threading.enumerate()}
