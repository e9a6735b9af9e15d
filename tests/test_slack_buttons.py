"""Buttons act on what they show, through the real door: clicks on the buttons of the thread's parent message as the
fake Slack received it, really signed, on the real bolt app and Deployer. Two clicks at once act once; a click whose
message is out of date is answered with what is true now; Promote promotes exactly its thread's revision."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_slack import FakeSlack
from slack_support import SlackRig, buttons_of, open_slack_rig, texts

from bot.messages import ButtonState
from engine import ROLLBACK_CREATOR, DeployRequest

CONFIG = """
server: {data_dir: var}
users:
  alice: {slack: U0ALICE}
  bob: {slack: U0BOB}
hosts: [{name: s1}, {name: s2}, {name: p1}]
applications:
  app:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging, production]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1, s2]}}
      production:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [p1]}
        deployers: [alice, bob]
"""
SHOWN = {"U0ALICE": "<@U0ALICE> (alice)", "U0BOB": "<@U0BOB> (bob)"}


async def _clicked_together(rig: SlackRig, deployment_id: str, action: str, users: tuple[str, str]) -> None:
    """Two clicks on the same button, at once, each with its own action_ts (as real clicks have)."""
    await asyncio.gather(
        *(rig.click(deployment_id, action, user=user, reply_to=f"click-{n}") for n, user in enumerate(users))
    )
    await rig.settle()
    await rig.notifier.idle()


@pytest.mark.parametrize("users", [("U0ALICE", "U0BOB"), ("U0ALICE", "U0ALICE")], ids=["two people", "a double click"])
async def test_two_rollback_clicks_at_once_roll_back_once(tmp_path: Path, users: tuple[str, str]) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        first = await rig.deployed("app", "staging", "rev-a")
        second = await rig.deployed("app", "staging", "rev-b")
        await rig.showing(second["id"], "Succeeded")
        await _clicked_together(rig, second["id"], "rollback", users)

        docs = await rig.deployer.history("app", "staging")
        [rollback] = [d for d in docs if d["rollback"]["of"]]
        assert len(docs) == 3 and rollback["rollback"]["of"] == second["id"]
        assert (await rig.final(rollback["id"]))["revision"]["sha256"] == first["revision"]["sha256"]
        [requested] = [e for e in await rig.deployer.event_log(second["id"]) if e["kind"] == "rollback.requested"]
        await rig.notifier.idle()
        notes = [t for t in rig.thread(second["id"]) if "clicked Rollback" in t]
        assert len(notes) == 1, rig.thread(second["id"])
        winner = next(n for n, user in enumerate(users) if notes[0].startswith(SHOWN[user]))
        loser = 1 - winner
        assert requested["actor"] == {"U0ALICE": "alice", "U0BOB": "bob"}[users[winner]]
        assert rig.replies(f"click-{winner}") == []  # the thread says it
        [answer] = rig.replies(f"click-{loser}")
        assert answer.startswith(
            f":information_source: `{second['id']}` was already rolled back by {SHOWN[users[winner]]}: "
            f"rollback `{rollback['id']}` is "
        )
        assert f"|thread of `{rollback['id']}`>" in answer and "|deployment page>" in answer


async def test_promote_on_an_older_thread_is_refused_with_what_runs_now(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        older = await rig.deployed("app", "staging", "rev-a")
        await rig.showing(older["id"], "Succeeded")
        newer = await rig.deployed("app", "staging", "rev-b")
        await rig.showing(newer["id"], "Succeeded")
        stale = ButtonState.from_value(rig.button(older["id"], "promote")["value"])
        assert stale is not None and stale.sha256 == older["revision"]["sha256"]  # the old message, as it was

        await rig.click(older["id"], "promote", reply_to="old")
        await rig.settle()
        assert await rig.deployer.history("app", "production") == []
        [answer] = rig.replies("old")
        assert answer.startswith(
            f":information_source: app/staging runs `{newer['revision']['sha256'][:12]}` now (`{newer['id']}`), "
            f"not `{older['revision']['sha256'][:12]}` as this thread shows: nothing promoted."
        )
        assert f"|thread of `{newer['id']}`>" in answer
        assert not any("clicked Promote" in t for t in rig.thread(older["id"]))


async def test_promote_promotes_exactly_the_revision_of_its_thread(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        await rig.deployed("app", "staging", "rev-a")
        shown = await rig.deployed("app", "staging", "rev-b")
        blocks = await rig.showing(shown["id"], "Succeeded")
        promote = buttons_of(blocks)["deploy.promote"]
        assert promote["confirm"]["title"]["text"] == "Promote to production?"
        assert shown["revision"]["sha256"][:12] in promote["confirm"]["text"]["text"]

        await rig.click(shown["id"], "promote", user="U0BOB")
        await rig.settle()
        [promoted] = await rig.deployer.history("app", "production")
        assert promoted["revision"]["sha256"] == shown["revision"]["sha256"]
        assert promoted["source"] == "promotion" and promoted["created_by"] == "bob"
        [asked] = [e for e in await rig.deployer.store.read_log() if e["kind"] == "promotion.requested"]
        assert asked["data"]["revision"] == shown["revision"]["sha256"]
        await rig.notifier.idle()
        assert f"<@U0BOB> (bob) clicked Promote: promoted `{shown['revision']['sha256'][:12]}` to production as " in (
            "\n".join(rig.thread(shown["id"]))
        )


async def test_two_stop_clicks_stop_once_and_say_so_once(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, CONFIG, agents=False) as rig:  # no agent answers: it keeps running
        doc = await rig.deployer.start(DeployRequest("app", "staging", actor="alice"))
        await rig.showing(doc["id"], "InProgress")
        stop = rig.button(doc["id"], "stop")
        assert stop["confirm"]["confirm"]["text"] == "Stop" and stop["style"] == "danger"
        await _clicked_together(rig, doc["id"], "stop", ("U0ALICE", "U0BOB"))

        assert (await rig.final(doc["id"]))["status"] == "Stopped"
        stops = [e for e in await rig.deployer.event_log(doc["id"]) if e["kind"] == "deployment.stop_requested"]
        assert len(stops) == 1
        notes = [t for t in rig.thread(doc["id"]) if "clicked Stop" in t]
        assert len(notes) == 1, rig.thread(doc["id"])
        winner = 0 if notes[0].startswith(SHOWN["U0ALICE"]) else 1
        [answer] = rig.replies(f"click-{1 - winner}")
        assert answer.startswith(
            f":information_source: `{doc['id']}` was already stopped by {SHOWN[('U0ALICE', 'U0BOB')[winner]]}: "
            "it is Stopped now. Nothing done."
        )


async def test_a_slack_rollback_shows_who_asked_for_it_also_after_a_restart(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:
            await rig.deployed("app", "staging", "rev-a")
            second = await rig.deployed("app", "staging", "rev-b")
            await rig.showing(second["id"], "Succeeded")
            await rig.click(second["id"], "rollback", user="U0BOB")
            await rig.settle()
            rollback_id = (await rig.deployer.get(second["id"]))["rollback"]["by"]
            rollback = await rig.final(rollback_id)
            assert rollback["created_by"] == ROLLBACK_CREATOR
            blocks = await rig.showing(rollback_id, "Succeeded")
            assert "*Started by*\n<@U0BOB>" in texts(blocks)

        async with open_slack_rig(tmp_path, CONFIG, slack=slack) as rig:  # a restart, then the rollback moves on
            await rig.click(rollback_id, "rollback", user="U0ALICE")  # roll the rollback back: its thread is edited
            await rig.settle()
            await rig.notifier.idle()
            parent = texts(rig.parent(rollback_id))
            assert "*Started by*\n<@U0BOB>" in parent and ROLLBACK_CREATOR not in parent
            assert "rolled back by `" in parent


async def test_a_finished_rollback_is_said_once_in_the_thread_it_rolled_back(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        await rig.deployed("app", "staging", "rev-a")
        second = await rig.deployed("app", "staging", "rev-b")
        await rig.showing(second["id"], "Succeeded")
        await rig.click(second["id"], "rollback", user="U0BOB")
        await rig.settle()
        rollback_id = (await rig.deployer.get(second["id"]))["rollback"]["by"]
        assert (await rig.final(rollback_id))["status"] == "Succeeded"
        await rig.showing(rollback_id, "Succeeded")
        await rig.notifier.idle()
        thread = rig.thread(second["id"])
        finished = [t for t in thread if t.startswith(f":white_check_mark: Rollback `{rollback_id}` finished")]
        assert len(finished) == 1, thread  # once, however often the engine reports the end
        assert len([t for t in thread if t.startswith(f":rewind: Rollback started: `{rollback_id}`")]) == 1, thread
