"""WriteBatches: what arrives while a batch is written goes together into the next one, each caller answered."""

from __future__ import annotations

import asyncio

import pytest
from conftest import HANG_GUARD

from engine.adapters.batches import WriteBatches


class Store:
    """A write that holds each batch until the test lets it go, recording what each batch held."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.go_on = asyncio.Event()
        self.fail_next = False

    async def write(self, items: list[str]) -> list[str]:
        self.batches.append(items)
        self.started.set()
        await self.go_on.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return [item.upper() for item in items]


async def test_items_arriving_during_a_write_go_together_into_the_next_one() -> None:
    store = Store()
    delivered: list[tuple[list[str], list[str]]] = []

    async def after(items: list[str], results: list[str]) -> None:
        delivered.append((items, results))

    batches = WriteBatches(store.write, after=after)
    first = asyncio.ensure_future(batches.submit("a"))
    await asyncio.wait_for(store.started.wait(), HANG_GUARD)
    later = [asyncio.ensure_future(batches.submit(item)) for item in ("b", "c", "d")]
    await asyncio.sleep(0)  # the three are queued behind the write in progress
    store.go_on.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), HANG_GUARD) == ["A", "B", "C", "D"]
    assert store.batches == [["a"], ["b", "c", "d"]]  # two writes for four callers, in arrival order
    assert delivered == [(["a"], ["A"]), (["b", "c", "d"], ["B", "C", "D"])]


async def test_callers_go_on_before_after_runs() -> None:
    """``after`` (the engine, for agents' results) must not stand between a caller and its answer."""
    order: list[str] = []

    async def write(items: list[str]) -> list[str]:
        return items

    after_ran = asyncio.Event()

    async def after(items: list[str], results: list[str]) -> None:
        order.append("after")  # no await: it would run to its end before anything else
        after_ran.set()

    async def caller() -> None:
        await batches.submit("a")
        order.append("answered")

    batches = WriteBatches(write, after=after)
    await asyncio.wait_for(caller(), HANG_GUARD)
    await asyncio.wait_for(after_ran.wait(), HANG_GUARD)
    assert order == ["answered", "after"]


async def test_a_failed_write_reaches_every_caller_of_its_batch_and_the_next_batch_is_written() -> None:
    store = Store()
    batches: WriteBatches[str, str] = WriteBatches(store.write)
    store.fail_next = True
    failing = [asyncio.ensure_future(batches.submit(item)) for item in ("a", "b")]
    await asyncio.wait_for(store.started.wait(), HANG_GUARD)
    after = asyncio.ensure_future(batches.submit("c"))
    await asyncio.sleep(0)
    store.go_on.set()
    for caller in failing:
        with pytest.raises(OSError, match="disk full"):
            await asyncio.wait_for(caller, HANG_GUARD)
    assert await asyncio.wait_for(after, HANG_GUARD) == "C"


async def test_a_caller_cancelled_while_waiting_still_has_its_item_written_and_followed_up() -> None:
    store = Store()
    delivered: list[list[str]] = []

    async def after(items: list[str], results: list[str]) -> None:
        delivered.append(items)

    batches = WriteBatches(store.write, after=after)
    caller = asyncio.ensure_future(batches.submit("a"))
    await asyncio.wait_for(store.started.wait(), HANG_GUARD)
    caller.cancel()  # e.g. the agent's request was cut short
    with pytest.raises(asyncio.CancelledError):
        await caller
    store.go_on.set()
    assert await asyncio.wait_for(batches.submit("b"), HANG_GUARD) == "B"
    assert delivered == [["a"], ["b"]]


async def test_items_arriving_while_the_writer_gathers_share_its_first_write() -> None:
    """``gather`` is awaited each time the writer wakes from idle, before it takes a batch: heartbeats that come a few
    milliseconds apart share a transaction instead of each getting one."""
    store = Store()
    store.go_on.set()
    gathering, gathered = asyncio.Event(), asyncio.Event()
    gathers = 0

    async def gather() -> None:
        nonlocal gathers
        gathers += 1
        gathering.set()
        await gathered.wait()

    batches = WriteBatches(store.write, gather=gather)
    first = asyncio.ensure_future(batches.submit("a"))
    await asyncio.wait_for(gathering.wait(), HANG_GUARD)
    later = [asyncio.ensure_future(batches.submit(item)) for item in ("b", "c")]
    await asyncio.sleep(0)  # both are waiting, the writer still gathering
    assert store.batches == []  # nothing is written while it gathers
    gathered.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), HANG_GUARD) == ["A", "B", "C"]
    assert store.batches == [["a", "b", "c"]]
    # Idle again: the next item wakes the writer, which gathers again before writing it.
    gathering.clear()
    assert await asyncio.wait_for(batches.submit("d"), HANG_GUARD) == "D"
    assert gathers == 2 and store.batches == [["a", "b", "c"], ["d"]]


async def test_a_gather_that_fails_still_lets_the_batch_be_written(caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    store.go_on.set()

    async def gather() -> None:
        raise RuntimeError("gathering broke")

    batches = WriteBatches(store.write, gather=gather)
    assert await asyncio.wait_for(batches.submit("a"), HANG_GUARD) == "A"
    assert store.batches == [["a"]]
    assert "while gathering a batch of 1 writes" in caplog.text
