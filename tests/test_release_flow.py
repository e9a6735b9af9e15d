"""The release flow through the real Deployer (store, runner, fleet); hosts are scripted agents (see test_service).

Promotion, locks and the freeze, the queue with ETAs, approvals, the dry run and the audit trail. Time is a FakeClock:
wall time jumps over a soak or an approval lifetime, the clock is advanced to a lock's expiry, and every reading is a
millisecond after the one before (distinct, ordered timestamps and durations above 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, deployer_from
from test_service import APPSPEC, ScriptedFleet, make_revision, never_fails, wait_final

from engine.core.errors import DeploymentRefused
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer

CONFIG = """
server: {data_dir: var, admins: [root]}
hosts:
  - {name: d1, tags: {env: dev}}
  - {name: s1, tags: {env: staging}}
  - {name: s2, tags: {env: staging}}
  - {name: p1, tags: {env: production}}
  - {name: p2, tags: {env: production}}
applications:
  app:
    platform: server
    revision: rev-a
    environments: [dev, staging, production]
    deployment_groups:
      dev:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: dev}}
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: staging}}
        min_soak_minutes: %(soak)s
        lock_policy: %(policy)s
      production:
        deployment_config: CodeDeployDefault.OneAtATime
        targets: {tags: {env: production}}
        auto_rollback: {enabled: true, events: [DEPLOYMENT_FAILURE]}
        required_approvals: %(approvals)s
        approvers: [ann, bob, cat]
        approval_ttl_minutes: 10
        lock_policy: %(policy)s
"""
ALL_HOSTS = ["d1", "s1", "s2", "p1", "p2"]


@dataclasses.dataclass
class Env:
    deployer: Deployer
    clock: FakeClock
    workdir: Path

    async def deploy(self, environment: str, revision: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return await self.deployer.start(DeployRequest("app", environment, revision=revision, **kwargs))

    async def deployed(self, environment: str, revision: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return await wait_final(self.deployer, (await self.deploy(environment, revision, **kwargs))["id"])

    async def log_kinds(self) -> list[str]:
        return [e["kind"] for e in await self.deployer.store.read_log()]

    def running(self, environment: str) -> str | None:
        """The deployment the group runs now: set the moment one is launched, before any command goes out."""
        return self.deployer.queue.in_flight(self.deployer.config.group("app", environment).name)


async def open_env(workdir: Path, *, soak: float = 0, policy: str = "refuse", approvals: int = 0) -> Env:
    text = CONFIG % {"soak": soak, "policy": policy, "approvals": approvals}
    clock = FakeClock(tick=0.001)
    return Env(await deployer_from(text, workdir, clock=clock, filename="release.yml"), clock, workdir)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, version in (("rev-a", "1"), ("rev-b", "2"), ("rev-c", "3")):
        make_revision(tmp_path, name, version)
    return tmp_path


@pytest.fixture
async def env(workdir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    options = dict(getattr(request, "param", {}))
    behaviour = options.pop("behaviour", never_fails)
    opened = await open_env(workdir, **options)
    agents = ScriptedFleet(opened.deployer, ALL_HOSTS, behaviour)
    yield opened
    await agents.close()
    await opened.deployer.close()


def dump(database: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for "nothing changed" checks."""
    with sqlite3.connect(database) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}


# ---------------------------------------------------------------------------------------------------- promotion


async def test_promotion_carries_the_identical_bundle_and_where_shows_it(env: Env) -> None:
    dev = await env.deployed("dev", actor="alice")
    staged = await env.deployer.release.promote("app", "dev", "staging", actor="bob")
    assert staged["source"] == "promotion" and staged["promoted_from"] == "dev"
    done = await wait_final(env.deployer, staged["id"])
    assert done["status"] == "Succeeded"
    assert done["revision"]["sha256"] == dev["revision"]["sha256"]
    assert done["description"] == f"promoted from dev ({dev['id']})"

    where = await env.deployer.release.where("APP")
    by_env = {e["environment"]: e for e in where["environments"]}
    assert [e["environment"] for e in where["environments"]] == ["dev", "staging", "production"]
    assert by_env["dev"]["revision"]["sha256"] == by_env["staging"]["revision"]["sha256"] == dev["revision"]["sha256"]
    assert (by_env["dev"]["deployed_by"], by_env["staging"]["deployed_by"]) == ("alice", "bob")
    assert by_env["staging"]["since"] == done["ended_at"]
    assert by_env["production"]["revision"] is None
    assert "promotion.requested" in await env.log_kinds()


@pytest.mark.parametrize("env", [{"behaviour": lambda h, e, sha: "broken" if h == "d1" else None}], indirect=True)
async def test_promotion_is_refused_when_nothing_succeeded(env: Env) -> None:
    failed = await env.deployed("dev")
    assert failed["status"] == "Failed"
    with pytest.raises(DeploymentRefused) as info:
        await env.deployer.release.promote("app", "dev", "staging", actor="bob")
    assert str(info.value) == "nothing has succeeded in app/dev yet"
    assert info.value.details["checks"] == ["succeeded"]
    assert await env.deployer.store.list_deployments(environment="staging") == []
    assert "promotion.refused" in await env.log_kinds()


async def test_promotion_of_a_revision_that_failed_in_the_source_is_refused(workdir: Path) -> None:
    env = await open_env(workdir)
    bad: list[str] = []
    agents = ScriptedFleet(env.deployer, ALL_HOSTS, lambda h, e, sha: "broken" if sha in bad else None)
    try:
        good = await env.deployed("dev")
        started = await env.deploy("dev", "rev-b")
        bad.append(started["revision"]["sha256"])
        assert (await wait_final(env.deployer, started["id"]))["status"] == "Failed"
        with pytest.raises(DeploymentRefused) as info:
            await env.deployer.release.promote("app", "dev", "staging", actor="bob", revision=bad[0][:12])
        assert str(info.value) == f"revision {bad[0][:12]} has not succeeded in app/dev"
        # without --revision the last success goes, which is the good one
        promoted = await env.deployer.release.promote("app", "dev", "staging", actor="bob")
        assert promoted["revision"]["sha256"] == good["revision"]["sha256"]
    finally:
        await agents.close()
        await env.deployer.close()


@pytest.mark.parametrize("env", [{"soak": 30}], indirect=True)
async def test_promotion_waits_for_the_soak_time_unless_an_admin_overrides(env: Env) -> None:
    staged = await env.deployed("staging")
    with pytest.raises(DeploymentRefused) as info:
        await env.deployer.release.promote("app", "staging", "production", actor="bob")
    assert info.value.details["checks"] == ["soak"]
    assert "has run in staging for" in str(info.value) and "promotion needs 30 min" in str(info.value)
    with pytest.raises(DeploymentRefused, match="only an admin"):
        await env.deployer.release.promote("app", "staging", "production", actor="bob", override=True)

    env.clock.jump(31 * 60)
    promoted = await env.deployer.release.promote("app", "staging", "production", actor="bob")
    assert promoted["revision"]["sha256"] == staged["revision"]["sha256"]
    assert (await wait_final(env.deployer, promoted["id"]))["status"] == "Succeeded"


@pytest.mark.parametrize("env", [{"soak": 30}], indirect=True)
async def test_admin_override_is_recorded(env: Env) -> None:
    await env.deployed("staging")
    promoted = await env.deployer.release.promote("app", "staging", "production", actor="root", override=True)
    assert promoted["description"].endswith("with override")
    entry = next(e for e in await env.deployer.store.read_log() if e["kind"] == "promotion.requested")
    assert entry["actor"] == "root" and entry["data"]["override"] is True
    assert "promotion needs 30 min" in entry["data"]["overridden"][0]


async def test_promotion_must_target_the_next_environment(env: Env) -> None:
    await env.deployed("dev")
    with pytest.raises(DeploymentRefused) as info:
        await env.deployer.release.promote("app", "dev", "production", actor="bob")
    assert str(info.value) == "production is not next in order (next after dev is staging)"
    with pytest.raises(DeploymentRefused, match="only an admin"):
        await env.deployer.release.promote("app", "dev", "production", actor="bob", override=True)
    with pytest.raises(DeploymentRefused, match="to itself"):
        await env.deployer.release.promote("app", "dev", "dev", actor="root", override=True)
    done = await env.deployer.release.promote("app", "dev", "production", actor="root", override=True)
    assert (await wait_final(env.deployer, done["id"]))["status"] == "Succeeded"


# ---------------------------------------------------------------------------------------------------- locks


async def test_a_lock_refuses_a_merge_triggered_deployment_naming_who_and_why(env: Env) -> None:
    lock = await env.deployer.release.lock("app", "Staging", actor="alice", reason="db migration")
    assert (lock["owner"], lock["environment"], lock["scope"]) == ("alice", "staging", "environment")
    with pytest.raises(DeploymentRefused) as info:
        await env.deploy("staging", actor="github", source="merge")
    assert str(info.value) == "app/staging is locked by alice: db migration"
    assert info.value.details["gate"] == "lock" and info.value.details["lock"]["owner"] == "alice"
    with pytest.raises(DeploymentRefused, match="locked by alice"):  # a promotion into it as well
        await env.deployed("dev")
        await env.deployer.release.promote("app", "dev", "staging", actor="bob")
    refused = [e for e in await env.deployer.store.read_log() if e["kind"] == "deployment.refused"]
    assert [(e["actor"], e["data"]["source"]) for e in refused] == [("github", "merge"), ("bob", "promotion")]
    assert await env.deployer.store.list_deployments(environment="staging") == []
    # another user cannot take the lock over; anyone may release it (the log says whose it was)
    with pytest.raises(DeploymentRefused, match="already locked by alice"):
        await env.deployer.release.lock("app", "staging", actor="bob", reason="mine now")
    released = await env.deployer.release.unlock("app", "staging", actor="bob")
    assert released["released"] is True and released["lock"]["owner"] == "alice"
    assert (await env.deployer.release.unlock("app", "staging", actor="bob"))["released"] is False
    assert (await env.deployed("staging", source="merge"))["status"] == "Succeeded"


@pytest.mark.parametrize("env", [{"policy": "queue"}], indirect=True)
async def test_with_policy_queue_a_lock_holds_requests_until_unlocked(env: Env) -> None:
    await env.deployer.release.lock("app", "staging", actor="alice", reason="load test")
    held = await env.deploy("staging", actor="github", source="merge")
    assert held["status"] == "Queued" and held["queue_position"] == 1
    assert held["waiting_for"]["gate"] == "lock"
    assert held["waiting_for"]["message"] == "app/staging is locked by alice: load test"
    # The request was decided before it returned: queued, and nothing launched that could send a command later.
    assert env.running("staging") is None
    assert await env.deployer.store.list_commands(deployment_id=held["id"]) == []
    await env.deployer.release.unlock("app", "staging", actor="alice")
    assert (await wait_final(env.deployer, held["id"]))["status"] == "Succeeded"


@pytest.mark.parametrize("env", [{"policy": "queue"}], indirect=True)
async def test_an_expired_lock_releases_itself_and_starts_what_it_held(env: Env) -> None:
    lock = await env.deployer.release.lock("app", "staging", actor="alice", reason="brb", expires_in_minutes=0.5)
    assert lock["expires_at"] == pytest.approx(env.clock.now() + 30, abs=0.1)
    held = await env.deploy("staging")
    assert held["status"] == "Queued" and held["waiting_for"]["lock"]["owner"] == "alice"
    await env.clock.advance(29)  # the expiry timer has looked at the clock on the way: not yet
    assert (await env.deployer.get(held["id"]))["status"] == "Queued" and env.running("staging") is None
    assert [lock["owner"] for lock in await env.deployer.release.locks()] == ["alice"]
    await env.clock.advance(2)  # the timer fired: the lock went and what it held started, prompted by nothing else
    assert (await env.deployer.get(held["id"]))["status"] != "Queued"
    assert (await wait_final(env.deployer, held["id"]))["status"] == "Succeeded"
    assert await env.deployer.release.locks() == []
    assert await env.deployer.store.list_locks() == []
    expired = next(e for e in await env.deployer.store.read_log() if e["kind"] == "lock.expired")
    assert expired["actor"] == "deploybot" and expired["data"]["lock"]["owner"] == "alice"


async def test_an_expired_lock_no_longer_refuses(env: Env) -> None:
    await env.deployer.release.lock("app", "staging", actor="alice", expires_in_minutes=60)
    with pytest.raises(DeploymentRefused, match=r"^app/staging is locked by alice \(expires in 1 h\)$"):
        await env.deploy("staging")
    env.clock.jump(61 * 60)
    assert (await env.deployed("staging"))["status"] == "Succeeded"


async def test_the_global_freeze_is_admin_only_and_holds_every_environment(env: Env) -> None:
    with pytest.raises(DeploymentRefused, match="only an admin"):
        await env.deployer.release.lock("*", "*", actor="alice", reason="release day")
    frozen = await env.deployer.release.lock("*", "*", actor="root", reason="release day")
    assert frozen["scope"] == "freeze"
    for environment in ("dev", "production"):
        with pytest.raises(DeploymentRefused, match="deployments are frozen everywhere by root: release day"):
            await env.deploy(environment)
    assert [lock["scope"] for lock in await env.deployer.release.locks()] == ["freeze"]
    with pytest.raises(DeploymentRefused, match="only an admin"):
        await env.deployer.release.unlock("*", "*", actor="alice")
    assert (await env.deployer.release.unlock("*", "*", actor="root"))["released"]
    assert (await env.deployed("dev"))["status"] == "Succeeded"
    kinds = await env.log_kinds()
    assert kinds.index("freeze.set") < kinds.index("freeze.released")


async def test_a_lock_never_holds_back_an_automatic_rollback(workdir: Path) -> None:
    env = await open_env(workdir, policy="queue")
    bad: list[str] = []
    agents = ScriptedFleet(env.deployer, ALL_HOSTS, lambda h, e, sha: "down" if sha in bad and h == "p1" else None)
    try:
        good = await env.deployed("production")
        started = await env.deploy("production", "rev-b")
        bad.append(started["revision"]["sha256"])
        await env.deployer.release.lock("app", "production", actor="alice", reason="incident")
        assert (await wait_final(env.deployer, started["id"]))["status"] == "Failed"
        async with asyncio.timeout(5):
            while not (await env.deployer.get(started["id"]))["rollback"]["by"]:
                await asyncio.sleep(0.02)
        rollback = await wait_final(env.deployer, (await env.deployer.get(started["id"]))["rollback"]["by"])
    finally:
        await agents.close()
        await env.deployer.close()
    assert rollback["status"] == "Succeeded"
    assert rollback["revision"]["sha256"] == good["revision"]["sha256"]


# ---------------------------------------------------------------------------------------------------- the queue


async def test_twenty_concurrent_requests_run_one_at_a_time_in_order_and_duplicates_collapse(workdir: Path) -> None:
    env = await open_env(workdir)
    agents = None
    try:
        shas = []
        for i in range(10):
            path = make_revision(workdir, f"many-{i}", str(i))
            shas.append((await env.deployer.store_revision(path, source=f"many-{i}"))["sha256"])
        requests = [DeployRequest("app", "staging", revision=f"sha256:{shas[i % 10]}") for i in range(20)]
        answers = await asyncio.gather(*(env.deployer.start(r) for r in requests))
        ids = {a["id"] for a in answers}
        assert len(ids) == 10
        assert all(answers[i]["id"] == answers[i + 10]["id"] for i in range(10))
        # no agent is up yet: one deployment holds the group, nine wait in line, visibly
        queued = await env.deployer.release.queue("app", "staging")
        assert [d["queue_position"] for d in queued] == list(range(1, 10))
        assert sorted(d["created_at"] for d in queued) == [d["created_at"] for d in queued]
        agents = ScriptedFleet(env.deployer, ALL_HOSTS, never_fails, delay=0.002)
        finals = [await wait_final(env.deployer, i, timeout=30) for i in ids]
    finally:
        if agents is not None:
            await agents.close()
        await env.deployer.close()
    assert all(d["status"] == "Succeeded" for d in finals)
    by_creation = sorted(finals, key=lambda d: d["created_at"])
    assert sorted(finals, key=lambda d: d["started_at"]) == by_creation
    for earlier, later in itertools.pairwise(by_creation):
        assert earlier["ended_at"] <= later["started_at"]


async def test_queued_deployments_show_an_eta_from_the_groups_recent_durations(workdir: Path) -> None:
    env = await open_env(workdir)
    agents = ScriptedFleet(env.deployer, ALL_HOSTS, never_fails, delay=0.02)
    try:
        for revision in ("rev-a", "rev-b", "rev-c"):
            await env.deployed("staging", revision)
        durations = [d["duration_seconds"] for d in await env.deployer.history("app", "staging")]
        assert all(d > 0 for d in durations)
        running = await env.deploy("staging", "rev-a")
        first = await env.deploy("staging", "rev-b")
        second = await env.deploy("staging", "rev-c")
        queue = await env.deployer.release.queue("app")
    finally:
        await agents.close()
        await env.deployer.close()
    assert running["eta_seconds"] is None  # not queued
    assert [(d["id"], d["queue_position"]) for d in queue] == [(first["id"], 1), (second["id"], 2)]
    median = sorted(durations)[1]
    assert 0 <= queue[0]["eta_seconds"] <= median
    assert queue[1]["eta_seconds"] == pytest.approx(queue[0]["eta_seconds"] + median, abs=0.05)


# ---------------------------------------------------------------------------------------------------- approvals


@pytest.mark.parametrize("env", [{"approvals": 2}], indirect=True)
async def test_approvals_distinct_approvers_exact_revision_and_expiry(env: Env) -> None:
    release = env.deployer.release
    waiting = await env.deploy("production", actor="ann")
    other = await env.deploy("production", "rev-b", actor="ann")
    assert waiting["status"] == other["status"] == "WaitingApproval"
    assert waiting["approval"]["missing"] == 2 and "2 more approval(s)" in waiting["waiting_for"]["message"]
    assert (await env.deploy("production", actor="ann"))["id"] == waiting["id"]  # a duplicate collapses

    with pytest.raises(DeploymentRefused, match=r"ann requested d-\w+ and cannot approve it"):
        await release.approve(waiting["id"], actor="ann")
    with pytest.raises(DeploymentRefused, match="dave may not approve deployments here"):
        await release.approve(waiting["id"], actor="dave")
    assert (await release.approve(waiting["id"], actor="bob"))["approval"]["approved_by"] == ["bob"]
    assert (await release.approve(waiting["id"], actor="bob"))["approval"]["missing"] == 1  # bob counts once
    assert (await release.approve(other["id"], actor="cat"))["status"] == "WaitingApproval"
    assert (await env.deployer.get(waiting["id"]))["approval"]["approved_by"] == ["bob"]  # cat approved rev-b

    env.clock.jump(11 * 60)  # approvals last 10 minutes
    assert (await env.deployer.get(waiting["id"]))["approval"]["missing"] == 2
    await release.approve(waiting["id"], actor="cat")
    started = await release.approve(waiting["id"], actor="bob")
    assert started["status"] != "WaitingApproval"
    done = await wait_final(env.deployer, waiting["id"])
    assert done["status"] == "Succeeded" and done["approval"] == {"approved_by": ["bob", "cat"]}

    rejected = await release.reject(other["id"], actor="cat", reason="not this week")
    assert rejected["status"] == "Stopped"
    assert rejected["error"]["message"] == "rejected by cat: not this week"
    with pytest.raises(DeploymentRefused, match="is not waiting for approval"):
        await release.approve(other["id"], actor="bob")
    kinds = await env.log_kinds()
    assert {"approval.granted", "approval.satisfied", "approval.rejected"} <= set(kinds)


@pytest.mark.parametrize("env", [{"approvals": 1}], indirect=True)
async def test_rollbacks_need_no_approval(env: Env) -> None:
    first = await env.deploy("production", actor="ann")
    await env.deployer.release.approve(first["id"], actor="bob")
    await wait_final(env.deployer, first["id"])
    second = await env.deploy("production", "rev-b", actor="ann")
    await env.deployer.release.approve(second["id"], actor="cat")
    await wait_final(env.deployer, second["id"])
    rollback = await env.deployer.rollback("app", "production", actor="ann")
    assert rollback["status"] != "WaitingApproval"
    assert (await wait_final(env.deployer, rollback["id"]))["revision"]["sha256"] == first["revision"]["sha256"]


# ---------------------------------------------------------------------------------------------------- plan, history


@pytest.mark.parametrize("env", [{"approvals": 1, "soak": 30}], indirect=True)
async def test_plan_changes_nothing_and_names_every_gate(env: Env) -> None:
    staged = await env.deployed("staging")
    await env.deployer.release.lock("app", "production", actor="alice", reason="freeze for audit")
    database = env.deployer.store.path
    before = dump(database)
    plan = await env.deployer.plan(DeployRequest("app", "production", promoted_from="staging", actor="ann"))
    by_path = await env.deployer.plan(DeployRequest("app", "production", revision="rev-c", actor="ann"))
    assert dump(database) == before
    assert not (env.deployer.revisions.path(by_path["revision"]["sha256"])).exists()

    gates = {g["gate"]: g for g in plan["gates"]}
    assert gates["promotion"]["state"] == "refuse" and gates["promotion"]["checks"] == ["soak"]
    assert gates["lock"] == {
        "gate": "lock",
        "state": "refuse",
        "message": "app/production is locked by alice: freeze for audit",
        "lock": gates["lock"]["lock"],
    }
    assert gates["approval"]["state"] == "wait" and gates["approval"]["missing"] == 1
    assert gates["queue"]["state"] == "clear"
    assert plan["blocked"] is True
    assert plan["revision"]["sha256"] == staged["revision"]["sha256"] and plan["revision"]["stored"]
    assert plan["current"] is None and plan["diff"]["same"] is False
    assert by_path["revision"]["stored"] is False and by_path["revision"]["source"] == "rev-c"
    assert [h["event"] for h in plan["hooks"]] == plan["events"]
    assert plan["rollback"]["enabled"] is True and plan["rollback"]["to"] is None
    assert plan["alarms"] == {"enabled": False, "armed": [], "watch_minutes": 0}


async def test_plan_batches_and_stages_are_what_the_deployment_does(env: Env) -> None:
    first = await env.deployed("production")
    plan = await env.deployer.plan(DeployRequest("app", "production", revision="rev-b"))
    assert plan["batches"] == [["p1"], ["p2"]]
    assert plan["rollback"]["to"] == {
        "sha256": first["revision"]["sha256"],
        "deployment_id": first["id"],
        "bundle_stored": True,
    }
    assert plan["current"]["sha256"] == first["revision"]["sha256"]
    assert plan["eta"]["based_on"] == 1 and plan["eta"]["duration_seconds"] > 0
    done = await env.deployed("production", "rev-b")
    row = await env.deployer.store.get_deployment(done["id"])
    assert row["state"]["stages"] == plan["stages"]
    commands = await env.deployer.store.list_commands(deployment_id=done["id"])
    p1_last = max(c["id"] for c in commands if c["host"] == "p1")
    p2_first = min(c["id"] for c in commands if c["host"] == "p2")
    assert p1_last < p2_first  # batch 1 finished before batch 2 began
    assert [e["name"] for e in done["targets"][0]["events"]] == plan["events"]


async def test_plan_lists_the_commits_since_what_runs_and_a_missing_rollback_bundle(env: Env, workdir: Path) -> None:
    def git(*argv: str) -> None:
        subprocess.run(["git", "-C", str(workdir), *argv], check=True, capture_output=True)

    git("init", "-q")
    (workdir / "appspec.yml").write_text(APPSPEC)
    for version, subject in (("1", "first"), ("2", "bump to 2"), ("3", "bump to 3")):
        (workdir / "VERSION").write_text(version)
        git("add", "appspec.yml", "VERSION")
        git("-c", "user.name=Ann", "-c", "user.email=ann@example.com", "commit", "-q", "-m", subject)
    running = await env.deployed("staging", "git:HEAD~2")
    plan = await env.deployer.plan(DeployRequest("app", "staging", revision="git:HEAD"))
    assert plan["current"]["commit"] == running["revision"]["commit"]
    assert [(c["subject"], c["author"]) for c in plan["diff"]["commits"]] == [
        ("bump to 3", "Ann"),
        ("bump to 2", "Ann"),
    ]
    assert plan["rollback"]["to"]["bundle_stored"] is True
    env.deployer.revisions.path(running["revision"]["sha256"]).unlink()  # bundles can be cleaned up
    plan = await env.deployer.plan(DeployRequest("app", "staging", revision="git:HEAD"))
    assert plan["rollback"]["to"]["bundle_stored"] is False


async def test_history_lists_actor_outcome_duration_and_rollback_links(env: Env) -> None:
    await env.deployed("staging", actor="alice")
    await env.deployed("staging", "rev-b", actor="bob")
    rollback = await env.deployer.rollback("app", "staging", actor="carol")
    await wait_final(env.deployer, rollback["id"])
    history = await env.deployer.history("app", "staging")
    assert [(d["created_by"], d["status"], d["source"]) for d in history] == [
        ("codeDeployRollback", "Succeeded", "rollback"),
        ("bob", "Succeeded", "manual"),
        ("alice", "Succeeded", "manual"),
    ]
    assert all(d["duration_seconds"] > 0 for d in history)
    assert history[0]["rollback"]["of"] == history[1]["id"] and history[1]["rollback"]["by"] == history[0]["id"]


# ---------------------------------------------------------------------------------------------------- restart, stop


async def test_a_restart_keeps_a_deployment_waiting_for_approval(workdir: Path) -> None:
    env = await open_env(workdir, approvals=1)
    waiting = await env.deploy("production", actor="ann")
    await env.deployer.close()
    again = await open_env(workdir, approvals=1)
    try:
        # Opening resumed what was unfinished before it returned: any launch would be under way and logged by now.
        assert again.running("production") is None
        assert "deployment.resumed" not in await again.log_kinds()
        assert (await again.deployer.get(waiting["id"]))["status"] == "WaitingApproval"
        assert await again.deployer.store.list_commands(deployment_id=waiting["id"]) == []
    finally:
        await again.deployer.close()


@pytest.mark.parametrize("env", [{"approvals": 1}], indirect=True)
async def test_a_deployment_waiting_for_approval_can_be_stopped(env: Env) -> None:
    waiting = await env.deploy("production", actor="ann")
    assert (await env.deployer.stop(waiting["id"], actor="ann"))["status"] == "Stopped"
