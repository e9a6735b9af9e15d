"""The Deployer facade with its real store, runner and fleet; hosts are scripted agents speaking to the Fleet port.

(End-to-end tests with real agent processes are in test_e2e_*.py; these cover the orchestration rules fast.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import deployer_from, eventually, gone_after_the_write_of
from postgres_support import PostgresServer

from bot.assembly import assemble_deployer
from engine.core.config.parse import parse_config
from engine.core.errors import AdapterError, AppSpecInvalid, DeploymentNotFound, DeploymentRefused
from engine.core.requests import DeployRequest
from engine.runtime import runner as runner_module
from engine.runtime.deployer import Deployer

CONFIG = """
server: {data_dir: var, heartbeat_timeout: %(heartbeat)s}
hosts:
  - {name: s1, tags: {env: staging}}
  - {name: s2, tags: {env: staging}}
  - {name: p1, tags: {env: production}}
  - {name: p2, tags: {env: production}}
  - {name: p3, tags: {env: production}}
  - {name: p4, tags: {env: production}}
applications:
  app:
    platform: server
    revision: rev-a
    environments: [staging, production]
    deployment_groups:
      staging:
        deployment_type: in-place
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: staging}}
      production:
        deployment_type: in-place
        deployment_config: CodeDeployDefault.OneAtATime
        targets: {tags: {env: production}}
        auto_rollback: {enabled: true, events: [DEPLOYMENT_FAILURE]}
"""

APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: VERSION\n    destination: /opt/app\n"

BLUE_GREEN_HAPROXY = """
server: {data_dir: var}
hosts: [{name: b1, port: 9901}, {name: b2, port: 9902}, {name: b3, port: 9903}, {name: b4, port: 9904}]
applications:
  app:
    platform: server
    revision: rev-a
    environments: [prod]
    deployment_groups:
      prod:
        deployment_type: blue-green
        deployment_config: CodeDeployDefault.AllAtOnce
        traffic_config: CodeDeployDefault.LambdaCanary10Percent5Minutes
        targets: {hosts: [b1, b2, b3, b4]}
        load_balancer: {type: haproxy, port: 9910}
"""

Behaviour = Callable[[str, str, str], str | None]  # (host, event, sha256) -> failure message or None


def make_revision(root: Path, name: str, version: str, appspec: str = APPSPEC) -> Path:
    path = root / name
    path.mkdir()
    (path / "appspec.yml").write_text(appspec)
    (path / "VERSION").write_text(version)
    return path


class ScriptedFleet:
    """One task per host, long-polling the real Fleet and answering each command as ``behaviour`` says."""

    def __init__(self, deployer: Deployer, hosts: list[str], behaviour: Behaviour, delay: float = 0.0) -> None:
        self.deployer, self.behaviour, self.delay = deployer, behaviour, delay
        self.gate: asyncio.Event | None = None  # when set to an Event: every answer waits until it is set
        self.log: list[tuple[str, str, str]] = []  # (host, deployment id, event)
        self.tasks = [asyncio.ensure_future(self._agent(h)) for h in hosts]

    async def _agent(self, host: str) -> None:
        fleet = self.deployer.fleet
        while True:
            command = await fleet.next_command(host, wait=0.5)
            if command is None:
                continue
            self.log.append((host, command["deployment_id"], command["event"]))
            await asyncio.sleep(self.delay)
            if self.gate is not None:
                await self.gate.wait()
            failure = self.behaviour(host, command["event"], command["spec"]["revision"]["sha256"])
            result = {"status": "Failed", "error_code": 4, "message": failure} if failure else {"status": "Succeeded"}
            await fleet.report_result(host, command["id"], {**result, "log_tail": f"{host} {command['event']}"})

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    return tmp_path


async def open_deployer(workdir: Path, heartbeat: float = 60) -> Deployer:
    # The config file allows whole seconds; tests use a shorter limit to stay fast.
    return await deployer_from(CONFIG % {"heartbeat": max(heartbeat, 1)}, workdir, heartbeat_timeout=heartbeat)


@pytest.fixture
async def deployer(workdir: Path) -> AsyncIterator[Deployer]:
    d = await open_deployer(workdir)
    yield d
    await d.close()


async def wait_final(deployer: Deployer, deployment_id: str, timeout: float = 10) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            doc = await deployer.watch(deployment_id, after=0, timeout=0.2)
            if doc["status"] in ("Succeeded", "Failed", "Stopped"):
                return doc


def never_fails(host: str, event: str, sha: str) -> str | None:
    return None


async def test_in_place_deployment_succeeds_and_records_every_event(deployer: Deployer) -> None:
    agents = ScriptedFleet(deployer, ["s1", "s2"], never_fails)
    try:
        started = await deployer.start(DeployRequest("app", "staging", actor="alice"))
        doc = await wait_final(deployer, started["id"])
    finally:
        await agents.close()
    assert doc["status"] == "Succeeded", doc
    assert doc["created_by"] == "alice"
    assert [t["name"] for t in doc["targets"]] == ["s1", "s2"]
    events = [e["name"] for e in doc["targets"][0]["events"]]
    assert events == [
        "ApplicationStop",
        "DownloadBundle",
        "BeforeInstall",
        "Install",
        "AfterInstall",
        "ApplicationStart",
        "ValidateService",
    ]
    assert all(e["status"] == "Succeeded" and e["log_tail"] for t in doc["targets"] for e in t["events"])

    async def logged_end() -> bool:  # the final status is stored first; its end is logged as it is wound up
        return any(e["kind"] == "deployment.finished" for e in await deployer.store.read_log(deployment_id=doc["id"]))

    await eventually(logged_end, "the deployment's end logged")
    log = await deployer.store.read_log(deployment_id=doc["id"])
    assert log[0]["kind"] == "deployment.requested"
    assert log[-1]["kind"] == "deployment.finished"


async def test_bad_appspec_is_refused_before_any_host(deployer: Deployer, workdir: Path) -> None:
    make_revision(workdir, "bad", "3", appspec='version: "0.0"\nos: linux\n')
    with pytest.raises(AppSpecInvalid) as info:
        await deployer.start(DeployRequest("app", "staging", revision="bad"))
    assert info.value.problems[0].line == 1
    assert await deployer.store.list_commands() == []


async def test_failure_rolls_back_to_last_good_revision(deployer: Deployer) -> None:
    sha_b: list[str] = []

    def fail_b_on_p2(host: str, event: str, sha: str) -> str | None:
        if sha_b and sha == sha_b[0] and host == "p2" and event == "ValidateService":
            return "health check failed"
        return None

    agents = ScriptedFleet(deployer, ["p1", "p2", "p3", "p4"], fail_b_on_p2)
    try:
        good = await wait_final(deployer, (await deployer.start(DeployRequest("app", "production")))["id"])
        assert good["status"] == "Succeeded"
        b = await deployer.start(DeployRequest("app", "production", revision="rev-b"))
        sha_b.append(b["revision"]["sha256"])
        failed = await wait_final(deployer, b["id"])
        assert failed["status"] == "Failed"
        assert failed["error"]["code"] == "HEALTH_CONSTRAINTS"
        assert "ValidateService failed on p2: health check failed" in failed["error"]["message"]
        assert [t["status"] for t in failed["targets"]] == ["Succeeded", "Failed", "Skipped", "Skipped"]
        async with asyncio.timeout(5):
            while not (await deployer.get(b["id"]))["rollback"]["by"]:
                await asyncio.sleep(0.02)
        rollback_id = (await deployer.get(b["id"]))["rollback"]["by"]
        rollback = await wait_final(deployer, rollback_id)
    finally:
        await agents.close()
    assert rollback["status"] == "Succeeded"
    assert rollback["created_by"] == "codeDeployRollback"
    assert rollback["rollback"]["of"] == b["id"]
    assert rollback["revision"]["sha256"] == good["revision"]["sha256"]


async def test_one_deployment_per_group_fifo_and_duplicates_collapse(deployer: Deployer) -> None:
    in_flight: set[str] = set()
    overlaps: list[set[str]] = []

    def track(host: str, event: str, sha: str) -> str | None:
        return None

    agents = ScriptedFleet(deployer, ["s1", "s2"], track, delay=0.01)
    original_dispatch = deployer.fleet.dispatch

    async def observing_dispatch(deployment_id, target, event, spec):  # records concurrency at the port
        in_flight.add(deployment_id)
        running = {d for d in in_flight if (await deployer.store.get_deployment(d))["status"] == "InProgress"}
        if len(running) > 1:
            overlaps.append(running)
        await original_dispatch(deployment_id, target, event, spec)

    deployer.fleet.dispatch = observing_dispatch  # type: ignore[method-assign]
    try:
        first = await deployer.start(DeployRequest("app", "staging"))
        second = await deployer.start(DeployRequest("app", "staging", revision="rev-b"))
        again = await deployer.start(DeployRequest("app", "staging", revision="rev-b"))
        assert again["id"] == second["id"]
        assert second["status"] == "Queued" and second["queue_position"] == 1
        assert (await wait_final(deployer, first["id"]))["status"] == "Succeeded"
        assert (await wait_final(deployer, second["id"]))["status"] == "Succeeded"
    finally:
        await agents.close()
    assert overlaps == []
    first_row = await deployer.store.get_deployment(first["id"])
    second_row = await deployer.store.get_deployment(second["id"])
    assert first_row["ended_at"] <= second_row["started_at"]


async def test_queued_deployment_can_be_cancelled(deployer: Deployer) -> None:
    first = await deployer.start(DeployRequest("app", "staging"))
    second = await deployer.start(DeployRequest("app", "staging", revision="rev-b"))
    stopped = await deployer.stop(second["id"], actor="bob")
    assert stopped["status"] == "Stopped" and "bob" in stopped["error"]["message"]
    assert (await deployer.get(first["id"]))["status"] == "InProgress"


class GroupNotifier:
    """Follows the deployments of one group; records every document it is given."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.documents: list[dict[str, Any]] = []

    def follows(self, group: str) -> bool:
        return group == self.group

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        self.documents.append(dict(deployment))


async def test_notifiers_only_hear_of_the_groups_they_follow_from_a_deployments_request_to_its_end(
    deployer: Deployer,
) -> None:
    # A notifier that follows no group of a deployment (e.g. CodeDeploy triggers, on a group without any) costs no
    # read of its document: not while it runs, nor once it ends, is queued or is cancelled, when no runner knows its
    # group any more. Before, those moments read the whole document (~10 ms at 1,000 hosts) and handed it to every
    # notifier.
    staging, production = GroupNotifier("app-staging"), GroupNotifier("app-production")
    deployer.notifiers.extend([staging, production])
    agents = ScriptedFleet(deployer, ["s1", "s2"], never_fails)
    try:
        agents.gate = asyncio.Event()
        first = await deployer.start(DeployRequest("app", "staging"))
        queued = await deployer.start(DeployRequest("app", "staging", revision="rev-b"))
        await deployer.stop(queued["id"], actor="bob")
        agents.gate.set()
        doc = await wait_final(deployer, first["id"])
        # Stored final before the notifiers are told (the runner's step, then its wind-up): wait for their word.
        told = {"id": first["id"], "status": "Succeeded"}
        await eventually(lambda: staging.documents and {k: staging.documents[-1][k] for k in told} == told)
    finally:
        await agents.close()
    assert doc["status"] == "Succeeded"
    assert production.documents == []
    assert {d["id"] for d in staging.documents} == {first["id"], queued["id"]}
    final = {d["id"]: d["status"] for d in staging.documents}  # the latest each was told
    assert final == {first["id"]: "Succeeded", queued["id"]: "Stopped"}


async def test_stop_running_deployment(deployer: Deployer) -> None:
    started = await deployer.start(DeployRequest("app", "staging"))
    doc = await deployer.stop(started["id"], actor="carol")
    assert doc["status"] == "Stopped"
    assert doc["error"] == {"code": "MANUAL_STOP", "message": "stopped by carol"}
    assert all(c["status"] == "Cancelled" for c in await deployer.store.list_commands(deployment_id=doc["id"]))


async def test_silent_agent_fails_its_host(workdir: Path) -> None:
    deployer = await open_deployer(workdir, heartbeat=0.5)
    agents = ScriptedFleet(deployer, ["s1"], never_fails)  # s2 has no agent at all
    try:
        started = await deployer.start(DeployRequest("app", "staging"))
        doc = await wait_final(deployer, started["id"])
    finally:
        await agents.close()
        await deployer.close()
    s2 = next(t for t in doc["targets"] if t["name"] == "s2")
    assert s2["status"] == "Failed"
    assert "has not been heard from" in s2["events"][0]["message"]
    assert doc["status"] == "Succeeded"  # AllAtOnce: one good host is enough


async def test_restart_resumes_unfinished_deployment(workdir: Path) -> None:
    first = await open_deployer(workdir)
    started = await first.start(DeployRequest("app", "staging"))
    async with asyncio.timeout(5):
        while len(await first.store.list_commands(status="Pending")) < 2:
            await asyncio.sleep(0.01)
    await first.close()  # the server goes away mid-deployment

    second = await open_deployer(workdir)
    agents = ScriptedFleet(second, ["s1", "s2"], never_fails)
    try:
        doc = await wait_final(second, started["id"])
        log = [e["kind"] for e in await second.store.read_log(deployment_id=started["id"])]
        commands = [(c["host"], c["event"]) for c in await second.store.list_commands(deployment_id=started["id"])]
    finally:
        await agents.close()
        await second.close()
    assert doc["status"] == "Succeeded"
    assert "deployment.resumed" in log
    # nothing was dispatched twice
    assert len(commands) == len(set(commands))


PRODUCTION = ["p1", "p2", "p3", "p4"]


def fails_on_p1_after(good: list[str]) -> Behaviour:
    """Once ``good`` names a revision, p1's Install fails for every other one."""
    return lambda host, event, sha: "boom" if host == "p1" and event == "Install" and good and sha not in good else None


async def rev_a_on_production(workdir: Path) -> tuple[Deployer, ScriptedFleet, dict]:
    """A server whose production runs rev-a, its agents failing p1's Install for any other revision (automatic
    rollback on failure): the deployer and its agents, for the caller to close, and rev-a's deployment."""
    good: list[str] = []
    deployer = await open_deployer(workdir)
    agents = ScriptedFleet(deployer, PRODUCTION, fails_on_p1_after(good))
    try:
        a = await wait_final(deployer, (await deployer.start(DeployRequest("app", "production")))["id"])
    except BaseException:
        await agents.close()
        await deployer.close()
        raise
    good.append(a["revision"]["sha256"])
    return deployer, agents, a


async def fail_then_stop_the_server(workdir: Path, cut: Callable[[Deployer], asyncio.Event]) -> tuple[str, str]:
    """Deploy rev-a to production, then rev-b, whose Install fails on p1 (automatic rollback on failure); ``cut``
    patches the server so that it stops where it is to go away, setting the event it returns. rev-a's sha256, and
    the id of rev-b's deployment."""
    first, agents, a = await rev_a_on_production(workdir)
    try:
        crash = cut(first)
        b = await first.start(DeployRequest("app", "production", revision="rev-b"))
        await crash.wait()
    finally:
        await agents.close()
        await first.close()  # the server goes away: whatever it was doing after the cut is cancelled
    return a["revision"]["sha256"], b["id"]


async def restart_until_wound_up(workdir: Path, failed: str) -> tuple[dict, dict, list[str], list[str]]:
    """A new server on the same database: the failed deployment's document once its rollback exists, the rollback's
    once it ended, the failed one's log once nothing is owed, and the ids of every rollback of it."""
    second = await open_deployer(workdir)
    agents = ScriptedFleet(second, PRODUCTION, never_fails)

    async def rolled_back() -> bool:
        return bool((await second.get(failed))["rollback"]["by"])

    async def nothing_owed() -> bool:
        return await second.store.owing_wind_up() == []

    try:
        await eventually(rolled_back, "the failed deployment's rollback")
        doc = await second.get(failed)
        rollback = await wait_final(second, doc["rollback"]["by"])
        await eventually(nothing_owed, "no wind-up owed")
        log = [e["kind"] for e in await second.store.read_log(deployment_id=failed)]
        rollbacks = [d["id"] for d in await second.store.list_deployments(limit=None) if d["rollback_of"] == failed]
    finally:
        await agents.close()
        await second.close()
    return doc, rollback, log, rollbacks


async def test_a_wind_up_cut_short_by_a_restart_is_done_when_the_server_starts_again(workdir: Path) -> None:
    """A server that stopped between a deployment's final write and its wind-up used to restart with the deployment
    ended and nothing owed: its automatic rollback never started, its end was never logged. Here the server goes
    away right after the write that stores "Failed" (the write itself lands)."""

    a, b = await fail_then_stop_the_server(workdir, lambda first: gone_after_the_write_of(first, "Failed"))
    doc, rollback, log, rollbacks = await restart_until_wound_up(workdir, b)
    assert doc["status"] == "Failed" and rollbacks == [rollback["id"]]
    assert rollback["status"] == "Succeeded" and rollback["rollback"]["of"] == b
    assert rollback["revision"]["sha256"] == a  # the last good revision
    assert log.count("deployment.winding_up") == 1 and log.count("rollback.triggered") == 1
    assert log.count("deployment.finished") == 1 and log[-1] == "deployment.finished"


async def test_a_wind_up_done_again_after_a_restart_does_not_roll_back_twice(workdir: Path) -> None:
    """The server goes away after the rollback was queued but before the end was logged: the wind-up is done again
    when it starts, and the rollback that exists is the one that runs."""

    def before_the_end_is_logged(first: Deployer) -> asyncio.Event:
        wound_up, crash = first.store.wound_up, asyncio.Event()

        async def write(deployment_id: str, **entry: Any) -> None:
            if entry["log"]["data"]["status"] == "Failed":
                crash.set()
                await asyncio.Event().wait()  # the end is never logged
            await wound_up(deployment_id, **entry)

        first.store.wound_up = write  # type: ignore[method-assign]
        return crash

    a, b = await fail_then_stop_the_server(workdir, before_the_end_is_logged)
    doc, rollback, log, rollbacks = await restart_until_wound_up(workdir, b)
    assert doc["status"] == "Failed" and doc["rollback"]["by"] == rollback["id"] == rollbacks[0]
    assert len(rollbacks) == 1 and rollback["status"] == "Succeeded" and rollback["revision"]["sha256"] == a
    assert log.count("rollback.triggered") == 1  # the wind-up again found the rollback made before the stop
    assert log.count("deployment.winding_up") == 1 and log.count("deployment.finished") == 1


async def test_a_deployment_whose_runner_crashes_fails_and_is_rolled_back_as_any_failure(workdir: Path) -> None:
    """A bug in deploybot mid-deployment (here: queueing the second host's run raises) used to leave only a Failed
    status: the automatic rollback never started and the end's work was skipped. It now ends as any failure: the
    failure written with what its end owes, the hosts not reached cancelled, the rollback run, the end logged once."""
    deployer = await open_deployer(workdir)
    agents = ScriptedFleet(deployer, PRODUCTION, never_fails)
    try:
        a = await wait_final(deployer, (await deployer.start(DeployRequest("app", "production")))["id"])
        dispatch_runs, crashed = deployer.fleet.dispatch_runs, asyncio.Event()

        async def second_host_crashes(deployment_id: str, runs: Any, spec: Any, **step: Any) -> None:
            if [target for target, _ in runs] == ["p2"] and not crashed.is_set():
                crashed.set()
                raise RuntimeError("a bug, quoting hunter2")
            await dispatch_runs(deployment_id, runs, spec, **step)

        deployer.fleet.dispatch_runs = second_host_crashes  # type: ignore[method-assign]
        b = await wait_final(
            deployer, (await deployer.start(DeployRequest("app", "production", revision="rev-b")))["id"]
        )
        assert crashed.is_set()

        async def rolled_back() -> bool:
            return bool((await deployer.get(b["id"]))["rollback"]["by"])

        await eventually(rolled_back, "the crashed deployment's rollback")
        b = await deployer.get(b["id"])
        rollback = await wait_final(deployer, b["rollback"]["by"])
        log = [e["kind"] for e in await deployer.store.read_log(deployment_id=b["id"])]
        left = await deployer.store.list_commands(deployment_id=b["id"], status=["Pending", "InProgress"])
    finally:
        await agents.close()
        await deployer.close()
    assert b["status"] == "Failed" and b["error"]["code"] == "INTERNAL_ERROR"
    assert b["error"]["message"].startswith("deploybot hit an internal error (RuntimeError at ")
    assert "hunter2" not in b["error"]["message"]
    statuses = {t["name"]: t["status"] for t in b["targets"]}
    assert statuses == {"p1": "Succeeded", "p2": "Unknown", "p3": "Skipped", "p4": "Skipped"}
    assert rollback["status"] == "Succeeded" and rollback["revision"]["sha256"] == a["revision"]["sha256"]
    assert log.count("rollback.triggered") == 1 and log.count("deployment.finished") == 1
    assert log[-1] == "deployment.finished" and "deployment.winding_up" not in log
    assert left == []  # nothing of it is left for an agent to run


async def test_an_end_cut_short_by_a_crash_is_wound_up_again_and_keeps_its_outcome(workdir: Path) -> None:
    """The runner crashes while doing a deployment's end (here: queueing its automatic rollback raises, once). The
    end is owed from the final write on, so it is done again from what is stored, as a restart would, and the
    deployment keeps its own outcome instead of being marked an internal error with its rollback never started."""
    deployer, agents, a = await rev_a_on_production(workdir)
    try:
        automatic, crashed = deployer.rollbacks.automatic, asyncio.Event()

        async def crashes_once(*args: Any) -> Any:
            if not crashed.is_set():
                crashed.set()
                raise RuntimeError("a bug in the rollback")
            return await automatic(*args)

        deployer.rollbacks.automatic = crashes_once  # type: ignore[method-assign]
        started = await deployer.start(DeployRequest("app", "production", revision="rev-b"))

        async def rolled_back() -> bool:
            return bool((await deployer.get(started["id"]))["rollback"]["by"])

        await eventually(rolled_back, "the rollback, queued by the second wind-up")
        b = await deployer.get(started["id"])
        rollback = await wait_final(deployer, b["rollback"]["by"])

        async def nothing_owed() -> bool:
            return await deployer.store.owing_wind_up() == []

        await eventually(nothing_owed, "no wind-up owed")
        log = await deployer.store.read_log(deployment_id=b["id"])
    finally:
        await agents.close()
        await deployer.close()
    assert crashed.is_set()
    assert b["status"] == "Failed" and b["error"]["code"] == "HEALTH_CONSTRAINTS"  # its own failure, not a crash
    assert rollback["status"] == "Succeeded" and rollback["revision"]["sha256"] == a["revision"]["sha256"]
    kinds = [entry["kind"] for entry in log]
    assert kinds.count("rollback.triggered") == 1 and kinds.count("deployment.finished") == 1
    assert [e["data"]["after"] for e in log if e["kind"] == "deployment.winding_up"] == ["a crash of its runner"]


async def test_a_crash_after_the_end_was_stored_keeps_the_outcome_and_lets_the_group_go_on(workdir: Path) -> None:
    """The runner crashes after the deployment's end was stored and logged (here: starting the group's next
    deployment raises, once). That used to overwrite its outcome with an internal error, log its end a second time,
    and could leave the deployment queued behind it waiting; now its outcome stands and the next one starts."""
    deployer = await open_deployer(workdir)
    agents = ScriptedFleet(deployer, PRODUCTION, never_fails)
    try:
        start_held, first_id, crashed = deployer.queue.start_held, "", asyncio.Event()

        async def crashes_once_after_the_end(group_name: str) -> None:
            row = await deployer.store.get_deployment(first_id) if first_id else None
            if row is not None and row["status"] == "Succeeded" and not crashed.is_set():
                crashed.set()
                raise RuntimeError("a bug after the end")
            await start_held(group_name)

        deployer.queue.start_held = crashes_once_after_the_end  # type: ignore[method-assign]
        first = await deployer.start(DeployRequest("app", "production"))
        first_id = first["id"]
        queued = await deployer.start(DeployRequest("app", "production", revision="rev-b"))
        assert queued["status"] == "Queued"  # behind the first: started when the first lets the group go on
        second = await wait_final(deployer, queued["id"])
        first = await deployer.get(first_id)
        log = [entry["kind"] for entry in await deployer.store.read_log(deployment_id=first_id)]
    finally:
        await agents.close()
        await deployer.close()
    assert crashed.is_set()
    assert first["status"] == "Succeeded" and first["error"] is None  # not overwritten as an internal error
    assert log.count("deployment.finished") == 1
    assert second["status"] == "Succeeded"


async def test_a_wind_up_a_dead_replica_left_is_done_by_the_replica_that_takes_the_group(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Two replicas on one PostgreSQL database: the one driving production goes away right after the write that
    stores "Failed"; the other takes the group over when its lease is free, and winds the deployment up (its
    rollback runs there)."""
    url = postgres_server.new_database()

    async def replica(name: str) -> Deployer:
        workdir = tmp_path / name
        workdir.mkdir()
        make_revision(workdir, "rev-a", "1")
        make_revision(workdir, "rev-b", "2")
        config = CONFIG % {"heartbeat": 60} + f"store:\n  url: {url}\n"
        return await deployer_from(config, workdir, lease_seconds=1.0)

    good: list[str] = []
    first, second = await replica("a"), await replica("b")
    agents = ScriptedFleet(first, PRODUCTION, fails_on_p1_after(good))
    try:
        a = await wait_final(first, (await first.start(DeployRequest("app", "production")))["id"])
        good.append(a["revision"]["sha256"])
        crash = gone_after_the_write_of(first, "Failed")
        b = await first.start(DeployRequest("app", "production", revision="rev-b"))
        await crash.wait()
    finally:
        await agents.close()
        await first.close()  # replica a is gone (its leases let go: b need not wait for them to run out)

    agents = ScriptedFleet(second, PRODUCTION, never_fails)

    async def rolled_back() -> bool:
        return bool((await second.get(b["id"]))["rollback"]["by"])

    try:
        await eventually(rolled_back, "replica b queues the rollback")
        rollback = await wait_final(second, (await second.get(b["id"]))["rollback"]["by"])
        log = await second.store.read_log(deployment_id=b["id"])
    finally:
        await agents.close()
        await second.close()
    assert rollback["status"] == "Succeeded" and rollback["revision"]["sha256"] == a["revision"]["sha256"]
    [winding_up] = [e for e in log if e["kind"] == "deployment.winding_up"]
    assert winding_up["data"]["replica"] == second.replica_id != first.replica_id
    assert [e["kind"] for e in log].count("deployment.finished") == 1


async def test_manual_rollback_redeploys_previous_revision(deployer: Deployer) -> None:
    agents = ScriptedFleet(deployer, ["s1", "s2"], never_fails)
    try:
        a = await wait_final(deployer, (await deployer.start(DeployRequest("app", "staging")))["id"])
        b = await wait_final(deployer, (await deployer.start(DeployRequest("app", "staging", revision="rev-b")))["id"])
        rollback = await deployer.rollback("app", "STAGING", actor="dave")
        done = await wait_final(deployer, rollback["id"])
    finally:
        await agents.close()
    assert done["status"] == "Succeeded"
    assert done["revision"]["sha256"] == a["revision"]["sha256"]
    assert done["rollback"]["of"] == b["id"]


async def test_a_rollback_asked_while_the_last_deployment_is_wound_up_redeploys_the_one_before(
    deployer: Deployer,
) -> None:
    """Between a deployment's final status being stored and its group being let go (its end logged), a rollback has
    nothing left to stop: it redeploys the revision before, queued until the group is free (it used to ask the
    ended deployment to stop, and fail)."""
    agents = ScriptedFleet(deployer, ["s1", "s2"], never_fails)
    winding_up, go_on = asyncio.Event(), asyncio.Event()
    wound_up = deployer.store.wound_up
    first: list[str] = []

    async def held(deployment_id: str, **entry: Any) -> None:  # the second one's wind-up (the first may be in its)
        if deployment_id not in first and not go_on.is_set():
            winding_up.set()
            await go_on.wait()
        await wound_up(deployment_id, **entry)

    try:
        a = await wait_final(deployer, (await deployer.start(DeployRequest("app", "staging")))["id"])
        first.append(a["id"])
        deployer.store.wound_up = held  # type: ignore[method-assign]
        b = await deployer.start(DeployRequest("app", "staging", revision="rev-b"))
        await winding_up.wait()
        assert (await deployer.get(b["id"]))["status"] == "Succeeded"
        rollback = await deployer.rollback("app", "staging", actor="dave")
        assert rollback["status"] == "Queued" and rollback["rollback"]["of"] == b["id"]
        go_on.set()
        done = await wait_final(deployer, rollback["id"])
    finally:
        go_on.set()
        await agents.close()
    assert done["status"] == "Succeeded"
    assert done["revision"]["sha256"] == a["revision"]["sha256"]


async def test_errors_name_what_is_missing(deployer: Deployer) -> None:
    with pytest.raises(DeploymentNotFound):
        await deployer.get("d-NOPE")
    with pytest.raises(DeploymentRefused):
        await deployer.rollback("app", "production")


async def test_plan_of_a_blue_green_group_shows_the_idle_half(tmp_path: Path) -> None:
    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(BLUE_GREEN_HAPROXY, base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    try:
        plan = await deployer.plan(DeployRequest("app", "prod"))
        started = await deployer.start(DeployRequest("app", "prod"))
        stages = (await deployer.store.get_deployment(started["id"]))["state"]["stages"]
        await deployer.stop(started["id"])
    finally:
        await deployer.close()
    assert plan["batches"] == [["b3", "b4"]] and plan["original"] == ["b1", "b2"]
    assert [s["targets"] for s in plan["stages"] if s["kind"] == "targets"] == [
        s["targets"] for s in stages if s["kind"] == "targets"
    ]
    assert [s["percent"] for s in plan["traffic_steps"]] == [10, 100]


async def test_a_group_whose_tags_match_no_host_is_refused_naming_the_tags(workdir: Path) -> None:
    text = (CONFIG % {"heartbeat": 60}).replace("targets: {tags: {env: staging}}", "targets: {tags: {env: edge}}")
    deployer = await assemble_deployer(parse_config(text, base_dir=str(workdir)), data_dir=workdir / "var")
    try:
        with pytest.raises(DeploymentRefused, match="app-staging has no targets: no host or instance has the tags"):
            await deployer.start(DeployRequest("app", "staging"))
        assert await deployer.store.list_deployments(group_name="app-staging") == []
    finally:
        await deployer.close()


class UnpreparedRouter:
    """A balancer that cannot take the two fleets' names (its API unreachable, a target group deleted), or, with a
    non-EngineError, a router with a bug in it. Nothing of it is ever asked to move traffic."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.failing = False  # from the deployment on: the server's start (restoring traffic) goes through
        self.moves: list[str] = []

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        if self.failing:
            raise self.error

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        self.moves.append(f"weight {percent}")

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        return None

    async def block(self, group: str, target: str) -> None:
        self.moves.append(f"block {target}")

    async def allow(self, group: str, target: str) -> None:
        self.moves.append(f"allow {target}")


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (
            AdapterError("elbv2", "target group tg-green not found"),
            "Stopped",  # blocked at its start, as by an alarm already firing: nothing was changed
            "the traffic router could not be given the original and replacement fleets: "
            "elbv2: target group tg-green not found",
        ),
        (
            RuntimeError("a bug quoting data: hunter2"),
            "Failed",
            "deploybot hit an internal error (RuntimeError at engine/runtime/runner.py:%d); see the server log",
        ),
    ],
)
async def test_a_router_that_cannot_name_the_fleets_fails_the_deployment_saying_why(
    tmp_path: Path, error: Exception, status: str, message: str
) -> None:
    # The balancer's failure is the deployment's reason; a bug is an internal error that names its type and where it
    # came from, so a report can be matched to the server log, but never its message, which may quote anything.
    make_revision(tmp_path, "rev-a", "1")
    router = UnpreparedRouter(error)
    config = parse_config(BLUE_GREEN_HAPROXY, base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var", routers={"app-prod": router})
    router.failing, router.moves = True, []
    try:
        started = await deployer.start(DeployRequest("app", "prod"))
        doc = await wait_final(deployer, started["id"])
    finally:
        await deployer.close()
    if "%d" in message:
        source = Path(runner_module.__file__).read_text().splitlines()
        message %= 1 + next(i for i, line in enumerate(source) if "await self.router.prepare(" in line)
    assert doc["status"] == status and doc["error"] == {"code": "INTERNAL_ERROR", "message": message}
    assert router.moves == [] and doc["targets"] == []  # no host was touched, no traffic moved


class HeldNotifier:
    """Holds the notification of a deployment's end until released, and notes whether it was cancelled."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    def follows(self, group: str) -> bool:
        return True

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        if deployment["status"] not in ("Succeeded", "Failed", "Stopped"):
            return
        self.ended.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_closing_while_a_deployment_finishes_ends_that_work_before_the_store_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A deployment's end is logged, notified and starts the group's next one after its runner is done. A shutdown in
    # that moment must end this work, not close the store under it (which failed the ended deployment again as a
    # crash, with a traceback, and left a task whose exception nobody retrieved).
    make_revision(tmp_path, "rev-a", "1")
    router = UnpreparedRouter(AdapterError("elbv2", "target group tg-green not found"))
    config = parse_config(BLUE_GREEN_HAPROXY, base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var", routers={"app-prod": router})
    notifier = HeldNotifier()
    deployer.notifiers.append(notifier)
    router.failing = True
    started = await deployer.start(DeployRequest("app", "prod"))
    await notifier.ended.wait()
    await deployer.close()
    notifier.release.set()
    for _ in range(10):  # had the finishing task outlived close, this is where it would reach the closed store
        await asyncio.sleep(0)
    assert notifier.cancelled
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    reopened = await assemble_deployer(config, data_dir=tmp_path / "var")
    try:
        assert (await reopened.get(started["id"]))["status"] == "Stopped"
    finally:
        await reopened.close()
