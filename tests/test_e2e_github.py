"""End to end: a real ``deploybot serve`` with its local agents, GitHub pointed at the fake API (in its own thread),
and a signed push webhook sent over HTTP. The commit is fetched as a tarball, deployed to staging by real agents
(whose hooks see BUNDLE_COMMIT), and the fake sees the GitHub deployment and its statuses in order. A merge waiting
for its checks survives kill -9 of the server."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import DeploybotServer
from fake_github import FakeGitHub, push_payload, signed, status_payload

SECRET = "e2e-secret"
SHA1, SHA2 = "1" * 40, "2" * 40
CONFIG = """server: {data_dir: var}
hosts:
  - {name: stg-1, local: true}
  - {name: stg-2, local: true}
applications:
  api:
    environments: [staging]
    github:
      repository: acme/api
      auto_deploy: {branch: main, to: staging}
      environment_urls: {staging: "https://staging.acme.test"}
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [stg-1, stg-2]}
        deployers: [alice, github]   # merges act as the integration user "github"
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
VALIDATE = '#!/bin/bash\nset -eu\necho "$BUNDLE_COMMIT" > "$DEPLOYBOT_PREFIX/bundle-commit"\n'


class ThreadedFake:
    """The fake GitHub on its own event loop, so the blocking test code can wait while the server calls it."""

    def __init__(self, fake: FakeGitHub) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(fake.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def github() -> Iterator[ThreadedFake]:
    fake = FakeGitHub(executable={"scripts/validate.sh"})
    for sha in (SHA1, SHA2):
        fake.commits[sha] = {"appspec.yml": APPSPEC, "VERSION": sha[:7], "scripts/validate.sh": VALIDATE}
    threaded = ThreadedFake(fake)
    yield threaded
    threaded.close()


@pytest.fixture
def github_env(github: ThreadedFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_e2e")
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    for name in ("GITHUB_APP_ID", "GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path: Path, github_env: None) -> Iterator[DeploybotServer]:
    server = DeploybotServer(tmp_path, CONFIG)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def send(
    server: DeploybotServer, payload: dict[str, object], delivery: str, secret: str = SECRET, *, event: str = "push"
) -> int:
    body, headers = signed(secret, event, payload, delivery)
    request = urllib.request.Request(server.url + "/github/webhook", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_until(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_push_to_main_is_deployed_by_real_agents_and_reported_to_github(
    server: DeploybotServer, github: ThreadedFake, tmp_path: Path
) -> None:
    fake = github.fake
    wait_until(lambda: "GitHub: on (webhook POST /github/webhook, token" in "".join(server.output), timeout=10)
    assert send(server, push_payload("acme/api", "main", SHA1), "e2e-bad", secret="wrong") == 401
    download = fake.tarball_gates[SHA1] = asyncio.Event()  # the commit's tarball is held until the ack is in
    assert send(server, push_payload("acme/api", "main", SHA1), "e2e-1") == 202  # acknowledged before any work
    github.loop.call_soon_threadsafe(download.set)
    wait_until(lambda: 1 in fake.deployments and fake.deployment_states(1)[-1:] == ["success"])
    states = fake.deployment_states(1)
    assert states[0] == "queued" and "in_progress" in states
    assert states.index("queued") < states.index("in_progress") < states.index("success")
    created = fake.exactly("POST", "/repos/acme/api/deployments")
    assert len(created) == 1 and created[0].body["ref"] == SHA1
    document = server.deployment(created[0].body["payload"]["deploybot"]["deployment_id"])
    assert document["status"] == "Succeeded" and document["created_by"] == "github"
    assert document["description"] == f"merge into main ({SHA1[:7]}) by octocat"
    commits = {p.read_text().strip() for p in tmp_path.rglob("bundle-commit")}
    assert commits == {SHA1}  # BUNDLE_COMMIT reached the hooks on both hosts
    assert len(list(tmp_path.rglob("bundle-commit"))) == 2

    assert send(server, push_payload("acme/api", "main", SHA1), "e2e-1") == 200  # redelivered: nothing new
    assert send(server, push_payload("acme/api", "feature", SHA2), "e2e-2") == 202  # not the branch: nothing
    assert send(server, push_payload("acme/api", "main", SHA2), "e2e-3") == 202
    wait_until(lambda: 2 in fake.deployments and fake.deployment_states(2)[-1:] == ["success"])
    wait_until(lambda: fake.deployment_states(1)[-1] == "inactive", timeout=10)
    assert len(fake.exactly("POST", "/repos/acme/api/deployments")) == 2
    assert {p.read_text().strip() for p in tmp_path.rglob("bundle-commit")} == {SHA2}


def test_a_merge_waiting_for_checks_survives_kill_9_and_deploys_once_when_ci_turns_green(
    tmp_path: Path, github: ThreadedFake, github_env: None
) -> None:
    fake = github.fake
    fake.statuses[SHA1] = [{"context": "ci/test", "state": "pending"}]
    gated = CONFIG.replace("to: staging}", "to: staging, require_checks: [ci/test]}")
    server = DeploybotServer(tmp_path, gated)
    try:
        server.start()
        assert send(server, push_payload("acme/api", "main", SHA1), "e2e-1") == 202
        pending = {"state": "pending", "context": "deploybot/auto-deploy/staging", "description": "waiting for ci/test"}
        wait_until(lambda: [c.body for c in fake.called("POST", f"/repos/acme/api/statuses/{SHA1}")] == [pending])
        server.kill9()  # mid-wait: nothing but the store knows about the merge now
        server.start()
        fake.statuses[SHA1].append({"context": "ci/test", "state": "success"})
        assert send(server, status_payload("acme/api", SHA1, "ci/test", "success"), "e2e-2", event="status") == 202
        wait_until(lambda: 1 in fake.deployments and fake.deployment_states(1)[-1:] == ["success"])
        status, body = server.api("GET", "/api/v1/deployments?application=api")
        assert status == 200
        [deployment] = body["deployments"]
        assert (deployment["status"], deployment["revision"]["commit"]) == ("Succeeded", SHA1)
        assert len(fake.exactly("POST", "/repos/acme/api/deployments")) == 1
        assert len(fake.called("GET", f"/repos/acme/api/tarball/{SHA1}")) == 1
        assert send(server, push_payload("acme/api", "main", SHA1), "e2e-1") == 200  # redelivered: it deployed
    finally:
        server.cleanup()
