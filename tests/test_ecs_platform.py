"""The ECS platform driver against moto in server mode: task sets read back with DescribeTaskSets, listener weights
with DescribeListeners (moto routes no traffic, so what AWS holds is what we assert on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.ecs import EcsDriver, wait_until_steady
from engine.adapters.aws.hook_executions import HookExecutions
from engine.adapters.clock import SystemClock
from engine.core.errors import AdapterError
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.store.sqlite import SqliteStore
from tests.aws_fixtures import (
    EcsSetup,
    ResultInbox,
    SharedAccounts,
    create_ecs_service,
    create_hook_function,
    ecs_group,
    ecs_spec,
    forward_action,
    listener_weights_now,
    pending_hooks,
    task_sets_now,
)
from tests.moto_support import aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

INSTALL = LifecycleEvent.INSTALL


@dataclass
class World:
    clients: AwsClients
    setup: EcsSetup
    hooks: HookExecutions
    inbox: ResultInbox
    driver: EcsDriver

    @property
    def blue(self) -> str:
        return self.setup.target_groups[0]

    @property
    def green(self) -> str:
        return self.setup.target_groups[1]

    async def run(self, event: LifecycleEvent, spec: dict[str, Any]) -> dict[str, Any]:
        """Dispatch one event for ``spec``'s deployment and return the result it reports."""
        executor = self.driver.executor(spec["deployment_id"], ecs_group(self.setup), spec)
        await executor.dispatch(spec["deployment_id"], self.setup.target, event, spec)
        _, result = await self.inbox.next()
        return result

    async def shift(self, spec: dict[str, Any], *percents: int) -> None:
        router = self.driver.router(spec["deployment_id"], ecs_group(self.setup), spec)
        for percent in percents:
            await router.set_weight("g", percent)
            assert await router.verify_weight("g", percent) is True

    async def task_sets(self) -> dict[str, tuple[str, str]]:
        """externalId → (status, target group)."""
        return {
            ts["externalId"]: (ts["status"], ts["loadBalancers"][0]["targetGroupArn"])
            for ts in await task_sets_now(self.clients, self.setup)
        }


@pytest.fixture
async def world(aws: AwsClients, tmp_path: Path) -> AsyncIterator[World]:  # noqa: F811
    setup = await create_ecs_service(aws)
    accounts = SharedAccounts(aws)
    store = await SqliteStore.open(tmp_path / "state.db")  # where hook executions are kept
    clock = SystemClock()
    hooks, inbox = HookExecutions(store, clock), ResultInbox()
    try:
        yield World(aws, setup, hooks, inbox, EcsDriver(accounts, hooks, clock, inbox))
    finally:
        hooks.close()
        await accounts.close()
        await store.close()


async def test_install_creates_one_task_set_on_the_idle_target_group_even_when_dispatched_twice(world: World) -> None:
    spec = ecs_spec(world.setup, "d-1")
    assert world.driver.target_name(ecs_group(world.setup), spec["appspec"]) == world.setup.target == "prod:api"
    executor = world.driver.executor("d-1", ecs_group(world.setup), spec)
    await executor.dispatch("d-1", world.setup.target, INSTALL, spec)
    await executor.dispatch("d-1", world.setup.target, INSTALL, spec)  # still running: ignored
    _, first = await world.inbox.next()
    await executor.dispatch("d-1", world.setup.target, INSTALL, spec)  # done: AWS already has it
    _, second = await world.inbox.next()
    assert (first["status"], second["status"]) == ("Succeeded", "Succeeded")
    assert "created task set" in first["message"] and "reused" in second["message"]
    assert "steady" in first["message"]  # Install ends once the replacement's tasks run
    assert len(world.inbox.results) == 2
    sets = await task_sets_now(world.clients, world.setup)
    [replacement] = [ts for ts in sets if ts["externalId"] == "d-1"]
    assert len(sets) == 2
    assert replacement["taskDefinition"].endswith("task-definition/api:2")
    assert replacement["launchType"] == "FARGATE" and replacement["scale"] == {"value": 100.0, "unit": "PERCENT"}
    assert replacement["loadBalancers"] == [
        {"targetGroupArn": world.green, "containerName": "web", "containerPort": 8080}
    ]


async def test_a_create_that_fails_but_adds_the_task_set_leaves_exactly_one(world: World) -> None:
    """A capacity provider strategy means no FARGATE launch type; moto then answers 500 ("No instances found in
    cluster") yet keeps the task set, and botocore's standard retries repeat the 500."""
    spec = ecs_spec(world.setup, "d-1")
    spec["appspec"]["capacity_provider_strategy"] = [{"capacityProvider": "FARGATE_SPOT", "base": 0, "weight": 1}]
    result = await world.run(INSTALL, spec)
    assert (result["status"], result["error_code"]) == ("Failed", ScriptErrorCode.UNKNOWN_ERROR)
    assert "ecs" in result["message"]
    assert [ts["externalId"] for ts in await task_sets_now(world.clients, world.setup)].count("d-1") == 1


async def test_install_refuses_when_both_target_groups_carry_equal_traffic(world: World) -> None:
    elbv2 = await world.clients.get("elbv2")
    action = forward_action({world.blue: 50, world.green: 50})
    await elbv2.modify_listener(ListenerArn=world.setup.listener_arn, DefaultActions=[action])
    result = await world.run(INSTALL, ecs_spec(world.setup, "d-1"))
    assert result["status"] == "Failed" and "both target groups carry weight 50" in result["message"]
    assert set(await world.task_sets()) == {"original"}


async def test_allow_test_traffic_moves_the_test_listener_only(world: World) -> None:
    spec = ecs_spec(world.setup, "d-1")
    await world.run(INSTALL, spec)
    result = await world.run(LifecycleEvent.ALLOW_TEST_TRAFFIC, spec)
    assert result["status"] == "Succeeded"
    assert await listener_weights_now(world.clients, world.setup.test_listener_arn) == {world.blue: 0, world.green: 100}
    assert await listener_weights_now(world.clients, world.setup.listener_arn) == {world.blue: 100, world.green: 0}
    without = await world.run(LifecycleEvent.ALLOW_TEST_TRAFFIC, ecs_spec(world.setup, "d-2", with_test_listener=False))
    assert without["status"] == "Succeeded" and "no test listener" in without["message"]


async def test_ecs_hooks_wait_for_their_callback(world: World) -> None:
    await create_hook_function(world.clients, "smoke")
    spec = ecs_spec(world.setup, "d-1", hooks={"AfterAllowTestTraffic": ["smoke"]})
    executor = world.driver.executor("d-1", ecs_group(world.setup), spec)
    await executor.dispatch("d-1", world.setup.target, LifecycleEvent.AFTER_ALLOW_TEST_TRAFFIC, spec)
    [execution] = await pending_hooks(world.hooks, "d-1")
    assert (execution["function"], execution["target"]) == ("smoke", "prod:api")
    await world.hooks.resolve(execution["execution_id"], "Succeeded")
    _, result = await world.inbox.next()
    assert result["status"] == "Succeeded" and execution["execution_id"] in result["message"]


async def test_an_ecs_hook_resumed_after_a_restart_waits_for_the_same_execution(world: World, tmp_path: Path) -> None:
    """The server goes away while AfterAllowTestTraffic waits; the next one (a new HookExecutions and driver on the
    same store) re-dispatches the event, as a resumed deployment does, and takes the status of the first execution."""
    await create_hook_function(world.clients, "smoke")
    spec = ecs_spec(world.setup, "d-1", hooks={"AfterAllowTestTraffic": ["smoke"]})
    event = LifecycleEvent.AFTER_ALLOW_TEST_TRAFFIC
    await world.driver.executor("d-1", ecs_group(world.setup), spec).dispatch("d-1", world.setup.target, event, spec)
    [first] = await pending_hooks(world.hooks, "d-1")
    world.hooks.close()  # the first server closes: its wait ends and records nothing

    async with await SqliteStore.open(tmp_path / "state.db") as store:
        clock, inbox = SystemClock(), ResultInbox()
        hooks = HookExecutions(store, clock)
        await hooks.load()
        assert [e["execution_id"] for e in hooks.pending("d-1")] == [first["execution_id"]]
        driver = EcsDriver(SharedAccounts(world.clients), hooks, clock, inbox)
        await driver.executor("d-1", ecs_group(world.setup), spec).dispatch("d-1", world.setup.target, event, spec)
        _, reported = await hooks.resolve(first["execution_id"], "Succeeded", deployment_id="d-1")
        _, result = await inbox.next()
        hooks.close()
    assert reported is True and world.inbox.results == []
    assert result["status"] == "Succeeded" and first["execution_id"] in result["message"]


async def test_canary_moves_production_weights_promotes_the_replacement_and_reroutes_back(world: World) -> None:
    spec = ecs_spec(world.setup, "d-1")
    await world.run(INSTALL, spec)
    await world.shift(spec, 10)
    assert await listener_weights_now(world.clients, world.setup.listener_arn) == {world.blue: 90, world.green: 10}
    assert (await world.task_sets())["original"][0] == "PRIMARY"
    await world.shift(spec, 100)
    assert await listener_weights_now(world.clients, world.setup.listener_arn) == {world.blue: 0, world.green: 100}
    assert await world.task_sets() == {"original": ("ACTIVE", world.blue), "d-1": ("PRIMARY", world.green)}
    await world.shift(spec, 0)  # the reroute of a rollback: the original is back in front
    assert await listener_weights_now(world.clients, world.setup.listener_arn) == {world.blue: 100, world.green: 0}
    assert await world.task_sets() == {"original": ("PRIMARY", world.blue), "d-1": ("ACTIVE", world.green)}


async def test_finished_succeeded_deletes_the_original_and_the_next_deployment_uses_its_target_group(
    world: World,
) -> None:
    spec = ecs_spec(world.setup, "d-1")
    await world.run(INSTALL, spec)
    await world.shift(spec, 10, 100)
    await world.driver.finished("d-1", ecs_group(world.setup), spec, "Succeeded")
    assert await world.task_sets() == {"d-1": ("PRIMARY", world.green)}
    await world.run(INSTALL, ecs_spec(world.setup, "d-2"))
    assert (await world.task_sets())["d-2"] == ("ACTIVE", world.blue)


async def test_finished_succeeded_keeps_the_original_while_it_still_has_traffic(world: World) -> None:
    spec = ecs_spec(world.setup, "d-1")
    await world.run(INSTALL, spec)
    await world.shift(spec, 10)
    await world.driver.finished("d-1", ecs_group(world.setup), spec, "Succeeded")
    assert set(await world.task_sets()) == {"original", "d-1"}


@pytest.mark.parametrize("reached", [10, 100])
async def test_finished_failed_restores_weights_and_deletes_the_replacement(world: World, reached: int) -> None:
    spec = ecs_spec(world.setup, "d-1")
    await world.run(INSTALL, spec)
    await world.run(LifecycleEvent.ALLOW_TEST_TRAFFIC, spec)
    await world.shift(spec, reached)
    await world.driver.finished("d-1", ecs_group(world.setup), spec, "Failed")
    for listener in (world.setup.listener_arn, world.setup.test_listener_arn):
        assert await listener_weights_now(world.clients, listener) == {world.blue: 100, world.green: 0}
    assert await world.task_sets() == {"original": ("PRIMARY", world.blue)}


async def test_shifting_without_a_replacement_task_set(world: World) -> None:
    spec = ecs_spec(world.setup, "d-1")
    router = world.driver.router("d-1", ecs_group(world.setup), spec)
    await router.set_weight("g", 0)  # nothing to reroute: a no-op
    with pytest.raises(AdapterError, match="no replacement task set"):
        await router.set_weight("g", 10)
    assert await router.verify_weight("g", 10) is None
    assert await listener_weights_now(world.clients, world.setup.listener_arn) == {world.blue: 100, world.green: 0}


async def test_finished_never_raises(world: World) -> None:
    spec = ecs_spec(world.setup, "d-1")
    spec["ecs"] = {**spec["ecs"], "cluster": "missing"}
    await world.driver.finished("d-1", ecs_group(world.setup), spec, "Failed")
    await world.driver.finished("d-1", ecs_group(world.setup), spec, "Succeeded")
    assert set(await world.task_sets()) == {"original"}


class _StartingTaskSet:
    """Our own EcsService seam, answering with a task set whose tasks never all start."""

    deployment_id = "d-9"

    async def replacement(self) -> dict[str, Any]:
        return {
            "taskSetArn": "arn:ts/d-9",
            "stabilityStatus": "STABILIZING",
            "runningCount": 1,
            "computedDesiredCount": 4,
        }


async def test_install_fails_when_the_task_set_never_becomes_steady() -> None:
    clock = FakeClock()
    with pytest.raises(AdapterError, match=r"not steady after 60 s: 1/4 tasks running"):
        await clock.run(wait_until_steady(_StartingTaskSet(), clock, timeout=60))  # type: ignore[arg-type]
    assert clock.monotonic() == pytest.approx(60)
