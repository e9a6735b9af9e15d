"""WalCheckpointer: the SQLite store's write-ahead log is copied back into the database a little at a time, by a
thread of its own.

SQLite checkpoints inside the commit that grows the write-ahead log past 1,000 pages: that one commit copies the
log into the database file and fsyncs both. Measured here (one-host deployments, every call to the store timed), it
took 10-18 ms, once every 12 deployments or so, and every call queued behind it on the store's one thread waited as
long: agents' results, their next commands, API requests.

This thread gets there first, and often: the store tells it of each of its calls, and every ``EVERY_CALLS``-th
(about one one-host deployment's, some 80 pages of log) wakes it to run ``PRAGMA wal_checkpoint(PASSIVE)`` on a
connection of its own. That copies what no reader still needs without taking the writer's lock, so commits go on
meanwhile, and the fsyncs are this thread's. A checkpoint that copied all of the log lets the next commit start the
log again from its beginning (the file keeps its size, as SQLite leaves it: cutting it down cost that commit a
millisecond per MiB). Small and frequent, checkpoints mostly catch up before the next commit; the few that cannot
(writes that never pause) are followed by the next, and SQLite's own at 1,000 pages (``BACKSTOP_PAGES``) is kept as
the backstop, finding most of the log copied already. Measured on a bare SQLite file for six seconds, commits of one
3 KB row in bursts of 30 with 10 ms between bursts: the time commits spent over 2 ms fell from 674 ms to 5 ms;
committing without pause, from 3,081 to 1,491 ms.

A checkpoint that fails (the disk, a lock held by another process) is tried again at the next wake-up: it loses
nothing, the log is only longer. It is logged once (a warning; again only when the reason changes), and its end
once (checkpoints work again), not at every wake-up: a disk that stays broken must not flood the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

EVERY_CALLS = 32
"""Calls to the store between two wake-ups of this thread (a one-host deployment makes about 30)."""
BACKSTOP_PAGES = 1000
"""The writer's own checkpoint, SQLite's default, kept as the backstop."""


class WalCheckpointer:
    """See the module docstring. ``called`` for each call to the store; ``stop`` once the store is closed."""

    def __init__(self, path: Path, *, every_calls: int = EVERY_CALLS) -> None:
        self._path = path
        self._every_calls = every_calls
        self._calls = 0  # since the last wake-up, counted on the one thread that calls ``called``
        self._due = threading.Event()
        self._stopping = False
        self._done = threading.Condition()
        self.checkpoints = 0
        """How many checkpoints this thread has run."""
        self.attempts_failed = 0
        """How many of its attempts failed."""
        self.last: tuple[int, int, int] | None = None
        """The last checkpoint's (busy, frames in the log, frames copied), as SQLite reports it."""
        self.failing: str | None = None
        """Why the checkpoints fail, while they do."""
        self._thread = threading.Thread(target=self._serve, name="deploybot-checkpoint", daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int:
        """``threading.get_ident()`` of the thread."""
        assert self._thread.ident is not None  # started in __init__
        return self._thread.ident

    def called(self) -> None:
        """One more call to the store: every ``every_calls``-th wakes the thread."""
        self._calls += 1
        if self._calls >= self._every_calls:
            self._calls = 0
            self.wake()

    def wake(self) -> None:
        """Checkpoint now (once the checkpoint under way, if any, has finished); from any thread."""
        self._due.set()

    def wait_for(self, count: int, timeout: float, *, failed: int = 0) -> bool:
        """Block until ``count`` checkpoints have run and ``failed`` attempts failed (False after ``timeout``
        seconds): for tests."""
        with self._done:
            return self._done.wait_for(lambda: self.checkpoints >= count and self.attempts_failed >= failed, timeout)

    def stop(self) -> None:
        """End the thread (a checkpoint under way finishes first)."""
        self._stopping = True
        self._due.set()
        self._thread.join()

    def _serve(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    if connection is None:
                        connection = sqlite3.connect(self._path, check_same_thread=False, timeout=10.0)
                    busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if connection is not None:  # opened afresh next time: the file may have been replaced
                        connection.close()
                        connection = None
                    self._failed(str(exc))
                    continue
                if self.failing is not None:
                    log.info("checkpoints of %s work again", self._path)
                with self._done:
                    self.failing = None
                    self.checkpoints += 1
                    self.last = (busy, frames, copied)
                    self._done.notify_all()
        finally:
            if connection is not None:
                connection.close()

    def _failed(self, reason: str) -> None:
        if reason != self.failing:
            log.warning("could not checkpoint %s (tried again at the next wake-up): %s", self._path, reason)
        with self._done:
            self.failing = reason
            self.attempts_failed += 1
            self._done.notify_all()
