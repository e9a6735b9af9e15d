"""Approval threads, through the real door: a deployment that waits for approval gets its thread at once, with
Approve and Reject buttons and the people who may approve mentioned; the thread follows approvals, rejections and
approvals that expire."""

from __future__ import annotations

from pathlib import Path

from conftest import FakeClock, eventually
from slack_support import buttons_of, open_slack_rig, texts

from engine import DeployRequest

CONFIG = """
server: {data_dir: var, admins: [root]}
users:
  root: {slack: U0ROOT}
  alice: {slack: U0ALICE}
  april: {slack: U0APRIL}
  amy: {slack: U0AMY}
  carl: {slack: U0CARL}
  quiet: {}                      # no Slack id: nobody to mention
hosts: [{name: s1}, {name: p1}]
applications:
  app:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging, production]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1]}}
      production:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [p1]}
        deployers: [alice, carl]
        approvers: [april, amy, quiet]
        required_approvals: REQUIRED
        approval_ttl_minutes: 1
"""


def config(required: int = 1) -> str:
    return CONFIG.replace("REQUIRED", str(required))


async def test_a_deployment_waiting_for_approval_gets_its_thread_at_once(tmp_path: Path) -> None:
    """ "At once": the engine's and the notifier's clock stand still, so the thread cannot wait on any timer."""
    async with open_slack_rig(tmp_path, config(), clock=FakeClock()) as rig:
        ack = await rig.command("app to production", user="U0ALICE", reply_to="deploy")
        assert "Deploying app to production" in ack
        await eventually(lambda: rig.slack.taken("chat.postMessage"), "the approval thread")
        parent = rig.slack.taken("chat.postMessage")[0]
        await rig.settle()
        [doc] = await rig.deployer.history("app", "production")
        assert doc["status"] == "WaitingApproval"

        assert "thread_ts" not in parent.payload and doc["id"] in parent.payload["text"]
        blocks = parent.payload["blocks"]
        assert set(buttons_of(blocks)) == {"deploy.approve", "deploy.reject"}
        approval = next(b for b in blocks if b.get("block_id") == "approval")["text"]["text"]
        # who may approve in production: the approvers with a Slack id and the admin, never the requester
        assert approval == ":raised_hand: *Waiting for approval*: 1 more from <@U0ROOT>, <@U0APRIL>, <@U0AMY>"
        for mention in ("<@U0ROOT>", "<@U0APRIL>", "<@U0AMY>"):
            assert mention in parent.payload["text"]  # the notification itself mentions them
        assert "<@U0CARL>" not in texts(blocks) and "<@U0ALICE>" not in approval
        assert rig.replies("deploy") == [
            f"`{doc['id']}`: app → production is WaitingApproval "
            "(waiting for 1 more approval(s) from april, amy, quiet); follow it in its thread."
        ]


async def test_the_approval_thread_follows_an_approval(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, config()) as rig:
        await rig.command("app to production", user="U0ALICE")
        await rig.settle()
        [doc] = await rig.deployer.history("app", "production")
        await rig.showing(doc["id"], "WaitingApproval")
        await rig.click(doc["id"], "approve", user="U0APRIL", reply_to="approve")
        await rig.settle()
        assert (await rig.final(doc["id"]))["status"] == "Succeeded"
        await rig.showing(doc["id"], "Succeeded")
        await rig.notifier.idle()
        thread = rig.thread(doc["id"])
        assert any(t.startswith(":white_check_mark: Approved by <@U0APRIL>; now ") for t in thread), thread
        assert "<@U0APRIL> (april) clicked Approve: approved; now " in "\n".join(thread)
        assert not any(b.get("block_id") == "approval" for b in rig.parent(doc["id"]))
        assert rig.replies("approve") == []  # the thread says it; nothing else to tell


async def test_the_approval_thread_follows_a_rejection(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, config()) as rig:
        await rig.command("app to production", user="U0ALICE")
        await rig.settle()
        [doc] = await rig.deployer.history("app", "production")
        await rig.showing(doc["id"], "WaitingApproval")
        await rig.click(doc["id"], "reject", user="U0AMY")
        await rig.settle()
        blocks = await rig.showing(doc["id"], "Stopped")
        assert "rejected by amy" in texts(blocks) and buttons_of(blocks) == {}
        await rig.notifier.idle()
        thread = rig.thread(doc["id"])
        assert "<@U0AMY> (amy) clicked Reject: rejected" in thread
        assert any(t.startswith(":octagonal_sign: *Stopped*") and "rejected by amy" in t for t in thread), thread


async def test_the_approval_thread_says_when_an_approval_expires(tmp_path: Path) -> None:
    clock = FakeClock(tick=0.001)  # the engine's clock (an approval's lifetime) and the notifier's
    async with open_slack_rig(tmp_path, config(required=2), agents=False, clock=clock) as rig:
        await rig.command("app to production", user="U0ALICE")
        await rig.settle()
        [doc] = await rig.deployer.history("app", "production")
        await rig.showing(doc["id"], "WaitingApproval")
        await rig.click(doc["id"], "approve", user="U0APRIL")
        await rig.settle()
        await rig.notifier.idle()
        approved = ":white_check_mark: Approved by <@U0APRIL>; 1 more needed"
        assert approved in rig.thread(doc["id"])
        assert "approved by <@U0APRIL>" in texts(rig.parent(doc["id"]))

        await clock.advance(61)  # april's approval lapses (approval_ttl_minutes: 1)
        await eventually(
            lambda: ":hourglass: The approval by <@U0APRIL> expired; it needs approving again" in rig.thread(doc["id"]),
            "the expiry in the thread",
        )
        await rig.notifier.idle()
        approval = next(b for b in rig.parent(doc["id"]) if b.get("block_id") == "approval")["text"]["text"]
        assert approval.startswith(":raised_hand: *Waiting for approval*: 2 more from ")
        assert "approved by" not in approval
        assert (await rig.deployer.get(doc["id"]))["status"] == "WaitingApproval"


async def test_a_deployment_started_elsewhere_that_waits_for_approval_gets_its_thread_at_once(tmp_path: Path) -> None:
    async with open_slack_rig(tmp_path, config()) as rig:
        doc = await rig.deployer.start(DeployRequest("app", "production", actor="alice"))
        assert doc["status"] == "WaitingApproval"
        await eventually(lambda: rig.slack.taken("chat.postMessage"), "the approval thread")
        parent = rig.slack.taken("chat.postMessage")[0].payload
        assert doc["id"] in parent["text"] and set(buttons_of(parent["blocks"])) == {"deploy.approve", "deploy.reject"}
