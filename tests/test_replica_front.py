"""Replicas behind HAProxy, for real: two ``deploybot serve`` processes (each its own data directory and port) on one
throwaway PostgreSQL, behind the HAProxy of examples/replicas/haproxy.cfg (that file, its ports and socket replaced),
with real agents and the real CLI.

What it shows: the CLI deploys through the front a bundle uploaded to one replica, and the agents, which talk only to
the other, download it there (it has the bundle in its own data directory afterwards, fetched from the database); an
agent token issued by one replica is accepted by the other; ``deploybot replicas`` lists both; a replica killed with
SIGKILL is taken out by HAProxy's health check on /healthz and requests keep working through the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import HANG_GUARD, eventually, free_port
from e2e_support import write_revision
from postgres_support import PostgresServer

from engine import build_bundle
from engine.adapters.haproxy.process import find_haproxy
from engine.adapters.haproxy.runtime import HAProxyRuntime

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "replicas" / "haproxy.cfg"

CONFIG = """
server: {data_dir: var, heartbeat_timeout: 60}
store:
  url: %(url)s
hosts:
  - {name: web-1, tags: {role: web}}
  - {name: web-2, tags: {role: web}}
applications:
  shop:
    platform: server
    environments: [staging]
    deployment_groups:
      staging:
        deployment_type: in-place
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {role: web}}
"""


class Replica:
    """One ``deploybot serve --config X --port N --data-dir D`` process."""

    def __init__(self, workdir: Path, config: Path, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.data_dir = workdir / name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "bot", "serve", "--config", str(config), "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir)]
        self.output: list[str] = []
        self.process = subprocess.Popen(
            argv, cwd=workdir, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "listening on" in line:
                self.listening.set()

    def wait_listening(self) -> None:
        if not self.listening.wait(HANG_GUARD):
            raise AssertionError(f"{self.name} did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(HANG_GUARD)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def call(url: str, method: str = "GET", body: Any = None, *, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def cli(*args: str, env: Mapping[str, str]) -> Any:
    """``deploybot ARGS --json``: its JSON document (exit 0 asserted)."""
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args, "--json"], env=dict(env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def upload(server: str, revision: Path, token: str) -> str:
    """What the CLI does with a revision directory, to one replica: bundle it, POST it; its sha256."""
    with tempfile.TemporaryDirectory(prefix="bundle-") as scratch:
        built = build_bundle(str(revision), Path(scratch))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"}
        headers |= {"X-Deploybot-Source": str(revision), "X-Deploybot-Application": "shop"}
        request = urllib.request.Request(
            server + "/api/v1/revisions", data=built.path.read_bytes(), method="POST", headers=headers
        )
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as response:
            assert response.status == 201
            return str(json.loads(response.read())["sha256"])


def front_config(front_port: int, replicas: list[Replica], socket_path: Path) -> str:
    """examples/replicas/haproxy.cfg with this test's ports and socket."""
    text = EXAMPLE.read_text()
    text = text.replace("/run/haproxy/deploybot-front.sock", str(socket_path))
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{front_port}")
    for number, replica in enumerate(replicas, start=1):
        text = text.replace(f"127.0.0.1:{8080 + number}", f"127.0.0.1:{replica.port}")
    return text


@contextlib.contextmanager
def running(processes: list[subprocess.Popen[Any]]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="front", dir="/tmp"))  # the HAProxy socket path must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_two_replicas_behind_haproxy(postgres_server: PostgresServer, workdir: Path) -> None:
    haproxy = find_haproxy()
    config = workdir / "deploybot.yml"
    config.write_text(CONFIG % {"url": postgres_server.new_database()})
    api_token = "replicas-" + os.urandom(12).hex()
    (workdir / "api-token").write_text(api_token)
    os.chmod(workdir / "api-token", 0o600)
    # Every replica is given the same bootstrap token file: a replica retires the bootstrap tokens it is not given.
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL")}
    env["DEPLOYBOT_TOKEN_FILE"] = str(workdir / "api-token")
    first = Replica(workdir, config, "replica-1", env)
    first.wait_listening()  # one migrates the empty database; the other then finds it done
    second = Replica(workdir, config, "replica-2", env)
    second.wait_listening()
    front_port = free_port()
    front = f"http://127.0.0.1:{front_port}"
    socket_path = workdir / "front.sock"
    (workdir / "haproxy.cfg").write_text(front_config(front_port, [first, second], socket_path))
    balancer = subprocess.Popen(
        [haproxy, "-f", str(workdir / "haproxy.cfg"), "-db"],
        stdout=(workdir / "haproxy.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    runtime = HAProxyRuntime(socket_path)
    agents: list[subprocess.Popen[Any]] = []
    client = {**env, "DEPLOYBOT_TOKEN": api_token, "DEPLOYBOT_URL": front}
    try:
        with running(agents):
            await eventually(lambda: _both_up(runtime), "HAProxy to see both replicas UP through /healthz")
            ids = {r.name: call(r.url + "/healthz")[1]["replica"]["id"] for r in (first, second)}

            # Agent tokens issued by replica-1 are accepted by replica-2 (the agents will only ever talk to it).
            tokens = {}
            for host in ("web-1", "web-2"):
                status, issued = call(
                    first.url + "/api/v1/agent-tokens", "POST", {"name": host, "rotate": True}, token=api_token
                )
                assert status == 201, issued
                tokens[host] = issued["token"]
            for host, token in tokens.items():
                await eventually(lambda t=token: _agent_accepted(second.url, t), f"replica-2 to accept {host}'s token")
            assert call(second.url + "/agent/v1/heartbeat", "POST", {}, token="dbt_nobody")[0] == 401
            for host, token in tokens.items():
                agents.append(_agent(workdir, host, token, second.url))

            # The bundle is uploaded to replica-1 only; the CLI deploys it through the front, and the agents, which
            # talk to replica-2 only, download it from there: replica-2 fetched it from the database.
            sha = upload(first.url, write_revision(workdir, "rev-1", {"ValidateService": "exit 0"}), api_token)
            assert not (second.data_dir / "revisions" / f"{sha}.tar.gz").exists()
            deployed = cli("deploy", "shop", "--to", "staging", "--revision", f"sha256:{sha}", "--wait", env=client)
            assert deployed["status"] == "Succeeded", deployed
            assert deployed["revision"]["sha256"] == sha
            assert (second.data_dir / "revisions" / f"{sha}.tar.gz").exists()
            for host in ("web-1", "web-2"):
                assert (workdir / "hosts" / host / "fs" / "opt" / "e2e" / "VERSION").read_text() == "rev-1"

            listed = cli("replicas", env=client)
            alive = {(r["id"], r["alive"]) for r in listed["replicas"]}
            assert alive == {(ids["replica-1"], True), (ids["replica-2"], True)}
            assert {r["url"] for r in listed["replicas"]} == {first.url, second.url}

            # replica-1 dies: HAProxy's check takes it out, and the front keeps answering (from replica-2).
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
            await eventually(lambda: _down(runtime, "replica-1"), "HAProxy to take replica-1 out")
            answers = [call(front + "/healthz") for _ in range(6)]
            assert {(status, body["replica"]["id"]) for status, body in answers} == {(200, ids["replica-2"])}
            status_doc = cli("status", deployed["id"], env=client)
            assert status_doc["status"] == "Succeeded"
            await eventually(lambda: _dead(client, ids["replica-1"]), "deploybot replicas to show replica-1 dead")

            # The group's lease moves to replica-2 (its owner died): the next deployment runs there, the agents'
            # replica, each event once and in order.
            sha_2 = upload(front, write_revision(workdir, "rev-2", {"ValidateService": "exit 0"}), api_token)
            again = cli("deploy", "shop", "--to", "staging", "--revision", f"sha256:{sha_2}", "--wait", env=client)
            assert again["status"] == "Succeeded", again
            for host in ("web-1", "web-2"):
                assert (workdir / "hosts" / host / "fs" / "opt" / "e2e" / "VERSION").read_text() == "rev-2"
    finally:
        second.stop()
        first.stop()
        balancer.terminate()
        balancer.wait(10)


async def _both_up(runtime: HAProxyRuntime) -> bool:
    with contextlib.suppress(Exception):
        states = await runtime.server_states("replicas")
        return len(states) == 2 and all(state.up for state in states.values())
    return False


async def _down(runtime: HAProxyRuntime, server: str) -> bool:
    states = await runtime.server_states("replicas")
    return not states[server].up


async def _agent_accepted(url: str, token: str) -> bool:
    status, _ = await asyncio.to_thread(call, url + "/agent/v1/heartbeat", "POST", {}, token=token)
    return status == 200


async def _dead(env: Mapping[str, str], replica_id: str) -> bool:
    listed = await asyncio.to_thread(cli, "replicas", env=env)
    return any(r["id"] == replica_id and not r["alive"] for r in listed["replicas"])


def _agent(workdir: Path, host: str, token: str, server: str) -> subprocess.Popen[Any]:
    root = workdir / "hosts" / host
    root.mkdir(parents=True)
    token_file = root / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    argv = [sys.executable, "-m", "bot", "agent", "--server", server, "--name", host, "--token-file", str(token_file)]
    argv += ["--root", str(root), "--prefix", str(root / "fs")]
    with (root / "agent.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
