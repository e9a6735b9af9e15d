"""End to end through the command line: ``deploybot serve`` (real engine, real local agents) on a free port, then
``deploybot deploy --wait``, ``status``, ``history`` as separate processes, the way a person uses them.

Every started process (server, agents, the deployed hello servers) is stopped afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"
HOSTS = ("e2e-1", "e2e-2")


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    data_dir: Path
    ports: dict[str, int]
    output: list[str]

    def cli(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL")}
        return subprocess.run(
            [sys.executable, "-m", "bot", *argv, "--server", self.url],
            cwd=self.data_dir.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_local(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A command that runs on the server's machine without talking to it (no --server option)."""
        return subprocess.run(
            [sys.executable, "-m", "bot", *argv], cwd=self.data_dir.parent, capture_output=True, text=True, timeout=30
        )


def _write_config(tmp_path: Path, ports: dict[str, int]) -> Path:
    hosts = "\n".join(
        f"  - {{name: {name}, local: true, port: {port}, tags: {{env: e2e}}}}" for name, port in ports.items()
    )
    config = tmp_path / "deploybot.yml"
    config.write_text(
        f"""server:
  listen: 127.0.0.1:8080
  data_dir: var
hosts:
{hosts}
applications:
  hello:
    platform: server
    revision: {EXAMPLE}
    environments: [staging]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {{hosts: [{", ".join(ports)}]}}
"""
    )
    return config


def _stop_hello_servers(data_dir: Path) -> None:
    for pid_file in data_dir.glob("hosts/*/fs/var/run/hello.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    ports = {name: free_port() for name in HOSTS}
    config = _write_config(tmp_path, ports)
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYBOT_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--config", str(config), "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(30), "".join(output)
        url = re.search(r"listening on (\S+)", "".join(output)).group(1)  # type: ignore[union-attr]
        yield Server(process, url, tmp_path / "var", ports, output)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        _stop_hello_servers(tmp_path / "var")


def test_deploy_wait_status_history_then_clean_shutdown(server: Server) -> None:
    token_file = server.data_dir / "api-token"
    assert token_file.stat().st_mode & 0o777 == 0o600

    deployed = server.cli("deploy", "hello", "--to", "staging", "--wait")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr + "".join(server.output)
    ident = re.search(r"\b(d-[A-Z0-9]+)\b", deployed.stdout).group(1)  # type: ignore[union-attr]
    assert "Succeeded" in deployed.stdout

    status = server.cli("status", ident, "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["status"] == "Succeeded"
    assert sorted(t["name"] for t in document["targets"]) == sorted(HOSTS)
    for target in document["targets"]:
        assert {e["status"] for e in target["events"]} <= {"Succeeded", "Skipped"}, target
    for port in server.ports.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.status == 200

    history = server.cli("history", "hello", "--json")
    assert [d["id"] for d in json.loads(history.stdout)] == [ident]

    hosts = server.cli("hosts", "--json")
    assert hosts.returncode == 0, hosts.stderr
    assert {h["name"]: h["agent"] for h in json.loads(hosts.stdout)} == dict.fromkeys(HOSTS, "online")
    token = server.cli_local("agent-token", HOSTS[0], "--config", str(server.data_dir.parent / "deploybot.yml"))
    issued = json.loads((server.data_dir / "agent-tokens.json").read_text())
    assert token.returncode == 0 and token.stdout.strip() == issued[HOSTS[0]]

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
    time.sleep(0.2)
    assert "deploybot stopped" in "".join(server.output)
    for name in HOSTS:
        assert "starting agent" in (server.data_dir / "hosts" / name / "agent.log").read_text()
    unreachable = server.cli("status")
    assert unreachable.returncode == 1
    assert "deploybot server is not running" in unreachable.stderr


def _serve_once(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYBOT_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_with_an_invalid_config_prints_located_problems(tmp_path: Path) -> None:
    config = tmp_path / "broken.yml"
    config.write_text("server:\n  listen: 127.0.0.1:8080\n  colour: blue\n")
    result = _serve_once(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert re.search(r"broken\.yml:3:\d+: .*colour", result.stderr), result.stderr
    assert not (tmp_path / "var").exists()


def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    config = tmp_path / "empty.yml"
    config.write_text("server: {listen: 127.0.0.1:8080, data_dir: var}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _serve_once(tmp_path, "--config", str(config), "--port", str(busy.getsockname()[1]))
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr and "try --port" in result.stderr
