"""One invariant, for every place a server blue/green deployment can fail: when it ends without success, traffic is
exactly where it was before it (the original fleet at its weights, the replacement at 0 and drained), the last word
to the router is that reroute, read back, and a rollback is that reroute (``rerouted=True``: nothing reinstalled).

The router is a model of the balancer at the TrafficRouter port: it holds one percentage, applies a shift only once
its health wait is over (as HAProxyRouter does), and can fail or hold a shift at a given percentage. Time is a fake
clock that moves by each sleep's length, so ready, canary and termination waits end at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import HANG_GUARD, FakeClock

from engine.core.configs import TrafficStep
from engine.core.errors import AdapterError
from engine.core.events import AlarmFired, Event, PromoteRequested, StartRollback, StopRequested
from engine.core.machine import DeploymentMachine, MachineOptions
from engine.core.model import (
    AutoRollback,
    AutoRollbackEvent,
    DeploymentStatus,
    DeploymentType,
    LifecycleEvent,
    Platform,
)
from engine.core.snapshot import stages_from_json, state_from_json
from engine.core.stages import ALL_AT_ONCE, StageOptions, deployment_stages
from engine.runtime.runner import DeploymentRunner
from engine.store.sqlite import SqliteStore

T0 = 1_000.0
CANARY = (TrafficStep(20, 60), TrafficStep(100, 0))
ORIGINAL, REPLACEMENT = ("blue-1", "blue-2"), ("green-1", "green-2")
ROLLBACK_ALL = AutoRollback(True, frozenset(AutoRollbackEvent))


@dataclass
class ModelRouter:
    """The balancer as the port sees it: ``percent`` on the replacement, which is drained at 0 %."""

    percent: int = 0
    drained: bool = True
    fail_at: frozenset[int] = frozenset()  # a shift to these never sees the replacement healthy
    hold_at: frozenset[int] = frozenset()  # a shift to these waits on health until cancelled
    misapply_at: frozenset[int] = frozenset()  # a shift to these lands one point off (read back, it never verifies)
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (percent, wait) per set_weight
    applied: list[int] = field(default_factory=list)  # percentages the balancer actually took
    holding: asyncio.Event = field(default_factory=asyncio.Event)

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        assert (tuple(original), tuple(replacement)) == (ORIGINAL, REPLACEMENT)

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        self.calls.append((percent, wait))
        if wait and percent in self.hold_at:
            self.holding.set()
            await asyncio.Event().wait()  # health never proven: only a cancellation ends this
        if wait and percent in self.fail_at:
            raise AdapterError("haproxy", "not seen UP by HAProxy's health check within 5s: web/green-2")
        self.percent = percent - 1 if percent in self.misapply_at else percent
        self.drained = self.percent == 0
        self.applied.append(self.percent)

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        return self.percent == percent

    async def block(self, group: str, target: str) -> None:
        pass

    async def allow(self, group: str, target: str) -> None:
        pass


class ScriptedHosts:
    """Lifecycle events succeed at once, except ``failing`` ones; ``after`` may post an event once one is done."""

    def __init__(
        self,
        failing: frozenset[tuple[str, LifecycleEvent]] = frozenset(),
        after: Mapping[tuple[str, LifecycleEvent], Event] | None = None,
    ) -> None:
        self.failing = failing
        self.after = dict(after or {})
        self.runner: DeploymentRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def dispatch(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        task = asyncio.ensure_future(self._finish(target, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, target: str, event: LifecycleEvent) -> None:
        assert self.runner is not None
        failed = (target, event) in self.failing
        await self.runner.record_result(target, event, {"status": "Failed" if failed else "Succeeded"})
        then = self.after.get((target, event))
        if then is not None:
            self.runner.post(then)

    async def cancel(self, deployment_id: str) -> None:
        pass


@dataclass(frozen=True)
class Case:
    name: str
    ready_wait: float | None = None
    termination_wait: float = 0.0
    failing: frozenset[tuple[str, LifecycleEvent]] = frozenset()
    after: Mapping[tuple[str, LifecycleEvent], Event] = field(default_factory=dict)
    fail_at: frozenset[int] = frozenset()
    misapply_at: frozenset[int] = frozenset()
    when_shifted: Mapping[int, Event] = field(default_factory=dict)  # posted once the balancer holds the percent
    stop_while_holding: tuple[int, StopRequested] | None = None  # a shift waits on health; this stop arrives
    status: DeploymentStatus = DeploymentStatus.FAILED
    rollback: bool = True  # a rollback deployment is asked for (auto-rollback is on for every trigger)


ALARM, STOP, STOP_ROLLBACK = AlarmFired(("green-5xx",)), StopRequested(rollback=False), StopRequested(rollback=True)


def on_both(event: LifecycleEvent) -> frozenset[tuple[str, LifecycleEvent]]:
    return frozenset((target, event) for target in REPLACEMENT)


STOPPED = DeploymentStatus.STOPPED
CASES = [
    Case("the install fails on the replacement", failing=on_both(LifecycleEvent.INSTALL)),
    Case("the ready wait ends without continue", ready_wait=600, status=STOPPED, rollback=False),
    Case("the replacement never healthy at the first step (20 %)", fail_at=frozenset({20})),
    Case("the replacement never healthy at the last step (100 %)", fail_at=frozenset({100})),
    Case("the weights never read back as asked (20 %)", misapply_at=frozenset({20})),
    Case("an alarm during the canary", when_shifted={20: ALARM}, status=STOPPED),
    Case("a stop during the canary, without --rollback", when_shifted={20: STOP}, status=STOPPED, rollback=False),
    Case("a stop while the first shift waits on health", stop_while_holding=(20, STOP), status=STOPPED, rollback=False),
    Case(
        "a stop --rollback while the last shift waits on health",
        stop_while_holding=(100, STOP_ROLLBACK),
        status=STOPPED,
    ),
    Case("AfterAllowTraffic fails on the replacement", failing=on_both(LifecycleEvent.AFTER_ALLOW_TRAFFIC)),
    Case(
        "the original fleet's AfterBlockTraffic fails",
        failing=frozenset({("blue-1", LifecycleEvent.AFTER_BLOCK_TRAFFIC)}),
    ),
    Case(
        "a stop with --rollback during the termination wait",
        termination_wait=600,
        after={("blue-2", LifecycleEvent.AFTER_BLOCK_TRAFFIC): STOP_ROLLBACK},
        status=DeploymentStatus.STOPPED,
    ),
    Case(
        "an alarm during the termination wait",
        termination_wait=600,
        after={("blue-2", LifecycleEvent.AFTER_BLOCK_TRAFFIC): ALARM},
        status=DeploymentStatus.STOPPED,
    ),
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    row = {"id": "d-1", "application": "app", "environment": "prod", "group_name": "app-prod", "status": "Created"}
    await store.create_deployment(row | {"created_at": T0})
    yield store
    await store.close()


def make_runner(
    store: SqliteStore,
    router: ModelRouter,
    hosts: ScriptedHosts,
    clock: FakeClock,
    case: Case,
    rollbacks: list[StartRollback],
    *,
    machine: DeploymentMachine | None = None,
    timers: dict[str, float] | None = None,
) -> DeploymentRunner:
    options = StageOptions(
        Platform.SERVER,
        DeploymentType.BLUE_GREEN,
        ALL_AT_ONCE,
        traffic_steps=CANARY,
        ready_wait_seconds=case.ready_wait,
        termination_wait_seconds=case.termination_wait,
    )

    async def nothing(deployment_id: str) -> None:
        pass

    async def rolled_back(deployment_id: str, command: StartRollback) -> None:
        rollbacks.append(command)

    runner = DeploymentRunner(
        "d-1",
        machine or DeploymentMachine(deployment_stages(options, REPLACEMENT, ORIGINAL), MachineOptions(ROLLBACK_ALL)),
        store=store,
        executor=hosts,
        router=router,
        group="app-prod",
        spec={},
        clock=clock,
        on_change=nothing,
        on_rollback=rolled_back,
        on_finish=nothing,
        timers=timers,
        roles=(ORIGINAL, REPLACEMENT),
    )
    hosts.runner = runner
    return runner


async def assert_traffic_back_where_it_was(
    store: SqliteStore, router: ModelRouter, runner: DeploymentRunner, rollbacks: list[StartRollback], *, rollback: bool
) -> None:
    state = runner.machine.state
    assert state.status is not DeploymentStatus.SUCCEEDED
    assert (router.percent, router.drained) == (0, True)  # original fleet at its weights, replacement drained
    assert router.calls[-1] == (0, False)  # the reroute is the last word: no shift lands after it
    assert router.applied[-1] == 0 and state.traffic_percent == 0  # what is reported is what the balancer holds
    assert [r.rerouted for r in rollbacks] == ([True] if rollback else [])  # the rollback is the reroute alone
    rerouted = [e["data"] for e in await store.read_log(deployment_id="d-1") if e["kind"] == "traffic.rerouted"]
    assert [(d["percent"], d["verified"]) for d in rerouted] == [(0, True)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_failure_anywhere_leaves_traffic_where_it_was(store: SqliteStore, case: Case) -> None:
    clock = FakeClock(T0, auto=True)
    held = case.stop_while_holding
    router = ModelRouter(
        fail_at=case.fail_at, hold_at=frozenset({held[0]} if held else ()), misapply_at=case.misapply_at
    )
    hosts = ScriptedHosts(case.failing, case.after)
    rollbacks: list[StartRollback] = []
    runner = make_runner(store, router, hosts, clock, case, rollbacks)
    original_set_weight = router.set_weight

    async def then_post(group: str, percent: int, *, wait: bool = True) -> None:
        await original_set_weight(group, percent, wait=wait)
        if wait and percent in case.when_shifted:
            runner.post(case.when_shifted[percent])

    router.set_weight = then_post  # type: ignore[method-assign]
    run = asyncio.ensure_future(runner.run())
    if held is not None:
        async with asyncio.timeout(HANG_GUARD):
            await router.holding.wait()
        runner.post(held[1])
    async with asyncio.timeout(HANG_GUARD):
        await run
    assert runner.machine.state.status is case.status, runner.machine.state.message
    await assert_traffic_back_where_it_was(store, router, runner, rollbacks, rollback=case.rollback)


async def test_a_server_restarted_mid_shift_resumes_and_a_failure_still_reroutes(store: SqliteStore) -> None:
    """deploybot dies while the first shift waits on health; the balancer outlives it. The resumed deployment puts
    the weights back where the machine left them (0 %), shifts again, and when that fails, reroutes."""
    case = Case("restart")
    clock = FakeClock(T0, auto=True)
    router = ModelRouter(hold_at=frozenset({20}))
    rollbacks: list[StartRollback] = []
    first = make_runner(store, router, ScriptedHosts(), clock, case, rollbacks)
    run = asyncio.ensure_future(first.run())
    async with asyncio.timeout(HANG_GUARD):
        await router.holding.wait()
    run.cancel()  # kill -9: only what was persisted survives
    await asyncio.gather(run, return_exceptions=True)

    row = await store.get_deployment("d-1")
    assert row is not None and row["status"] == "InProgress"
    router.hold_at, router.fail_at = frozenset(), frozenset({20})
    machine = DeploymentMachine(
        stages_from_json(row["state"]["stages"]), MachineOptions(ROLLBACK_ALL), state_from_json(row["state"]["machine"])
    )
    hosts = ScriptedHosts()
    second = make_runner(store, router, hosts, clock, case, rollbacks, machine=machine, timers=row["state"]["timers"])
    async with asyncio.timeout(HANG_GUARD):
        await second.run(resume=True)
    assert second.machine.state.status is DeploymentStatus.FAILED
    assert "not seen UP" in second.machine.state.message
    assert router.calls[-3:] == [(0, True), (20, True), (0, False)]  # restored, shifted again (failed), rerouted
    await assert_traffic_back_where_it_was(store, router, second, rollbacks, rollback=True)


async def test_a_promotion_during_a_health_wait_overtakes_the_held_shift(store: SqliteStore) -> None:
    """The 20 % shift waits on health when the canary is promoted: the 100 % shift replaces it, and the 20 % weights
    never land (not even after the 100 % ones)."""
    clock = FakeClock(T0, auto=True)
    router = ModelRouter(hold_at=frozenset({20}))
    rollbacks: list[StartRollback] = []
    runner = make_runner(store, router, ScriptedHosts(), clock, Case("promote"), rollbacks)
    run = asyncio.ensure_future(runner.run())
    async with asyncio.timeout(HANG_GUARD):
        await router.holding.wait()
    router.hold_at = frozenset()
    runner.post(PromoteRequested())
    async with asyncio.timeout(HANG_GUARD):
        await run
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    assert router.calls == [(20, True), (100, True)] and router.applied == [100]
    shifted = [
        e["data"]["percent"] for e in await store.read_log(deployment_id="d-1") if e["kind"] == "traffic.shifted"
    ]
    assert shifted == [100]


async def test_a_successful_deployment_keeps_its_weights(store: SqliteStore) -> None:
    """The invariant's other side: only a deployment that did not succeed is rerouted."""
    clock = FakeClock(T0, auto=True)
    router = ModelRouter()
    rollbacks: list[StartRollback] = []
    runner = make_runner(store, router, ScriptedHosts(), clock, Case("success"), rollbacks)
    async with asyncio.timeout(HANG_GUARD):
        await runner.run()
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    assert router.applied == [20, 100] and (router.percent, rollbacks) == (100, [])
