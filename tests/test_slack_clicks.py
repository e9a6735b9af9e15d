"""The Slack door's pure rules, table-driven: when a click is stale (bot/slack/clicks.py), who an approval thread
mentions (bot/slack/replies.py), the outbox's backoff (bot/slack/outbox.py) and the thread store's file
(bot/slack/threads.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, engine_config

from bot.messages import ButtonState
from bot.slack.clicks import Change, Now, Stale, staleness
from bot.slack.outbox import Outage
from bot.slack.replies import approvers_to_mention, stale_text
from bot.slack.threads import ThreadStore

SHA_A, SHA_B = "aa" * 32, "bb" * 32


def deployment(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "d-1",
        "application": "app",
        "environment": "staging",
        "status": status,
        "paused": False,
        "rollback": {"of": None, "by": None},
        "revision": {"sha256": SHA_A},
        **extra,
    }


# (action, shown status, shown sha256, now: doc, newest, source revision) -> change (None: act)
CASES: list[tuple[str, str | None, str | None, dict[str, Any], str | None, str | None, Change | None]] = [
    ("rollback", "Succeeded", None, deployment("Succeeded"), "d-1", None, None),
    ("rollback", "Succeeded", None, deployment("Succeeded", rollback={"of": None, "by": "d-R"}), "d-R", None,
     Change.ROLLED_BACK),
    ("rollback", "Succeeded", None, deployment("Succeeded"), "d-2", None, Change.SUPERSEDED),
    ("rollback", "InProgress", None, deployment("InProgress"), "d-1", None, None),
    ("rollback", "InProgress", None, deployment("Failed"), "d-1", None, Change.STATUS_CHANGED),
    ("rollback", None, None, deployment("Failed"), "d-1", None, None),  # an older message: what is true now decides
    ("stop", "InProgress", None, deployment("Ready"), "d-1", None, None),
    ("stop", "InProgress", None, deployment("Stopped"), "d-1", None, Change.STATUS_CHANGED),
    ("stop", "Queued", None, deployment("InProgress"), "d-1", None, Change.STATUS_CHANGED),
    ("stop", None, None, deployment("Succeeded"), "d-1", None, Change.NOT_POSSIBLE),
    ("pause", "InProgress", None, deployment("InProgress", paused=True), "d-1", None, Change.ALREADY_PAUSED),
    ("resume", "InProgress", None, deployment("InProgress"), "d-1", None, Change.NOT_PAUSED),
    ("resume", "InProgress", None, deployment("InProgress", paused=True), "d-1", None, None),
    ("approve", "WaitingApproval", None, deployment("WaitingApproval"), "d-0", None, None),
    ("approve", "WaitingApproval", None, deployment("Queued"), "d-0", None, Change.NOT_WAITING),
    ("reject", None, None, deployment("Stopped"), "d-0", None, Change.NOT_WAITING),
    ("promote", "Succeeded", SHA_A, deployment("Succeeded"), "d-1", SHA_A, None),
    ("promote", "Succeeded", SHA_A, deployment("Succeeded"), "d-2", SHA_B, Change.OTHER_REVISION),
    ("promote", "Succeeded", None, deployment("Succeeded"), "d-1", SHA_A, Change.OLD_BUTTON),
    ("promote", "Succeeded", SHA_A, deployment("Failed"), "d-1", SHA_A, Change.NOT_POSSIBLE),
]  # fmt: skip


@pytest.mark.parametrize(("action", "status", "sha256", "doc", "newest", "source", "change"), CASES)
def test_a_click_acts_only_on_what_it_showed(
    action: str,
    status: str | None,
    sha256: str | None,
    doc: dict[str, Any],
    newest: str | None,
    source: str | None,
    change: Change | None,
) -> None:
    found = staleness(action, ButtonState("d-1", status, False, sha256), Now(doc, newest, source, "d-2"))
    assert (found.change if found else None) == change


def test_a_stale_click_is_told_what_is_true_now() -> None:
    now = deployment("Succeeded", rollback={"of": None, "by": "d-R"})
    rollback = {**deployment("InProgress"), "id": "d-R"}
    text = stale_text(
        "rollback",
        ButtonState("d-1", "Succeeded"),
        Stale(Change.ROLLED_BACK, "d-R"),
        now,
        rollback,
        done="rolled back by <@U0BOB> (bob)",
        links=("<https://x.slack.com/archives/C1/p1|thread of `d-R`>",),
    )
    assert text == (
        ":information_source: `d-1` was already rolled back by <@U0BOB> (bob): rollback `d-R` is InProgress. "
        "Nothing new started. <https://x.slack.com/archives/C1/p1|thread of `d-R`>"
    )
    newer = {**deployment("Succeeded"), "id": "d-2", "revision": {"sha256": SHA_B}}
    text = stale_text("promote", ButtonState("d-1", "Succeeded", False, SHA_A), Stale(Change.OTHER_REVISION, "d-2"),
                      deployment("Succeeded"), newer)  # fmt: skip
    assert text.startswith(f":information_source: app/staging runs `{SHA_B[:12]}` now (`d-2`), not `{SHA_A[:12]}`")


APPROVERS = """
server: {data_dir: var, admins: [root]}
USERS
roles: {leads: [LEAD]}
hosts: [{name: h1}, {name: h2}, {name: h3}]
applications:
  app:
    revision: rev
    environments: [staging, production, live]
    deployment_groups:
      staging: {targets: {hosts: [h1]}}
      production: {targets: {hosts: [h2]}, approvers: [APPROVER, "@leads"]}
      live: {targets: {hosts: [h3]}}
"""
USERS = """users:
  root: {slack: U0ROOT}
  april: {slack: U0APRIL}
  lee: {slack: U0LEE}
  quiet: {}
  bob: {slack: U0BOB}"""


@pytest.mark.parametrize(
    ("users", "environment", "requester", "mentioned"),
    [
        (True, "production", "bob", ("U0ROOT", "U0APRIL", "U0LEE")),
        (True, "production", "april", ("U0ROOT", "U0LEE")),  # never the requester
        (True, "staging", "bob", ()),  # no list outside production: anyone may approve, nobody is paged
        (True, "live", "bob", ("U0ROOT",)),  # production without a list: only the admins
        (False, "production", "U0BOB", ("U0APRIL", "U0LEE")),  # Slack ids as names; "root" is no Slack id
    ],
)
def test_an_approval_thread_mentions_who_may_approve(
    tmp_path: Path, users: bool, environment: str, requester: str, mentioned: tuple[str, ...]
) -> None:
    text = APPROVERS.replace("USERS", USERS if users else "")
    text = text.replace("APPROVER", "april" if users else "U0APRIL").replace("LEAD", "lee" if users else "U0LEE")
    config = engine_config(text, tmp_path)
    assert approvers_to_mention(config, "app", environment, requester) == mentioned


async def test_the_outbox_backs_off_doubling_up_to_a_limit_and_starts_over_when_slack_answers() -> None:
    clock = FakeClock()
    outage = Outage(clock, first=1.0, longest=8.0)
    waits = []
    for _ in range(6):
        outage.failed()
        assert outage.retry_at is not None
        waits.append(outage.retry_at - clock.monotonic())
        outage.failed()  # a second worker failing in the same wait does not double it again
        await clock.run(outage.wait())
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    outage.succeeded()
    assert not outage.down
    await outage.wait()  # at once
    outage.failed()
    assert outage.retry_at == clock.monotonic() + 1.0


def test_the_thread_store_keeps_threads_and_rollback_requesters(tmp_path: Path) -> None:
    path = tmp_path / "slack-threads.json"
    path.write_text(json.dumps({"d-OLD": ["C1", "1.000001"]}))  # the first format
    store = ThreadStore(path)
    assert store.get("d-OLD") == ("C1", "1.000001")
    store.put("d-NEW", "C2", "2.000002")
    store.put_requester("d-R", "bob")
    again = ThreadStore(path)
    assert again.get("d-OLD") == ("C1", "1.000001") and again.get("d-NEW") == ("C2", "2.000002")
    assert again.requester("d-R") == "bob" and "d-NEW" in again and "d-R" not in again
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("not json")
    assert ThreadStore(path).get("d-OLD") is None
