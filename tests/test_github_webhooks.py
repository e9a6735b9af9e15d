"""Signed webhooks through the real aiohttp app (create_app) and gidgethub's verification, a real Deployer on SQLite,
scripted hosts on the real Fleet, and the fake GitHub API recording every call deploybot makes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import deployer_from, eventually
from fake_github import FakeGitHub, pull_request_payload, push_payload, signed

from bot.app import create_app
from bot.github import GITHUB, GitHubFront, triggers
from bot.settings import Settings
from engine.runtime.deployer import Deployer

SECRET = "webhook-secret"
REPO = "acme/api"
CONFIG = """
server: {data_dir: var}
hosts:
  - {name: s1, tags: {env: staging}}
  - {name: s2, tags: {env: staging}}
  - {name: p1, tags: {env: production}}
applications:
  api:
    environments: [staging, production]
    github:
      repository: acme/api
      auto_deploy: {branch: main, to: staging}
      environment_urls: {staging: "https://staging.example"}
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {tags: {env: staging}}}
      production: {targets: {tags: {env: production}}}
  gated:
    environments: [prod]
    github:
      repository: acme/gated
      auto_deploy: {branch: main, to: prod, require_checks: [ci/test, lint], checks_timeout_minutes: 1}
    deployment_groups:
      prod: {targets: {hosts: [p1]}}
"""
APPSPEC = """version: 0.0
os: linux
files:
  - source: VERSION
    destination: /opt/api
hooks:
  ValidateService:
    - location: scripts/validate.sh
      timeout: 30
"""
BROKEN_APPSPEC = APPSPEC.replace("timeout: 30", "timeout: soon")
SHA1, SHA2 = "a" * 40, "b" * 40


@dataclass
class World:
    client: TestClient[web.Request, web.Application]
    github: FakeGitHub
    deployer: Deployer
    front: GitHubFront

    async def send(self, event: str, payload: dict[str, Any], delivery: str, *, secret: str = SECRET) -> int:
        body, headers = signed(secret, event, payload, delivery)
        async with self.client.post("/github/webhook", data=body, headers=headers) as response:
            return response.status

    async def settle(self) -> None:
        """Every event handled, every started deployment finished, every status posted."""
        notifier = self.front.notifier
        assert notifier is not None

        async def settled() -> bool:
            await self.front.idle()
            rows = await self.deployer.store.list_deployments(limit=50)
            return all(notifier.reported(r["id"]) in ("success", "failure", "error") for r in rows)

        await eventually(settled, "every deployment finished and reported", poll=0.02)

    async def history(self, application: str = "api") -> list[dict[str, Any]]:
        return await self.deployer.history(application)


async def _hosts(deployer: Deployer, names: list[str]) -> None:
    """Each host long-polls the real Fleet and answers every command Succeeded."""

    async def agent(host: str) -> None:
        while True:
            command = await deployer.fleet.next_command(host, wait=0.5)
            if command is not None:
                await deployer.fleet.report_result(host, command["id"], {"status": "Succeeded", "log_tail": ""})

    tasks = [asyncio.ensure_future(agent(h)) for h in names]
    try:
        await asyncio.Event().wait()
    finally:
        for task in tasks:
            task.cancel()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    github = FakeGitHub()
    for sha in (SHA1, SHA2):
        github.commits[sha] = {"appspec.yml": APPSPEC, "VERSION": sha[:7], "scripts/validate.sh": "exit 0\n"}
    await github.start()
    deployer = await deployer_from(CONFIG, tmp_path)
    environ = {"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_TOKEN": "ghp_test", "GITHUB_API_URL": github.url}
    settings = Settings.from_env(environ, data_dir=tmp_path / "var")
    app = create_app(settings, deployer=deployer)
    front = app[GITHUB]
    front.poll_seconds = 0.05
    hosts = asyncio.ensure_future(_hosts(deployer, ["s1", "s2", "p1"]))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield World(client, github, deployer, front)
    hosts.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hosts
    await deployer.close()
    await github.close()


async def test_a_push_to_main_deploys_the_commit_to_staging_and_reports_it(world: World) -> None:
    assert await world.send("push", push_payload(REPO, "main", SHA1), "d-1") == 202
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["environment"], deployment["status"]) == ("staging", "Succeeded")
    assert deployment["created_by"] == "github:octocat"
    assert deployment["revision"]["commit"] == SHA1
    assert deployment["revision"]["source"] == f"github:{REPO}@{SHA1[:12]}"
    [tarball] = world.github.called("GET", f"/repos/{REPO}/tarball/{SHA1}")
    assert tarball.authorization == "token ghp_test"
    [created] = world.github.exactly("POST", f"/repos/{REPO}/deployments")
    assert created.body["ref"] == SHA1 and created.body["environment"] == "staging"
    assert created.body["payload"] == {"deploybot": {"deployment_id": deployment["id"]}}
    states = world.github.deployment_states(1)
    assert states[0] == "queued" and states[-1] == "success"
    assert set(states[1:-1]) == {"in_progress"}
    final = world.github.deployments[1]["statuses"][-1]
    assert final["environment_url"] == "https://staging.example"
    assert f"/deployments/{deployment['id']}" in final["log_url"]  # the deployment's page


async def test_a_newer_success_marks_the_replaced_github_deployment_inactive(world: World) -> None:
    await world.send("push", push_payload(REPO, "main", SHA1), "d-1")
    await world.settle()
    await world.send("push", push_payload(REPO, "main", SHA2), "d-2")
    await world.settle()
    assert world.github.deployment_states(1)[-1] == "inactive"
    assert world.github.deployment_states(2)[-1] == "success"


async def test_redelivery_and_the_same_merge_via_push_and_pull_request_deploy_once(world: World) -> None:
    assert await world.send("push", push_payload(REPO, "main", SHA1), "d-1") == 202
    assert await world.send("push", push_payload(REPO, "main", SHA1), "d-1") == 200  # a redelivery
    merged = pull_request_payload(REPO, 7, "c" * 40, action="closed", merge_sha=SHA1)
    assert await world.send("pull_request", merged, "d-2") == 202
    await world.settle()
    assert len(await world.history()) == 1
    assert len(world.github.exactly("POST", f"/repos/{REPO}/deployments")) == 1
    assert len(world.github.called("GET", f"/repos/{REPO}/tarball")) == 1


async def test_a_merged_pull_request_alone_deploys_its_merge_commit(world: World) -> None:
    merged = pull_request_payload(REPO, 7, "c" * 40, action="closed", merge_sha=SHA2)
    await world.send("pull_request", merged, "d-1")
    await world.settle()
    [deployment] = await world.history()
    assert deployment["revision"]["commit"] == SHA2
    assert deployment["created_by"] == "github:merger"


@pytest.mark.parametrize(
    "payload",
    [
        push_payload(REPO, "feature", SHA1),
        {**push_payload(REPO, "main", SHA1), "ref": "refs/tags/v1"},
        {**push_payload(REPO, "main", "0" * 40), "deleted": True},
        push_payload("acme/unknown", "main", SHA1),
        pull_request_payload(REPO, 7, SHA1, action="closed"),  # closed without merging
    ],
    ids=["other-branch", "tag", "deleted-branch", "unknown-repository", "closed-unmerged"],
)
async def test_events_that_are_not_merges_into_the_branch_deploy_nothing(world: World, payload: dict[str, Any]) -> None:
    event = "pull_request" if "pull_request" in payload else "push"
    assert await world.send(event, payload, "d-1") == 202
    await world.settle()
    assert await world.history() == []
    assert [c for c in world.github.calls if c.method == "POST" or "tarball" in c.path] == []


async def test_red_checks_cancel_the_merge_deployment_with_a_message(world: World) -> None:
    world.github.statuses[SHA1] = [{"context": "ci/test", "state": "failure"}]
    world.github.check_runs[SHA1] = [{"name": "lint", "status": "completed", "conclusion": "success"}]
    await world.send("push", push_payload("acme/gated", "main", SHA1), "d-1")
    await world.settle()
    assert await world.history("gated") == []
    assert world.github.called("GET", "/repos/acme/gated/tarball") == []
    posted = [c.body for c in world.github.called("POST", f"/repos/acme/gated/statuses/{SHA1}")]
    assert posted == [
        {
            "state": "failure",
            "context": "deploybot/auto-deploy/prod",
            "description": "not deployed: check ci/test is failure",
        }
    ]


async def test_pending_checks_are_waited_for_then_the_commit_deploys(world: World) -> None:
    world.github.statuses[SHA1] = [{"context": "ci/test", "state": "pending"}]
    world.github.check_runs[SHA1] = [{"name": "lint", "status": "in_progress", "conclusion": None}]
    await world.send("push", push_payload("acme/gated", "main", SHA1), "d-1")
    checks = f"/repos/acme/gated/commits/{SHA1}/check-runs"
    # A second look at the checks proves the first found them pending and chose to wait (no clock to move: the
    # trigger sleeps on asyncio itself).
    await eventually(lambda: len(world.github.exactly("GET", checks)) >= 2, "the checks are polled twice")
    assert await world.history("gated") == []
    assert world.github.called("GET", "/repos/acme/gated/tarball") == []
    world.github.statuses[SHA1].append({"context": "ci/test", "state": "success"})
    world.github.check_runs[SHA1] = [{"name": "lint", "status": "completed", "conclusion": "success"}]
    await world.settle()
    [deployment] = await world.history("gated")
    assert deployment["status"] == "Succeeded"


async def test_a_locked_environment_refuses_the_merge_and_says_so_on_the_commit(world: World) -> None:
    await world.deployer.release.lock("api", "staging", actor="alice", reason="hotfix")
    await world.send("push", push_payload(REPO, "main", SHA1), "d-1")
    await world.settle()
    assert await world.history() == []
    [status] = [c.body for c in world.github.called("POST", f"/repos/{REPO}/statuses/{SHA1}")]
    assert status["state"] == "error" and status["context"] == "deploybot/auto-deploy/staging"
    assert "not deployed" in status["description"]


async def test_a_tarball_hiccup_is_retried_and_a_lasting_failure_is_said_on_the_commit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triggers, "DOWNLOAD_RETRY_SECONDS", (0.05, 0.05, 0.05))
    world.github.tarball_failures = 2  # two 502s, then the tarball
    await world.send("push", push_payload(REPO, "main", SHA1), "d-1")
    await world.settle()
    [deployment] = await world.history()
    assert deployment["status"] == "Succeeded"

    world.github.tarball_failures = 10  # more than the retries
    await world.send("push", push_payload(REPO, "main", SHA2), "d-2")
    await world.settle()
    assert len(await world.history()) == 1
    [status] = [c.body for c in world.github.called("POST", f"/repos/{REPO}/statuses/{SHA2}")]
    assert status["state"] == "error" and "could not download the commit" in status["description"]


@pytest.mark.parametrize(
    "headers_change",
    [{"X-Hub-Signature-256": "sha256=" + "0" * 64}, {"X-Hub-Signature-256": None}, {"secret": "other"}],
    ids=["wrong", "missing", "other-secret"],
)
async def test_a_bad_signature_is_refused_and_nothing_is_stored(world: World, headers_change: dict[str, Any]) -> None:
    secret = headers_change.get("secret", SECRET)
    body, headers = signed(secret, "push", push_payload(REPO, "main", SHA1), "d-1")
    for name, value in headers_change.items():
        if name != "secret":
            headers.pop(name)
            if value is not None:
                headers[name] = value
    async with world.client.post("/github/webhook", data=body, headers=headers) as response:
        assert response.status == 401
    await world.settle()
    assert await world.history() == []
    assert await world.deployer.store.record_delivery("d-1", "probe", 0.0)  # the id was never recorded


async def test_a_pull_request_with_a_broken_appspec_gets_a_failing_check_run_on_the_right_line(world: World) -> None:
    head = "d" * 40
    world.github.commits[head] = {"appspec.yml": BROKEN_APPSPEC, "VERSION": "2"}
    world.github.pull_files[5] = [{"filename": "appspec.yml", "status": "modified"}]
    assert await world.send("pull_request", pull_request_payload(REPO, 5, head), "d-1") == 202
    await world.settle()
    [call] = world.github.called("POST", f"/repos/{REPO}/check-runs")
    assert call.body["name"] == "deploybot/appspec" and call.body["head_sha"] == head
    assert call.body["conclusion"] == "failure"
    [annotation] = call.body["output"]["annotations"]
    assert annotation["path"] == "appspec.yml"
    assert annotation["start_line"] == 9 and annotation["annotation_level"] == "failure"
    assert "timeout" in annotation["message"]


async def test_without_check_runs_the_appspec_result_is_a_commit_status(world: World) -> None:
    head = "d" * 40
    world.github.check_runs_allowed = False
    world.github.commits[head] = {"appspec.yml": BROKEN_APPSPEC, "VERSION": "2"}
    world.github.pull_files[5] = [{"filename": "appspec.yml", "status": "modified"}]
    await world.send("pull_request", pull_request_payload(REPO, 5, head, action="synchronize"), "d-1")
    await world.settle()
    [call] = world.github.called("POST", f"/repos/{REPO}/statuses/{head}")
    assert call.body["state"] == "failure" and call.body["context"] == "deploybot/appspec"
    assert call.body["description"].startswith("appspec.yml:9:16:")


async def test_a_pull_request_changing_only_a_hook_script_is_checked_and_unrelated_ones_are_not(world: World) -> None:
    head = "e" * 40
    world.github.commits[head] = {"appspec.yml": APPSPEC, "scripts/validate.sh": "exit 0\n"}
    world.github.pull_files[5] = [{"filename": "scripts/validate.sh", "status": "modified"}]
    world.github.pull_files[6] = [{"filename": "README.md", "status": "modified"}]
    await world.send("pull_request", pull_request_payload(REPO, 5, head), "d-1")
    await world.send("pull_request", pull_request_payload(REPO, 6, head), "d-2")
    await world.settle()
    [call] = world.github.called("POST", f"/repos/{REPO}/check-runs")
    assert call.body["conclusion"] == "success"


async def test_a_deployment_created_on_github_is_run_and_reported_on_that_deployment(world: World) -> None:
    payload = {
        "action": "created",
        "deployment": {"id": 4242, "sha": SHA2, "ref": "main", "environment": "Production", "task": "deploy"},
        "repository": {"full_name": REPO},
        "sender": {"login": "ci-bot"},
    }
    payload["deployment"]["creator"] = {"login": "ci-bot"}
    assert await world.send("deployment", payload, "d-1") == 202
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["environment"], deployment["status"]) == ("production", "Succeeded")
    assert deployment["created_by"] == "github:ci-bot"
    assert world.github.exactly("POST", f"/repos/{REPO}/deployments") == []  # adopted, not created
    states = world.github.deployment_states(4242)
    assert states[0] == "queued" and states[-1] == "success"


async def test_deployment_events_for_deploybots_own_or_unknown_environments_are_ignored(world: World) -> None:
    own = {"id": 1, "sha": SHA1, "environment": "staging", "payload": {"deploybot": {"deployment_id": "d-X"}}}
    unknown = {"id": 2, "sha": SHA1, "environment": "qa"}
    for number, deployment in enumerate((own, unknown)):
        payload = {"action": "created", "deployment": deployment, "repository": {"full_name": REPO}}
        await world.send("deployment", payload, f"d-{number}")
    await world.settle()
    assert await world.history() == []
    assert world.github.calls == []
