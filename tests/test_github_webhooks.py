"""Signed webhooks through the real aiohttp app (create_app) and gidgethub's verification, a real Deployer on SQLite,
scripted hosts on the real Fleet, and the fake GitHub API recording every call deploybot makes. Time is a FakeClock:
waits for checks and download retries move only when a test advances it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import FakeClock, deployer_from, eventually
from fake_github import FakeGitHub, pull_request_payload, push_payload, signed

from bot.app import create_app
from bot.github import GITHUB, GitHubFront
from bot.github.triggers import DOWNLOAD_RETRY_SECONDS
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
      production: {targets: {tags: {env: production}}, deployers: [ci-bot]}
  gated:
    environments: [prod]
    github:
      repository: acme/gated
      auto_deploy: {branch: main, to: prod, require_checks: [ci/test, lint], checks_timeout_minutes: 1}
    deployment_groups:
      prod: {targets: {hosts: [p1]}, deployers: [github]}
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
    clock: FakeClock

    async def send(self, event: str, payload: dict[str, Any], delivery: str, *, secret: str = SECRET) -> int:
        return (await self.answer(event, payload, delivery, secret=secret))[0]

    async def answer(
        self, event: str, payload: dict[str, Any], delivery: str, *, secret: str = SECRET
    ) -> tuple[int, dict[str, Any]]:
        body, headers = signed(secret, event, payload, delivery)
        async with self.client.post("/github/webhook", data=body, headers=headers) as response:
            return response.status, await response.json()

    async def later(self, seconds: float) -> None:
        """Move the clock on (a poll, a retry comes due), then let the GitHub work settle."""
        await self.clock.advance(seconds)
        await self.front.idle()

    def commit_statuses(self, sha: str, repository: str = REPO) -> list[tuple[str, str]]:
        """(state, description) of every commit status deploybot posted on ``sha``, in order."""
        return [
            (c.body["state"], c.body["description"])
            for c in self.github.called("POST", f"/repos/{repository}/statuses/{sha}")
        ]

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


def fake_github() -> FakeGitHub:
    """The fake GitHub API holding SHA1 and SHA2 (an AppSpec, VERSION and a passing hook script)."""
    github = FakeGitHub()
    for sha in (SHA1, SHA2):
        github.commits[sha] = {"appspec.yml": APPSPEC, "VERSION": sha[:7], "scripts/validate.sh": "exit 0\n"}
    return github


@asynccontextmanager
async def open_world(
    tmp_path: Path, config: str = CONFIG, *, github: FakeGitHub | None = None, clock: FakeClock | None = None
) -> AsyncIterator[World]:
    """The app for ``config`` on the data dir ``tmp_path/var``, with the fake GitHub (``fake_github()`` unless one
    is given: a restarted server talks to the same one) and hosts s1, s2, p1 answering."""
    own_github = github is None
    if github is None:
        github = fake_github()
        await github.start()
    clock = clock or FakeClock(tick=0.001)  # distinct, ordered timestamps
    deployer = await deployer_from(config, tmp_path, clock=clock)
    environ = {"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_TOKEN": "ghp_test", "GITHUB_API_URL": github.url}
    settings = Settings.from_env(environ, data_dir=tmp_path / "var")
    app = create_app(settings, deployer=deployer)
    front = app[GITHUB]
    hosts = asyncio.ensure_future(_hosts(deployer, ["s1", "s2", "p1"]))
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield World(client, github, deployer, front, clock)
    finally:
        hosts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hosts
        await deployer.close()
        if own_github:
            await github.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as opened:
        yield opened


async def test_a_push_to_main_deploys_the_commit_to_staging_and_reports_it(world: World) -> None:
    assert await world.send("push", push_payload(REPO, "main", SHA1), "d-1") == 202
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["environment"], deployment["status"]) == ("staging", "Succeeded")
    assert deployment["created_by"] == "github"  # the integration user, whoever pushed
    assert deployment["description"] == f"merge into main ({SHA1[:7]}) by octocat"
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
    assert deployment["created_by"] == "github"
    assert deployment["description"].endswith("by merger")


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


async def test_pending_checks_are_polled_on_the_clock_then_the_commit_deploys(world: World) -> None:
    world.github.statuses[SHA1] = [{"context": "ci/test", "state": "pending"}]
    world.github.check_runs[SHA1] = [{"name": "lint", "status": "in_progress", "conclusion": None}]
    await world.send("push", push_payload("acme/gated", "main", SHA1), "d-1")
    await world.front.idle()
    checks = f"/repos/acme/gated/commits/{SHA1}/check-runs"
    await world.later(world.front.poll_seconds)  # the second look, when the clock says so
    assert len(world.github.exactly("GET", checks)) == 2
    assert await world.history("gated") == []
    assert world.github.called("GET", "/repos/acme/gated/tarball") == []
    world.github.statuses[SHA1].append({"context": "ci/test", "state": "success"})
    world.github.check_runs[SHA1] = [{"name": "lint", "status": "completed", "conclusion": "success"}]
    await world.later(world.front.poll_seconds)
    await world.settle()
    [deployment] = await world.history("gated")
    assert deployment["status"] == "Succeeded"
    assert len(world.github.exactly("GET", checks)) == 3


async def test_a_locked_environment_refuses_the_merge_and_says_so_on_the_commit(world: World) -> None:
    await world.deployer.release.lock("api", "staging", actor="alice", reason="hotfix")
    await world.send("push", push_payload(REPO, "main", SHA1), "d-1")
    await world.settle()
    assert await world.history() == []
    [status] = [c.body for c in world.github.called("POST", f"/repos/{REPO}/statuses/{SHA1}")]
    assert status["state"] == "error" and status["context"] == "deploybot/auto-deploy/staging"
    assert "not deployed" in status["description"]


async def test_a_tarball_hiccup_is_retried_on_the_clock_and_a_lasting_failure_is_said_on_the_commit(
    world: World,
) -> None:
    world.github.tarball_failures = 2  # two 502s, then the tarball
    await world.send("push", push_payload(REPO, "main", SHA1), "d-1")
    await world.front.idle()
    tarballs = f"/repos/{REPO}/tarball"
    assert len(world.github.called("GET", tarballs)) == 1
    for pause in DOWNLOAD_RETRY_SECONDS[:2]:
        assert await world.history() == []  # nothing retries before its time
        await world.later(pause)
    await world.settle()
    [deployment] = await world.history()
    assert deployment["status"] == "Succeeded"
    assert len(world.github.called("GET", tarballs)) == 3

    world.github.tarball_failures = 10  # more than the retries
    await world.send("push", push_payload(REPO, "main", SHA2), "d-2")
    await world.front.idle()
    for pause in DOWNLOAD_RETRY_SECONDS:
        await world.later(pause)
    await world.settle()
    assert len(await world.history()) == 1
    assert len(world.github.called("GET", tarballs)) == 3 + 1 + len(DOWNLOAD_RETRY_SECONDS)
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
    assert await world.deployer.store.get_intent("github:delivery:d-1") is None  # the id was never recorded


async def test_a_signed_body_nested_too_deeply_is_a_400_and_nothing_is_stored(world: World) -> None:
    body = ("[" * 100_000 + "]" * 100_000).encode()
    _, headers = signed(SECRET, "push", {}, "d-deep")
    headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    async with world.client.post("/github/webhook", data=body, headers=headers) as response:
        assert (response.status, (await response.json())["error"]) == (
            400,
            "not a GitHub webhook: the JSON nests too deeply",
        )
    assert await world.deployer.store.get_intent("github:delivery:d-deep") is None


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
    assert deployment["created_by"] == "ci-bot"  # no users section: the sender's login is the name
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


# ------------------------------------------------------------------------------------------ who merges and deploys


def permission_config(
    *,
    to: str = "staging",
    staging: str = "",
    production: str = "",
    deploy_as: str = "",
    people: str = "",
    admins: str = "[]",
) -> str:
    """One application, acme/api, whose merges into main deploy ``to`` an environment; ``staging`` and
    ``production`` are extra keys of those groups (``deployers: [...]``), ``people`` a users/roles section."""
    integration = f", deploy_as: {deploy_as}" if deploy_as else ""
    return f"""
server: {{data_dir: var, admins: {admins}}}
{people}
hosts:
  - {{name: s1, tags: {{env: staging}}}}
  - {{name: s2, tags: {{env: staging}}}}
  - {{name: p1, tags: {{env: production}}}}
applications:
  api:
    environments: [staging, production]
    github: {{repository: acme/api, auto_deploy: {{branch: main, to: {to}}}{integration}}}
    deployment_groups:
      staging: {{deployment_config: CodeDeployDefault.AllAtOnce, targets: {{tags: {{env: staging}}}}, {staging}}}
      production: {{targets: {{tags: {{env: production}}}}, {production}}}
"""


# (config, the user the merge acts as, the rule that refuses it or None when it deploys)
MERGE_CASES: dict[str, tuple[str, str, str | None]] = {
    "staging, no list: anyone": (permission_config(), "github", None),
    "staging, integration user listed": (permission_config(staging="deployers: [alice, github]"), "github", None),
    "staging, integration user not listed": (
        permission_config(staging="deployers: [alice]"),
        "github",
        "api-staging.deployers: alice",
    ),
    "production, no list: nobody": (
        permission_config(to="production"),
        "github",
        "api-production has no deployers list: production needs one",
    ),
    "production, integration user listed": (
        permission_config(to="production", production="deployers: [github]"),
        "github",
        None,
    ),
    "production, integration user in a listed role": (
        permission_config(to="production", production="deployers: ['@ci']", people="roles: {ci: [github]}"),
        "github",
        None,
    ),
    "production, integration user is an admin": (permission_config(to="production", admins="[github]"), "github", None),
    "deploy_as, listed": (
        permission_config(to="production", production="deployers: [merge-bot]", deploy_as="merge-bot"),
        "merge-bot",
        None,
    ),
    "deploy_as, only the default listed": (
        permission_config(to="production", production="deployers: [github]", deploy_as="merge-bot"),
        "merge-bot",
        "api-production.deployers: github",
    ),
    "users declared, integration user declared and listed": (
        permission_config(
            to="production", production="deployers: [github]", people="users: {alice: {github: alice-gh}, github: {}}"
        ),
        "github",
        None,
    ),
    "users declared, integration user not declared": (
        permission_config(people="users: {alice: {github: alice-gh}}"),
        "github",
        "github is not a declared user",
    ),
}


@pytest.mark.parametrize(("config", "actor", "rule"), MERGE_CASES.values(), ids=MERGE_CASES.keys())
async def test_a_merge_deploys_as_the_integration_user_if_it_may(
    tmp_path: Path, config: str, actor: str, rule: str | None
) -> None:
    async with open_world(tmp_path, config) as world:
        to = (world.deployer.config.application("api").auto_deploy or {})["to"]
        assert await world.send("push", push_payload(REPO, "main", SHA1), "d-1") == 202
        await world.settle()
        history = await world.history()
        statuses = [c.body for c in world.github.called("POST", f"/repos/{REPO}/statuses/{SHA1}")]
        refusals = [e for e in await world.deployer.store.read_log() if e["kind"] == "deployment.refused"]
        if rule is None:
            [deployment] = history
            assert (deployment["environment"], deployment["status"]) == (to, "Succeeded")
            assert deployment["created_by"] == actor and deployment["source"] == "merge"
            assert statuses == [] and refusals == []
            return
        assert history == []  # refused before anything was downloaded or started
        assert world.github.called("GET", f"/repos/{REPO}/tarball") == []
        assert statuses == [
            {
                "state": "failure",
                "context": f"deploybot/auto-deploy/{to}",
                "description": f"not deployed: {actor} may not deploy ({rule})",
            }
        ]
        [refused] = refusals
        assert refused["actor"] == actor
        assert refused["data"] == {
            "application": "api",
            "environment": to,
            "source": "merge",
            "repository": REPO,
            "commit": SHA1,
            "pushed_by": "octocat",
            "action": "deploy",
            "rule": rule,
            "reason": rule,
        }


def deployment_event(environment: str, sender: str, github_id: int = 4242) -> dict[str, Any]:
    return {
        "action": "created",
        "deployment": {
            "id": github_id,
            "sha": SHA2,
            "ref": "main",
            "environment": environment,
            "task": "deploy",
            "creator": {"login": "someone-else"},  # the sender decides, as the webhook names them
        },
        "repository": {"full_name": REPO},
        "sender": {"login": sender},
    }


USERS = "users: {alice: {github: Alice-GH}, bob: {github: bob-gh}}"
# (config, environment, sender login, the user it acts as, the rule that refuses it or None when it deploys)
DEPLOYMENT_EVENT_CASES: dict[str, tuple[str, str, str, str | None, str | None]] = {
    "free-form login, listed": (
        permission_config(production="deployers: [ci-bot]"),
        "production",
        "ci-bot",
        "ci-bot",
        None,
    ),
    "free-form login, not listed": (
        permission_config(production="deployers: [ci-bot]"),
        "production",
        "mallory",
        "mallory",
        "api-production.deployers: ci-bot",
    ),
    "mapped login (any case), listed": (
        permission_config(production="deployers: [alice]", people=USERS),
        "production",
        "alice-gh",
        "alice",
        None,
    ),
    "mapped login, not listed": (
        permission_config(production="deployers: [alice]", people=USERS),
        "production",
        "bob-gh",
        "bob",
        "api-production.deployers: alice",
    ),
    "mapped login, staging without a list": (permission_config(people=USERS), "staging", "bob-gh", "bob", None),
    "mapped login, production without a list": (
        permission_config(people=USERS),
        "production",
        "alice-gh",
        "alice",
        "api-production has no deployers list: production needs one",
    ),
    "unmapped login": (
        permission_config(people=USERS),
        "staging",
        "octocat",
        None,
        "GitHub user octocat is not mapped to a deploybot user; ask an admin to add `github: octocat` under users:",
    ),
}


@pytest.mark.parametrize(
    ("config", "environment", "sender", "actor", "rule"),
    DEPLOYMENT_EVENT_CASES.values(),
    ids=DEPLOYMENT_EVENT_CASES.keys(),
)
async def test_a_github_deployment_acts_as_its_senders_user_if_they_may(
    tmp_path: Path, config: str, environment: str, sender: str, actor: str | None, rule: str | None
) -> None:
    async with open_world(tmp_path, config) as world:
        assert await world.send("deployment", deployment_event(environment, sender), "d-1") == 202
        await world.settle()
        history = await world.history()
        statuses = world.github.deployments[4242]["statuses"]
        refusals = [e for e in await world.deployer.store.read_log() if e["kind"] == "deployment.refused"]
        if rule is None:
            [deployment] = history
            assert (deployment["environment"], deployment["status"]) == (environment, "Succeeded")
            assert deployment["created_by"] == actor
            assert statuses[-1]["state"] == "success" and refusals == []
            return
        assert history == [] and world.github.called("GET", f"/repos/{REPO}/tarball") == []
        said = f"not deployed: {actor} may not deploy ({rule})" if actor else f"not deployed: {rule}"
        assert [(s["state"], s["description"]) for s in statuses] == [("failure", said[:140])]
        [refused] = refusals
        assert refused["actor"] == (actor or sender)
        assert (refused["data"]["rule"], refused["data"]["source"]) == (rule, "github-deployment")
