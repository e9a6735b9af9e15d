"""Slack requests are durable, idempotent intents, through the real door (signed requests, the real bolt app, SQLite):
a replay of a signed command inside Slack's 5-minute window never acts twice and is told what came of the first;
deliberate repeats (a new invocation, a new ``trigger_id``) are new requests; and what a server took but did not do
is done once after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_slack import FakeSlack
from slack_support import new_trigger_id, open_slack_rig, signed, slash_body

from bot.slack.intents import Asked, SlackIntents, command_key
from engine import DeployRequest

CONFIG = """
server: {data_dir: var}
users:
  alice: {slack: U0ALICE}
  bob: {slack: U0BOB}
hosts: [{name: s1}, {name: s2}]
applications:
  app:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1, s2]}}
"""


@pytest.mark.parametrize("late", [31, 240], ids=["31 s later", "4 minutes later"])
async def test_a_replayed_signed_deploy_starts_nothing_and_says_what_came_of_the_first(
    tmp_path: Path, late: int
) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        body = slash_body("app to staging", response_url=rig.slack.response_url("first"))
        headers = signed(body, ts=time.time() - late)  # the same request, its signature made ``late`` s ago
        status, ack = await rig.post(body, headers)
        assert (status, ack) == (200, "Deploying app to staging…")
        await rig.settle()
        [doc] = await rig.deployer.history("app")
        await rig.final(doc["id"])

        status, again = await rig.post(body, headers)  # replayed: valid signature, inside the 5 minutes
        assert status == 200
        assert again.startswith(f":repeat: Already taken: `/deploy app to staging` started `{doc['id']}`; nothing new")
        assert "Succeeded" in again
        await rig.settle()
        assert [d["id"] for d in await rig.deployer.history("app")] == [doc["id"]]
        assert len(rig.replies("first")) == 1  # answered once, by the first


async def test_lock_unlock_lock_leaves_it_locked(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        for word in ("lock", "unlock", "lock"):
            ack = await rig.command(f"{word} app staging db work" if word == "lock" else f"{word} app staging")
            assert ack == f"{word.capitalize()} app/staging…"
            await rig.settle()
        [lock] = await rig.deployer.release.locks()
        assert (lock["application"], lock["environment"], lock["owner"]) == ("app", "staging", "alice")
        assert rig.replies("cmd") == [
            ":lock: <@U0ALICE> (alice) locked app/staging: db work",
            ":unlock: <@U0ALICE> (alice) unlocked app/staging",
            ":lock: <@U0ALICE> (alice) locked app/staging: db work",
        ]


async def test_a_deploy_refused_by_a_lock_and_asked_again_after_unlocking_runs(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        await rig.command("lock app staging", user="U0BOB", reply_to="bob")
        await rig.settle()
        await rig.command("app to staging", reply_to="first")
        await rig.settle()
        assert await rig.deployer.history("app") == []
        [refusal] = rig.replies("first")
        assert refusal.startswith(":warning: ") and "locked by bob" in refusal

        await rig.command("unlock app staging", user="U0BOB", reply_to="bob")
        await rig.settle()
        ack = await rig.command("app to staging", reply_to="again")  # the same words: a new request
        assert ack == "Deploying app to staging…"
        await rig.settle()
        [doc] = await rig.deployer.history("app")
        assert (await rig.final(doc["id"]))["status"] == "Succeeded" and doc["created_by"] == "alice"


def _taken(trigger: str, response_url: str, text: str = "app to staging") -> Asked:
    """A command as the door stores it before acknowledging (bot.slack.chatops.ChatOps.take_command)."""
    payload = {
        "via": "command",
        "text": text,
        "user": "U0ALICE",
        "channel": "C0DEPLOYS",
        "response_url": response_url,
        "team_domain": "example",
    }
    return Asked(command_key(trigger), "deploy", "app/staging", "U0ALICE", payload)


async def test_a_restart_runs_a_command_taken_and_not_done_once(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:
            # acknowledged, then the server stopped before acting on it
            row, added = await SlackIntents(rig.deployer.store, rig.deployer.clock).take(
                _taken(new_trigger_id(), slack.response_url("taken"))
            )
            assert added and row["state"] == "pending"
            assert await rig.deployer.history("app") == []
        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:  # the restart
            await rig.settle()
            [doc] = await rig.deployer.history("app")
            assert doc["created_by"] == "alice"
            await rig.final(doc["id"])
            done = await rig.deployer.store.get_intent(row["key"])
            assert done is not None and done["state"] == "done" and done["outcome"]["deployment_id"] == doc["id"]
        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:  # and again: nothing left to do
            await rig.settle()
            assert [d["id"] for d in await rig.deployer.history("app")] == [doc["id"]]
        [answer] = [body["text"] for name, body in slack.responses if name == "taken"]
        assert answer.startswith(f"`{doc['id']}`: app → staging is ") and answer.endswith("; follow it in its thread.")


@pytest.mark.parametrize("recorded", [True, False], ids=["deployment recorded", "crashed before recording it"])
async def test_a_restart_does_not_start_a_second_deployment_for_a_command_already_running(
    tmp_path: Path, recorded: bool
) -> None:
    async with FakeSlack() as slack:
        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:
            intents = SlackIntents(rig.deployer.store, rig.deployer.clock)
            row, _ = await intents.take(_taken(new_trigger_id(), slack.response_url("taken")))
            assert await intents.claim(row["key"]) is not None  # the first run began ...
            first = await rig.deployer.start(DeployRequest("app", "staging", actor="alice"))  # ... and got this far
            if recorded:
                await intents.started(row["key"], first["id"])
            await rig.final(first["id"])
        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:
            await rig.settle()
            assert [d["id"] for d in await rig.deployer.history("app")] == [first["id"]]
            done = await rig.deployer.store.get_intent(row["key"])
            assert done is not None and done["state"] == "done" and done["outcome"]["deployment_id"] == first["id"]
        answers = [body["text"] for name, body in slack.responses if name == "taken"]
        assert answers == [f"`{first['id']}`: app → staging is Succeeded; follow it in its thread."]
