"""Failure cases with real processes: the server, real agents, real hook scripts (issue: server platform).

Each test runs ``deploybot serve`` on a free port with its own data directory and kills what it started.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import group_noted
from e2e_support import FINAL, DeploybotServer, event, statuses, write_revision


def config(
    hosts: list[str],
    *,
    deployment_config: str = "CodeDeployDefault.AllAtOnce",
    local: tuple[str, ...] | None = None,
    heartbeat: int = 60,
    rollback: bool = False,
) -> str:
    local = tuple(hosts) if local is None else local
    host_lines = "\n".join(f"  - {{name: {h}, local: {'true' if h in local else 'false'}}}" for h in hosts)
    auto = "{enabled: true, events: [DEPLOYMENT_FAILURE]}" if rollback else "{enabled: false}"
    return f"""server: {{data_dir: var, heartbeat_timeout: {heartbeat}, revision_roots: [.]}}
hosts:
{host_lines}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: {deployment_config}
        targets: {{hosts: [{", ".join(hosts)}]}}
        auto_rollback: {auto}
"""


@pytest.fixture
def servers() -> Iterator[list[DeploybotServer]]:
    started: list[DeploybotServer] = []
    yield started
    for server in started:
        server.cleanup()


def start(servers: list[DeploybotServer], tmp_path: Path, text: str, **kwargs) -> DeploybotServer:
    server = DeploybotServer(tmp_path, text, **kwargs)
    servers.append(server)
    server.start()
    return server


HOSTS = ["h1", "h2", "h3", "h4"]
FAIL_ON_H2 = {
    "ValidateService": 'if [ "$DEPLOYBOT_HOST" = h2 ]; then echo "h2 answers 500 on /health"; exit 1; fi',
}


@pytest.mark.parametrize(
    ("deployment_config", "outcome", "expected"),
    [
        # reference §6.2: a failure on any host but the last fails OneAtATime; the rest are never touched
        (
            "CodeDeployDefault.OneAtATime",
            "Failed",
            {"h1": "Succeeded", "h2": "Failed", "h3": "Skipped", "h4": "Skipped"},
        ),
        # min healthy 2 of 4: one failure still leaves room to finish, one host at a time
        (
            "CodeDeployDefault.HalfAtATime",
            "Succeeded",
            {"h1": "Succeeded", "h2": "Failed", "h3": "Succeeded", "h4": "Succeeded"},
        ),
        (
            "CodeDeployDefault.AllAtOnce",
            "Succeeded",
            {"h1": "Succeeded", "h2": "Failed", "h3": "Succeeded", "h4": "Succeeded"},
        ),
    ],
)
def test_validate_service_failing_on_one_of_four(servers, tmp_path, deployment_config, outcome, expected) -> None:
    server = start(servers, tmp_path, config(HOSTS, deployment_config=deployment_config))
    revision = write_revision(tmp_path, "rev", FAIL_ON_H2)
    doc = server.wait_final(server.deploy("app", "prod", revision)["id"])
    assert doc["status"] == outcome, doc
    assert statuses(doc) == expected
    failed = event(doc, "h2", "ValidateService")
    assert failed["error_code"] == 4
    assert "failed with exit code 1" in failed["message"]
    assert "h2 answers 500 on /health" in failed["log_tail"]
    if outcome == "Failed":
        assert doc["error"]["code"] == "HEALTH_CONSTRAINTS"


def test_agent_killed_mid_hook_fails_host_within_heartbeat_limit_and_rolls_back(servers, tmp_path) -> None:
    text = config(
        ["h2", "h1"], deployment_config="CodeDeployDefault.OneAtATime", local=("h1",), heartbeat=2, rollback=True
    )
    server = start(servers, tmp_path, text)
    agent = server.run_agent("h2")
    pid_file, seen = tmp_path / "hang.pid", tmp_path / "hang-seen-by-rollback"
    # The rollback redeploys "good": its BeforeInstall on h2 notes whether the orphaned hook is still running.
    check = (
        f'if [ "$DEPLOYBOT_HOST" = h2 ] && [ -f {pid_file} ]; then p=$(cat {pid_file}); '
        f'if [ -e /proc/$p ] && ! grep -q ") Z" /proc/$p/stat; then echo running; else echo gone; fi >> {seen}; fi'
    )
    good_revision = write_revision(tmp_path, "good", {"BeforeInstall": check})
    good = server.wait_final(server.deploy("app", "prod", good_revision)["id"])
    assert good["status"] == "Succeeded"

    hang = {"BeforeInstall": f'if [ "$DEPLOYBOT_HOST" = h2 ]; then echo $$ > {pid_file}; sleep 60; fi'}
    bad = server.deploy("app", "prod", write_revision(tmp_path, "hangs", hang))
    server.wait_for(bad["id"], lambda d: event(d, "h2", "BeforeInstall")["status"] == "InProgress")
    while not pid_file.exists() or not group_noted(server.data_dir / "hosts" / "h2"):
        time.sleep(0.02)
    agent.send_signal(signal.SIGKILL)
    # The failure is written before the rollback it causes is created (write-ahead), so a poller may see "Failed"
    # a moment before the link: wait for both. How soon it was noticed is the server's own measure, in the message.
    doc = server.wait_for(bad["id"], lambda d: d["status"] in FINAL and d["rollback"]["by"], timeout=30)

    assert doc["status"] == "Failed"
    assert statuses(doc) == {"h2": "Failed", "h1": "Skipped"}
    assert "has not been heard from" in event(doc, "h2", "BeforeInstall")["message"]
    assert "(heartbeat limit 2 s)" in event(doc, "h2", "BeforeInstall")["message"]
    rollback_id = doc["rollback"]["by"]

    server.run_agent("h2")  # the host comes back: it ends the orphaned hook, then the rollback can reach it
    rollback = server.wait_final(rollback_id, timeout=60)
    assert rollback["status"] == "Succeeded"
    assert seen.read_text() == "gone\n"  # the hook the killed agent left did not run on into the rollback
    assert rollback["revision"]["sha256"] == good["revision"]["sha256"]
    assert rollback["created_by"] == "codeDeployRollback"


def test_server_killed_mid_deployment_resumes(servers, tmp_path) -> None:
    server = start(servers, tmp_path, config(["h1", "h2"], deployment_config="CodeDeployDefault.OneAtATime"))
    slow = write_revision(tmp_path, "slow", {"AfterInstall": "sleep 1.5", "ValidateService": "exit 0"})
    started = server.deploy("app", "prod", slow)
    server.wait_for(started["id"], lambda d: event(d, "h1", "AfterInstall")["status"] == "InProgress")
    server.kill9()  # the agents are left running, like real hosts; h1 finishes its hook while we are down
    time.sleep(0.5)

    restarted = DeploybotServer(
        tmp_path, config(["h1", "h2"], deployment_config="CodeDeployDefault.OneAtATime"), port=server.port
    )
    servers.append(restarted)
    restarted.start()
    doc = restarted.wait_final(started["id"], timeout=60)
    assert doc["status"] == "Succeeded", doc
    assert statuses(doc) == {"h1": "Succeeded", "h2": "Succeeded"}
    assert "adopted local agent" in "".join(restarted.output)

    entries = restarted.wait_logged(started["id"], "deployment.finished")
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "deployment.requested" and "deployment.resumed" in kinds
    assert kinds[-1] == "deployment.finished"
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)


def _tarball(add) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        add(tar)
    return buffer.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


APPSPEC = b"version: 0.0\nos: linux\n"


@pytest.mark.parametrize(
    ("name", "build", "reason"),
    [
        ("zip-slip", lambda t: (_member(t, "appspec.yml", APPSPEC), _member(t, "../../escaped.txt")), ".."),
        (
            "symlink escape",
            lambda t: (
                _member(t, "appspec.yml", APPSPEC),
                _member(t, "link", b"", type=tarfile.SYMTYPE, linkname="../../.."),
            ),
            "link",
        ),
        ("absolute path", lambda t: (_member(t, "appspec.yml", APPSPEC), _member(t, "/tmp/abs.txt")), "absolute"),
    ],
)
def test_unsafe_bundles_are_refused_and_nothing_is_written_outside(servers, tmp_path, name, build, reason) -> None:
    server = start(servers, tmp_path, config(["h1"]))
    before = set(os.listdir(tmp_path)) | set(os.listdir(tmp_path.parent))
    status, body = server.api("POST", "/api/v1/revisions", raw=_tarball(build))
    assert status == 422, body
    assert reason in body["message"].lower()
    after = set(os.listdir(tmp_path)) | set(os.listdir(tmp_path.parent))
    assert after == before
    assert not Path("/tmp/abs.txt").exists()


def test_two_requests_at_once_never_run_concurrently(servers, tmp_path) -> None:
    server = start(servers, tmp_path, config(["h1", "h2"]))
    revisions = [write_revision(tmp_path, f"r{i}", {"AfterInstall": "sleep 0.3"}) for i in range(2)]
    ids: list[str] = []

    def request(revision: Path) -> None:
        ids.append(server.deploy("app", "prod", revision)["id"])

    threads = [threading.Thread(target=request, args=(r,)) for r in revisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    docs = sorted((server.wait_final(i) for i in ids), key=lambda d: d["started_at"])
    assert [d["status"] for d in docs] == ["Succeeded", "Succeeded"]
    assert docs[0]["ended_at"] <= docs[1]["started_at"]
