"""Slack end to end: a real ``deploybot serve`` (real engine, real local agents) with Slack on, talking to a fake
Slack Web API; ``/deploy hello to staging`` → the thread's parent message ends "Succeeded" (its Revision a name, not
the server's path) → its Rollback button, clicked with the value the message carries, rolls back to the previous
revision, which succeeds, and the rollback's thread shows who clicked. An unauthorized user is refused with the
reason.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DeploybotServer, write_revision
from fake_slack import FakeSlack
from slack_support import BOT_TOKEN, SECRET, button_body, signed, slash_body, texts

CONFIG = """server: {data_dir: var}
hosts:
  - {name: stage-1, local: true}
  - {name: stage-2, local: true}
  - {name: prod-1, local: true}
applications:
  hello:
    platform: server
    revision: rev-2
    slack_channel: "#deploys"
    environments: [staging, production]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [stage-1, stage-2]}
      production:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [prod-1]}
"""


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture
def server(tmp_path: Path, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> Iterator[DeploybotServer]:
    for name, value in {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    write_revision(tmp_path, "rev-1", {"ValidateService": "exit 0"})
    write_revision(tmp_path, "rev-2", {"ValidateService": "exit 0"})
    running = DeploybotServer(tmp_path, CONFIG)
    try:
        running.start()
        yield running
    finally:
        running.cleanup()


def acked(server: DeploybotServer, slack: FakeSlack, body: str) -> tuple[int, str]:
    """POST ``body`` as Slack does, while Slack holds every call the server makes: what comes back was answered
    without waiting on Slack, as its 3 s limit needs on any machine (an ack that waited would hang until the guard)."""
    request = urllib.request.Request(server.url + "/slack/events", data=body.encode(), headers=signed(body))
    slack.hold()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    finally:
        slack.release()


def wait(predicate: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_deploy_from_slack_then_roll_back_with_the_button(server: DeploybotServer, slack: FakeSlack) -> None:
    assert any("Slack: on (events at /slack/events)" in line for line in server.output)
    first = server.deploy("hello", "staging", server.workdir / "rev-1")  # something to roll back to
    assert server.wait_final(first["id"])["status"] == "Succeeded"

    status, text = acked(server, slack, slash_body("hello to staging"))
    assert status == 200 and "Deploying hello to staging" in text
    history = wait(
        lambda: [
            d
            for d in server.api("GET", "/api/v1/deployments?application=hello")[1]["deployments"]
            if d["id"] != first["id"]
        ]
    )
    deployment_id = history[0]["id"]
    assert server.wait_final(deployment_id)["status"] == "Succeeded"
    ts = wait(
        lambda: next((c.payload["ts"] for c in slack.of("chat.update") if deployment_id in c.payload["text"]), None)
    )

    def parent_says(word: str) -> bool:
        edits = [c for c in slack.of("chat.update") if c.payload["ts"] == ts]
        return bool(edits) and word in edits[-1].payload["text"]

    wait(lambda: parent_says("Succeeded"))
    parent = [c for c in slack.of("chat.update") if c.payload["ts"] == ts][-1].payload["blocks"]
    shown = texts(parent)
    assert "*Revision*\n`" in shown and " rev-2" in shown and str(server.workdir) not in shown  # no server path
    [rollback_button] = [
        e for b in parent if b["type"] == "actions" for e in b["elements"] if e["action_id"] == "deploy.rollback"
    ]

    body = button_body("rollback", rollback_button["value"], response_url=slack.response_url("rb"), message_ts=ts)
    status, _ = acked(server, slack, body)
    assert status == 200
    rollback_id = wait(lambda: server.deployment(deployment_id)["rollback"]["by"])
    rollback = server.wait_final(rollback_id)
    assert rollback["status"] == "Succeeded"
    assert rollback["revision"]["sha256"] == first["revision"]["sha256"]
    wait(
        lambda: any(
            rollback_id in c.payload.get("text", "") and c.payload.get("thread_ts") == ts
            for c in slack.of("chat.postMessage")
        )
    )

    def rollback_parent() -> str:
        versions = [
            c.payload for c in slack.messages() if "thread_ts" not in c.payload and rollback_id in c.payload["text"]
        ]
        return texts(versions[-1]["blocks"]) if versions else ""

    wait(lambda: "Succeeded" in rollback_parent())
    assert "*Started by*\n<@U0ALICE>" in rollback_parent()  # who clicked, not the engine's codeDeployRollback


def test_unauthorized_user_is_refused_with_the_reason(server: DeploybotServer, slack: FakeSlack) -> None:
    status, _ = acked(
        server, slack, slash_body("hello to production", user="U0MALLORY", response_url=slack.response_url("x"))
    )
    assert status == 200
    refusal = wait(lambda: next((body["text"] for name, body in slack.responses if name == "x"), None))
    assert refusal == (
        ":no_entry: <@U0MALLORY> may not deploy hello to production "
        "(rule: hello-production has no deployers list: production needs one)"
    )
    assert server.api("GET", "/api/v1/deployments?application=hello")[1]["deployments"] == []
