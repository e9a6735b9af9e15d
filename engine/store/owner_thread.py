"""OwnerThread: one thread that owns an object (the SQLite connection) and runs the event loop's calls on it.

Theory of operation: a call is queued on a ``SimpleQueue`` with a future of the caller's loop; the thread runs the
calls one by one, in the order they were made, each in a copy of its caller's context (a fenced write checks its
lease there), and settles the future through ``call_soon_threadsafe``. That is the whole hand-off.

Why not ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor``: the store makes a trip per transaction,
tens per deployment and one or two per host-event, and the pool's bookkeeping (a work item, an idle semaphore, a
thread-count check, a concurrent future whose state is copied into an asyncio one) doubles what a trip costs:
``make bench`` (its "store" part, bench/store_hop.py) measured 70 µs of CPU per round trip through the pool, 38 here.

A caller cancelled while its call waits or runs does not stop the call: it runs, and its outcome is dropped (as
with the pool). The thread is a daemon: a store never closed must not hang the interpreter's exit, and SQLite's
journal keeps a transaction cut short by the exit out of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# (the caller's loop, its future, its context, the function, its arguments)
_Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class OwnerThread:
    """See the module docstring."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._stopping = False
        self._thread.start()

    @property
    def ident(self) -> int:
        """``threading.get_ident()`` of the thread."""
        assert self._thread.ident is not None  # started in __init__
        return self._thread.ident

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread, after every call made before it; its result or its exception."""
        if self._stopping:
            raise RuntimeError(f"{self._thread.name} is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, contextvars.copy_context(), fn, args))
        return await future

    def stop(self) -> None:
        """Refuse new calls; the thread ends once the calls already made have run."""
        if not self._stopping:
            self._stopping = True
            self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, context, fn, args = call
            try:
                result, error = context.run(fn, *args), None
            except BaseException as exc:  # the caller's to handle, as if it had run the call itself
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits for this outcome
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
