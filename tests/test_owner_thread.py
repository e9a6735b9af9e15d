"""OwnerThread: the store's one thread. Calls run there, in the order made, in their caller's context; a caller
cancelled meanwhile does not undo its call; a stopped thread refuses new calls after running the ones made."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from engine.store.owner_thread import OwnerThread
from tests.conftest import HANG_GUARD

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def owner() -> OwnerThread:
    return OwnerThread("test-owner")


async def test_calls_run_on_the_thread_in_the_order_they_were_made(owner: OwnerThread) -> None:
    ran: list[tuple[int, int]] = []

    def record(n: int) -> int:
        ran.append((n, threading.get_ident()))
        return n * 10

    results = await asyncio.gather(*(owner.run(record, n) for n in range(50)))

    assert results == [n * 10 for n in range(50)]
    assert ran == [(n, owner.ident) for n in range(50)]
    assert owner.ident != threading.get_ident()
    owner.stop()


async def test_a_call_raises_its_exception_in_the_caller_and_the_thread_goes_on(owner: OwnerThread) -> None:
    def fail() -> None:
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        await owner.run(fail)
    assert await owner.run(lambda: "still serving") == "still serving"
    owner.stop()


async def test_a_call_runs_in_its_callers_context(owner: OwnerThread) -> None:
    async def as_(name: str) -> str:
        who.set(name)
        return await owner.run(who.get)

    assert await asyncio.gather(as_("alice"), as_("bob")) == ["alice", "bob"]
    assert await owner.run(who.get) == "nobody"
    owner.stop()


async def test_a_cancelled_caller_does_not_undo_its_call(owner: OwnerThread) -> None:
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(HANG_GUARD)
        done.append("slow")
        return "slow"

    caller = asyncio.ensure_future(owner.run(slow))
    await asyncio.sleep(0)
    assert await asyncio.to_thread(started.wait, HANG_GUARD)
    caller.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await owner.run(lambda: list(done)) == ["slow"]  # it ran to the end, before the next call
    owner.stop()


async def test_a_stopped_thread_runs_what_was_asked_before_and_refuses_the_rest(owner: OwnerThread) -> None:
    gate = threading.Event()
    first = asyncio.ensure_future(owner.run(lambda: gate.wait(HANG_GUARD)))
    second = asyncio.ensure_future(owner.run(lambda: "second"))
    await asyncio.sleep(0)  # both are queued
    owner.stop()
    with pytest.raises(RuntimeError, match="test-owner is stopped"):
        await owner.run(lambda: "too late")
    gate.set()

    assert await asyncio.wait_for(asyncio.gather(first, second), HANG_GUARD) == [True, "second"]
    await asyncio.to_thread(owner._thread.join, HANG_GUARD)
    assert not owner._thread.is_alive()
