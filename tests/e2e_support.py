"""A real ``deploybot serve`` process for end-to-end tests: start, kill -9, restart, talk to its API, clean up.

Everything a test starts is stopped in ``cleanup()``: the server, its local agents (found by their pid files),
agents the test ran itself, and any process a hook script recorded in a ``*.pid`` file under the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conftest import free_port

from bench.load import Load
from engine import build_bundle, names_server_path

__all__ = [
    "DeploybotServer",
    "Load",
    "event",
    "free_port",
    "keep_workdir",
    "short_workdir",
    "statuses",
    "write_revision",
]

FINAL = ("Succeeded", "Failed", "Stopped")


def short_workdir(prefix: str = "e2e-") -> Path:
    """A new directory with a short path, for a server whose data directory will hold HAProxy's stats socket (moved
    into tmp_path afterwards by keep_workdir). HAProxy refuses a socket path over 97 bytes: with the data directory
    in tmp_path, ``var/haproxy/haproxy.sock`` is at 88 bytes in a serial run (/tmp/pytest-of-root/pytest-NNNN/NAME0/)
    and at 98 under pytest-xdist, which adds ``popen-gwN/``."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def keep_workdir(server: DeploybotServer, into: Path) -> None:
    """After ``cleanup()``: the server's short working directory (see short_workdir) moved to ``into``, in the test's
    tmp_path, kept for a failure's post-mortem like the rest of tmp_path; and the output it printed, which pytest
    shows for a failed test only."""
    print(f"--- output of the server in {into}:\n" + "".join(server.output))
    shutil.move(server.workdir, into)


def write_revision(root: Path, name: str, hooks: dict[str, str], *, timeout: int = 60) -> Path:
    """A revision directory whose hooks are the given bash bodies (``{"ValidateService": "exit 0"}``)."""
    path = root / name
    (path / "scripts").mkdir(parents=True)
    (path / "VERSION").write_text(name)
    lines = ["version: 0.0", "os: linux", "files:", "  - source: VERSION", "    destination: /opt/e2e", "hooks:"]
    for event, body in hooks.items():
        script = path / "scripts" / f"{event}.sh"
        script.write_text(f"#!/bin/bash\nset -eu\n{body}\n")
        script.chmod(0o755)
        lines += [f"  {event}:", f"    - location: scripts/{event}.sh", f"      timeout: {timeout}"]
    (path / "appspec.yml").write_text("\n".join(lines) + "\n")
    return path


class DeploybotServer:
    def __init__(self, workdir: Path, config_text: str, *, port: int | None = None) -> None:
        self.workdir = workdir
        self.config = workdir / "deploybot.yml"
        self.config.write_text(config_text)
        self.data_dir = workdir / "var"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.extra_processes: list[subprocess.Popen[bytes]] = []
        self.context: ssl.SSLContext | None = None  # how to trust an https:// server (tests/test_tls.py)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30, *, env: Mapping[str, str] | None = None) -> None:
        """``deploybot serve`` in the working directory, once it says it listens; ``env`` is added to ours."""
        inherited = {k: v for k, v in os.environ.items() if k not in ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL")}
        env = inherited | dict(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", "--config", str(self.config), "--port", str(self.port)],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        listening = threading.Event()
        process = self.process

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.output.append(line)
                if "listening on" in line:
                    listening.set()
            listening.set()  # the output ended: a server that exited before listening fails now, not at the timeout

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(timeout) or not any("listening on" in line for line in self.output):
            raise AssertionError("server did not start:\n" + "".join(self.output))

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def run_agent(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        """An agent this test runs itself (a host not marked ``local``), with the token the server issued."""
        tokens = json.loads((self.data_dir / "agent-tokens.json").read_text())
        root = self.data_dir / "hosts" / name
        root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "bot", "agent", "--server", self.url, "--name", name]
        argv += ["--root", str(root), "--prefix", str(root / "fs"), *extra]
        env = {**os.environ, "DEPLOYBOT_AGENT_TOKEN": tokens[name]}  # never on the command line
        with (root / "agent.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.extra_processes.append(process)
        return process

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
            if self.process.poll() is None:
                self.process.kill()
        for process in self.extra_processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for pid_file in self.workdir.rglob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)

    # -- the API ---------------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        token = (self.data_dir / "api-token").read_text().strip()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.context) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def upload(self, revision: Path | str, application: str) -> str:
        """What ``deploybot deploy --revision PATH`` does with a local path: bundle it here, upload it, and name
        the stored bundle (``sha256:<hex>``); the server reads no path of ours."""
        with tempfile.TemporaryDirectory(prefix="e2e-bundle-") as scratch:
            built = build_bundle(str(revision), Path(scratch))
            headers = {
                "Content-Type": "application/gzip",
                "X-Deploybot-Source": str(revision),
                "X-Deploybot-Application": application,
            }
            status, stored = self.api("POST", "/api/v1/revisions", raw=built.path.read_bytes(), headers=headers)
        assert status == 201, f"upload of {revision} refused: {stored}"
        return f"sha256:{stored['sha256']}"

    def deploy(self, application: str, environment: str, revision: Path | str) -> dict[str, Any]:
        """Deploy ``revision`` through the API; a local path is uploaded first, as the CLI does."""
        named = str(revision)
        if names_server_path(named):
            named = self.upload(revision, application)
        status, body = self.api(
            "POST",
            "/api/v1/deployments",
            {"application": application, "environment": environment, "revision": named},
        )
        assert status == 201, body
        return dict(body)

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/v1/deployments/{deployment_id}")
        assert status == 200, body
        return dict(body)

    def deploy_promoted(self, application: str, environment: str, revision: Path | str) -> dict[str, Any]:
        """A setup deployment of a canary or linear group, promoted at its first traffic step so the test does not sit
        out the intervals (what it checks is a later deployment); its final document."""
        started = self.deploy(application, environment, revision)
        self.wait_for(started["id"], lambda d: (d["traffic"] or {}).get("percent", 0) > 0)
        status, answer = self.api("POST", f"/api/v1/deployments/{started['id']}/promote")
        done = self.wait_final(started["id"])
        # Refused only when a stalled machine let the schedule finish first: then there was nothing left to promote.
        assert status == 200 or done["status"] == "Succeeded", answer
        return done

    def wait_for(self, deployment_id: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                doc = self.deployment(deployment_id)
                if predicate(doc):
                    return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {deployment_id}: {doc}")
            time.sleep(0.05)

    def wait_final(self, deployment_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(deployment_id, lambda d: d["status"] in FINAL, timeout)

    def wait_logged(self, deployment_id: str, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
        """The deployment's audit log once it has an entry of ``kind``: a final status is stored before the end is
        logged (``deployment.finished`` comes with the deployment's wind-up, a moment later)."""
        deadline = time.monotonic() + timeout
        while True:
            status, entries = self.api("GET", f"/api/v1/deployments/{deployment_id}/log")
            assert status == 200, entries
            if any(entry["kind"] == kind for entry in entries):
                return list(entries)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} logged for {deployment_id}: {entries}")
            time.sleep(0.05)


def event(doc: dict[str, Any], target: str, name: str) -> dict[str, Any]:
    host = next(t for t in doc["targets"] if t["name"] == target)
    return next(e for e in host["events"] if e["name"] == name)


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["status"] for t in doc["targets"]}


def why_not_succeeded(doc: dict[str, Any], *servers: DeploybotServer) -> str:
    """What an assertion that ``doc`` Succeeded should say when it did not: the deployment's status and error, each
    event that did not succeed with its message, and the servers' warnings and errors (a failure seen once must say
    enough to be found without running it again)."""
    lines = [f"{doc['id']}: {doc['status']} {doc.get('error') or ''}"]
    for target in doc["targets"]:
        for ev in target["events"]:
            if ev["status"] != "Succeeded":
                lines.append(f"  {target['name']} {ev['name']}: {ev['status']} ({ev['error_code']}) {ev['message']}")
    for index, server in enumerate(servers):
        noted = [line.rstrip() for line in server.output if " WARNING " in line or " ERROR " in line]
        lines += [f"  server {index}: {line}" for line in noted[-20:]]
    return "\n".join(lines)


def listening_url(output: list[str]) -> str:
    match = re.search(r"listening on (\S+)", "".join(output))
    assert match, output
    return match.group(1)
