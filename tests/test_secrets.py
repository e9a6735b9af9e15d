"""Secrets stay where they belong, through a real ``deploybot serve`` started with the server's secrets in its
environment, its real local agents and real hook scripts, and a real agent started as docs/operations.md says:

- hooks (and the agents that run them) see none of the server's environment beyond the basics;
- no agent token is on any agent's command line (what ``ps`` shows every user);
- the data directory is 0700 and every file deploybot writes there 0600;
- an agent downloads only its own host's bundles (another host's is a 404, like one that does not exist);
- ``POST /api/v1/agent-tokens`` issues a token once, then answers 409 unless asked to rotate, which revokes the old
  token at once; the agent reads its token file again after the 401 and carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import HANG_GUARD, free_port
from e2e_support import DeploybotServer, write_revision

from bot.localfleet import AGENT_ENV
from engine.agent import BASIC_ENV

SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-secret-slack-bot-token",
    "SLACK_SIGNING_SECRET": "secret-slack-signing-secret",
    "DEPLOYBOT_TOKEN": "secret-api-token-from-the-environment",
    "AWS_SECRET_ACCESS_KEY": "secret-aws-secret-access-key",
    "GITHUB_TOKEN": "ghp_secretgithubtokenfromtheenvironment",
    "DEPLOYBOT_AGENT_TOKEN": "secret-agent-token-in-the-servers-environment",
}
CODEDEPLOY = {"LIFECYCLE_EVENT", "DEPLOYMENT_ID", "APPLICATION_NAME", "DEPLOYMENT_GROUP_NAME", "DEPLOYMENT_GROUP_ID"}
OURS = {"DEPLOYBOT_HOST", "DEPLOYBOT_PREFIX", "BUNDLE_COMMIT"}
CONFIGURED = {"PORT", "DEPLOYBOT_PYTHON"}  # a local host's configured environment (its port, the interpreter)
SHELL = {"PWD", "SHLVL", "_"}  # what bash itself exports to the `env` it runs
DEPLOYBOT = f"{shlex.quote(sys.executable)} -m bot"  # `deploybot`, as the documented commands name it

CONFIG = """server: {data_dir: var}
hosts:
  - {name: sec-1, local: true, port: PORT1}
  - {name: sec-2, local: true, port: PORT2}
  - {name: remote-1}
applications:
  one:
    platform: server
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [sec-1]}}
  two:
    platform: server
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [sec-2]}}
  three:
    platform: server
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [remote-1]}}
"""
ENV_HOOK = 'env | sort\nenv -0 > "$DEPLOYBOT_PREFIX/hook-env"'


@dataclass
class Served:
    server: DeploybotServer
    one: dict[str, Any]  # the finished deployment documents
    two: dict[str, Any]

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def agent_tokens(self) -> dict[str, str]:
        tokens: dict[str, str] = json.loads((self.data_dir / "agent-tokens.json").read_text())
        return tokens

    def local_agent_pids(self) -> dict[str, int]:
        return {name: int((self.data_dir / "hosts" / name / "agent.pid").read_text()) for name in ("sec-1", "sec-2")}

    def agent_get(self, path: str, token: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.server.url + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=HANG_GUARD) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def _start(server: DeploybotServer, env: dict[str, str]) -> None:
    """DeploybotServer.start with this environment (start() drops DEPLOYBOT_TOKEN, which this test sets)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--config", str(server.config), "--port", str(server.port)],
        cwd=server.workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server.process = process
    listening = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.output.append(line)
            if "listening on" in line:
                listening.set()

    threading.Thread(target=read, daemon=True).start()
    assert listening.wait(HANG_GUARD), "server did not start:\n" + "".join(server.output)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module, after a deployment of ``one`` to sec-1 and of ``two`` to sec-2 (both run `env`)."""
    workdir = tmp_path_factory.mktemp("secrets")
    config = CONFIG.replace("PORT1", str(free_port())).replace("PORT2", str(free_port()))
    server = DeploybotServer(workdir, config)
    env = {key: value for key, value in os.environ.items() if key != "DEPLOYBOT_URL"}
    env |= SECRETS | {"SLACK_API_URL": f"http://127.0.0.1:{free_port()}/api/"}  # nothing leaves the machine
    write_revision(workdir, "rev-one", {"ValidateService": ENV_HOOK})
    write_revision(workdir, "rev-two", {"ValidateService": ENV_HOOK + "\necho two"})
    for name in ("rev-three-a", "rev-three-b"):  # no `files`: remote-1's agent installs on this very machine
        (workdir / name).mkdir()
        (workdir / name / "appspec.yml").write_text(f"version: 0.0\nos: linux\n# {name}\n")
    try:
        _start(server, env)
        one = server.wait_final(server.deploy("one", "staging", workdir / "rev-one")["id"])
        two = server.wait_final(server.deploy("two", "staging", workdir / "rev-two")["id"])
        assert one["status"] == two["status"] == "Succeeded", (one, two, "".join(server.output))
        yield Served(server, one, two)
    finally:
        server.cleanup()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def _cmdline(pid: int) -> list[str]:
    return [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]


def test_the_local_fleet_passes_what_the_agent_passes_on() -> None:
    assert AGENT_ENV == BASIC_ENV  # two names for one list: bot/ may not import the agent


def test_hooks_and_local_agents_see_none_of_the_servers_secrets(served: Served) -> None:
    hook_env = (served.data_dir / "hosts" / "sec-1" / "fs" / "hook-env").read_bytes()
    names = {item.decode().partition("=")[0] for item in hook_env.split(b"\0") if item}
    assert not names & SECRETS.keys()
    assert CODEDEPLOY | {"DEPLOYBOT_HOST", "PORT", "DEPLOYBOT_PYTHON", "PATH"} <= names
    assert names <= set(BASIC_ENV) | CODEDEPLOY | OURS | CONFIGURED | SHELL, "nothing else of the server's"
    [validate] = [e for e in served.one["targets"][0]["events"] if e["name"] == "ValidateService"]
    assert "LIFECYCLE_EVENT=ValidateService" in validate["log_tail"]  # the tail an attacker read the secrets in
    for value in SECRETS.values():
        assert value.encode() not in hook_env
        assert value not in validate["log_tail"]
    for name, pid in served.local_agent_pids().items():
        agent_env = _environ(pid)
        assert set(agent_env) <= set(AGENT_ENV), (name, sorted(agent_env))
        assert "PATH" in agent_env


def test_no_agent_token_is_on_a_command_line(served: Served) -> None:
    tokens = served.agent_tokens()
    for name, pid in served.local_agent_pids().items():
        argv = _cmdline(pid)
        assert not any(tokens[name] in part for part in argv), argv
        assert not any(part.startswith("--token=") or part == "--token" for part in argv), argv
        token_file = Path(argv[argv.index("--token-file") + 1])
        assert token_file.parent == (served.data_dir / "local-agent-tokens").absolute()
        assert token_file.read_text().strip() == tokens[name]


def test_the_data_directory_is_private(served: Served) -> None:
    data = served.data_dir
    assert data.stat().st_mode & 0o777 == 0o700
    for directory in (data / "local-agent-tokens", data / "revisions"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    expected = [
        data / "deploybot.db",
        data / "deploybot.db-wal",
        data / "deploybot.db-shm",
        data / "api-token",
        data / "agent-tokens.json",
        data / "revisions" / f"{served.one['revision']['sha256']}.tar.gz",
        data / "local-agent-tokens" / "sec-1.token",
        data / "hosts" / "sec-1" / "agent.log",
        data / "hosts" / "sec-1" / "agent.pid",
    ]
    found = {path: path.stat().st_mode & 0o777 for path in expected}
    deployment = next((data / "hosts" / "sec-1" / "deployments").glob("*/*"))
    for name in ("deployment.json", "bundle.tar.gz", "logs/scripts.log"):
        found[deployment / name] = (deployment / name).stat().st_mode & 0o777
    # And every other file written there, except the revision's own files as deployed (the application's modes).
    for path in data.rglob("*"):
        relative = path.relative_to(data).parts
        if path.is_file() and "fs" not in relative[2:3] and "deployment-archive" not in relative:
            found[path] = path.stat().st_mode & 0o777
    assert {str(path.relative_to(data)): oct(mode) for path, mode in found.items() if mode != 0o600} == {}


def test_an_agent_downloads_only_its_own_hosts_bundles(served: Served) -> None:
    tokens = served.agent_tokens()
    one, two = served.one["revision"]["sha256"], served.two["revision"]["sha256"]
    status, body = served.agent_get(f"/agent/v1/bundles/{one}", tokens["sec-1"])
    assert status == 200 and (served.data_dir / "revisions" / f"{one}.tar.gz").read_bytes() == body
    assert served.agent_get(f"/agent/v1/bundles/{two}", tokens["sec-2"])[0] == 200
    others, others_body = served.agent_get(f"/agent/v1/bundles/{two}", tokens["sec-1"])
    missing, missing_body = served.agent_get("/agent/v1/bundles/" + "0" * 64, tokens["sec-1"])
    assert others == missing == 404  # not 403: the answer does not confirm that the revision exists
    assert json.loads(others_body)["error"] == json.loads(missing_body)["error"] == "RevisionNotFound"
    assert served.agent_get(f"/agent/v1/bundles/{one}", tokens["remote-1"])[0] == 404  # no deployment at all yet


def test_agent_tokens_are_issued_once_and_otherwise_rotated(served: Served, tmp_path: Path) -> None:
    server = served.server
    issued_status, issued = server.api("POST", "/api/v1/agent-tokens", {"name": "i-0abc123"})
    assert issued_status == 201 and issued["token"] == served.agent_tokens()["i-0abc123"]
    again_status, again = server.api("POST", "/api/v1/agent-tokens", {"name": "i-0abc123"})
    assert again_status == 409 and again["error"] == "AgentTokenExists" and '"rotate": true' in again["message"]
    assert issued["token"] not in json.dumps(again)
    configured_status, configured = server.api("POST", "/api/v1/agent-tokens", {"name": "remote-1"})
    assert configured_status == 409 and served.agent_tokens()["remote-1"] not in json.dumps(configured)
    assert server.api("POST", "/api/v1/agent-tokens", {"name": "remote-1", "rotate": "yes"})[0] == 400

    # remote-1's agent, started as docs/operations.md "Running agents on real hosts" says.
    token_file = tmp_path / "web-1.token"
    command = f"(umask 077 && {DEPLOYBOT} agent-token remote-1 --config {server.config} > {token_file})"
    subprocess.run(["bash", "-c", command], cwd=server.workdir, check=True, timeout=HANG_GUARD)
    assert token_file.stat().st_mode & 0o777 == 0o600
    old = token_file.read_text().strip()
    argv = [*shlex.split(DEPLOYBOT), "agent", "--server", server.url, "--name", "remote-1"]
    argv += ["--token-file", str(token_file), "--root", str(tmp_path / "agent")]
    with (tmp_path / "agent.log").open("ab") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = server.wait_final(server.deploy("three", "staging", server.workdir / "rev-three-a")["id"])
        assert first["status"] == "Succeeded", first
        assert not any(old in part for part in _cmdline(agent.pid))

        rotated_status, rotated = server.api("POST", "/api/v1/agent-tokens", {"name": "remote-1", "rotate": True})
        assert rotated_status == 201 and rotated["rotated"] is True and rotated["token"] != old
        assert served.agent_get("/agent/v1/commands/next?wait=0", old)[0] == 401  # revoked at once
        token_file.write_text(rotated["token"] + "\n")  # what the operator does with the new token
        second = server.wait_final(server.deploy("three", "staging", server.workdir / "rev-three-b")["id"])
        assert second["status"] == "Succeeded", second  # the agent read its file again after its 401
        assert f"using the new one in {token_file}" in (tmp_path / "agent.log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(HANG_GUARD)
    with contextlib.closing(sqlite3.connect(f"file:{served.data_dir / 'deploybot.db'}?mode=ro", uri=True)) as db:
        audit = db.execute("SELECT kind, data FROM event_log WHERE kind LIKE 'agent_token.%' ORDER BY id").fetchall()
    assert [(kind, json.loads(data)["host"]) for kind, data in audit] == [
        ("agent_token.issued", "i-0abc123"),
        ("agent_token.rotated", "remote-1"),
    ]


def test_the_agent_refuses_a_token_on_its_command_line(tmp_path: Path) -> None:
    argv = [*shlex.split(DEPLOYBOT), "agent", "--server", "http://127.0.0.1:9", "--name", "web-1", "--token", "t"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=HANG_GUARD, check=False)
    assert refused.returncode == 2
    assert "use --token-file PATH or set DEPLOYBOT_AGENT_TOKEN" in refused.stderr
    env = {key: value for key, value in os.environ.items() if key != "DEPLOYBOT_AGENT_TOKEN"}
    missing = subprocess.run(argv[:-2], capture_output=True, text=True, timeout=HANG_GUARD, check=False, env=env)
    assert missing.returncode == 2 and "no agent token" in missing.stderr
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    unusable = subprocess.run(
        [*argv[:-2], "--token-file", str(empty)], capture_output=True, text=True, timeout=HANG_GUARD, check=False
    )
    assert unusable.returncode == 2 and f"the agent token file {empty} is empty" in unusable.stderr
