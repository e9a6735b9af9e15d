"""Deploy from a pull-request comment: signed ``issue_comment`` webhooks into the real app (gidgethub's verification),
a real Deployer on SQLite with answering hosts, and the fake GitHub API (pull requests, collaborators' permissions,
reactions, comments created and edited). The world of tests/test_github_webhooks.py, with people and checks.

Decided for a comment on a plain issue (no pull request): ``/deploy to ENV`` is answered that it needs a pull
request; help, plan and rollback need none and are answered as anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import engine_config
from fake_github import FakeGitHub, issue_comment_payload, push_payload, status_payload
from test_github_webhooks import REPO, SHA1, SHA2, World, fake_github, open_world

from bot.github.pr_comments import command_line, parse_comment
from engine import ConfigError

CONFIG = """
server: {data_dir: var, admins: [carol]}
users:
  alice: {github: alice}
  bob: {github: bob}
  carol: {github: carol}
  dave: {github: dave}
  github: {}
hosts:
  - {name: s1, tags: {env: staging}}
  - {name: s2, tags: {env: staging}}
  - {name: p1, tags: {env: production}}
applications:
  api:
    environments: [staging, production]
    github:
      repository: acme/api
      auto_deploy: {branch: main, to: staging, require_checks: [ci/test]}
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: staging}}
        deployers: [alice, bob, carol, github]
      production: {targets: {tags: {env: production}}, deployers: [alice]}
"""
PR = 12
HEAD = SHA2  # the pull request's head commit
MERGED = SHA1  # what main holds


def github_world() -> FakeGitHub:
    github = fake_github()
    github.pulls[PR] = {"state": "open", "head": {"sha": HEAD, "ref": "feature"}}
    github.permissions.update({"alice": "write", "bob": "read", "carol": "admin", "dave": "write", "erin": "write"})
    for sha in (HEAD, MERGED):
        green(github, sha)
    return github


def green(github: FakeGitHub, sha: str) -> None:
    github.statuses[sha] = [{"context": "ci/test", "state": "success"}]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    github = github_world()
    await github.start()
    try:
        async with open_world(tmp_path, CONFIG, github=github) as opened:
            yield opened
    finally:
        await github.close()


async def comment(world: World, body: str, *, delivery: str = "c-1", **options: Any) -> int:
    payload = issue_comment_payload(REPO, options.pop("number", PR), body, **options)
    return await world.send("issue_comment", payload, delivery)


def replies(world: World) -> list[dict[str, Any]]:
    """The comments deploybot created (its replies), oldest first."""
    return [c.body for c in world.github.exactly("POST", f"/repos/{REPO}/issues/{PR}/comments")]


def the_reply(world: World, number: int = PR) -> str:
    """The one reply comment deploybot made, as it reads now."""
    made = [c for c in world.github.comments.values() if c["number"] == number]
    assert len(made) == 1, made
    return str(made[0]["body"])


async def test_a_collaborator_with_write_deploys_the_pull_requests_head(world: World) -> None:
    assert await comment(world, "/deploy to staging") == 202
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["environment"], deployment["status"]) == ("staging", "Succeeded")
    assert deployment["revision"]["commit"] == HEAD
    assert deployment["created_by"] == "alice"
    assert deployment["description"] == f"PR #{PR} (head {HEAD[:7]}) by @alice"
    assert world.github.reactions == [(501, "eyes")]
    [reply_id] = world.github.comments
    bodies = world.github.comment_bodies[reply_id]
    assert len(bodies) > 1  # created, then edited as the deployment moved
    final = bodies[-1]
    assert "api → staging: Succeeded" in final
    assert f"/deployments/{deployment['id']}" in final  # the page
    assert "`/deploy rollback api in staging`" in final
    assert "<!-- deploybot:reply-to:501 -->" in final
    [created] = world.github.exactly("POST", f"/repos/{REPO}/deployments")
    assert created.body["ref"] == HEAD and created.body["environment"] == "staging"
    assert created.body["description"] == f"PR #{PR} (head {HEAD[:7]}) by @alice"
    states = world.github.deployment_states(1)
    assert states[0] == "queued" and states[-1] == "success"
    [tarball] = world.github.called("GET", f"/repos/{REPO}/tarball/{HEAD}")
    assert tarball.authorization == "token ghp_test"


async def test_a_commenter_with_read_permission_is_refused_naming_the_rule(world: World) -> None:
    await comment(world, "/deploy to staging", login="bob")
    await world.settle()
    assert await world.history() == []
    reply = the_reply(world)
    assert "@bob has read permission on acme/api; this needs write" in reply
    assert "github.comment_permission of api: write" in reply
    assert world.github.called("GET", f"/repos/{REPO}/tarball") == []
    assert world.github.exactly("POST", f"/repos/{REPO}/deployments") == []
    [refusal] = [e for e in await world.deployer.store.read_log() if e["kind"] == "deployment.refused"]
    assert refusal["actor"] == "bob" and refusal["data"]["rule"] == "github.comment_permission of api: write"


@pytest.mark.parametrize(
    ("login", "said"),
    [
        ("dave", "dave may not deploy there (api-staging.deployers: alice, bob, carol, github)"),
        ("erin", "GitHub user erin is not mapped to a deploybot user; ask an admin to add `github: erin`"),
    ],
    ids=["not-a-deployer", "not-mapped"],
)
async def test_the_policy_refusing_the_login_is_said_in_the_reply(world: World, login: str, said: str) -> None:
    await comment(world, "/deploy to staging", login=login)
    await world.settle()
    assert await world.history() == []
    assert said in the_reply(world)
    assert world.github.called("GET", f"/repos/{REPO}/tarball") == []


async def test_failing_required_checks_refuse(world: World) -> None:
    world.github.statuses[HEAD] = [{"context": "ci/test", "state": "failure"}]
    await comment(world, "/deploy to staging")
    await world.settle()
    assert await world.history() == []
    assert "not deployed: check ci/test is failure" in the_reply(world)
    assert "an admin may add --force" in the_reply(world)


async def test_force_by_an_admin_skips_failing_checks(world: World) -> None:
    world.github.statuses[HEAD] = [{"context": "ci/test", "state": "failure"}]
    await comment(world, "/deploy to staging --force", login="carol")
    await world.settle()
    [deployment] = await world.history()
    assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", HEAD)
    assert "api → staging: Succeeded" in the_reply(world)


async def test_force_by_a_non_admin_is_refused(world: World) -> None:
    world.github.statuses[HEAD] = [{"context": "ci/test", "state": "failure"}]
    await comment(world, "/deploy to staging --force", login="alice")
    await world.settle()
    assert await world.history() == []
    assert "only admins may skip the required checks with --force" in the_reply(world)


async def test_pending_checks_are_waited_for_and_a_green_status_deploys(world: World) -> None:
    world.github.statuses[HEAD] = [{"context": "ci/test", "state": "pending"}]
    await comment(world, "/deploy to staging")
    await world.front.idle()
    assert "waiting for ci/test (required checks)" in the_reply(world)
    assert await world.history() == []
    green(world.github, HEAD)
    assert await world.send("status", status_payload(REPO, HEAD, "ci/test", "success"), "s-1") == 202
    await world.settle()
    [deployment] = await world.history()
    assert deployment["revision"]["commit"] == HEAD
    assert "api → staging: Succeeded" in the_reply(world)


async def test_a_redelivery_deploys_once_and_answers_once(world: World) -> None:
    assert await comment(world, "/deploy to staging", delivery="c-1") == 202
    assert await comment(world, "/deploy to staging", delivery="c-1") == 200  # GitHub's Redeliver
    await world.settle()
    assert await comment(world, "/deploy to staging", delivery="c-1") == 200  # again, once it is done
    assert await comment(world, "/deploy to staging", delivery="c-2") == 202  # the same comment, another delivery
    await world.settle()
    assert len(await world.history()) == 1
    assert len(replies(world)) == 1
    assert len(world.github.called("GET", f"/repos/{REPO}/tarball")) == 1


async def test_a_restart_resumes_a_comment_waiting_for_checks_and_deploys_it_once(tmp_path: Path) -> None:
    github = github_world()
    github.statuses[HEAD] = [{"context": "ci/test", "state": "pending"}]
    await github.start()
    try:
        async with open_world(tmp_path, CONFIG, github=github) as world:
            await comment(world, "/deploy to staging")
            await world.front.idle()
            assert "waiting for ci/test" in the_reply(world)
        green(github, HEAD)  # while the server was down
        async with open_world(tmp_path, CONFIG, github=github) as world:
            await world.settle()
            [deployment] = await world.history()
            assert deployment["revision"]["commit"] == HEAD
            assert "api → staging: Succeeded" in the_reply(world)  # the same reply, edited
            assert len(replies(world)) == 1
            assert len(github.exactly("GET", f"/repos/{REPO}/pulls/{PR}")) == 1  # the head was read once
    finally:
        await github.close()


async def test_a_restart_right_after_the_reply_was_made_finds_it_instead_of_making_another(tmp_path: Path) -> None:
    github = github_world()
    github.statuses[HEAD] = [{"context": "ci/test", "state": "pending"}]
    await github.start()
    key = f"github:comment:{REPO}:501"
    try:
        async with open_world(tmp_path, CONFIG, github=github) as world:
            await comment(world, "/deploy to staging")
            await world.front.idle()
            # As if the server died between creating the reply and recording its id.
            crashed = {"reply": "creating", "sha": HEAD}
            await world.deployer.store.move_intent(key, "running", at=world.clock.now(), outcome=crashed)
        green(github, HEAD)
        async with open_world(tmp_path, CONFIG, github=github) as world:
            await world.settle()
            assert len(await world.history()) == 1
            assert len(replies(world)) == 1  # found by its marker, and edited
            assert github.exactly("GET", f"/repos/{REPO}/issues/{PR}/comments")
            assert "api → staging: Succeeded" in the_reply(world)
    finally:
        await github.close()


async def test_a_restart_right_after_the_deployment_started_does_not_start_another(tmp_path: Path) -> None:
    github = github_world()
    await github.start()
    key = f"github:comment:{REPO}:501"
    try:
        async with open_world(tmp_path, CONFIG, github=github) as world:
            await comment(world, "/deploy to staging")
            await world.settle()
            [deployment] = await world.history()
            done = await world.deployer.store.get_intent(key)
            assert done is not None and done["outcome"]["deployment"] == deployment["id"]
            # As if the server died between Deployer.start and recording it: the intent still says "starting".
            starting = {
                "phase": "starting",
                "sha256": deployment["revision"]["sha256"],
                "asked_at": deployment["created_at"] - 0.0005,
                "reply_id": done["outcome"]["reply_id"],
                "sha": HEAD,
            }
            await world.deployer.store.move_intent(key, "running", at=world.clock.now(), outcome=starting)
        async with open_world(tmp_path, CONFIG, github=github) as world:
            await world.settle()
            assert [d["id"] for d in await world.history()] == [deployment["id"]]
            resumed = await world.deployer.store.get_intent(key)
            assert resumed is not None
            assert (resumed["state"], resumed["outcome"]["deployment"]) == ("done", deployment["id"])
            assert len(replies(world)) == 1
            assert len(github.called("GET", f"/repos/{REPO}/tarball/{HEAD}")) == 1
    finally:
        await github.close()


@pytest.mark.parametrize(
    "payload",
    [
        issue_comment_payload(REPO, PR, "LGTM, ship it"),
        issue_comment_payload(REPO, PR, "please run /deploy to staging"),
        issue_comment_payload(REPO, PR, "/deploy to staging", action="edited"),
        issue_comment_payload(REPO, PR, "/deploy to staging", sender_type="Bot"),
        issue_comment_payload("acme/unknown", PR, "/deploy to staging"),
    ],
    ids=["prose", "not-first", "edited", "a-bot", "unknown-repository"],
)
async def test_a_comment_that_is_not_a_command_gets_nothing_at_all(world: World, payload: dict[str, Any]) -> None:
    assert await world.send("issue_comment", payload, "c-1") == 202
    await world.settle()
    assert world.github.calls == []  # no reaction, no reply, nothing read
    assert await world.history() == []


async def test_help_is_answered_with_a_comment(world: World) -> None:
    await comment(world, "/deploy help")
    await world.settle()
    reply = the_reply(world)
    assert "`/deploy to ENV [with CONFIG]`" in reply and "`/deploy rollback [APP] in ENV`" in reply
    assert world.github.reactions == [(501, "eyes")]
    assert await world.history() == []


async def test_a_command_that_does_not_parse_is_answered_with_what_is_wrong(world: World) -> None:
    await comment(world, "/deploy to stagign")
    await world.settle()
    reply = the_reply(world)
    assert "unknown environment 'stagign' of api (did you mean staging?)" in reply
    assert await world.history() == []


async def test_deploy_on_a_plain_issue_is_answered_that_it_needs_a_pull_request(world: World) -> None:
    await comment(world, "/deploy to staging", number=7, on_pull=False)
    await world.settle()
    assert "#7 is an issue, not a pull request" in the_reply(world, 7)
    assert await world.history() == []
    assert world.github.called("GET", f"/repos/{REPO}/pulls") == []


async def test_plan_is_answered_with_the_plan(world: World) -> None:
    await comment(world, "/deploy plan to staging")
    await world.settle()
    reply = the_reply(world)
    assert "**Plan: api → staging** (CodeDeployDefault.AllAtOnce)" in reply
    assert f"this pull request's head `{HEAD[:7]}`" in reply
    assert "batch 1: s1, s2" in reply
    assert await world.history() == []
    assert world.github.called("GET", f"/repos/{REPO}/tarball") == []


async def test_rollback_from_a_comment_rolls_the_environment_back(world: World) -> None:
    await world.send("push", push_payload(REPO, "main", MERGED), "p-1")
    await world.settle()
    await comment(world, "/deploy to staging", comment_id=501, delivery="c-1")
    await world.settle()
    await comment(world, "/deploy rollback in staging", comment_id=502, delivery="c-2")
    await world.settle()
    rollback, pr_deploy, merge = await world.history()
    assert pr_deploy["revision"]["commit"] == HEAD and merge["revision"]["commit"] == MERGED
    assert rollback["status"] == "Succeeded" and rollback["revision"]["commit"] == MERGED
    [pr_reply, rollback_reply] = world.github.comments.values()
    assert f"Rollback [{rollback['id']}](" in rollback_reply["body"]
    assert f"of {pr_deploy['id']}, asked by @alice" in rollback_reply["body"]
    assert "`/deploy rollback api in staging`" in pr_reply["body"]
    assert "api → staging: Succeeded" in rollback_reply["body"]
    where = await world.deployer.release.where("api")
    assert where["environments"][0]["revision"]["commit"] == MERGED


async def test_a_merge_deploy_replaces_the_pull_request_deploy_in_where(world: World) -> None:
    await comment(world, "/deploy to staging")
    await world.settle()
    [pr_deploy] = await world.history()
    staging = (await world.deployer.release.where("api"))["environments"][0]
    assert (staging["deployment_id"], staging["revision"]["commit"]) == (pr_deploy["id"], HEAD)
    assert staging["deployed_by"] == "alice"
    assert staging["description"] == f"PR #12 (head {HEAD[:7]}) by @alice"
    await world.send("push", push_payload(REPO, "main", MERGED), "p-1")
    await world.settle()
    merge, _ = await world.history()
    staging = (await world.deployer.release.where("api"))["environments"][0]
    assert (staging["deployment_id"], staging["revision"]["commit"]) == (merge["id"], MERGED)
    assert world.github.deployment_states(1)[-1] == "inactive"  # the PR's GitHub deployment was replaced
    assert world.github.deployment_states(2)[-1] == "success"


async def test_comment_permission_is_configurable_per_application(tmp_path: Path) -> None:
    stricter = CONFIG.replace("repository: acme/api\n", "repository: acme/api\n      comment_permission: maintain\n")
    github = github_world()
    await github.start()
    try:
        async with open_world(tmp_path, stricter, github=github) as world:
            await comment(world, "/deploy to staging")  # alice has write
            await world.settle()
            assert "@alice has write permission on acme/api; this needs maintain" in the_reply(world)
            assert await world.history() == []
    finally:
        await github.close()


def test_comment_permission_takes_write_maintain_or_admin(tmp_path: Path) -> None:
    assert engine_config(CONFIG, tmp_path).application("api").github_comment_permission == "write"
    wrong = CONFIG.replace("repository: acme/api\n", "repository: acme/api\n      comment_permission: triage\n")
    with pytest.raises(ConfigError, match="expected one of write, maintain, admin"):
        engine_config(wrong, tmp_path)


async def test_a_closed_pull_request_is_not_deployed(world: World) -> None:
    world.github.pulls[PR]["state"] = "closed"
    await comment(world, "/deploy to staging")
    await world.settle()
    assert "not deployed: pull request #12 is closed" in the_reply(world)
    assert await world.history() == []


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("/deploy to staging", "to staging"),
        ("\n  /Deploy   help  \nthanks!", "help"),
        ("/deploy", ""),
        ("/deployment to staging", None),
        ("Looks good.\n/deploy to staging", None),
        ("", None),
    ],
)
def test_a_command_is_a_first_line_starting_with_deploy(body: str, line: str | None) -> None:
    assert command_line(body) == line


def test_the_application_may_be_left_out_only_when_the_repository_feeds_one(tmp_path: Path) -> None:
    one = engine_config(CONFIG, tmp_path)
    assert parse_comment(one, REPO, "to Staging --force").command is not None
    assert parse_comment(one, REPO, "to Staging --force").force
    second = "\n  worker:\n    environments: [staging]\n    github: {repository: acme/api}\n"
    second += "    deployment_groups:\n      staging: {targets: {tags: {env: staging}}}\n"
    two = engine_config(CONFIG + second, tmp_path)
    asked = parse_comment(two, REPO, "to staging")
    assert asked.command is None
    assert asked.problem == "acme/api feeds several applications (api, worker): name one, as in `/deploy api to ENV`"
    assert parse_comment(two, REPO, "worker to staging").command is not None
    assert "unknown application 'other'" in str(parse_comment(two, REPO, "other to staging").problem)
