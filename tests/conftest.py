"""What several test files share: one fake clock, one free port, the config builders, and a bounded wait.

Plain helpers, imported as ``from conftest import FakeClock, free_port, ...`` (pytest puts tests/ on ``sys.path``, as
for ``from test_service import ...``), plus the ``fake_clock`` fixture.

Timing rule for every test: no assertion on elapsed wall time and no "sleep, then check nothing happened". Time the
code reads through its Clock is moved with FakeClock; anything else is waited for as an event or a condition, and the
only wall-clock limit is HANG_GUARD, which turns a hang into a failure and never decides a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import inspect
import itertools
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from postgres_support import postgres_server, store_database  # noqa: F401  (fixtures: a throwaway PostgreSQL)

if TYPE_CHECKING:  # the builders import the engine when called: a test that uses only the clock does not load it
    from engine.core.config.model import EngineConfig
    from engine.ports import Clock
    from engine.runtime.deployer import Deployer

T = TypeVar("T")

HANG_GUARD = 30.0
"""Wall-clock seconds after which a wait that should end on an event or condition fails instead of hanging."""


# -- the fake clock ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(order=True)
class _Sleeper:
    deadline: float
    seq: int
    future: asyncio.Future[None] = dataclasses.field(compare=False)
    task: asyncio.Task[Any] = dataclasses.field(compare=False)
    resumed: bool = dataclasses.field(default=False, compare=False)


class FakeClock:
    """An engine.ports.Clock whose time moves only when the test moves it.

    ``monotonic()`` starts at 0 and moves only with ``advance``; ``now()`` is ``start`` plus the same elapsed time,
    plus any ``jump`` and ``tick``. ``await sleep(s)`` parks the caller until ``advance`` reaches its deadline.

    The test's side:
      - ``await advance(s)``: move time forward ``s`` seconds, waking the sleepers due on the way in deadline order.
        Before time moves past a wake-up, each woken task runs until it is asleep on this clock again or has ended
        (so a polling loop is stepped poll by poll). With ``settle=False`` it only runs to its next ``await``: for a
        task that goes on to wait for something else (a long poll, an event the test sets).
      - ``await sleeping(n)``: until at least ``n`` sleepers are parked (e.g. "the poll loop is backing off now").
      - ``await run(awaitable)``: run it, jumping time to the soonest deadline whenever a sleeper is parked (for a
        clock that only this work sleeps on).
      - ``jump(s)``: wall time alone jumps (an NTP step; a soak time or an approval lifetime passing); ``monotonic``
        and the sleepers do not move.
      - ``tick``: every ``now()`` reading moves wall time on by ``tick`` (distinct, ordered timestamps).
      - ``auto``: every ``sleep`` moves time forward by its own length at once (for code where one thing at a time
        waits, when only the times matter).
      - ``sleepers``: the parked sleepers' remaining seconds, soonest first; ``slept``: every ``sleep`` asked for.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, tick: float = 0.0, auto: bool = False) -> None:
        self.start = start
        self.tick = tick
        self.auto = auto
        self.slept: list[float] = []
        self._elapsed = 0.0
        self._wall_shift = 0.0
        self._sleepers: list[_Sleeper] = []  # a heap, soonest first
        self._seq = itertools.count()
        self._waiters: list[asyncio.Future[None]] = []
        self._watched: set[asyncio.Task[Any]] = set()

    # -- the Clock protocol

    def now(self) -> float:
        reading = self.start + self._elapsed + self._wall_shift
        self._wall_shift += self.tick
        return reading

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0 or self.auto:
            self._elapsed += max(seconds, 0.0)
            await asyncio.sleep(0)
            return
        task = asyncio.current_task()
        assert task is not None, "FakeClock.sleep outside a task"
        sleeper = _Sleeper(self._elapsed + seconds, next(self._seq), asyncio.get_running_loop().create_future(), task)
        heapq.heappush(self._sleepers, sleeper)
        if task not in self._watched:
            self._watched.add(task)
            task.add_done_callback(self._task_done)
        self._changed()
        try:
            await sleeper.future
        finally:
            sleeper.resumed = True
            if sleeper in self._sleepers:  # cancelled while asleep
                self._sleepers.remove(sleeper)
                heapq.heapify(self._sleepers)
            self._changed()

    # -- the test's side

    @property
    def sleepers(self) -> list[float]:
        return [s.deadline - self._elapsed for s in sorted(self._sleepers)]

    def jump(self, seconds: float) -> None:
        self._wall_shift += seconds

    async def advance(self, seconds: float, *, settle: bool = True) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        await self._advance_to(self._elapsed + seconds, settle=settle)

    async def sleeping(self, count: int = 1) -> None:
        await self._until(lambda: len(self._sleepers) >= count, f"{count} sleeper(s) on the clock")

    async def run(self, awaitable: Awaitable[T]) -> T:
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(self._task_done)
        try:
            while not task.done():
                await self._until(lambda: task.done() or bool(self._sleepers), "the task to end or sleep")
                if not task.done():
                    await self._advance_to(self._sleepers[0].deadline, settle=True)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- inside

    async def _advance_to(self, target: float, *, settle: bool) -> None:
        while self._sleepers and self._sleepers[0].deadline <= target:
            self._elapsed = max(self._elapsed, self._sleepers[0].deadline)
            woken: list[_Sleeper] = []
            while self._sleepers and self._sleepers[0].deadline <= self._elapsed:
                sleeper = heapq.heappop(self._sleepers)
                if not sleeper.future.done():
                    sleeper.future.set_result(None)
                    woken.append(sleeper)
            what = f"the tasks woken at {self._elapsed:g} s to " + ("sleep again or end" if settle else "resume")
            await self._until(functools.partial(self._settled, woken, settle), what)
        self._elapsed = max(self._elapsed, target)

    def _settled(self, woken: list[_Sleeper], settle: bool) -> bool:
        if not settle:
            return all(s.resumed for s in woken)
        return all(s.task.done() or any(p.task is s.task for p in self._sleepers) for s in woken)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._watched.discard(task)
        self._changed()

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _until(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(HANG_GUARD):
                while not condition():
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise AssertionError(f"FakeClock: still waiting for {what} after {HANG_GUARD:g} s") from None


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


# -- waiting for a condition -------------------------------------------------------------------------------------


async def eventually(condition: Callable[[], object], what: str = "the condition", *, poll: float = 0.01) -> None:
    """Until ``condition()`` (or its awaited result) is true: for state with no event to wait on (another process, a
    socket, a file). The loop ends on the condition; HANG_GUARD only turns a hang into a failure."""
    try:
        async with asyncio.timeout(HANG_GUARD):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(poll)
    except TimeoutError:
        raise AssertionError(f"not reached after {HANG_GUARD:g} s: {what}") from None


def group_noted(agent_root: Path, command_id: int | None = None) -> bool:
    """Whether the agent at ``agent_root`` has noted the process group of a hook script it runs (of ``command_id``,
    when given): the whole line in its journal that an agent restarted after a kill reads to end the orphan."""
    from engine.agent.layout import AgentLayout

    ongoing = AgentLayout(agent_root).ongoing()
    return any(record.group is not None for record in ongoing if command_id in (None, record.command_id))


# -- ports -------------------------------------------------------------------------------------------------------


_reserved_ports: list[socket.socket] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a server that must be told its port up front, reserved until the test ends.

    The port stays bound by this process (SO_REUSEADDR, never listening) until the end of the current test, so the
    kernel gives it to no other bind to port 0 and to no other free_port(): not in this process, not in another
    pytest-xdist worker, not in anything else on the machine. A port that was merely free a moment ago could be
    taken in the meantime, most likely by the other worker, between this call and the server's own bind (a server
    start, or a whole deployment for a host's application port). The server can still bind it and listen, as every
    server the tests start sets SO_REUSEADDR (socket.create_server, aiohttp, http.server, HAProxy, PostgreSQL); one
    that did not would fail on the first run, not now and then. Connecting to the port is refused until a server
    listens on it (a test's "nothing listens there")."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _reserved_ports.append(sock)
    return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _release_reserved_ports() -> Iterator[None]:
    """Ends free_port()'s reservations after the test's other fixtures are torn down (autouse: set up first)."""
    yield
    while _reserved_ports:
        _reserved_ports.pop().close()


# -- config builders ---------------------------------------------------------------------------------------------


def engine_config(text: str, base_dir: Path, *, filename: str = "test.yml", **server: Any) -> EngineConfig:
    """``text`` parsed as a deploybot.yml in ``base_dir``; ``server`` replaces fields of its server section after
    parsing (for values the file format refuses, e.g. a sub-second ``heartbeat_timeout``)."""
    from engine.core.config.parse import parse_config

    config = parse_config(text, filename=filename, base_dir=str(base_dir))
    if server:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **server))
    return config


async def deployer_from(
    text: str, workdir: Path, *, clock: Clock | None = None, filename: str = "test.yml", **server: Any
) -> Deployer:
    """A real Deployer for config ``text`` in ``workdir``, its state under ``workdir/var``."""
    from bot.assembly import assemble_deployer

    return await assemble_deployer(
        engine_config(text, workdir, filename=filename, **server), data_dir=workdir / "var", clock=clock
    )


def gone_after_the_write_of(deployer: Deployer, status: str) -> asyncio.Event:
    """From now on, the write that stores a deployment's ``status`` lands and nothing after it runs, as when the
    server dies right after it; the event is set at that moment (the test then closes the deployer)."""
    save_progress, gone = deployer.store.save_progress, asyncio.Event()

    async def write(deployment_id: str, rows: Any, **fields: Any) -> bool | None:
        written = await save_progress(deployment_id, rows, **fields)
        if fields.get("status") == status:
            gone.set()
            await asyncio.Event().wait()
        return written

    deployer.store.save_progress = write  # type: ignore[method-assign]
    return gone
