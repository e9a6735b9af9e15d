"""WalCheckpointer: the SQLite store's write-ahead log is copied back into the database by a thread of its own.

SQLite checkpoints inside the commit that grows the write-ahead log past 1,000 pages: that one commit copies the
log into the database file and fsyncs both. Measured here (one-host deployments, every call to the store timed), it
took 10-18 ms, once every 12 deployments or so, and every call queued behind it on the store's one thread waited as
long: agents' results, their next commands, API requests.

This thread gets there first: once the log has passed ``AFTER_BYTES`` (about half of SQLite's 1,000 pages), it runs
``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own, which copies what no reader still needs without
taking the writer's lock, so commits go on meanwhile, and the fsyncs are this thread's. When all of the log was
copied, the next commit starts the log again from its beginning and cuts the file down to ``KEPT_BYTES``
(``journal_size_limit``), so the file's size says how much is waiting: the store's thread looks at it after one
call in ``LOOK_EVERY`` and wakes this thread when it has passed ``AFTER_BYTES``.

Writes that never pause leave a checkpoint no moment to finish in; the log then reaches SQLite's own 1,000 pages
(``BACKSTOP_PAGES``, kept) and the writer's checkpoint runs as before, finding most of the log copied already. So
the log never grows past what SQLite allows by default. A checkpoint that fails (the disk, a lock held by another
process) is logged and tried again at the next wake-up: it loses nothing, the log is only longer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

AFTER_BYTES = 2 * 1024 * 1024
"""The log's size from which this thread checkpoints: about half the pages at which the writer would."""
KEPT_BYTES = 1024 * 1024
"""What the log file is cut down to when it starts again (below ``AFTER_BYTES``: the size then says what waits)."""
BACKSTOP_PAGES = 1000
"""The writer's own checkpoint, SQLite's default, kept as the backstop for writes that never pause."""
LOOK_EVERY = 32
"""The store's thread looks at the log's size after one call in this many (a stat; a one-host deployment makes
about 30 calls)."""


class WalCheckpointer:
    """See the module docstring. ``look`` is called on the store's thread; ``stop`` once the store is closed."""

    def __init__(self, path: Path, *, after_bytes: int = AFTER_BYTES) -> None:
        self._path = path
        self._wal = path.with_name(f"{path.name}-wal")
        self._after_bytes = after_bytes
        self._due = threading.Event()
        self._stopping = False
        self._done = threading.Condition()
        self.checkpoints = 0
        """How many checkpoints this thread has run."""
        self.last: tuple[int, int, int] | None = None
        """The last checkpoint's (busy, frames in the log, frames copied), as SQLite reports it."""
        self._thread = threading.Thread(target=self._serve, name="deploybot-checkpoint", daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int:
        """``threading.get_ident()`` of the thread."""
        assert self._thread.ident is not None  # started in __init__
        return self._thread.ident

    def look(self) -> None:
        """Wake the thread when the log has grown past ``after_bytes`` (call it on the thread that writes)."""
        try:
            size = os.stat(self._wal).st_size
        except OSError:  # no log yet, or it cannot be read: nothing to copy that we know of
            return
        if size >= self._after_bytes:
            self.wake()

    def wake(self) -> None:
        """Checkpoint now, whatever the log's size (once the checkpoint under way, if any, has finished)."""
        self._due.set()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` checkpoints have run (False after ``timeout`` seconds): for tests."""
        with self._done:
            return self._done.wait_for(lambda: self.checkpoints >= count, timeout)

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
                    log.warning("could not checkpoint %s (tried again once the log grows): %s", self._path, exc)
                    continue
                with self._done:
                    self.checkpoints += 1
                    self.last = (busy, frames, copied)
                    self._done.notify_all()
        finally:
            if connection is not None:
                connection.close()
