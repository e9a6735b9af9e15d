"""A real ``deploybot serve`` with a local fleet, for benchmarks: start it, drive its JSON API, stop everything.

Stopping is thorough because a benchmark with 200 agents must not leave 200 processes behind: SIGTERM to the
server (which stops its local agents), then SIGKILL to the process group of any agent whose pid file is still
live and whose command line points into this server's directory (so a recycled pid is never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engine.bundles import build_bundle

FINAL = frozenset({"Succeeded", "Failed", "Stopped"})
APPLICATION = "bench"
ENVIRONMENT = "prod"
SINGLE_HOST = "single"  # a second environment of the application: the fleet's first host alone


class BenchError(Exception):
    """The system under test did not do what the benchmark needs (no start, a failed deployment, a time-out)."""


def host_names(count: int) -> list[str]:
    return [f"bench-{index:03d}" for index in range(1, count + 1)]


def fleet_config(
    hosts: list[str],
    *,
    deployment_config: str = "CodeDeployDefault.AllAtOnce",
    local: bool = True,
    single: str | None = None,
) -> str:
    """One application, one group targeting every host (tagged ``role: bench``; ``local``: the server starts their
    agents, else their agents are someone else's, e.g. bench/swarm.py's); with ``single``, one more host and a group
    (environment ``SINGLE_HOST``) with it alone (a host of its own: the two groups install the same files)."""
    local_key = "local: true, " if local else ""
    lines = "\n".join(f"  - {{name: {name}, {local_key}tags: {{role: bench}}}}" for name in hosts)
    if single is not None:
        lines += f"\n  - {{name: {single}, {local_key}tags: {{role: single}}}}"
    single_group = f"""
      {SINGLE_HOST}:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {{hosts: [{single}]}}
        load_balancer: none
        auto_rollback: {{enabled: false}}"""
    return f"""server: {{data_dir: var}}
hosts:
{lines}
applications:
  {APPLICATION}:
    platform: server
    environments: [{ENVIRONMENT}{f", {SINGLE_HOST}" if single else ""}]
    deployment_groups:
      {ENVIRONMENT}:
        deployment_config: {deployment_config}
        targets: {{tags: {{role: bench}}}}
        load_balancer: none
        auto_rollback: {{enabled: false}}{single_group if single else ""}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class BenchServer:
    """``python -m bot serve`` in ``workdir`` on a free port; use as a context manager so it is always stopped."""

    def __init__(self, workdir: Path, config_text: str, *, hosts: list[str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "deploybot.yml"
        self.config.write_text(config_text)
        self.data_dir = workdir / "var"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._output_grew = threading.Condition()
        self._token: str | None = None
        self._uploaded: dict[Path, str] = {}

    def __enter__(self) -> BenchServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL")}
        argv = [sys.executable, "-m", "bot", "serve", "--config", str(self.config), "--port", str(self.port)]
        self.process = subprocess.Popen(
            argv, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        listening = threading.Event()
        process = self.process

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                with self._output_grew:
                    self.output.append(line)
                    self._output_grew.notify_all()
                if "listening on" in line:
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(timeout):
            self.stop()
            raise BenchError("deploybot serve did not start:\n" + "".join(self.output[-30:]))

    def stop(self, timeout: float = 60) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in self.agent_pids():
            if str(self.workdir) in _cmdline(pid):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        # What the deployed revision started (the hello app daemonizes out of the agent's process group): it would
        # outlive the scenario, its directory deleted, and load the machine for every later figure.
        for pid_file in (self.data_dir / "hosts").glob("*/fs/var/run/*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(self.workdir)):
                    os.kill(pid, signal.SIGKILL)

    def agent_pids(self) -> list[int]:
        """Pids from the local fleet's ``var/hosts/NAME/agent.pid`` files (live or not)."""
        pids = []
        for pid_file in sorted((self.data_dir / "hosts").glob("*/agent.pid")):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().strip()))
        return pids

    # -- the API -----------------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 60,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request to ``/api/v1``: ``body`` is sent as JSON, or as it is when it is bytes."""
        if self._token is None:
            self._token = (self.data_dir / "api-token").read_text().strip()
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        sent = {"Authorization": f"Bearer {self._token}", "Content-Type": content_type, **(headers or {})}
        request = urllib.request.Request(self.url + "/api/v1" + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def upload(self, revision: Path) -> str:
        """``sha256:...`` of ``revision``'s bundle, built and uploaded once as `deploybot deploy --revision DIR` does
        (a path on the server is no revision unless ``server.revision_roots`` names it)."""
        if revision not in self._uploaded:
            built = build_bundle(revision, self.workdir / "bundles")
            status, answer = self.api(
                "POST",
                "/revisions",
                built.path.read_bytes(),
                content_type="application/gzip",
                headers={"X-Deploybot-Source": str(revision), "X-Deploybot-Application": APPLICATION},
            )
            if status >= 300:
                raise BenchError(f"POST /revisions answered {status}: {answer}")
            self._uploaded[revision] = f"sha256:{answer['sha256']}"
        return self._uploaded[revision]

    def deploy(self, revision: Path, *, environment: str = ENVIRONMENT, config: str | None = None) -> tuple[float, str]:
        """POST a deployment (the revision uploaded first, untimed), with the group's deployment configuration or
        ``config``; returns (epoch time just before the POST of the deployment, deployment id)."""
        body = {"application": APPLICATION, "environment": environment, "revision": self.upload(revision)}
        if config is not None:
            body["config"] = config
        t0 = time.time()
        status, answer = self.api("POST", "/deployments", body)
        if status != 201:
            raise BenchError(f"POST /deployments answered {status}: {answer}")
        return t0, str(answer["id"])

    def wait_final(self, deployment_id: str, *, timeout: float = 120, poll: float = 0.05) -> dict[str, Any]:
        """Poll until the deployment is final; a deployment that did not succeed is an error (the figure is void)."""
        deadline = time.monotonic() + timeout
        while True:
            status, doc = self.api("GET", f"/deployments/{deployment_id}")
            if status == 200 and doc["status"] in FINAL:
                if doc["status"] != "Succeeded":
                    raise BenchError(f"deployment {deployment_id} ended {doc['status']}: {doc.get('error')}")
                return dict(doc)
            if time.monotonic() > deadline:
                raise BenchError(f"deployment {deployment_id} not final after {timeout} s")
            time.sleep(poll)

    def wait_logged_end(self, deployment_id: str, *, since: int, timeout: float = 120) -> dict[str, Any]:
        """Wait for the server's own log line saying the deployment ended (among the lines from index ``since`` of
        ``output``, taken before it was created), then read it once (``wait_final``).

        Asking for a deployment while it runs costs the server a request inside the very figure being timed (every
        10 ms for one host, ~0.5 ms of the server's loop each, now and then in the way of an agent's result; ~15 ms
        of CPU per GET of a 200-host deployment), and the floor server the figures are compared with is never asked.
        The runner logs "deployment ID ended: STATUS" once the end is stored."""
        marker = f"deployment {deployment_id} ended"
        deadline = time.monotonic() + timeout
        seen = since
        with self._output_grew:
            while not any(marker in line for line in self.output[seen:]):
                seen = len(self.output)
                if self.process is not None and self.process.poll() is not None:
                    raise BenchError("deploybot serve exited:\n" + "".join(self.output[-30:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"deployment {deployment_id}: no end logged within {timeout} s")
                self._output_grew.wait(min(remaining, 1.0))  # and look again whether the server is still there
        return self.wait_final(deployment_id, timeout=timeout)

    def wait_agents_online(self, count: int, *, timeout: float = 180) -> float:
        """Wait until ``count`` agents have sent a heartbeat; returns the seconds waited."""
        started = time.monotonic()
        while True:
            if self._online() >= count:
                return time.monotonic() - started
            if self.process is not None and self.process.poll() is not None:
                raise BenchError("deploybot serve exited:\n" + "".join(self.output[-30:]))
            if time.monotonic() - started > timeout:
                raise BenchError(f"only {self._online()} of {count} agents online after {timeout} s")
            time.sleep(0.25)

    def _online(self) -> int:
        """Agents heard from: ``GET /api/v1/hosts`` when the server has it, else the ``agents`` table, read-only."""
        status, body = self.api("GET", "/hosts")
        if status == 200:
            return sum(1 for host in body["hosts"] if host["agent"] == "online")
        database = self.data_dir / "deploybot.db"
        if not database.exists():
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            try:
                return int(db.execute("SELECT count(*) FROM agents").fetchone()[0])
            except sqlite3.OperationalError:
                return 0
