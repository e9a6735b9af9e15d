"""The runner reads traffic weights back after each shift (argo-rollouts' VerifyWeight): True goes on, None goes on
noted once in the deployment's log, False holds the step and checks again on the runner's clock until the weights
verify or the verification times out. The clock is fake: time passes only when the runner sleeps on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, eventually

from engine.core.configs import TrafficStep
from engine.core.errors import AdapterError
from engine.core.events import PromoteRequested, StartRollback
from engine.core.machine import DeploymentMachine
from engine.core.model import DeploymentStatus, DeploymentType, ErrorCode, LifecycleEvent, Platform
from engine.core.stages import ALL_AT_ONCE, StageOptions, deployment_stages
from engine.runtime.runner import DeploymentRunner
from engine.store.sqlite import SqliteStore

T0 = 1_000.0
CANARY = (TrafficStep(20, 300), TrafficStep(100, 0))


Answer = bool | None | Exception


@dataclass
class FakeRouter:
    """Answers ``verify_weight`` for a percent from its script, one answer per check, then ``then``."""

    clock: FakeClock
    script: dict[int, list[Answer]] = field(default_factory=dict)
    then: Answer = True
    weights: list[int] = field(default_factory=list)
    checks: list[tuple[int, float, int]] = field(default_factory=list)  # (percent asked, at, machine's percent)
    runner: DeploymentRunner | None = None

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        pass

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        self.weights.append(percent)

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        assert self.runner is not None
        self.checks.append((percent, self.clock.now(), self.runner.machine.state.traffic_percent))
        answers = self.script.get(percent, [])
        answer = answers.pop(0) if answers else self.then
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def block(self, group: str, target: str) -> None:
        pass

    async def allow(self, group: str, target: str) -> None:
        pass


class InstantHosts:
    """Every lifecycle event succeeds as soon as it is dispatched."""

    def __init__(self) -> None:
        self.runner: DeploymentRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def dispatch(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        assert self.runner is not None
        task = asyncio.ensure_future(self.runner.record_result(target, event, {"status": "Succeeded"}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self, deployment_id: str) -> None:
        pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    yield store
    await store.close()


def blue_green(store: SqliteStore, router: FakeRouter, **runner_options: Any) -> DeploymentRunner:
    """A runner for a server blue/green deployment (one host each side, a 20 % canary); run_blue_green makes its
    row."""
    options = StageOptions(Platform.SERVER, DeploymentType.BLUE_GREEN, ALL_AT_ONCE, traffic_steps=CANARY)
    stages = deployment_stages(options, ("green-1",), ("blue-1",))
    hosts = InstantHosts()

    async def nothing(deployment_id: str) -> None:
        pass

    async def no_rollback(deployment_id: str, command: StartRollback) -> None:
        pass

    runner = DeploymentRunner(
        "d-1",
        DeploymentMachine(stages),
        store=store,
        executor=hosts,
        router=router,
        group="app-prod",
        spec={},
        clock=router.clock,
        on_change=nothing,
        on_rollback=no_rollback,
        on_finish=nothing,
        roles=(("blue-1",), ("green-1",)),
        **runner_options,
    )
    hosts.runner = router.runner = runner
    return runner


async def run_blue_green(store: SqliteStore, router: FakeRouter, **runner_options: Any) -> DeploymentRunner:
    """The deployment of ``blue_green``, run to its end."""
    await create_row(store)
    runner = blue_green(store, router, **runner_options)
    await runner.run()
    return runner


async def create_row(store: SqliteStore) -> None:
    row = {"id": "d-1", "application": "app", "environment": "prod", "group_name": "app-prod", "status": "Created"}
    await store.create_deployment(row | {"created_at": T0})


async def traffic_log(store: SqliteStore) -> list[tuple[str, float, dict[str, Any]]]:
    return [
        (e["kind"], e["at"], e["data"]) for e in await store.read_log(deployment_id="d-1") if "traffic" in e["kind"]
    ]


async def test_a_shift_holds_until_the_router_verifies_it(store: SqliteStore) -> None:
    router = FakeRouter(FakeClock(T0, auto=True), script={20: [False, False, False]})
    runner = await run_blue_green(store, router, verify_interval=10)
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    # checked every 10 s on the runner's clock; the machine stayed at 0 % until the fourth check said yes
    assert [c for c in router.checks if c[0] == 20] == [(20, T0 + 10 * i, 0) for i in range(4)]
    log = await traffic_log(store)
    assert [(kind, at) for kind, at, _ in log] == [
        ("traffic.verify_holding", T0),
        ("traffic.verified", T0 + 30),
        ("traffic.shifted", T0 + 30),
        ("traffic.shifted", T0 + 330),  # the canary's 300 s wait counts from the verified shift
    ]
    holding, verified = log[0][2], log[1][2]
    assert holding["wanted_percent"] == 20 and "percent" not in holding  # the page must not draw it as traffic
    assert holding["reason"].startswith("the router does not show 20% of the traffic on the replacement yet")
    assert verified == {"wanted_percent": 20, "checks": 4, "seconds": 30}


async def test_a_router_that_cannot_verify_is_trusted_and_noted_once(store: SqliteStore) -> None:
    router = FakeRouter(FakeClock(T0, auto=True), then=None)
    runner = await run_blue_green(store, router)
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    assert router.weights == [20, 100] and [c[0] for c in router.checks] == [20, 100]
    log = await traffic_log(store)
    assert [(kind, at) for kind, at, _ in log] == [
        ("traffic.unverified", T0),
        ("traffic.shifted", T0),
        ("traffic.shifted", T0 + 300),  # no time spent verifying
    ]
    assert "cannot read its weights back" in log[0][2]["reason"]


async def test_weights_that_never_verify_fail_the_step_at_the_timeout(store: SqliteStore) -> None:
    router = FakeRouter(FakeClock(T0, auto=True), then=False)
    runner = await run_blue_green(store, router, verify_interval=10, verify_timeout=60)
    state = runner.machine.state
    assert (state.status, state.error_code) == (DeploymentStatus.FAILED, ErrorCode.INTERNAL_ERROR)
    assert state.message == (
        "traffic shift failed: the router does not show 20% of the traffic on the replacement 60 s after the shift"
        " (7 checks)"
    )
    assert [at for percent, at, _ in router.checks if percent == 20] == [T0 + 10 * i for i in range(7)]
    assert state.traffic_percent == 0  # the machine never took the shift as done
    assert router.weights == [20, 0]  # and the failed deployment's weights were taken off, then read back
    row = await store.get_deployment("d-1")
    assert row is not None and (row["status"], row["error_message"]) == ("Failed", state.message)
    log = await traffic_log(store)
    assert [kind for kind, _, _ in log] == ["traffic.verify_holding", "traffic.rerouted"]
    assert log[1][2]["verified"] is False  # this router never verifies anything: the log says so


async def test_weights_that_cannot_be_read_are_checked_again(store: SqliteStore) -> None:
    router = FakeRouter(FakeClock(T0, auto=True), script={20: [AdapterError("haproxy", "socket closed")]})
    runner = await run_blue_green(store, router, verify_interval=5)
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    log = await traffic_log(store)
    assert log[0][0] == "traffic.verify_holding" and "could not be read back" in log[0][2]["reason"]
    assert log[2][:2] == ("traffic.shifted", T0 + 5)


async def test_a_promotion_overtakes_a_held_shift(store: SqliteStore) -> None:
    """The 20 % step never verifies; promoting shifts to 100 %, and the abandoned 20 % check must neither check
    again nor fail the deployment when its timeout comes: the new shift cancels it."""
    clock = FakeClock(T0)
    router = FakeRouter(clock, then=False, script={100: [False, True]})
    await create_row(store)
    runner = blue_green(store, router, verify_interval=60, verify_timeout=60)
    run = asyncio.ensure_future(runner.run())
    await clock.sleeping(1)  # the 20 % step holds
    runner.post(PromoteRequested())
    await eventually(lambda: [c for c in router.checks if c[0] == 100], "the 100 % shift is checked")
    await clock.sleeping(1)  # the 100 % shift holds too, at first
    assert clock.sleepers == [60]  # and it alone: the 20 % check went with its shift
    await clock.advance(60)  # the 20 % check's timeout: it would fail the deployment were it still current
    await run
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    assert router.weights == [20, 100]
    assert [(percent, at) for percent, at, _ in router.checks] == [(20, T0), (100, T0), (100, T0 + 60)]
    shifted = [data["percent"] for kind, _, data in await traffic_log(store) if kind == "traffic.shifted"]
    assert shifted == [100]
