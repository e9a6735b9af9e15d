"""One ``deploybot serve`` per data directory, with real servers and their local agents.

Two servers on one data directory would both dispatch from one SQLite file and replace each other's agents; the
second must refuse before it touches anything, and a server killed with SIGKILL must leave no lock behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD
from e2e_support import DeploybotServer, free_port, write_revision

CONFIG = """server: {data_dir: var}
hosts:
  - {name: h1, local: true}
  - {name: h2, local: true}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [h1, h2]}
"""


@pytest.fixture
def servers() -> Iterator[list[DeploybotServer]]:
    started: list[DeploybotServer] = []
    yield started
    for server in started:
        server.cleanup()


def _serve(server: DeploybotServer, servers: list[DeploybotServer]) -> DeploybotServer:
    servers.append(server)
    server.start()
    return server


HOSTS = ("h1", "h2")


def _agents(data_dir: Path) -> dict[str, tuple[str, str]]:
    """Each local agent's pid file and log, as they are now."""
    host_dirs = {name: data_dir / "hosts" / name for name in HOSTS}
    return {name: ((d / "agent.pid").read_text(), (d / "agent.log").read_text()) for name, d in host_dirs.items()}


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_second_server_on_the_same_data_dir_names_the_first_and_touches_nothing(servers, tmp_path) -> None:
    first = _serve(DeploybotServer(tmp_path, CONFIG), servers)
    assert first.process is not None
    lock = first.data_dir / "server.lock"
    assert lock.read_text().strip() == str(first.process.pid)
    assert lock.stat().st_mode & 0o777 == 0o600
    agents = _agents(first.data_dir)
    files = sorted(path.relative_to(first.data_dir) for path in first.data_dir.rglob("*"))

    second = subprocess.run(
        [sys.executable, "-m", "bot", "serve", "--config", str(first.config), "--port", str(free_port())],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL")},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )

    assert second.returncode == 1
    assert second.stdout == ""
    assert second.stderr.splitlines() == [
        f"error: the data directory {first.data_dir.resolve()} is in use by another deploybot serve "
        f"(pid {first.process.pid}): stop it first, or give this one another server.data_dir"
    ]
    assert _agents(first.data_dir) == agents  # no agent replaced, stopped or started
    assert all(_running(int(pid)) for pid, _ in agents.values())
    assert sorted(path.relative_to(first.data_dir) for path in first.data_dir.rglob("*")) == files
    assert lock.read_text().strip() == str(first.process.pid)
    doc = first.wait_final(first.deploy("app", "prod", write_revision(tmp_path, "rev", {}))["id"])
    assert doc["status"] == "Succeeded", doc  # the first server goes on undisturbed


def test_a_server_killed_with_sigkill_leaves_no_lock_behind(servers, tmp_path) -> None:
    first = _serve(DeploybotServer(tmp_path, CONFIG), servers)
    first.kill9()  # the kernel drops the flock with the process; the pid left in the file means nothing

    second = _serve(DeploybotServer(tmp_path, CONFIG, port=first.port), servers)
    assert second.process is not None
    assert (second.data_dir / "server.lock").read_text().strip() == str(second.process.pid)
    assert "adopted local agent" in "".join(second.output)  # the first server's agents, not a second set
