"""Deployment JSON -> Block Kit parent message, its buttons' values and milestone replies (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_support import texts

from bot.messages import (
    ButtonState,
    MessageContext,
    MilestoneKind,
    deployment_blocks,
    deployment_buttons,
    fallback_text,
    milestones,
    progress_text,
    revision_text,
    rollback_finished_text,
    source_label,
)


def event(name: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "started_at": None if status == "Pending" else 1.0,
        "ended_at": None,
        "error_code": None,
        "message": "",
        "log_tail": "",
        **extra,
    }


def doc(status: str = "InProgress", **extra: Any) -> dict[str, Any]:
    base = {
        "id": "d-ABCDEFGH1",
        "application": "hello",
        "environment": "staging",
        "group": "hello-staging",
        "status": status,
        "revision": {"sha256": "ab" * 32, "source": "examples/hello", "commit": None},
        "config": "CodeDeployDefault.OneAtATime",
        "created_by": "U0ALICE",
        "created_at": 100.0,
        "started_at": 100.0,
        "ended_at": None,
        "error": None,
        "rollback": {"of": None, "by": None},
        "paused": False,
        "queue_position": None,
        "traffic": None,
        "targets": [
            {"name": "web-1", "status": "Pending", "events": [event("ApplicationStop", "Pending")]},
            {"name": "web-2", "status": "Pending", "events": [event("ApplicationStop", "Pending")]},
        ],
    }
    return {**base, **extra}


def test_parent_message_fields_and_round_trip() -> None:
    blocks = deployment_blocks(doc(), MessageContext(next_environment="production"))
    assert [b["type"] for b in blocks] == ["header", "section", "section", "context", "actions"]
    assert blocks[0]["text"]["text"] == "hello → staging"
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields == [
        "*Application*\nhello",
        "*Environment*\nstaging",
        f"*Revision*\n`{'ab' * 6}` examples/hello",
        "*Started by*\n<@U0ALICE>",
        "*Configuration*\nCodeDeployDefault.OneAtATime",
        "*Status*\n:arrows_counterclockwise: InProgress",
    ]
    assert blocks[2]["text"]["text"] == "*Progress* hosts 0/2 done"
    assert [Block.parse(b).to_dict() for b in blocks] == blocks  # valid Block Kit


def test_github_revision_has_short_sha_title_and_compare_link() -> None:
    d = doc(revision={"sha256": "x", "source": "git:main", "commit": "0123456789abcdef", "title": "Fix login"})
    ctx = MessageContext(github_repository="acme/hello", previous_commit="fedcba9876543210")
    assert revision_text(d, ctx) == (
        "`0123456` Fix login (<https://github.com/acme/hello/compare/fedcba987654...0123456789ab|compare>)"
    )
    assert revision_text(d, MessageContext(github_repository="acme/hello")).endswith(
        "(<https://github.com/acme/hello/commit/0123456789abcdef|commit>)"
    )


def test_progress_counts_hosts_and_traffic() -> None:
    d = doc(traffic={"percent": 20}, paused=True)
    d["targets"][0] = {"name": "web-1", "status": "Succeeded", "events": [event("ApplicationStop", "Succeeded")]}
    assert progress_text(d) == "hosts 1/2 done · traffic 20% · paused"


@pytest.mark.parametrize(
    ("status", "extra", "actions"),
    [
        ("InProgress", {}, ["stop", "pause", "rollback"]),
        ("InProgress", {"paused": True}, ["stop", "resume", "rollback"]),
        ("Ready", {}, ["stop", "pause", "continue", "rollback"]),
        ("InProgress", {"rollback": {"of": "d-X", "by": None}}, ["stop", "pause"]),
        ("WaitingApproval", {}, ["approve", "reject"]),
        ("Queued", {}, ["stop"]),
        ("Succeeded", {}, ["promote", "rollback"]),
        ("Succeeded", {"rollback": {"of": None, "by": "d-Y"}}, ["promote"]),
        ("Failed", {}, []),
    ],
)
def test_buttons_follow_the_state(status: str, extra: dict[str, Any], actions: list[str]) -> None:
    buttons = deployment_buttons(doc(status, **extra), MessageContext(next_environment="production"))
    assert [b.action_id for b in buttons] == [f"deploy.{a}" for a in actions]
    for button in buttons:
        state = ButtonState.from_value(str(button.value))
        assert state is not None and (state.deployment_id, state.status) == ("d-ABCDEFGH1", status)
        assert state.paused is bool(extra.get("paused"))
        assert state.sha256 == ("ab" * 32 if button.action_id == "deploy.promote" else None)
        assert len(str(button.value)) < 2000
    confirms = {b.action_id: b.to_dict().get("confirm") for b in buttons}
    for action in ("rollback", "stop", "promote"):
        if action in actions:
            confirm = confirms[f"deploy.{action}"]
            assert confirm is not None and confirm["style"] == "danger" and confirm["deny"]["text"] == "Cancel"
    if "rollback" in actions:
        assert confirms["deploy.rollback"]["title"]["text"] == "Roll back?"
    for action in ("pause", "resume", "continue", "approve", "reject"):
        if action in actions:
            assert confirms[f"deploy.{action}"] is None


def test_no_promote_button_from_the_last_environment() -> None:
    assert [b.action_id for b in deployment_buttons(doc("Succeeded"))] == ["deploy.rollback"]


def test_milestones_batches_failures_traffic_and_the_end() -> None:
    start = doc()
    batch = copy.deepcopy(start)
    batch["targets"][0]["events"] = [event("ApplicationStop", "InProgress")]
    batch["targets"][0]["status"] = "InProgress"
    [m] = milestones(start, batch)
    assert m.kind is MilestoneKind.BATCH and m.text == "Batch: web-1 (1/2 hosts started)"
    assert milestones(batch, batch) == []

    failed = copy.deepcopy(batch)
    failed["targets"][0] = {
        "name": "web-1",
        "status": "Failed",
        "events": [event("ValidateService", "Failed", error_code=4, message="script failed", log_tail="line1\nboom")],
    }
    failed.update(
        status="Failed",
        ended_at=172.0,
        traffic={"percent": 0},
        error={"code": "HEALTH_CONSTRAINTS", "message": "too many failed"},
        rollback={"of": None, "by": "d-R"},
    )
    kinds = [m.kind for m in milestones(batch, failed)]
    assert kinds == [MilestoneKind.HOST_FAILED, MilestoneKind.ROLLBACK_STARTED, MilestoneKind.FINISHED]
    texts_ = {m.kind: m.text for m in milestones(batch, failed)}
    assert texts_[MilestoneKind.HOST_FAILED] == (
        ":x: web-1 failed at ValidateService (code 4): script failed\n```line1\nboom```"
    )
    assert texts_[MilestoneKind.FINISHED].startswith(":x: *Failed* in 1m 12s — 0/2 hosts\nHEALTH_CONSTRAINTS")

    shifted = {**batch, "traffic": {"percent": 20}}
    assert [m.text for m in milestones({**batch, "traffic": {"percent": 0}}, shifted)] == [
        "Traffic: 20% on the new revision"
    ]
    alarm = {**batch, "status": "Stopped", "error": {"code": "ALARM_ACTIVE", "message": "5xx over 5%"}}
    assert milestones(batch, alarm)[0].text == ":rotating_light: Alarm fired: 5xx over 5%"


def test_rollback_finished_text() -> None:
    text = rollback_finished_text(doc("Succeeded", id="d-R", ended_at=105.0))
    assert text == ":white_check_mark: Rollback `d-R` finished: Succeeded in 5s"


def test_a_button_value_carries_the_state_it_was_rendered_for() -> None:
    state = ButtonState("d-ABCDEFGH1", "Succeeded", False, "ab" * 32)
    assert ButtonState.from_value(state.to_value()) == state
    assert state.to_value() == '{"id":"d-ABCDEFGH1","status":"Succeeded","sha256":"' + "ab" * 32 + '"}'
    paused = ButtonState("d-ABCDEFGH1", "InProgress", True)
    assert ButtonState.from_value(paused.to_value()) == paused
    assert ButtonState.from_value("d-ABCDEFGH1") == ButtonState("d-ABCDEFGH1")  # an older message: no state
    for junk in ("", "null", "[]", '{"id": 3}', '{"id": "x y"}', '{"status": "Succeeded"}', "d-", "{"):
        assert ButtonState.from_value(junk) is None
    odd = ButtonState.from_value('{"id":"d-X","status":7,"paused":"yes","sha256":["a"]}')
    assert odd == ButtonState("d-X")


def test_button_values_from_anywhere_never_raise() -> None:
    """Seeded fuzz: a click's value comes from the network."""
    import json
    import random

    rng = random.Random(1616)
    pieces = [
        '{"id":',
        '"d-AB1"',
        ',"status":',
        '"Succeeded"',
        "null",
        "true",
        "[",
        "]",
        "}",
        '"sha256":',
        "1e999",
        ",",
    ]
    for _ in range(3000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.3:
            value = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 40)))
        state = ButtonState.from_value(value)
        assert state is None or state.deployment_id.startswith("d-")
        if state is not None:
            assert json.loads(state.to_value())["id"] == state.deployment_id


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("/srv/deploybot/work/rev-2", "rev-2"),
        ("/tmp/x/hello-2.tar.gz", "hello-2.tar.gz"),
        ("/srv/app/", "app"),
        ("examples/hello", "examples/hello"),
        ("git:main", "git:main"),
        ("s3://bucket/key.zip", "s3://bucket/key.zip"),
        (None, ""),
    ],
)
def test_the_revision_field_never_shows_the_servers_absolute_path(source: str | None, shown: str) -> None:
    d = doc(revision={"sha256": "cd" * 32, "source": source, "commit": None})
    assert revision_text(d) == f"`{'cd' * 6}`" + (f" {shown}" if shown else "")
    assert source_label(source) == shown


def test_a_deployment_waiting_for_approval_shows_who_may_approve() -> None:
    waiting = doc(
        "WaitingApproval",
        approval={"required": 2, "approved_by": ["U0APRIL"], "missing": 1, "approvers": [], "expires_at": None},
        waiting_for={"gate": "approval", "message": "waiting for 1 more approval(s) from april"},
    )
    ctx = MessageContext(approvers=("U0APRIL", "U0AMY"))
    blocks = deployment_blocks(waiting, ctx)
    [approval] = [b for b in blocks if b.get("block_id") == "approval"]
    assert approval["text"]["text"] == (
        ":raised_hand: *Waiting for approval*: 1 more from <@U0APRIL>, <@U0AMY> · approved by <@U0APRIL>"
    )
    assert "waiting for 1 more approval(s)" not in texts(blocks)  # said once, in full
    assert fallback_text(waiting, ctx).endswith("— approval needed from <@U0APRIL>, <@U0AMY>")
    assert ":raised_hand: *Waiting for approval* (waiting for 1 more approval(s) from april)" in texts(
        deployment_blocks(waiting)
    )  # nobody to mention: the engine's words
    assert [b.get("block_id") for b in deployment_blocks(doc("Queued"))].count("approval") == 0


def test_milestones_of_approvals_given_and_expired() -> None:
    def waiting(*approved: str, status: str = "WaitingApproval") -> dict[str, Any]:
        missing = max(2 - len(approved), 0)
        return doc(status, approval={"approved_by": list(approved), "missing": missing, "required": 2})

    [given] = milestones(waiting(), waiting("U0APRIL"))
    assert (
        given.kind is MilestoneKind.APPROVED
        and given.text == ":white_check_mark: Approved by <@U0APRIL>; 1 more needed"
    )
    [last] = milestones(waiting("U0APRIL"), waiting("U0APRIL", "U0AMY", status="Queued"))
    assert last.text == ":white_check_mark: Approved by <@U0AMY>; now Queued"
    [lapsed] = milestones(waiting("U0APRIL"), waiting())
    assert lapsed.kind is MilestoneKind.APPROVAL_EXPIRED
    assert lapsed.text == ":hourglass: The approval by <@U0APRIL> expired; it needs approving again"
    assert milestones(waiting("U0APRIL"), waiting("U0APRIL")) == []
    assert milestones(None, waiting("U0APRIL")) == []  # a thread opened late tells no approval story
