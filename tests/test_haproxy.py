"""HAProxyRuntime and HAProxyRouter against a real HAProxy (started by HAProxyProcess) and real aiohttp backends.

The helpers at the top (Backend, Stack, the ``stack`` fixture, ``spread``) are imported by test_alarms.py too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import HANG_GUARD, FakeClock, eventually, free_port

from engine.adapters.clock import SystemClock
from engine.adapters.haproxy.process import HAProxyGroup, HAProxyProcess, HAProxyServer
from engine.adapters.haproxy.runtime import (
    AdminState,
    FleetWeights,
    GroupPool,
    HAProxyRouter,
    HAProxyRuntime,
    ServerState,
    fleet_weights,
    haproxy_name,
    parse_servers_state,
    parse_stat_csv,
)
from engine.core.errors import AdapterError
from engine.ports import Clock

# -- helpers shared with test_alarms.py ---------------------------------------------------------------------------


class Backend:
    """An aiohttp app on 127.0.0.1 port 0 answering its own name; can answer 500s, fail /health, or be slow.

    A request with ``?hold`` is held until ``release`` is set (``holding`` is set once one is held)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.healthy = True
        self.delay = 0.0
        self.served = 0  # requests to / and /slow, not health checks
        self.in_flight = 0
        self.port = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _root(self, request: web.Request) -> web.Response:
        self.served += 1
        self.in_flight += 1
        try:
            if "hold" in request.query:
                self.holding.set()
                await self.release.wait()
            seconds = float(request.query.get("seconds", self.delay))
            if seconds:
                await asyncio.sleep(seconds)
            return web.Response(text=self.name, status=self.status)
        finally:
            self.in_flight -= 1

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok" if self.healthy else "sick", status=200 if self.healthy else 503)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Stack:
    """HAProxy with one group "web" (frontend + backend) over the given backends."""

    process: HAProxyProcess
    runtime: HAProxyRuntime
    backends: dict[str, Backend]
    url: str

    def router(self, clock: Clock | None = None, **options: float) -> HAProxyRouter:
        pool = GroupPool.of_hosts("web", list(self.backends))
        return HAProxyRouter(self.runtime, {"web": pool}, clock=clock or SystemClock(), **options)

    async def state(self, server: str) -> ServerState:
        return (await self.runtime.server_states("web"))[server]

    async def wait_status(self, server: str, status: str) -> None:
        """Until HAProxy's own health checks say ``status`` (they run on HAProxy's clock, not ours)."""

        async def reached() -> bool:
            return (await self.state(server)).status == status

        await eventually(reached, f"{server} becomes {status}", poll=0.05)


StackFactory = Callable[[Sequence[str]], Awaitable[Stack]]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short on purpose: a unix socket path must fit in 108 bytes, and pytest's tmp_path can be long.
    path = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def stack(run_dir: Path) -> AsyncIterator[StackFactory]:
    started: list[Backend] = []
    processes: list[HAProxyProcess] = []

    async def make(names: Sequence[str]) -> Stack:
        backends = {name: Backend(name) for name in names}
        for backend in backends.values():
            started.append(backend)
            await backend.start()
        port = free_port()
        servers = tuple(HAProxyServer(name, port=b.port) for name, b in backends.items())
        process = HAProxyProcess([HAProxyGroup("web", port, "/health", servers)], run_dir=run_dir / str(len(processes)))
        processes.append(process)
        await process.start()
        made = Stack(process, process.runtime(), backends, f"http://127.0.0.1:{port}/")
        for name in names:
            await made.wait_status(name, "UP")
        return made

    yield make
    for process in processes:
        await process.stop()
    for backend in started:
        await backend.stop()


async def spread(url: str, count: int, concurrency: int = 20) -> Counter[str]:
    """Send ``count`` GETs, ``concurrency`` at a time over keep-alive connections; count answers by body."""
    answers: Counter[str] = Counter()
    remaining = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for _ in remaining:
                async with session.get(url) as response:
                    body = await response.text()
                    answers[body if response.status == 200 else f"HTTP {response.status}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


# -- pure parts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "originals", "replacements", "expected"),
    [
        (0, 2, 2, FleetWeights((100, 100), (0, 0))),
        (100, 3, 1, FleetWeights((0, 0, 0), (100,))),
        (50, 2, 2, FleetWeights((100, 100), (100, 100))),
        (10, 2, 2, FleetWeights((99, 99), (11, 11))),
        (90, 3, 1, FleetWeights((3, 3, 3), (81,))),
        (99, 10, 1, FleetWeights((1, 1, 0, 0, 0, 0, 0, 0, 0, 0), (198,))),
    ],
)
def test_fleet_weights_examples(percent: int, originals: int, replacements: int, expected: FleetWeights) -> None:
    assert fleet_weights(percent, originals, replacements) == expected


def test_fleet_weights_are_exact_for_every_percent_and_fleet_shape() -> None:
    for originals in range(1, 11):
        for replacements in range(1, 11):
            for percent in range(101):
                weights = fleet_weights(percent, originals, replacements)
                assert (len(weights.original), len(weights.replacement)) == (originals, replacements)
                assert all(0 <= w <= 256 for w in (*weights.original, *weights.replacement))
                total = sum(weights.original) + sum(weights.replacement)
                assert Fraction(100 * sum(weights.replacement), total) == percent
                # within a side, servers differ by at most 1
                for side in (weights.original, weights.replacement):
                    assert max(side) - min(side) <= 1


@pytest.mark.parametrize(("percent", "originals", "replacements"), [(101, 1, 1), (-1, 1, 1), (50, 0, 2), (100, 2, 0)])
def test_fleet_weights_refuses_impossible_splits(percent: int, originals: int, replacements: int) -> None:
    with pytest.raises(ValueError):
        fleet_weights(percent, originals, replacements)


def test_stat_csv_is_read_by_header_names_not_positions() -> None:
    text = "# svname,pxname,scur,status\nweb-1,web,3,UP\nBACKEND,web,3,UP\n"
    rows = parse_stat_csv(text)
    assert rows[0] == {"svname": "web-1", "pxname": "web", "scur": "3", "status": "UP"}
    state = parse_servers_state("1\n# be_name srv_name srv_admin_state\nweb a 8\n")
    assert state == [{"be_name": "web", "srv_name": "a", "srv_admin_state": "8"}]
    with pytest.raises(AdapterError):
        parse_stat_csv("Unknown command\n")


@pytest.mark.parametrize(("raw", "clean"), [("web-1", "web-1"), ("hello app/prod", "hello_app_prod"), ("", "_")])
def test_haproxy_name(raw: str, clean: str) -> None:
    assert haproxy_name(raw) == clean


# -- the runtime client ------------------------------------------------------------------------------------------


async def test_runtime_reads_server_states(stack: StackFactory) -> None:
    s = await stack(["a", "b"])
    await spread(s.url, 20)
    states = await s.runtime.server_states("web")
    assert set(states) == {"a", "b"}
    assert all(st.up and st.admin is AdminState.READY and st.weight == 100 for st in states.values())
    assert sum(st.requests for st in states.values()) == 20
    await s.runtime.set_state("web", "a", "drain")
    await s.runtime.set_weight("web", "b", 7)
    states = await s.runtime.server_states("web")
    assert (states["a"].admin, states["a"].weight) == (AdminState.DRAIN, 100)
    assert states["b"].weight == 7


async def test_runtime_errors_are_adapter_errors(stack: StackFactory, run_dir: Path) -> None:
    s = await stack(["a"])
    with pytest.raises(AdapterError, match="No such server"):
        await s.runtime.set_state("web", "nope", "ready")
    with pytest.raises(AdapterError, match="no backend"):
        await s.runtime.server_states("other")
    with pytest.raises(ValueError):
        await s.runtime.set_weight("web", "a", 257)
    missing = HAProxyRuntime(run_dir / "absent.sock")
    with pytest.raises(AdapterError, match="socket missing") as caught:
        await missing.set_weight("web", "a", 1)
    assert caught.value.component == "haproxy"


# -- in-place: block and allow -----------------------------------------------------------------------------------


async def test_block_drains_new_requests_and_lets_in_flight_ones_finish(stack: StackFactory) -> None:
    s = await stack(["a", "b"])
    a = s.backends["a"]
    clock = FakeClock()  # the 8 s deregistration delay can only run out if the test moves this clock
    router = s.router(clock, deregistration_delay=8.0, poll_interval=0.25)
    await s.runtime.set_state("web", "b", "maint")  # so the held request lands on a
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(f"{s.url}?hold"))
        await asyncio.wait_for(a.holding.wait(), HANG_GUARD)
        await s.runtime.set_state("web", "b", "ready")
        await s.wait_status("b", "UP")
        blocking = asyncio.create_task(router.block("web", "a"))
        await clock.sleeping()  # drained, and polling a's sessions
        served_by_a = a.served
        answers = await spread(s.url, 100)
        await clock.advance(0.25)  # one more look while the request is in flight: still blocking
        assert not blocking.done() and clock.sleepers == [0.25]
        a.release.set()
        response = await held
        assert (response.status, await response.text()) == (200, "a")
        await eventually(_no_sessions(s, "a"), "HAProxy counts the answered request off a")
        await clock.advance(0.25)  # the next look sees no session: block returns
        await asyncio.wait_for(blocking, HANG_GUARD)
    assert answers == Counter({"b": 100})
    assert a.served == served_by_a
    assert clock.monotonic() == 0.5  # two looks, far short of the 8 s delay: it returned because a was idle
    assert (await s.state("a")).admin is AdminState.DRAIN


def _no_sessions(s: Stack, server: str) -> Callable[[], Awaitable[bool]]:
    async def idle() -> bool:
        return (await s.state(server)).sessions == 0

    return idle


async def test_block_gives_up_waiting_after_the_deregistration_delay(stack: StackFactory) -> None:
    s = await stack(["a"])
    a = s.backends["a"]
    clock = FakeClock()
    router = s.router(clock, deregistration_delay=1.0, poll_interval=0.25)
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(f"{s.url}?hold"))
        await asyncio.wait_for(a.holding.wait(), HANG_GUARD)
        blocking = asyncio.create_task(router.block("web", "a"))
        await clock.sleeping()
        await clock.advance(0.75)  # three more looks inside the delay, each seeing the request
        assert not blocking.done()
        await clock.advance(0.25)  # the delay is over
        await asyncio.wait_for(blocking, HANG_GUARD)
        assert clock.monotonic() == 1.0
        assert (await s.state("a")).sessions == 1  # given up on, not finished
        a.release.set()
        response = await held
        assert response.status == 200  # draining never cuts a request


async def test_allow_waits_for_the_health_check_after_maintenance(stack: StackFactory) -> None:
    s = await stack(["a", "b"])
    router = s.router(allow_timeout=HANG_GUARD)  # waits on HAProxy's real checks; the limit only guards a hang
    await s.runtime.set_state("web", "a", "maint")
    await router.allow("web", "a")
    state = (await s.runtime.server_states("web"))["a"]
    assert (state.status, state.admin) == ("UP", AdminState.READY)  # not the optimistic "UP 1/2" of leaving maint
    assert (await spread(s.url, 40)) == Counter({"a": 20, "b": 20})


async def test_allow_times_out_naming_the_server_and_its_check(stack: StackFactory) -> None:
    s = await stack(["a", "b"])
    clock = FakeClock()
    router = s.router(clock, allow_timeout=1.0, deregistration_delay=0.5, poll_interval=0.25)
    await clock.run(router.block("web", "a"))
    s.backends["a"].healthy = False
    await s.wait_status("a", "DOWN")
    start = clock.monotonic()
    with pytest.raises(AdapterError) as caught:
        await clock.run(router.allow("web", "a"))
    assert clock.monotonic() - start == 1.0  # gave up exactly at allow_timeout, after looking every poll_interval
    assert clock.slept[-4:] == [0.25] * 4
    assert "web/a" in caught.value.detail and "DOWN" in caught.value.detail
    assert "L7STS" in caught.value.detail  # HAProxy's own verdict: wrong status from /health


async def test_router_rejects_unknown_groups_and_targets(stack: StackFactory) -> None:
    s = await stack(["a"])
    router = s.router()
    with pytest.raises(AdapterError, match="no HAProxy backend"):
        await router.block("other", "a")
    with pytest.raises(AdapterError, match="not a server"):
        await router.allow("web", "zz")
    with pytest.raises(AdapterError, match="roles"):
        await router.set_weight("web", 50)
    assert await router.verify_weight("web", 50) is None


# -- blue/green: weights -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 2), (3, 1)], ids=["2+2", "3+1"])
@pytest.mark.parametrize("percent", [10, 50, 90, 100])
async def test_measured_split_matches_the_weight(stack: StackFactory, shape: tuple[int, int], percent: int) -> None:
    originals = [f"blue{i}" for i in range(shape[0])]
    replacements = [f"green{i}" for i in range(shape[1])]
    s = await stack(originals + replacements)
    router = s.router()
    router.set_roles("web", originals, replacements)
    await router.set_weight("web", percent)
    assert await router.verify_weight("web", percent) is True
    assert await router.verify_weight("web", percent - 5) is False
    assert await router.verify_weight("web", percent - 1) is False  # exact: what is reported is what HAProxy holds
    answers = await spread(s.url, 1000)
    assert sum(answers.values()) == 1000 and not [a for a in answers if a.startswith("HTTP")]
    green = sum(n for name, n in answers.items() if name.startswith("green"))
    assert abs(100 * green / 1000 - percent) <= 1.5


async def test_reroute_to_the_original_fleet_after_block_waits_for_nothing(stack: StackFactory) -> None:
    s = await stack(["blue0", "blue1", "green0", "green1"])
    clock = FakeClock()
    router = s.router(clock, deregistration_delay=0.2)
    router.set_roles("web", ["blue0", "blue1"], ["green0", "green1"])
    await clock.run(router.set_weight("web", 100))
    for original in ("blue0", "blue1"):
        await clock.run(router.block("web", original))  # BlockTraffic on the original fleet after the shift
    waits, at = len(clock.slept), clock.monotonic()
    await clock.run(router.set_weight("web", 0))
    # A rollback's reroute is runtime commands only: no health wait, no drain wait (its speed is `make bench`'s).
    assert (len(clock.slept), clock.monotonic()) == (waits, at)
    assert await router.verify_weight("web", 0) is True
    answers = await spread(s.url, 200)
    assert answers == Counter({"blue0": 100, "blue1": 100})


async def test_dead_haproxy_gives_adapter_errors_only(stack: StackFactory) -> None:
    s = await stack(["blue0", "green0"])
    router = s.router(allow_timeout=1.0)
    router.set_roles("web", ["blue0"], ["green0"])
    await router.set_weight("web", 50)
    assert s.process.pid is not None
    os.kill(s.process.pid, signal.SIGKILL)
    await eventually(lambda: not s.process.running, "HAProxyProcess notices the kill")
    operations = [
        router.set_weight("web", 0),
        router.block("web", "blue0"),
        router.allow("web", "green0"),
        s.runtime.server_states("web"),
    ]
    for operation in operations:
        with pytest.raises(AdapterError, match=r"refused|missing") as caught:
            await operation
        assert caught.value.component == "haproxy"
    assert await router.verify_weight("web", 50) is None
