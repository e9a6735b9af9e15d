"""The Lambda platform driver against moto in server mode: alias weights read back with GetAlias, hooks invoked
through moto's non-Docker backend and answered through ``HookExecutions`` as the API callback would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FakeClock, deployer_from, eventually, gone_after_the_write_of

from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.hook_executions import HookExecutions
from engine.adapters.aws.lambda_ import LambdaAliasRouter, LambdaDriver
from engine.adapters.aws.lambda_hooks import LambdaHookInvoker
from engine.adapters.clock import SystemClock
from engine.core.config.model import AwsAccount
from engine.core.errors import AdapterError, LifecycleHookNotFound
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.core.requests import DeployRequest
from engine.store.sqlite import SqliteStore
from tests.aws_fixtures import (
    LambdaSetup,
    ResultInbox,
    SharedAccounts,
    alias_now,
    create_hook_function,
    create_lambda_function,
    lambda_appspec,
    lambda_group,
    lambda_spec,
    pending_hooks,
)
from tests.moto_support import aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

BEFORE = LifecycleEvent.BEFORE_ALLOW_TRAFFIC
AFTER = LifecycleEvent.AFTER_ALLOW_TRAFFIC


@dataclass
class World:
    clients: AwsClients
    setup: LambdaSetup
    hooks: HookExecutions
    inbox: ResultInbox
    driver: LambdaDriver
    clock: FakeClock
    store: SqliteStore


@pytest.fixture
async def world(aws: AwsClients, tmp_path: Path) -> AsyncIterator[World]:  # noqa: F811
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "check-before")
    await create_hook_function(aws, "check-after")
    accounts = SharedAccounts(aws)
    store = await SqliteStore.open(tmp_path / "state.db")  # where hook executions are kept
    clock = FakeClock()  # hook timeouts run on it
    hooks, inbox = HookExecutions(store, clock), ResultInbox()
    try:
        yield World(aws, setup, hooks, inbox, LambdaDriver(accounts, hooks, clock, inbox), clock, store)
    finally:
        hooks.close()
        await accounts.close()
        await store.close()


def router_for(world: World, **appspec: str) -> LambdaAliasRouter:
    spec = lambda_spec(world.setup)
    spec["appspec"].update(appspec)
    return world.driver.router("d-1", lambda_group(world.setup), spec)


async def test_target_name_is_function_and_alias(world: World) -> None:
    spec = lambda_spec(world.setup)
    assert world.driver.target_name(lambda_group(world.setup), spec["appspec"]) == "api:live"


async def test_linear_shift_steps_the_alias_weights_in_order(world: World) -> None:
    router = router_for(world)
    seen = []
    for percent in range(10, 101, 10):
        await router.set_weight("g", percent)
        seen.append(await alias_now(world.clients, world.setup))
        assert await router.verify_weight("g", percent) is True
    assert seen == [("1", {"2": p / 100}) for p in range(10, 100, 10)] + [("2", {})]
    assert await router.verify_weight("g", 50) is False


async def test_reroute_after_thirty_percent_restores_the_alias_without_weights(world: World) -> None:
    router = router_for(world)
    await router.set_weight("g", 30)
    assert await alias_now(world.clients, world.setup) == ("1", {"2": 0.3})
    await router.set_weight("g", 0, wait=False)
    assert await alias_now(world.clients, world.setup) == ("1", {})
    assert await router.verify_weight("g", 0) is True


async def test_a_fresh_router_can_resume_or_reroute_a_promoted_alias(world: World) -> None:
    await router_for(world).set_weight("g", 100)
    resumed = router_for(world)  # a restarted server: the alias already points at TargetVersion
    await resumed.set_weight("g", 100)
    assert await alias_now(world.clients, world.setup) == ("2", {})
    await router_for(world).set_weight("g", 0)
    assert await alias_now(world.clients, world.setup) == ("1", {})


@pytest.mark.parametrize(
    ("appspec", "words"),
    [
        ({"alias": "missing"}, "alias api:missing does not exist"),
        ({"target_version": "9"}, r"version 9 of function api \(TargetVersion in the AppSpec\) does not exist"),
        ({"current_version": "3", "target_version": "2"}, "points at version 1, not at the AppSpec's CurrentVersion 3"),
    ],
)
async def test_a_wrong_alias_or_version_is_refused_before_any_change(
    world: World, appspec: dict[str, str], words: str
) -> None:
    with pytest.raises(AdapterError, match=words):
        await router_for(world, **appspec).set_weight("g", 10)
    assert await alias_now(world.clients, world.setup) == ("1", {})


@pytest.mark.parametrize("percent", [-1, 101, 150])
async def test_weights_are_validated_by_us_not_by_moto(world: World, percent: int) -> None:
    with pytest.raises(AdapterError, match="from 0 to 100"):
        await router_for(world).set_weight("g", percent)
    assert await alias_now(world.clients, world.setup) == ("1", {})


def hooked_spec(world: World, timeout: float = 10.0) -> dict[str, object]:
    hooks = {"BeforeAllowTraffic": ["check-before"], "AfterAllowTraffic": ["check-after"]}
    return lambda_spec(world.setup, "d-1", hooks=hooks, hook_timeout_seconds=timeout)


@pytest.mark.parametrize(
    ("callback", "status", "code"), [("Succeeded", "Succeeded", 0), ("Failed", "Failed", ScriptErrorCode.SCRIPT_FAILED)]
)
async def test_a_hook_result_follows_its_callback(world: World, callback: str, status: str, code: int) -> None:
    executor = world.driver.executor("d-1", lambda_group(world.setup), hooked_spec(world))
    await asyncio.wait_for(executor.dispatch("d-1", "api:live", BEFORE, hooked_spec(world)), 1)  # returns at once
    [execution] = await pending_hooks(world.hooks, "d-1")
    assert (execution["function"], execution["event"], execution["target"]) == ("check-before", BEFORE, "api:live")
    assert world.inbox.results == []  # still waiting for the callback
    await world.hooks.resolve(execution["execution_id"], callback, deployment_id="d-1")
    command, result = await world.inbox.next()
    assert command == {"deployment_id": "d-1", "host": "api:live", "event": "BeforeAllowTraffic"}
    assert (result["status"], result["error_code"]) == (status, code)
    assert "check-before" in result["message"] and execution["execution_id"] in result["message"]
    assert result["started_at"] <= result["ended_at"]
    assert world.hooks.pending("d-1") == []


async def test_a_hook_that_never_calls_back_fails_at_its_timeout(world: World) -> None:
    executor = world.driver.executor("d-1", lambda_group(world.setup), hooked_spec(world, 30))
    await executor.dispatch("d-1", "api:live", AFTER, hooked_spec(world, 30))
    [execution] = await pending_hooks(world.hooks, "d-1")
    await world.clock.sleeping(1)  # the wait for the callback
    assert world.clock.sleepers == [30]
    await world.clock.advance(30, settle=False)
    _, result = await world.inbox.next()
    assert (result["status"], result["error_code"]) == ("Failed", ScriptErrorCode.SCRIPT_TIMED_OUT)
    assert "check-after" in result["message"] and execution["execution_id"] in result["message"]
    assert "30 seconds" in result["message"]
    with pytest.raises(LifecycleHookNotFound, match="is waiting"):  # a late callback finds nothing
        await world.hooks.resolve(execution["execution_id"], "Succeeded")
    assert (await world.store.get_hook_execution(execution["execution_id"]) or {})["state"] == "timed_out"


async def test_an_event_without_hooks_succeeds_at_once(world: World) -> None:
    spec = lambda_spec(world.setup, "d-1")
    await world.driver.executor("d-1", lambda_group(world.setup), spec).dispatch("d-1", "api:live", BEFORE, spec)
    _, result = await world.inbox.next()
    assert result["status"] == "Succeeded" and "no hook functions for BeforeAllowTraffic" in result["message"]


async def test_several_hooks_run_in_order_and_stop_at_the_first_failure(world: World) -> None:
    spec = lambda_spec(world.setup, "d-1", hooks={"BeforeAllowTraffic": ["check-before", "check-after"]})
    await world.driver.executor("d-1", lambda_group(world.setup), spec).dispatch("d-1", "api:live", BEFORE, spec)
    [first] = await pending_hooks(world.hooks, "d-1")
    assert first["function"] == "check-before"
    await world.hooks.resolve(first["execution_id"], "Succeeded")
    [second] = await pending_hooks(world.hooks, "d-1")
    assert second["function"] == "check-after"
    await world.hooks.resolve(second["execution_id"], "Failed")
    _, result = await world.inbox.next()
    assert result["status"] == "Failed" and "check-after" in result["message"]


async def test_a_repeated_dispatch_while_waiting_invokes_once(world: World) -> None:
    executor = world.driver.executor("d-1", lambda_group(world.setup), hooked_spec(world))
    await executor.dispatch("d-1", "api:live", BEFORE, hooked_spec(world))
    [execution] = await pending_hooks(world.hooks, "d-1")
    await executor.dispatch("d-1", "api:live", BEFORE, hooked_spec(world))  # the event is running: a no-op
    assert world.hooks.pending("d-1") == [execution]
    assert len(await world.store.list_hook_executions(deployment_id="d-1")) == 1


async def test_cancel_stops_the_wait_and_reports_nothing(world: World) -> None:
    executor = world.driver.executor("d-1", lambda_group(world.setup), hooked_spec(world))
    await executor.dispatch("d-1", "api:live", BEFORE, hooked_spec(world))
    [execution] = await pending_hooks(world.hooks, "d-1")
    await asyncio.wait_for(executor.cancel("d-1"), 2)  # returns once the event's task has ended
    assert world.hooks.pending("d-1") == [] and world.inbox.results == []
    assert (await world.store.get_hook_execution(execution["execution_id"]) or {})["state"] == "stopped"
    with pytest.raises(LifecycleHookNotFound):  # a late callback finds nothing
        await world.hooks.resolve(execution["execution_id"], "Succeeded")


async def test_an_unreachable_lambda_endpoint_fails_the_hook_without_leaving_it_pending(
    aws_env: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    clients = AwsClients(AwsAccount("default", region="us-east-1", endpoint_url="http://127.0.0.1:9"))
    store = await SqliteStore.open(tmp_path / "state.db")
    hooks = HookExecutions(store, SystemClock())
    try:
        result = await LambdaHookInvoker(clients, hooks, SystemClock()).run("d-1", "api:live", "X", ["fn"], 5)
        [row] = await store.list_hook_executions(deployment_id="d-1")
    finally:
        await clients.close()
        await store.close()
    assert (result["status"], result["error_code"]) == ("Failed", ScriptErrorCode.SCRIPT_FAILED)
    assert "fn" in result["message"] and "could not be invoked" in result["message"]
    assert hooks.pending() == []
    assert row["state"] == "not_invoked" and row["detail"] in result["message"]


async def test_finished_changes_nothing(world: World) -> None:
    await router_for(world).set_weight("g", 100)
    spec = lambda_spec(world.setup)
    await world.driver.finished("d-1", lambda_group(world.setup), spec, "Succeeded")
    assert await alias_now(world.clients, world.setup) == ("2", {})


# -- a deployment's end across a restart --------------------------------------------------------------------------


def canary_config(endpoint: str) -> str:
    return (
        "server: {data_dir: var}\n"
        f"aws:\n  default: {{region: us-east-1, endpoint_url: '{endpoint}'}}\n"
        "applications:\n  api:\n    platform: lambda\n    environments: [prod]\n"
        "    deployment_groups:\n      prod: {deployment_config: CodeDeployDefault.LambdaCanary10Percent5Minutes}\n"
    )


async def test_an_alias_left_split_by_a_restart_goes_back_when_the_server_starts_again(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    """A canary stopped at 10 %: the write that stores "Stopped" lands, and the server goes away before traffic
    goes back. The alias used to stay split between the two versions for good; the next server puts it back."""
    setup = await create_lambda_function(aws)
    clock = FakeClock()
    first = await deployer_from(canary_config(moto_reset), tmp_path, clock=clock)
    try:
        started = await first.start(DeployRequest("api", "prod", revision=str(lambda_appspec(tmp_path, setup))))
        await eventually(lambda: 300 in clock.sleepers, "the canary's five-minute wait")
        assert await alias_now(aws, setup) == ("1", {"2": 0.1})
        crash = gone_after_the_write_of(first, "Stopped")
        stopping = asyncio.ensure_future(first.stop(started["id"], rollback=False, actor="erin"))
        await crash.wait()
    finally:
        await first.close()
    with contextlib.suppress(Exception):
        await stopping
    assert await alias_now(aws, setup) == ("1", {"2": 0.1})  # the server went away with the alias split

    second = await deployer_from(canary_config(moto_reset), tmp_path, clock=FakeClock(start=clock.now() + 60))

    async def logged_end() -> bool:
        return "deployment.finished" in [e["kind"] for e in await second.event_log(started["id"])]

    try:
        await eventually(logged_end, "the stopped canary's end logged")
        doc = await second.get(started["id"])
        log = [e["kind"] for e in await second.store.read_log(deployment_id=started["id"])]
        owed = await second.store.owing_wind_up()
    finally:
        await second.close()
    assert await alias_now(aws, setup) == ("1", {}) and owed == []
    assert doc["status"] == "Stopped" and doc["traffic"]["percent"] == 0
    assert log.count("traffic.rerouted") == 1 and log[-1] == "deployment.finished"
