"""A host's consecutive events in one command (a *run*), and less server work per event (issue 19, items 1 and 2).

The real Fleet and agent routes on 127.0.0.1 over a real SQLite file, with real agents: in-process ones where the
agent loop is the point, an agent process where it must be killed. A run is what the runner hands the fleet for a
target (``agent_run``): here the in-place events, ApplicationStop to ValidateService.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import HANG_GUARD, FakeClock, eventually, group_noted
from postgres_support import PostgresServer
from test_agent_client import ROOT, _dead_or_zombie, command, options, running_agent

from bot.agent_api import create_agent_app
from engine.adapters.clock import SystemClock
from engine.adapters.fleet import Fleet
from engine.bundles import build_bundle
from engine.core.agent_protocol import agent_run
from engine.core.events import StartRollback
from engine.core.leases import COMMANDS_QUEUED
from engine.core.lifecycle import SERVER_INSTALL_EVENTS
from engine.core.machine import DeploymentMachine, MachineOptions
from engine.core.model import DeploymentStatus, DeploymentType, EventStatus, LifecycleEvent, Platform
from engine.core.snapshot import state_from_json, state_to_json
from engine.core.stages import ALL_AT_ONCE, StageOptions, deployment_stages
from engine.ports import Clock, OnResult
from engine.runtime.runner import QUIET_WRITE_SECONDS, DeploymentRunner
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore

RUN = agent_run(SERVER_INSTALL_EVENTS, 0)
HOOKED = ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
DONE = {"status": "Succeeded", "error_code": 0, "message": "", "log_tail": "", "started_at": 1.0, "ended_at": 2.0}
"""An agent's report of an event that succeeded."""


@dataclass
class Server:
    """The agent side of a deploybot server: Fleet, routes, store; what it was asked and what it delivered."""

    fleet: Fleet
    store: SqliteStore
    url: str
    statements: list[str]
    requests: list[str] = field(default_factory=list)  # "GET /agent/v1/commands/next?..." as each one arrives
    answers: list[tuple[str, int]] = field(default_factory=list)  # (request, HTTP status) as each one is answered
    results: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # as delivered (on_result)
    delivered: asyncio.Condition = field(default_factory=asyncio.Condition)
    engine: OnResult | None = None  # where results go on to, when a test runs the engine too

    async def result_of(self, event: str) -> dict[str, Any]:
        async with self.delivered:
            await asyncio.wait_for(self.delivered.wait_for(lambda: self._result(event) is not None), HANG_GUARD)
        found = self._result(event)
        assert found is not None
        return found

    def _result(self, event: str) -> dict[str, Any] | None:
        return next((result for command, result in self.results if command["event"] == event), None)

    def transactions(self) -> int:
        return sum(statement == "BEGIN IMMEDIATE" for statement in self.statements)

    def polls_after(self, index: int) -> int:
        return sum("/commands/next" in request for request in self.requests[index:])

    async def commands(self) -> dict[str, str]:
        """Each event's command status (the latest command of each event)."""
        return {row["event"]: row["status"] for row in await self.store.list_commands(host="web-1")}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    statements: list[str] = []
    store = await SqliteStore.open(tmp_path / "deploybot.db", on_statement=statements.append)
    bundles = tmp_path / "revisions"
    bundles.mkdir()
    holder: list[Server] = []

    async def on_result(command: dict[str, Any], result: dict[str, Any]) -> None:
        served = holder[0]
        served.results.append((dict(command), dict(result)))
        async with served.delivered:
            served.delivered.notify_all()
        if served.engine is not None:
            await served.engine(command, result)

    fleet = Fleet(store, data_dir=tmp_path / "data", clock=SystemClock(), bundle_dir=bundles, on_result=on_result)
    requests: list[str] = []
    answers: list[tuple[str, int]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        line = f"{request.method} {request.path_qs}"
        requests.append(line)
        response = await handler(request)
        answers.append((line, response.status))
        return response

    app = web.Application(middlewares=[record])
    app.add_subapp("/agent/v1", create_agent_app(fleet))
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    served = Server(fleet, store, f"http://127.0.0.1:{port}", statements, requests, answers)
    holder.append(served)
    try:
        yield served
    finally:
        await runner.cleanup()
        await store.close()


async def a_revision(server: Server, tmp_path: Path, *, hook: str = "") -> dict[str, Any]:
    """A bundle whose hooks append their event to ``ran.log`` (after ``hook``, a shell snippet run first), stored
    for deployment d-1 of web-1; the spec of its commands."""
    revision = tmp_path / "revision"
    (revision / "scripts").mkdir(parents=True)
    script = revision / "scripts" / "hook.sh"
    script.write_text(f'#!/bin/sh\n{hook}\necho "$LIFECYCLE_EVENT" >> {tmp_path / "ran.log"}\n')
    script.chmod(0o755)
    hooks = "".join(f"  {event}:\n    - location: scripts/hook.sh\n" for event in HOOKED)
    (revision / "appspec.yml").write_text(f"version: 0.0\nos: linux\nhooks:\n{hooks}")
    built = build_bundle(revision, server.fleet.bundle_dir)
    row = {"application": "hello", "environment": "staging", "group_name": "hello-staging", "status": "Created"}
    await server.store.create_deployment({"id": "d-1", "revision_sha256": built.sha256, "created_at": 1.0, **row})
    return dict(command(0, "DownloadBundle", sha=built.sha256)["spec"])


async def unfollowed(deployment_id: str, *_: StartRollback) -> None:
    """A callback of the runner's that a test does not follow (a change, a rollback, the end)."""


async def runner_for(
    server: Server, on_change: Callable[[str], Awaitable[None]], *hosts: str, clock: Clock | None = None
) -> DeploymentRunner:
    """A runner of a new in-place AllAtOnce deployment ``d-1`` of ``hosts`` on the server's store and fleet."""
    row = {"id": "d-1", "application": "app", "environment": "prod", "group_name": "app-prod", "status": "Created"}
    await server.store.create_deployment(row | {"created_at": 1.0})
    return a_runner(server.store, server.fleet, on_change, hosts, clock=clock or SystemClock())


def a_runner(
    store: SqliteStore,
    fleet: Fleet,
    on_change: Callable[[str], Awaitable[None]],
    hosts: tuple[str, ...],
    *,
    clock: Clock,
    state: dict[str, Any] | None = None,
) -> DeploymentRunner:
    """The runner of ``d-1`` (in place, AllAtOnce, ``hosts``); from ``state``, its machine as stored, to resume."""
    options = StageOptions(Platform.SERVER, DeploymentType.IN_PLACE, ALL_AT_ONCE)
    machine = DeploymentMachine(
        deployment_stages(options, hosts), MachineOptions(), state_from_json(state) if state is not None else None
    )
    return DeploymentRunner(
        "d-1",
        machine,
        store=store,
        executor=fleet,
        router=None,
        group="app-prod",
        spec={"deployment_id": "d-1"},
        clock=clock,
        on_change=on_change,
        on_rollback=unfollowed,
        on_finish=unfollowed,
        fleet=fleet,
    )


async def runs_for(fleet: Fleet, *hosts: str) -> None:
    """Each of ``hosts`` has an agent that said it runs events back to back."""
    for host in hosts:
        await fleet.heartbeat(host, {"tags": {}, "version": "1", "running_command": None, "capabilities": ["runs"]})


async def a_run(fleet: Fleet, host: str) -> list[int]:
    """The command ids of the run ``host``'s agent is handed (its long poll), in order."""
    first = await fleet.next_command(host, wait=HANG_GUARD, runs=True)
    assert first is not None and len(first.get("then", [])) == len(RUN) - 1  # the engine queued the whole run
    return [first["id"], *(step["id"] for step in first.get("then", []))]


async def report(fleet: Fleet, host: str, ids: list[int], last_then: int | None = None) -> None:
    """``host``'s agent reports ``ids`` in turn, each naming the next as its ``then`` (the last: ``last_then``)."""
    for command_id, following in zip(ids, [*ids[1:], last_then], strict=True):
        go_on = await fleet.report_result(host, command_id, DONE, then=following)
        assert go_on is (following is not None)


def stored_statuses(stored: dict[str, Any] | None, host: str) -> dict[str, str]:
    assert stored is not None
    return dict(stored["state"]["machine"]["targets"][host]["statuses"])


def ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return log.read_text().split() if log.exists() else []


async def test_a_run_is_handed_over_once_and_each_result_is_delivered_in_order(server: Server, tmp_path: Path) -> None:
    spec = await a_revision(server, tmp_path)
    async with running_agent(options(server, tmp_path / "agent", token=server.fleet.token_for("web-1"))):
        await eventually(lambda: server.fleet.runs_events("web-1"), "the agent said it runs events back to back")
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], spec)
        await server.result_of("ValidateService")
    assert [command["event"] for command, _ in server.results] == [str(event) for event in RUN]
    assert all(result["status"] == "Succeeded" for _, result in server.results)
    assert ran(tmp_path) == list(HOOKED)
    # one poll handed the whole run over; each result but the last asked to go on to the next command of the run
    assert [line for line, status in server.answers if "/commands/next" in line and status == 200] == [
        "GET /agent/v1/commands/next?wait=5&runs=1"
    ]
    assert sum("/result?then=" in line for line in server.requests) == len(RUN) - 1
    assert all(status == "Succeeded" for status in (await server.commands()).values())


@pytest.mark.parametrize(
    ("held", "ran_before"),
    [
        ("BeforeInstall", ["BeforeInstall"]),  # the next event, Install, is no hook
        # The next event, ApplicationStart, is a hook: none of its scripts runs, and the scripts' log never names it.
        ("AfterInstall", ["BeforeInstall", "AfterInstall"]),
    ],
)
async def test_a_stop_between_two_events_of_a_run_prevents_the_next_one(
    server: Server, tmp_path: Path, held: str, ran_before: list[str]
) -> None:
    go = tmp_path / "go"
    started = tmp_path / "started"
    hook = f'if [ "$LIFECYCLE_EVENT" = {held} ]; then touch {started}; while [ ! -e {go} ]; do sleep 0.01; done; fi'
    spec = await a_revision(server, tmp_path, hook=hook)
    async with running_agent(options(server, tmp_path / "agent", token=server.fleet.token_for("web-1"))):
        await eventually(lambda: server.fleet.runs_events("web-1"), "the agent said it runs events back to back")
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], spec)
        await eventually(started.exists, f"{held} runs")
        await server.fleet.cancel("d-1")  # what the runner does when the deployment is stopped
        seen = len(server.requests)
        go.touch()
        assert (await server.result_of(held))["status"] == "Succeeded"
        await eventually(lambda: server.polls_after(seen) > 0, "the agent went back to polling")
    assert ran(tmp_path) == ran_before
    statuses = await server.commands()
    events = [str(event) for event in RUN]
    done, cancelled = events[: events.index(held) + 1], events[events.index(held) + 1 :]
    assert {statuses[event] for event in done} == {"Succeeded"}
    assert {statuses[event] for event in cancelled} == {"Cancelled"}
    assert [command["event"] for command, _ in server.results] == done
    (scripts_log,) = (tmp_path / "agent").rglob("scripts.log")
    logged = [
        line.split("LifecycleEvent - ")[1] for line in scripts_log.read_text().splitlines() if "Lifecycle" in line
    ]
    assert [event for event in logged if event in HOOKED] == ran_before


async def test_an_agent_killed_mid_run_reports_code_7_and_nothing_runs_twice(server: Server, tmp_path: Path) -> None:
    pids = tmp_path / "hook.pid"
    hook = f'if [ "$LIFECYCLE_EVENT" = AfterInstall ]; then echo $$ > {pids}; sleep 60 & wait; fi'
    spec = await a_revision(server, tmp_path, hook=hook)
    token_file = tmp_path / "agent.token"
    token_file.write_text(server.fleet.token_for("web-1"))
    token_file.chmod(0o600)
    argv = [sys.executable, "-m", "bot", "agent", "--server", server.url, "--name", "web-1"]
    argv += ["--token-file", str(token_file), "--root", str(tmp_path / "agent")]
    log = (tmp_path / "agent.log").open("ab")
    started: list[subprocess.Popen[bytes]] = []

    def start_agent() -> subprocess.Popen[bytes]:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        started.append(agent)
        return agent

    try:
        first = start_agent()
        await eventually(lambda: server.fleet.runs_events("web-1"), "the agent said it runs events back to back")
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], spec)
        await eventually(lambda: pids.exists() and pids.read_text(), "AfterInstall runs")
        await eventually(lambda: group_noted(tmp_path / "agent"), "the agent noted its group")
        first.kill()  # kill -9, mid-run
        await asyncio.to_thread(first.wait, HANG_GUARD)
        start_agent()
        result = await server.result_of("AfterInstall")
        seen = len(server.requests)
        await eventually(lambda: server.polls_after(seen) > 0, "the restarted agent polls")
    finally:
        for agent in started:
            agent.kill()
            await asyncio.to_thread(agent.wait, HANG_GUARD)
        log.close()
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pids.read_text()), signal.SIGKILL)
    assert result["status"] == "Failed" and result["error_code"] == 7
    assert ran(tmp_path) == ["BeforeInstall"]  # AfterInstall was cut short before it wrote; nothing ran again
    assert [command["event"] for command, _ in server.results] == [
        "ApplicationStop",
        "DownloadBundle",
        "BeforeInstall",
        "Install",
        "AfterInstall",
    ]
    statuses = await server.commands()
    assert statuses["AfterInstall"] == "Failed"
    assert statuses["ApplicationStart"] == statuses["ValidateService"] == "Cancelled"
    assert _dead_or_zombie(int(pids.read_text()))


async def test_an_agent_without_the_capability_gets_one_event_at_a_time(server: Server, tmp_path: Path) -> None:
    spec = await a_revision(server, tmp_path)
    headers = {"Authorization": f"Bearer {server.fleet.token_for('web-1')}"}
    base = f"{server.url}/agent/v1"
    async with aiohttp.ClientSession(headers=headers) as session:
        beat = {"tags": {}, "version": "0.9", "running_command": None}  # an agent of the first protocol version
        async with session.post(f"{base}/heartbeat", json=beat) as response:
            assert response.status == 200
        assert not server.fleet.runs_events("web-1")
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], spec)
        assert [row["event"] for row in await server.store.list_commands(host="web-1")] == ["ApplicationStop"]
        async with session.get(f"{base}/commands/next?wait=5") as response:
            first = (await response.json())["command"]
        assert first["event"] == "ApplicationStop" and "then" not in first
        done = {"status": "Succeeded", "error_code": 0, "message": "", "log_tail": "", "started_at": 1, "ended_at": 2}
        async with session.post(f"{base}/commands/{first['id']}/result?next=0.05", json=done) as response:
            assert await response.json() == {"ok": True}  # nothing queued behind it: the engine asks for each event
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN[1:])], spec)
        assert len(await server.store.list_commands(host="web-1")) == 2


async def test_results_arriving_together_are_recorded_in_one_transaction(server: Server) -> None:
    hosts = [f"web-{n}" for n in range(1, 6)]
    await server.fleet.dispatch_runs("d-1", [(host, (LifecycleEvent.INSTALL,)) for host in hosts], {})
    claimed = [await server.fleet.next_command(host, wait=0) for host in hosts]
    before = server.transactions()
    reports = [server.fleet.report_result(host, c["id"], DONE) for host, c in zip(hosts, claimed, strict=True) if c]
    await asyncio.gather(*reports)
    assert server.transactions() - before == 1
    assert [command["host"] for command, _ in server.results] == hosts  # delivered in the order they arrived


async def test_the_results_of_a_run_handed_out_here_are_recorded_without_reading_the_commands_back(
    server: Server,
) -> None:
    """The fleet keeps the heads of the commands it handed out, the rest of each run included: recording a result
    and going on to the next event is two UPDATEs, with no SELECT of the command first."""
    assert await server.fleet.next_command("web-1", wait=0, runs=True) is None  # the agent runs events back to back
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
    first = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert first is not None and len(first["then"]) == len(RUN) - 1
    ids = [first["id"], *(step["id"] for step in first["then"])]
    server.statements.clear()
    for command_id, following in zip(ids, [*ids[1:], None], strict=True):
        assert await server.fleet.report_result("web-1", command_id, DONE, then=following) is (following is not None)
    reads = [sql for sql in server.statements if sql.lstrip().upper().startswith("SELECT")]
    assert not any("host_commands" in sql for sql in reads), reads
    statuses = [c["status"] for c in await server.store.list_commands(host="web-1")]
    assert statuses == ["Succeeded"] * len(RUN)
    assert [command["event"] for command, _ in server.results] == [str(event) for event in RUN]


async def test_a_whole_steps_commands_are_queued_in_one_transaction(server: Server) -> None:
    before = server.transactions()
    hosts = [f"web-{n}" for n in range(1, 21)]
    await server.fleet.dispatch_runs("d-1", [(host, (LifecycleEvent.APPLICATION_STOP,)) for host in hosts], {})
    assert server.transactions() - before == 1
    assert len(await server.store.list_commands(status="Pending")) == 20


async def test_a_queued_command_is_handed_straight_to_the_waiting_long_poll(server: Server) -> None:
    poll = asyncio.ensure_future(server.fleet.next_command("web-1", wait=HANG_GUARD, runs=True))
    await eventually(lambda: server.fleet.is_parked("web-1"), "the poll is parked")
    before = server.transactions()
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
    handed = await asyncio.wait_for(poll, HANG_GUARD)
    assert server.transactions() - before == 1  # queued and claimed for the poll in the same transaction
    assert handed is not None and handed["event"] == "ApplicationStop"
    assert [step["event"] for step in handed.get("then", [])] == [str(event) for event in RUN[1:]]


async def test_no_claim_is_made_that_is_known_to_find_nothing(server: Server) -> None:
    assert await server.fleet.next_command("web-1", wait=0) is None
    before = server.transactions()
    for _ in range(3):
        assert await server.fleet.next_command("web-1", wait=0) is None
    assert server.transactions() == before


@pytest.mark.parametrize("handed", [False, True], ids=["claimed by a poll", "handed to a parked poll"])
async def test_after_a_run_claimed_whole_the_agents_next_claim_is_known_to_find_nothing(
    server: Server, handed: bool
) -> None:
    """The last result of a run waits for the host's next command: nothing else of the host was Pending when its
    run was claimed, and nothing was queued since, so that claim needs no transaction (it would come just as the
    engine queues the next host's run, on the same store thread)."""
    await runs_for(server.fleet, "web-1")
    if handed:
        poll = asyncio.ensure_future(server.fleet.next_command("web-1", wait=HANG_GUARD, runs=True))
        await eventually(lambda: server.fleet.is_parked("web-1"), "the poll is parked")
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
        first = await asyncio.wait_for(poll, HANG_GUARD)
        assert first is not None
        ids = [first["id"], *(step["id"] for step in first.get("then", []))]
    else:
        await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
        ids = await a_run(server.fleet, "web-1")
    await report(server.fleet, "web-1", ids)
    before = server.transactions()
    assert await server.fleet.next_command("web-1", wait=0, runs=True) is None
    assert server.transactions() == before
    await server.fleet.dispatch_runs("d-2", [("web-1", RUN)], {"deployment_id": "d-2"})  # queued: claimed again
    again = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert again is not None and again["deployment_id"] == "d-2" and len(again.get("then", [])) == len(RUN) - 1


async def test_on_postgresql_a_replica_hearing_its_own_notice_of_a_run_still_knows_the_next_claim_finds_nothing(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Each replica hears the commands any replica queues (a poll of that host parked on it claims at once), its
    own included. One that took its own notice for news forgot what it knew of the host's queue: after each run, the
    agent's next claim went to the database, a round trip per host per deployment (1,000 of them at 1,000 hosts).
    What it queued itself, it knows: another replica's notice still wakes a poll parked here."""
    statements: list[str] = []
    database = postgres_server.new_database()
    store = await PostgresStore.open(database, on_statement=statements.append)
    other = await PostgresStore.open(database)
    fleet = Fleet(store, data_dir=tmp_path / "data", clock=SystemClock(), bundle_dir=tmp_path, on_result=_ignore)
    fleet.start_monitor(interval=HANG_GUARD)
    try:
        await runs_for(fleet, "web-1")
        poll = asyncio.ensure_future(fleet.next_command("web-1", wait=HANG_GUARD, runs=True))
        await eventually(lambda: fleet.is_parked("web-1"), "the poll is parked")
        await fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
        first = await asyncio.wait_for(poll, HANG_GUARD)
        assert first is not None
        ids = [first["id"], *(step["id"] for step in first.get("then", []))]

        # Notices arrive in the order they were sent: once another store's is heard (it wakes a poll parked here,
        # which claims again), this replica's own notice of the run has been heard too, or left out.
        marker = asyncio.ensure_future(fleet.next_command("web-9", wait=HANG_GUARD))
        await eventually(lambda: fleet.is_parked("web-9"), "the other host's poll is parked")
        claims = sum(statement.startswith("UPDATE host_commands SET status = 'InProgress'") for statement in statements)
        await other.notify(COMMANDS_QUEUED, ["web-9"])
        await eventually(
            lambda: sum(s.startswith("UPDATE host_commands SET status = 'InProgress'") for s in statements) > claims,
            "the parked poll claims again once another replica's notice is heard",
        )

        await report(fleet, "web-1", ids)
        before = len(statements)
        assert await fleet.next_command("web-1", wait=0, runs=True) is None
        assert statements[before:] == []  # known to find nothing: no claim went to the database
        marker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await marker
    finally:
        await fleet.stop_monitor()
        await other.close()
        await store.close()


async def _ignore(command: dict[str, Any], result: dict[str, Any]) -> None:
    """Results go nowhere: the test reads the fleet's claims."""


async def test_a_run_with_more_of_its_host_pending_or_cut_short_still_claims_what_is_left(server: Server) -> None:
    """Nothing is taken for empty that is not: a command of another deployment queued behind the run, one queued
    while the run went on, the rest of a run its agent reported without claiming (an agent restarted mid-run)."""
    await runs_for(server.fleet, "web-1")
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
    await server.fleet.dispatch_runs("d-2", [("web-1", RUN[:1])], {"deployment_id": "d-2"})
    await report(server.fleet, "web-1", await a_run(server.fleet, "web-1"))
    behind = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert behind is not None and behind["deployment_id"] == "d-2"
    await report(server.fleet, "web-1", [behind["id"]])

    await server.fleet.dispatch_runs("d-3", [("web-1", RUN)], {"deployment_id": "d-3"})
    ids = await a_run(server.fleet, "web-1")
    await server.fleet.dispatch_runs("d-4", [("web-1", RUN[:1])], {"deployment_id": "d-4"})  # while the run goes on
    await report(server.fleet, "web-1", ids)
    queued_since = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert queued_since is not None and queued_since["deployment_id"] == "d-4"
    await report(server.fleet, "web-1", [queued_since["id"]])

    await server.fleet.dispatch_runs("d-5", [("web-1", RUN)], {"deployment_id": "d-5"})
    ids = await a_run(server.fleet, "web-1")
    await report(server.fleet, "web-1", ids[:3])  # the third without its then: the agent stopped there
    rest = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert rest is not None and [rest["id"], *(step["id"] for step in rest.get("then", []))] == ids[3:]


async def test_a_failed_event_cancels_the_rest_of_its_run_and_a_go_on_finds_it_gone(server: Server) -> None:
    await server.fleet.heartbeat(
        "web-1", {"tags": {}, "version": "1", "running_command": None, "capabilities": ["runs"]}
    )
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
    first = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert first is not None
    then = first.get("then", [])
    failed = {"status": "Failed", "error_code": 4, "message": "no", "log_tail": "", "started_at": 1.0, "ended_at": 2.0}
    assert await server.fleet.report_result("web-1", first["id"], failed, then=then[0]["id"]) is False
    statuses = await server.commands()
    assert statuses.pop("ApplicationStop") == "Failed"
    assert set(statuses.values()) == {"Cancelled"}
    assert await server.fleet.next_command("web-1", wait=0, runs=True) is None


async def test_a_step_and_the_runs_it_queues_are_written_in_one_transaction(server: Server) -> None:
    """The runner's first step (web-1 to start its run): the deployment's state and the run's commands go to the
    store together, so the step is stored before the agent can be handed the run, in one trip instead of two."""

    runner = await runner_for(server, unfollowed, "web-1")
    beat = {"tags": {}, "version": "1", "running_command": None, "capabilities": ["runs"]}
    await server.fleet.heartbeat("web-1", beat)
    before = len(server.statements)
    running = asyncio.ensure_future(runner.run())
    try:
        first = await server.fleet.next_command("web-1", wait=HANG_GUARD, runs=True)
        assert first is not None and first["event"] == "ApplicationStop"
        transactions: list[list[str]] = []
        for statement in server.statements[before:]:
            if statement == "BEGIN IMMEDIATE":
                transactions.append([])
            elif transactions:
                transactions[-1].append(statement)
        queueing = [t for t in transactions if any(s.startswith("INSERT INTO host_commands") for s in t)]
        assert len(queueing) == 1
        assert any(s.startswith("UPDATE deployments") for s in queueing[0])  # the step, in the same transaction
        steps = [t for t in transactions if any(s.startswith("UPDATE deployments") for s in t)]
        assert steps == queueing  # and written nowhere else
        stored = await server.store.get_deployment("d-1")
        assert stored is not None and stored["status"] == "InProgress"
        assert stored["state"]["machine"]["targets"]["web-1"]["statuses"]["ApplicationStop"] == "InProgress"
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_engine_applies_a_runs_results_in_order_when_they_arrive_in_one_step(server: Server) -> None:
    """The agent runs ahead: the engine may take several of a run's results in one step, the target's last among
    them while another target still works, and then dispatches events the machine has already moved past (they are
    queued already: nothing new)."""
    engine_free, engine_held = asyncio.Event(), asyncio.Event()
    engine_free.set()
    web1: list[str] = []  # web-1's status as each step ends
    stored_states: list[tuple[object, object]] = []  # (as persisted, as converted afresh) after each step

    async def changed(deployment_id: str) -> None:
        web1.append(str(runner.machine.state.targets["web-1"].status) if runner.machine.state.targets else "-")
        stored = await server.store.get_deployment("d-1")
        assert stored is not None
        stored_states.append((stored["state"]["machine"], state_to_json(runner.machine.state)))
        if not engine_free.is_set():
            engine_held.set()
            await engine_free.wait()

    runner = await runner_for(server, changed, "web-1", "web-2")

    async def deliver(command: dict[str, Any], result: dict[str, Any]) -> None:
        await runner.record_result(command["host"], LifecycleEvent(command["event"]), result)

    server.engine = deliver
    await runs_for(server.fleet, "web-1", "web-2")
    running = asyncio.ensure_future(runner.run())
    ids = await a_run(server.fleet, "web-1")
    engine_free.clear()
    await report(server.fleet, "web-1", ids[:1], last_then=ids[1])
    await asyncio.wait_for(engine_held.wait(), HANG_GUARD)  # the engine is busy with the first result's step
    held_at = len(web1)
    await report(server.fleet, "web-1", ids[1:])
    engine_free.set()
    await report(server.fleet, "web-2", await a_run(server.fleet, "web-2"))
    await asyncio.wait_for(running, HANG_GUARD)
    assert web1[held_at] == "Succeeded"  # the next step took all of web-1's other results at once
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    for host in ("web-1", "web-2"):  # each result delivered once, in order
        assert [command["event"] for command, _ in server.results if command["host"] == host] == [str(e) for e in RUN]
    deployment = await server.store.get_deployment("d-1")
    assert deployment is not None and deployment["status"] == "Succeeded"
    # Each step persisted the machine as a full conversion would, though it converts only the targets that changed,
    # with the start of each event in progress beside its target (the document's only record of it).
    assert len(stored_states) == len(web1)
    for stored, fresh in stored_states:
        started = {name: target.pop("started", {}) for name, target in stored["targets"].items()}
        assert stored == fresh
        for name, target in fresh["targets"].items():
            running = [event for event, status in target["statuses"].items() if status == "InProgress"]
            assert sorted(started[name]) == running, (name, started[name], running)


async def test_a_result_delivered_before_the_one_it_follows_waits_for_it_and_is_applied_once(server: Server) -> None:
    """With several replicas, a result recorded elsewhere is read back later than the next one, recorded here, is
    delivered: the engine keeps the early one until the host reaches its event, and loses nothing."""
    steps = asyncio.Queue[None]()

    async def changed(deployment_id: str) -> None:
        steps.put_nowait(None)

    runner = await runner_for(server, changed, "web-1")
    running = asyncio.ensure_future(runner.run())
    await asyncio.wait_for(steps.get(), HANG_GUARD)  # started: web-1 runs its first event
    # Twice a result comes before the one it follows; the step that takes the late one applies both, in order.
    for delivered in [(RUN[1], RUN[0]), (RUN[3], RUN[2]), *((event,) for event in RUN[4:])]:
        for event in delivered:
            await runner.record_result("web-1", event, DONE)
        await asyncio.wait_for(steps.get(), HANG_GUARD)
        if not runner.machine.state.status.is_final:
            statuses = runner.machine.state.targets["web-1"].statuses
            assert all(statuses[event] is EventStatus.SUCCEEDED for event in delivered), statuses
    await asyncio.wait_for(running, HANG_GUARD)
    assert runner.machine.state.status is DeploymentStatus.SUCCEEDED
    final = runner.machine.state.targets
    assert final == {} or all(status is EventStatus.SUCCEEDED for status in final["web-1"].statuses.values())
    stored = await server.store.get_deployment("d-1")
    assert stored is not None and stored["status"] == "Succeeded"


async def test_the_engine_reaching_a_queued_event_of_a_run_costs_no_transaction(server: Server) -> None:
    beat = {"tags": {}, "version": "1", "running_command": None, "capabilities": ["runs"]}
    await server.fleet.heartbeat("web-1", beat)
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
    before = server.transactions()
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN[1:])], {"deployment_id": "d-1"})
    assert server.transactions() == before
    assert len(await server.store.list_commands(host="web-1")) == len(RUN)


async def test_after_an_ignored_failure_the_rest_of_the_run_is_queued_anew(server: Server) -> None:
    """ApplicationStop may fail without failing the host (ignore_application_stop_failures): the machine goes on
    with DownloadBundle, whose command the failure cancelled with the rest of the run."""
    beat = {"tags": {}, "version": "1", "running_command": None, "capabilities": ["runs"]}
    await server.fleet.heartbeat("web-1", beat)
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN)], {"deployment_id": "d-1"})
    first = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert first is not None and first["event"] == "ApplicationStop"
    failed = {"status": "Failed", "error_code": 1, "message": "", "log_tail": "", "started_at": 1.0, "ended_at": 2.0}
    await server.fleet.report_result("web-1", first["id"], failed)
    await server.fleet.dispatch_runs("d-1", [("web-1", RUN[1:])], {"deployment_id": "d-1"})
    again = await server.fleet.next_command("web-1", wait=0, runs=True)
    assert again is not None and again["event"] == "DownloadBundle"
    assert [step["event"] for step in again.get("then", [])] == [str(event) for event in RUN[2:]]
    pending = await server.store.list_commands(host="web-1", status="Pending")
    assert [row["event"] for row in pending] == [str(event) for event in RUN[2:]]


async def test_the_steps_between_a_runs_results_are_written_when_their_time_is_up_or_a_milestone_comes(
    server: Server,
) -> None:
    """A step that takes a result in the middle of a run acts on nothing (the agent has its next event already): it is
    written with the next step that writes or ``QUIET_WRITE_SECONDS`` later, and announced then; meanwhile each
    result costs its own transaction alone. A host finishing its run changes a milestone: written at once."""
    clock = FakeClock()
    announced: list[str] = []

    async def changed(deployment_id: str) -> None:
        announced.append(deployment_id)

    runner = await runner_for(server, changed, "web-1", "web-2", clock=clock)

    async def deliver(command: dict[str, Any], result: dict[str, Any]) -> None:
        await runner.record_result(command["host"], LifecycleEvent(command["event"]), result)

    server.engine = deliver
    await runs_for(server.fleet, "web-1", "web-2")
    running = asyncio.ensure_future(runner.run())
    try:
        web1, web2 = await a_run(server.fleet, "web-1"), await a_run(server.fleet, "web-2")
        started, before = len(announced), len(server.statements)
        await report(server.fleet, "web-1", web1[:2], last_then=web1[2])  # ApplicationStop, DownloadBundle

        def took(host: str, event: LifecycleEvent) -> bool:
            return runner.machine.state.targets[host].statuses[event] is EventStatus.SUCCEEDED

        await eventually(lambda: took("web-1", LifecycleEvent.DOWNLOAD_BUNDLE), "the engine took both results")
        since = server.statements[before:]
        assert sum(statement == "BEGIN IMMEDIATE" for statement in since) == 2  # the results' own, nothing else
        assert not any(statement.startswith("UPDATE deployments") for statement in since)
        stored = await server.store.get_deployment("d-1")
        assert stored_statuses(stored, "web-1")["ApplicationStop"] == "InProgress"  # as the first step wrote it
        assert len(announced) == started

        await clock.advance(QUIET_WRITE_SECONDS)
        await eventually(lambda: len(announced) > started, "the steps written and announced")
        view = await server.store.get_deployment_view("d-1")
        assert view is not None
        stored, events, _ = view
        assert stored_statuses(stored, "web-1") == {
            **{str(event): "Succeeded" for event in RUN[:2]},
            **{str(event): "InProgress" if event == RUN[2] else "Pending" for event in RUN[2:]},
        }
        assert {(row["event"], row["status"]) for row in events if row["target"] == "web-1"} == {
            ("ApplicationStop", "Succeeded"),
            ("DownloadBundle", "Succeeded"),
        }
        assert len(announced) == started + 1
        assert sum(statement.startswith("UPDATE deployments") for statement in server.statements[before:]) == 1

        await report(server.fleet, "web-1", web1[2:])  # the rest of web-1's run: the last one ends the host

        async def web1_done_in_store() -> bool:
            return set(stored_statuses(await server.store.get_deployment("d-1"), "web-1").values()) == {"Succeeded"}

        # The fake clock has not moved since: only that step itself can have written it.
        await eventually(web1_done_in_store, "web-1's end written by the step that took it")

        await report(server.fleet, "web-2", web2)
        await asyncio.wait_for(running, HANG_GUARD)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    view = await server.store.get_deployment_view("d-1")
    assert view is not None
    stored, events, _ = view
    assert stored["status"] == "Succeeded"
    # every result's row, with the details the agent gave, whether its step was written late or at once
    assert sorted((row["target"], row["event"]) for row in events) == sorted(
        (host, str(event)) for host in ("web-1", "web-2") for event in RUN
    )
    assert {(row["status"], row["ended_at"]) for row in events} == {("Succeeded", DONE["ended_at"])}


async def test_the_time_quiet_steps_may_stay_unwritten_counts_from_the_first_of_them_since_the_last_write(
    server: Server,
) -> None:
    """A timer started for quiet steps that a step which wrote has taken since must not write the quiet steps that
    came after that write: their own time is not up. (It did: a 20-host OneAtATime deployment wrote 44 steps of
    their own, one about every host, where 4 were due.)"""
    clock = FakeClock()
    runner = await runner_for(server, unfollowed, "web-1", "web-2", clock=clock)

    async def deliver(command: dict[str, Any], result: dict[str, Any]) -> None:
        await runner.record_result(command["host"], LifecycleEvent(command["event"]), result)

    def took(host: str, event: LifecycleEvent) -> bool:
        return runner.machine.state.targets[host].statuses[event] is EventStatus.SUCCEEDED

    def step_writes() -> int:
        return sum(statement.startswith("UPDATE deployments") for statement in server.statements)

    server.engine = deliver
    await runs_for(server.fleet, "web-1", "web-2")
    running = asyncio.ensure_future(runner.run())
    try:
        web1, web2 = await a_run(server.fleet, "web-1"), await a_run(server.fleet, "web-2")
        await report(server.fleet, "web-1", web1[:2], last_then=web1[2])  # quiet: web-1's timer starts at 0
        await eventually(lambda: took("web-1", LifecycleEvent.DOWNLOAD_BUNDLE), "the engine took both results")
        await clock.advance(QUIET_WRITE_SECONDS / 2)
        written = step_writes()
        await report(server.fleet, "web-1", web1[2:])  # web-1 ends: a milestone, written at once with the above
        await eventually(lambda: step_writes() > written, "web-1's end written by the step that took it")
        await report(server.fleet, "web-2", web2[:2], last_then=web2[2])  # quiet: their time starts now
        await eventually(lambda: took("web-2", LifecycleEvent.DOWNLOAD_BUNDLE), "the engine took web-2's results")
        written = step_writes()

        await clock.advance(QUIET_WRITE_SECONDS / 2)  # web-1's old timer is up; web-2's steps are half as old
        await report(server.fleet, "web-2", web2[2:3], last_then=web2[3])  # quiet too, after the old timer's turn
        await eventually(lambda: took("web-2", LifecycleEvent.BEFORE_INSTALL), "the engine took BeforeInstall")
        assert step_writes() == written  # the old timer wrote nothing

        await clock.advance(QUIET_WRITE_SECONDS / 2)  # web-2's own time is up
        await eventually(lambda: step_writes() == written + 1, "web-2's quiet steps written when their time was up")
        stored = await server.store.get_deployment("d-1")
        assert stored_statuses(stored, "web-2")["BeforeInstall"] == "Succeeded"

        await report(server.fleet, "web-2", web2[3:])
        await asyncio.wait_for(running, HANG_GUARD)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_server_gone_with_steps_unwritten_resumes_from_the_last_written_one_and_runs_nothing_twice(
    server: Server, tmp_path: Path
) -> None:
    """The server dies after the engine took three results of a run without writing their steps: the next one
    resumes from the state written before them, is handed their stored results again, and the agent's run goes on
    where it is; each event is run and delivered once."""
    clock = FakeClock()
    first = await runner_for(server, unfollowed, "web-1", clock=clock)

    async def to_first(command: dict[str, Any], result: dict[str, Any]) -> None:
        await first.record_result(command["host"], LifecycleEvent(command["event"]), result)

    server.engine = to_first
    await runs_for(server.fleet, "web-1")
    running = asyncio.ensure_future(first.run())
    ids = await a_run(server.fleet, "web-1")
    await report(server.fleet, "web-1", ids[:3], last_then=ids[3])  # the agent goes on to Install
    await eventually(
        lambda: first.machine.state.targets["web-1"].statuses[LifecycleEvent.BEFORE_INSTALL] is EventStatus.SUCCEEDED,
        "the engine took three results",
    )
    running.cancel()  # the server goes away
    with contextlib.suppress(asyncio.CancelledError):
        await running
    stored = await server.store.get_deployment("d-1")
    assert stored is not None and stored_statuses(stored, "web-1")["ApplicationStop"] == "InProgress"

    delivered: list[str] = []
    seen: set[int] = set()

    async def to_second(command: dict[str, Any], result: dict[str, Any]) -> None:
        """As the deployer does: a result heard from the agent and handed over from the store goes in once."""
        if command["id"] not in seen:
            seen.add(command["id"])
            delivered.append(str(command["event"]))
            await second.record_result(command["host"], LifecycleEvent(command["event"]), result)

    fleet = Fleet(
        server.store, data_dir=tmp_path / "data-2", clock=SystemClock(), bundle_dir=tmp_path, on_result=to_second
    )
    await runs_for(fleet, "web-1")
    second = a_runner(server.store, fleet, unfollowed, ("web-1",), clock=FakeClock(), state=stored["state"]["machine"])
    resumed = asyncio.ensure_future(second.run(resume=True, row=stored))
    try:
        await eventually(lambda: delivered == [str(event) for event in RUN[:3]], "the stored results handed over")
        await report(fleet, "web-1", ids[3:])  # the agent reports the rest of its run to the new server
        await asyncio.wait_for(resumed, HANG_GUARD)
    finally:
        resumed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resumed
    assert delivered == [str(event) for event in RUN]
    assert second.machine.state.status is DeploymentStatus.SUCCEEDED
    commands = await server.store.list_commands(host="web-1")
    assert sorted(row["id"] for row in commands) == sorted(ids)  # nothing queued again
    assert {row["status"] for row in commands} == {"Succeeded"}
