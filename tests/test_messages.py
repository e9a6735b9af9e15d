"""Deployment JSON -> Block Kit parent message and milestone replies (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot.messages import (
    MessageContext,
    MilestoneKind,
    deployment_blocks,
    deployment_buttons,
    milestones,
    progress_text,
    revision_text,
    rollback_finished_text,
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


def texts(blocks: list[dict[str, Any]]) -> str:
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                out.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(blocks)
    return "\n".join(out)


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
    assert all(b.value == "d-ABCDEFGH1" for b in buttons)
    if "rollback" in actions:
        rollback = next(b for b in buttons if b.action_id == "deploy.rollback").to_dict()
        assert rollback["style"] == "danger" and rollback["confirm"]["title"]["text"] == "Roll back?"


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
