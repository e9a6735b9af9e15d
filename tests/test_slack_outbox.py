"""The notifier's outbox, through the real door and a fake Slack that goes down: a deployment that runs while Slack
does not answer (HTTP 503, or connections refused) gets its thread when Slack answers again — retried with backoff
on the notifier's clock, which the test moves — and a restart gives every deployment of the last day that has no
thread one."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FakeClock
from fake_slack import FakeSlack
from slack_support import open_slack_rig, texts

CONFIG = """
server: {data_dir: var}
hosts: [{name: s1}, {name: s2}]
applications:
  app:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1, s2]}}
"""


@pytest.mark.parametrize("refuse", [False, True], ids=["HTTP 503", "connection refused"])
async def test_a_deployment_that_ran_while_slack_was_down_gets_its_thread_when_slack_is_back(
    tmp_path: Path, refuse: bool
) -> None:
    clock = FakeClock()  # the notifier's: its retries wait on it
    async with open_slack_rig(tmp_path, CONFIG, notifier_clock=clock) as rig:
        await rig.slack.go_down(refuse=refuse)
        doc = await rig.deployed("app", "staging")
        await clock.sleeping(1)
        assert rig.notifier.outage.down and clock.sleepers == [1.0]  # the first try failed: again in 1 s
        await clock.advance(1)
        assert clock.sleepers == [2.0]  # still down: the wait doubles
        assert rig.slack.taken("chat.postMessage") == []

        await rig.slack.come_back()
        await clock.advance(2)
        await rig.notifier.idle()
        assert not rig.notifier.outage.down
        parents = [c for c in rig.slack.taken("chat.postMessage") if "thread_ts" not in c.payload]
        assert len(parents) == 1 and doc["id"] in parents[0].payload["text"]
        assert ":white_check_mark: Succeeded" in texts(rig.parent(doc["id"]))
        thread = rig.thread(doc["id"])
        assert thread[0].startswith("Batch: s1, s2") and thread[-1].startswith(":white_check_mark: *Succeeded*")
        assert len([t for t in thread if "*Succeeded*" in t]) == 1


async def test_a_restart_gives_a_thread_to_each_deployment_of_the_last_day_that_has_none(tmp_path: Path) -> None:
    clock = FakeClock()  # the engine's and the notifier's
    async with FakeSlack() as slack:
        await slack.go_down()
        async with open_slack_rig(tmp_path, CONFIG, slack=slack, clock=clock) as rig:  # Slack down all along
            old = await rig.deployed("app", "staging", "rev-a")
            clock.jump(2 * 24 * 3600)  # two days later
            recent = await rig.deployed("app", "staging", "rev-b")
            assert rig.slack.taken("chat.postMessage") == []
        await slack.come_back()
        later = FakeClock(start=clock.now() + 60)
        async with open_slack_rig(tmp_path, CONFIG, slack=slack, clock=later) as rig:  # restarted, Slack answers
            await rig.settle()
            await rig.notifier.idle()
            parents = [c.payload["text"] for c in slack.taken("chat.postMessage") if "thread_ts" not in c.payload]
            assert len(parents) == 1 and recent["id"] in parents[0]  # the old one is not worth a thread now
            assert ":white_check_mark: Succeeded" in texts(rig.parent(recent["id"]))
            assert rig.thread(recent["id"])[-1].startswith(":white_check_mark: *Succeeded*")
            assert rig.notifier.thread_of(old["id"]) is None
        async with open_slack_rig(tmp_path, CONFIG, slack=slack, clock=FakeClock(start=later.now())) as rig:
            await rig.settle()
            await rig.notifier.idle()
            assert len([c for c in slack.taken("chat.postMessage") if "thread_ts" not in c.payload]) == 1
