"""GitHub merges as stored intents: they survive a restart, follow push order (a newer commit supersedes an older one
not yet started), show their wait for checks on the commit and in the queue, are looked at again on check events,
re-tried on a redelivery or a green re-run, and every GitHub deployment ends with a status saying why.

The same world as tests/test_github_webhooks.py: the real app fed signed webhooks, a real Deployer on SQLite, the
fake GitHub API, and a FakeClock for every wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from fake_github import FakeGitHub, check_run_payload, deployment_payload, push_payload, status_payload
from test_github_webhooks import APPSPEC, REPO, SHA1, SHA2, World, fake_github, open_world

from bot.cli import main

GATED = "acme/gated"
SHA3 = "c" * 40


def merge_key(sha: str, repository: str = GATED) -> str:
    application, environment = ("gated", "prod") if repository == GATED else ("api", "staging")
    return f"github:merge:{repository}:{application}:{environment}:{sha}"


def checks_pending(github: FakeGitHub, sha: str) -> None:
    github.statuses[sha] = [{"context": "ci/test", "state": "pending"}]
    github.check_runs[sha] = [{"name": "lint", "status": "in_progress", "conclusion": None}]


def checks_green(github: FakeGitHub, sha: str) -> None:
    github.statuses.setdefault(sha, []).append({"context": "ci/test", "state": "success"})
    github.check_runs[sha] = [{"name": "lint", "status": "completed", "conclusion": "success"}]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as opened:
        yield opened


async def intent(world: World, key: str) -> dict[str, Any]:
    row = await world.deployer.store.get_intent(key)
    assert row is not None, key
    return row


async def test_a_merge_waiting_for_checks_survives_a_restart_and_deploys_once_on_the_checks_success(
    tmp_path: Path,
) -> None:
    github = fake_github()
    await github.start()
    try:
        checks_pending(github, SHA1)
        async with open_world(tmp_path, github=github) as world:
            assert await world.send("push", push_payload(GATED, "main", SHA1), "d-1") == 202
            await world.front.idle()
            assert (await intent(world, merge_key(SHA1)))["state"] == "waiting"
        # The server is gone (its workers cancelled mid-wait): the merge is only in the store now.
        async with open_world(tmp_path, github=github) as world:
            await world.front.idle()  # resumed: it looked at the checks again, still pending
            assert len(github.exactly("GET", f"/repos/{GATED}/commits/{SHA1}/check-runs")) == 2
            assert (await intent(world, merge_key(SHA1)))["state"] == "waiting"
            assert await world.history("gated") == []
            checks_green(github, SHA1)
            assert await world.send("check_run", check_run_payload(GATED, SHA1, "lint", "success"), "d-2") == 202
            await world.settle()
            [deployment] = await world.history("gated")
            assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", SHA1)
            assert len(github.called("GET", f"/repos/{GATED}/tarball/{SHA1}")) == 1
            done = await intent(world, merge_key(SHA1))
            assert (done["state"], done["outcome"]["deployment"]) == ("done", deployment["id"])
            assert world.commit_statuses(SHA1, GATED) == [
                ("pending", "waiting for ci/test, lint"),
                ("success", f"deploying as {deployment['id']}"),
            ]
            assert await world.send("push", push_payload(GATED, "main", SHA1), "d-1") == 200  # redelivered: done
            await world.settle()
            assert len(await world.history("gated")) == 1
    finally:
        await github.close()


async def test_a_restart_resumes_a_merge_whose_checks_turned_green_while_the_server_was_down(tmp_path: Path) -> None:
    github = fake_github()
    await github.start()
    try:
        checks_pending(github, SHA1)
        async with open_world(tmp_path, github=github) as world:
            await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
            await world.front.idle()
        checks_green(github, SHA1)  # GitHub's status event went to a server that was not there
        async with open_world(tmp_path, github=github) as world:
            await world.settle()
            [deployment] = await world.history("gated")
            assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", SHA1)
    finally:
        await github.close()


async def test_a_restart_right_after_a_merge_started_its_deployment_does_not_start_another(tmp_path: Path) -> None:
    github = fake_github()
    await github.start()
    try:
        async with open_world(tmp_path, github=github) as world:
            await world.send("push", push_payload(REPO, "main", SHA1), "d-1")
            await world.settle()
            [deployment] = await world.history()
            # As if the server died between Deployer.start and recording it: the intent still says "starting".
            key, asked_at = merge_key(SHA1, REPO), deployment["created_at"] - 0.0005
            starting = {"phase": "starting", "sha256": deployment["revision"]["sha256"], "asked_at": asked_at}
            await world.deployer.store.move_intent(key, "running", at=world.clock.now(), outcome=starting)
        async with open_world(tmp_path, github=github) as world:
            await world.settle()
            assert [d["id"] for d in await world.history()] == [deployment["id"]]
            done = await intent(world, key)
            assert (done["state"], done["outcome"]) == ("done", {"deployment": deployment["id"]})
            assert len(github.called("GET", f"/repos/{REPO}/tarball/{SHA1}")) == 1
    finally:
        await github.close()


async def test_a_check_event_looks_at_a_waiting_merge_at_once(world: World) -> None:
    checks_pending(world.github, SHA1)
    await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
    await world.front.idle()
    checks_green(world.github, SHA1)
    assert await world.send("status", status_payload(GATED, SHA1, "ci/test", "success"), "d-2") == 202
    await world.settle()  # no clock moved: the status event itself made it look
    [deployment] = await world.history("gated")
    assert deployment["status"] == "Succeeded"


async def test_push_a_with_a_slow_download_then_b_ends_on_b_and_a_is_never_deployed(world: World) -> None:
    slow = world.github.tarball_gates[SHA1] = asyncio.Event()
    assert await world.send("push", push_payload(REPO, "main", SHA1), "d-1") == 202
    await eventually(lambda: world.github.called("GET", f"/codeload/acme/api/{SHA1}"), "A's download started")
    assert await world.send("push", push_payload(REPO, "main", SHA2), "d-2") == 202
    await world.settle()
    slow.set()  # A's tarball arrives after all: too late
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", SHA2)
    [created] = world.github.exactly("POST", f"/repos/{REPO}/deployments")
    assert created.body["ref"] == SHA2
    older = await intent(world, merge_key(SHA1, REPO))
    assert (older["state"], older["outcome"]["by"]) == ("superseded", SHA2)
    assert world.commit_statuses(SHA1) == [("error", f"not deployed: superseded by {SHA2[:7]}")]


async def test_a_newer_merge_supersedes_one_waiting_for_checks(world: World) -> None:
    checks_pending(world.github, SHA1)
    checks_pending(world.github, SHA2)
    await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
    await world.front.idle()
    await world.send("push", push_payload(GATED, "main", SHA2), "d-2")
    await world.front.idle()
    assert (await intent(world, merge_key(SHA1)))["state"] == "superseded"
    assert (await intent(world, merge_key(SHA2)))["state"] == "waiting"
    assert world.commit_statuses(SHA1, GATED) == [
        ("pending", "waiting for ci/test, lint"),
        ("error", f"not deployed: superseded by {SHA2[:7]}"),
    ]
    checks_green(world.github, SHA1)  # the older commit's checks turn green: it stays superseded
    await world.send("status", status_payload(GATED, SHA1, "ci/test", "success"), "d-3")
    await world.settle()
    assert await world.history("gated") == []


async def test_a_merge_waiting_for_checks_shows_a_pending_commit_status_until_it_times_out(world: World) -> None:
    checks_pending(world.github, SHA1)
    await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
    await world.front.idle()
    [posted] = world.github.called("POST", f"/repos/{GATED}/statuses/{SHA1}")
    assert posted.body == {
        "state": "pending",
        "context": "deploybot/auto-deploy/prod",
        "description": "waiting for ci/test, lint",
    }
    await world.later(world.front.poll_seconds)
    assert len(world.commit_statuses(SHA1, GATED)) == 1  # looked again, nothing new to say
    world.github.statuses[SHA1].append({"context": "ci/test", "state": "success"})
    await world.later(world.front.poll_seconds)
    assert world.commit_statuses(SHA1, GATED)[-1] == ("pending", "waiting for lint")
    for _ in range(3):  # gated's checks_timeout_minutes is 1
        await world.later(world.front.poll_seconds)
    assert world.commit_statuses(SHA1, GATED)[-1] == ("failure", "not deployed: timed out waiting for lint")
    timed_out = await intent(world, merge_key(SHA1))
    assert (timed_out["state"], timed_out["outcome"]["reason"]) == ("failed", "timeout")
    assert await world.history("gated") == []


async def test_a_github_deployment_whose_tarball_is_missing_gets_a_failure_status(world: World) -> None:
    missing = "f" * 40
    assert await world.send("deployment", deployment_payload(REPO, missing, "staging"), "d-1") == 202
    await world.settle()
    assert await world.history() == []
    statuses = world.github.deployments[4242]["statuses"]
    reason = f"not deployed: commit {missing[:7]} not found in {REPO} (HTTP 404)"
    assert [(s["state"], s["description"]) for s in statuses] == [("failure", reason)]
    assert len(world.github.called("GET", f"/repos/{REPO}/tarball/{missing}")) == 1  # a 404 is not retried
    failed = await intent(world, f"github:deployment:{REPO}:4242")
    assert (failed["state"], failed["outcome"]["reason"]) == ("failed", "download")


async def test_a_green_rerun_after_a_red_check_deploys_the_merge(world: World) -> None:
    world.github.statuses[SHA1] = [{"context": "ci/test", "state": "failure"}]
    world.github.check_runs[SHA1] = [{"name": "lint", "status": "completed", "conclusion": "success"}]
    await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
    await world.settle()
    red = await intent(world, merge_key(SHA1))
    assert (red["state"], red["outcome"]["reason"]) == ("failed", "red")
    await world.send("status", status_payload(GATED, SHA1, "ci/test", "failure"), "d-2")  # red again: nothing
    await world.settle()
    assert (await intent(world, merge_key(SHA1)))["state"] == "failed"
    world.github.statuses[SHA1].append({"context": "ci/test", "state": "success"})  # the re-run passed
    assert await world.send("status", status_payload(GATED, SHA1, "ci/test", "success"), "d-3") == 202
    await world.settle()
    [deployment] = await world.history("gated")
    assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", SHA1)
    assert world.commit_statuses(SHA1, GATED) == [
        ("failure", "not deployed: check ci/test is failure"),
        ("success", f"deploying as {deployment['id']}"),
    ]


async def test_a_redelivery_of_a_merge_that_failed_tries_it_again(world: World) -> None:
    assert await world.send("push", push_payload(REPO, "main", SHA3), "d-1") == 202  # not on GitHub (yet)
    await world.settle()
    assert world.commit_statuses(SHA3) == [
        ("failure", f"not deployed: commit {SHA3[:7]} not found in {REPO} (HTTP 404)")
    ]
    world.github.commits[SHA3] = {"appspec.yml": APPSPEC, "VERSION": "3", "scripts/validate.sh": "exit 0\n"}
    assert await world.answer("push", push_payload(REPO, "main", SHA3), "d-1") == (
        202,
        {"ok": True, "retrying": [merge_key(SHA3, REPO)]},
    )
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", SHA3)
    assert await world.answer("push", push_payload(REPO, "main", SHA3), "d-1") == (200, {"ok": True, "duplicate": True})


async def test_a_redelivery_of_a_merge_still_going_stays_a_duplicate(world: World) -> None:
    checks_pending(world.github, SHA1)
    await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
    await world.front.idle()
    assert await world.answer("push", push_payload(GATED, "main", SHA1), "d-1") == (
        200,
        {"ok": True, "duplicate": True},
    )
    assert (await intent(world, merge_key(SHA1)))["state"] == "waiting"


async def test_a_merge_waiting_for_checks_is_listed_by_the_queue_api_and_the_cli(
    world: World, monkeypatch: Any, capsys: Any
) -> None:
    checks_pending(world.github, SHA1)
    await world.send("push", push_payload(GATED, "main", SHA1), "d-1")
    await world.front.idle()
    token = (await world.deployer.tokens.create("alice", name="test"))[1]
    headers = {"Authorization": f"Bearer {token}"}
    async with world.client.get("/api/v1/queue", headers=headers) as response:
        assert response.status == 200
        [entry] = (await response.json())["queue"]
    waiting = await intent(world, merge_key(SHA1))
    assert entry == {
        "kind": "merge",
        "id": f"{GATED}@{SHA1[:7]}",
        "intent": merge_key(SHA1),
        "application": "gated",
        "environment": "prod",
        "repository": GATED,
        "commit": SHA1,
        "status": "WaitingForChecks",
        "created_by": "github",
        "created_at": waiting["created_at"],
        "since": waiting["created_at"],
        "next_look_at": waiting["not_before"],
        "waiting_for": {"message": "waiting for ci/test, lint"},
    }
    async with world.client.get("/api/v1/queue?application=api", headers=headers) as response:
        assert (await response.json())["queue"] == []

    monkeypatch.setenv("DEPLOYBOT_TOKEN", token)
    monkeypatch.delenv("DEPLOYBOT_URL", raising=False)
    url = str(world.client.make_url("/")).rstrip("/")
    for command in ("queue", "status"):
        capsys.readouterr()
        assert await asyncio.to_thread(main, [command, "--server", url]) == 0
        out = capsys.readouterr().out
        assert f"{GATED}@{SHA1[:7]}" in out and "WaitingForChecks" in out, out
        assert "waiting for ci/test, lint" in out
