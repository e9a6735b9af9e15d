"""Lambda/ECS hook executions are stored: a restarted server waits for the same execution id instead of invoking the
hook function again, takes a status reported for that id after it came back, and treats a status as final.

AWS is moto in server mode behind ``InvokeCounter``, a small reverse proxy that counts the Invoke calls reaching it
per function: that count is how these tests know a function was invoked exactly once. Hook timeouts run on the
FakeClock; everything else is awaited as a condition.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from conftest import FakeClock, deployer_from, eventually

from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.hook_executions import HookExecutions, HookStatusConflict
from engine.adapters.aws.lambda_hooks import LambdaHookInvoker
from engine.core.config.model import AwsAccount
from engine.core.errors import LifecycleHookNotFound
from engine.core.model import ScriptErrorCode
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer
from engine.store.sqlite import SqliteStore
from tests.aws_fixtures import alias_now, create_hook_function, create_lambda_function, lambda_appspec
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

BEFORE, AFTER = "BeforeAllowTraffic", "AfterAllowTraffic"
INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class InvokeCounter:
    """A reverse proxy in front of moto that counts the Lambda Invoke calls it forwards, by function name."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.invocations: collections.Counter[str] = collections.Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        if request.method == "POST" and (match := INVOKE_PATH.fullmatch(request.path)):
            self.invocations[unquote(match[1])] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, body=body, headers=kept)


@pytest.fixture
async def counter(moto_reset: str) -> AsyncIterator[InvokeCounter]:  # noqa: F811
    proxy = InvokeCounter(moto_reset)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def counted(counter: InvokeCounter, aws_env: None) -> AsyncIterator[AwsClients]:  # noqa: F811
    """AWS clients whose calls go through the counter."""
    clients = AwsClients(AwsAccount("default", region=REGION, endpoint_url=counter.url))
    try:
        yield clients
    finally:
        await clients.close()


# -- a whole deployment across a restart -----------------------------------------------------------------------


def lambda_config(endpoint: str) -> str:
    return (
        "server: {data_dir: var}\n"
        f"aws:\n  default: {{region: {REGION}, endpoint_url: '{endpoint}'}}\n"
        "applications:\n  api:\n    platform: lambda\n    environments: [prod]\n"
        "    deployment_groups:\n      prod: {deployment_config: CodeDeployDefault.LambdaAllAtOnce}\n"
    )


async def hook_waiting(deployer: Deployer, deployment_id: str, event: str) -> dict[str, Any]:
    """The deployment's execution of ``event`` once its function took the invocation and it waits for its status."""

    def waiting() -> list[dict[str, Any]]:
        return [e for e in deployer.hooks.pending(deployment_id) if e["event"] == event and e["state"] == "waiting"]

    await eventually(waiting, f"{event} of {deployment_id} waiting for its status")
    [execution] = waiting()
    return execution


async def final(deployer: Deployer, deployment_id: str) -> dict[str, Any]:
    async def ended() -> bool:
        return (await deployer.get(deployment_id))["status"] in ("Succeeded", "Failed", "Stopped")

    await eventually(ended, f"{deployment_id} finished")
    return await deployer.get(deployment_id)


async def hook_log(deployer: Deployer, deployment_id: str) -> list[tuple[str, str, str]]:
    """(kind, event, status) of the deployment's hook status entries, in order."""
    return [
        (e["kind"], e["data"]["event"], e["data"]["status"])
        for e in await deployer.store.read_log(deployment_id=deployment_id)
        if e["kind"].startswith("hook.")
    ]


async def test_a_restarted_server_waits_for_the_same_execution_and_takes_its_status(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    counter: InvokeCounter,
) -> None:
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "check-before")
    spec = lambda_appspec(tmp_path, setup, {BEFORE: "check-before"})
    first_clock = FakeClock()
    first = await deployer_from(lambda_config(counter.url), tmp_path, clock=first_clock)
    try:
        deployment_id = (await first.start(DeployRequest("api", "prod", revision=str(spec))))["id"]
        invoked = await hook_waiting(first, deployment_id, BEFORE)
        await eventually(lambda: 3600 in first_clock.sleepers, "the hook waiting for its status (an hour)")
        assert counter.invocations["check-before"] == 1
    finally:
        await first.close()  # the server goes away while the hook waits

    later = FakeClock(start=first_clock.now() + 600)  # back ten minutes later
    second = await deployer_from(lambda_config(counter.url), tmp_path, clock=later)
    try:
        assert [e["execution_id"] for e in second.hooks.pending(deployment_id)] == [invoked["execution_id"]]
        # The resumed event waits again, for the same execution and for what is left of its hour.
        await eventually(lambda: 3600 - 600 in later.sleepers, "the wait for what is left of the hour")
        answer = await second.put_hook_status(invoked["execution_id"], "Succeeded", actor="check-before")
        done = await final(second, deployment_id)
        log = await hook_log(second, deployment_id)
    finally:
        await second.close()
    assert answer["lifecycleEventHookExecutionId"] == invoked["execution_id"]
    assert counter.invocations["check-before"] == 1  # invoked once, by the first server only
    assert done["status"] == "Succeeded", done
    before, after = done["targets"][0]["events"]
    assert (before["name"], before["status"], after["name"]) == (BEFORE, "Succeeded", AFTER)
    assert f"check-before (execution {invoked['execution_id']})" in before["message"]
    assert log == [("hook.status", BEFORE, "Succeeded")]
    assert await alias_now(aws, setup) == ("2", {})


async def test_the_same_status_twice_is_taken_once_and_moves_the_deployment_once(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    counter: InvokeCounter,
) -> None:
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "check-before")
    await create_hook_function(aws, "check-after")
    spec = lambda_appspec(tmp_path, setup, {BEFORE: "check-before", AFTER: "check-after"})
    deployer = await deployer_from(lambda_config(counter.url), tmp_path, clock=FakeClock())
    try:
        deployment_id = (await deployer.start(DeployRequest("api", "prod", revision=str(spec))))["id"]
        before = await hook_waiting(deployer, deployment_id, BEFORE)
        answers = [await deployer.put_hook_status(before["execution_id"], "Succeeded") for _ in range(2)]
        after = await hook_waiting(deployer, deployment_id, AFTER)
        again = await deployer.put_hook_status(before["execution_id"], "Succeeded")  # a late retry of the first
        assert deployer.hooks.pending(deployment_id) == [after]  # the deployment still waits on AfterAllowTraffic
        await deployer.put_hook_status(after["execution_id"], "Succeeded")
        done = await final(deployer, deployment_id)
        log = await hook_log(deployer, deployment_id)
    finally:
        await deployer.close()
    assert answers[0] == answers[1] == again
    assert done["status"] == "Succeeded", done
    assert [(e["name"], e["status"]) for e in done["targets"][0]["events"]] == [
        (BEFORE, "Succeeded"),
        (AFTER, "Succeeded"),
    ]
    assert log == [
        ("hook.status", BEFORE, "Succeeded"),
        ("hook.status_repeated", BEFORE, "Succeeded"),
        ("hook.status_repeated", BEFORE, "Succeeded"),
        ("hook.status", AFTER, "Succeeded"),
    ]
    assert counter.invocations == {"check-before": 1, "check-after": 1}


async def test_a_different_status_for_a_reported_execution_is_refused(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    counter: InvokeCounter,
) -> None:
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "check-before")
    spec = lambda_appspec(tmp_path, setup, {BEFORE: "check-before"})
    deployer = await deployer_from(lambda_config(counter.url), tmp_path, clock=FakeClock())
    try:
        deployment_id = (await deployer.start(DeployRequest("api", "prod", revision=str(spec))))["id"]
        before = await hook_waiting(deployer, deployment_id, BEFORE)
        await deployer.put_hook_status(before["execution_id"], "Succeeded")
        with pytest.raises(HookStatusConflict) as refused:
            await deployer.put_hook_status(before["execution_id"], "Failed", deployment_id=deployment_id)
        done = await final(deployer, deployment_id)
        log = await hook_log(deployer, deployment_id)
    finally:
        await deployer.close()
    assert isinstance(refused.value, LifecycleHookNotFound)  # the doors' "no execution waits for a status"
    assert (refused.value.reported, refused.value.refused) == ("Succeeded", "Failed")
    assert str(refused.value) == (
        f"lifecycle hook execution {before['execution_id']!r} already reported Succeeded; Failed is refused "
        "(a hook's status is final)"
    )
    assert done["status"] == "Succeeded", done
    assert log == [("hook.status", BEFORE, "Succeeded")]


# -- the hook invoker across a restart, one piece at a time ------------------------------------------------------


async def test_a_status_that_arrives_before_the_deployment_resumes_is_kept_for_it(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    counted: AwsClients,
    counter: InvokeCounter,
) -> None:
    """The restarted server takes the status as soon as it runs, before its deployment re-dispatches the event;
    the re-dispatched event then finds the status, and nothing is invoked again."""
    await create_hook_function(aws, "check-before")
    clock = FakeClock()
    async with await SqliteStore.open(tmp_path / "state.db") as store:
        hooks = HookExecutions(store, clock)
        invoker = LambdaHookInvoker(counted, hooks, clock)
        running = asyncio.ensure_future(invoker.run("d-1", "api:live", BEFORE, ["check-before"], 60))
        await clock.sleeping(1)  # invoked, and waiting for the status
        [invoked] = hooks.pending("d-1")
        hooks.close()  # the server goes away
        assert (await running)["status"] == "Stopped"  # ended without reporting anything

    async with await SqliteStore.open(tmp_path / "state.db") as store:
        hooks = HookExecutions(store, clock)
        await hooks.load()
        assert hooks.pending("d-1") == [invoked]
        _, reported = await hooks.resolve(invoked["execution_id"], "Succeeded", deployment_id="d-1")
        assert reported and hooks.pending("d-1") == []
        result = await LambdaHookInvoker(counted, hooks, clock).run("d-1", "api:live", BEFORE, ["check-before"], 60)
        row = await store.get_hook_execution(invoked["execution_id"])
    assert result["status"] == "Succeeded" and invoked["execution_id"] in result["message"]
    assert row is not None and (row["state"], row["status"]) == ("reported", "Succeeded")
    assert counter.invocations["check-before"] == 1


async def test_an_execution_stored_before_a_crash_is_never_invoked_by_the_next_server(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    counted: AwsClients,
    counter: InvokeCounter,
) -> None:
    """A server killed after storing the execution but before the invoke answered: the function may or may not have
    run. At most once means the next server waits for that execution id and does not invoke it."""
    await create_hook_function(aws, "check-before")
    clock = FakeClock()
    async with await SqliteStore.open(tmp_path / "state.db") as store:
        stored, fresh = await HookExecutions(store, clock).start(
            "d-1", "api:live", BEFORE, "check-before", at=clock.now()
        )
    assert fresh and stored.state == "invoking"

    async with await SqliteStore.open(tmp_path / "state.db") as store:
        hooks = HookExecutions(store, clock)
        await hooks.load()
        invoker = LambdaHookInvoker(counted, hooks, clock)
        running = asyncio.ensure_future(invoker.run("d-1", "api:live", BEFORE, ["check-before"], 60))
        await clock.sleeping(1)  # waiting for the status of the stored execution
        await hooks.resolve(stored.execution_id, "Failed", deployment_id="d-1")
        result = await running
    assert (result["status"], result["error_code"]) == ("Failed", ScriptErrorCode.SCRIPT_FAILED)
    assert stored.execution_id in result["message"] and "reported Failed" in result["message"]
    assert counter.invocations["check-before"] == 0


async def test_the_timeout_counts_from_the_first_start_across_a_restart(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    counted: AwsClients,
    counter: InvokeCounter,
) -> None:
    await create_hook_function(aws, "check-before")
    clock = FakeClock()
    async with await SqliteStore.open(tmp_path / "state.db") as store:
        hooks = HookExecutions(store, clock)
        invoker = LambdaHookInvoker(counted, hooks, clock)
        running = asyncio.ensure_future(invoker.run("d-1", "api:live", BEFORE, ["check-before"], 60))
        await clock.sleeping(1)
        [invoked] = hooks.pending("d-1")
        hooks.close()
        await running

    later = FakeClock(start=clock.now() + 61)  # the server was down past the hook's deadline
    async with await SqliteStore.open(tmp_path / "state.db") as store:
        hooks = HookExecutions(store, later)
        await hooks.load()
        result = await LambdaHookInvoker(counted, hooks, later).run("d-1", "api:live", BEFORE, ["check-before"], 60)
        row = await store.get_hook_execution(invoked["execution_id"])
        with pytest.raises(LifecycleHookNotFound):  # too late: the execution timed out
            await hooks.resolve(invoked["execution_id"], "Succeeded")
    assert (result["status"], result["error_code"]) == ("Failed", ScriptErrorCode.SCRIPT_TIMED_OUT)
    assert later.slept == []  # nothing left to wait for
    assert row is not None and row["state"] == "timed_out"
    assert counter.invocations["check-before"] == 1


# -- the table -------------------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "state.db")
    try:
        yield opened
    finally:
        await opened.close()


async def add(store: SqliteStore, execution_id: str, function: str = "fn", deployment_id: str = "d-1") -> Any:
    return await store.add_hook_execution(
        execution_id,
        deployment_id=deployment_id,
        target="api:live",
        event=BEFORE,
        function=function,
        state="invoking",
        at=1.0,
    )


async def test_one_execution_per_hook_and_the_second_start_sees_the_first(store: SqliteStore) -> None:
    first, added = await add(store, "e-1")
    again, added_again = await add(store, "e-2")
    other, added_other = await add(store, "e-3", function="other")
    assert (added, added_again, added_other) == (True, False, True)
    assert again == first and first["execution_id"] == "e-1" and first["state"] == "invoking"
    assert await store.get_hook_execution("e-2") is None
    assert other["execution_id"] == "e-3"


async def test_a_status_is_reported_once_and_an_ended_execution_keeps_its_outcome(store: SqliteStore) -> None:
    await add(store, "e-1")
    waiting = ("invoking", "waiting")
    moved = await store.move_hook_execution("e-1", "reported", at=2.0, only_from=waiting, status="Succeeded")
    assert moved is not None and (moved["state"], moved["status"], moved["updated_at"]) == ("reported", "Succeeded", 2)
    assert await store.move_hook_execution("e-1", "timed_out", at=3.0, only_from=waiting) is None
    with raw(store.path) as conn, pytest.raises(sqlite3.IntegrityError, match="keeps its identity"):
        conn.execute("UPDATE hook_executions SET status = 'Failed' WHERE execution_id = 'e-1'")
    with raw(store.path) as conn, pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        conn.execute("DELETE FROM hook_executions")
    with pytest.raises(sqlite3.IntegrityError):  # a reported execution has a status, and only then
        await store.move_hook_execution("e-1", "reported", at=2.0, only_from=["reported"], status=None)


async def test_open_executions_of_ended_deployments_are_not_listed_as_running(store: SqliteStore) -> None:
    for deployment_id, status in (("d-run", "InProgress"), ("d-done", "Stopped")):
        await store.create_deployment(
            {
                "id": deployment_id,
                "application": "api",
                "environment": "prod",
                "group_name": "api-prod",
                "status": status,
                "created_at": 1.0,
            }
        )
        await add(store, f"e-{deployment_id}", deployment_id=deployment_id)
    await add(store, "e-unknown", deployment_id="d-unknown")  # no deployment row (an adapter's own test)
    running = await store.list_hook_executions(states=["invoking", "waiting"], running_only=True)
    everything = await store.list_hook_executions()
    assert [r["execution_id"] for r in running] == ["e-d-run", "e-unknown"]
    assert len(everything) == 3


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the file, as another process (or a careless human) would have."""
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()
