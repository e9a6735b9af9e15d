"""The store's hand-off to its thread: what one trip costs, ``OwnerThread`` against a one-thread pool (issue 19).

Every call of the SQLite store is a closure run on the one thread that owns the connection, and back: tens per
deployment, one or two per host-event. ``engine/store/owner_thread.py`` does the hand-off with a ``SimpleQueue`` and
``call_soon_threadsafe``; before it, ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor`` did. In
``rounds`` interleaved rounds (the order alternates), each way runs ``calls`` trivial calls one after another, and
the figure is the process's CPU time per call (both threads), median over the rounds.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from concurrent.futures import ThreadPoolExecutor

from bench.figures import Figure, median, spread
from bench.settings import Settings
from engine.store.owner_thread import OwnerThread

ROUNDS = 7
CALLS = 5_000


def _nothing(value: int) -> int:
    return value


async def _per_call_us(rounds: int, calls: int) -> tuple[list[float], list[float]]:
    """CPU µs per round trip in each round: (through OwnerThread, through the pool)."""
    loop = asyncio.get_running_loop()
    owner, pool = OwnerThread("bench-owner"), ThreadPoolExecutor(max_workers=1)

    async def through_owner() -> None:
        for i in range(calls):
            await owner.run(_nothing, i)

    async def through_pool() -> None:
        for i in range(calls):
            await loop.run_in_executor(pool, contextvars.copy_context().run, _nothing, i)

    ours: list[float] = []
    theirs: list[float] = []
    try:
        await through_owner()  # warm both up: the first calls start the threads
        await through_pool()
        for index in range(rounds):
            ways = [(through_owner, ours), (through_pool, theirs)]
            for way, results in ways if index % 2 == 0 else reversed(ways):
                started = time.process_time()
                await way()
                results.append((time.process_time() - started) / calls * 1e6)
    finally:
        owner.stop()
        pool.shutdown(wait=True)
    return ours, theirs


def store_hop(settings: Settings) -> list[Figure]:
    console = settings.console
    ours, theirs = asyncio.run(_per_call_us(ROUNDS, CALLS))
    console.print(f"  OwnerThread (µs/call):        {' '.join(f'{v:.1f}' for v in ours)}")
    console.print(f"  ThreadPoolExecutor (µs/call): {' '.join(f'{v:.1f}' for v in theirs)}")
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    note = f"CPU per round trip, {CALLS:,} calls x {ROUNDS} interleaved rounds"
    return [
        Figure("store hand-off: OwnerThread", median(ours), "µs", None, f"{note}; {spread(ours, 'µs')}"),
        Figure("store hand-off: one-thread pool", median(theirs), "µs", None, f"{note}; {spread(theirs, 'µs')}"),
        Figure("store hand-off: OwnerThread / pool", median(ratios), "x", None, f"per round; {spread(ratios, 'x')}"),
    ]
