"""The hello example revision: its hook scripts run in order, like the agent runs them, against a temp prefix.

Each test gets its own DEPLOYBOT_PREFIX and free port, installs the bundle's `files` there the way the agent
would, and always stops the server afterwards, even when an assertion fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import free_port

from engine.core.appspec import parse_appspec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"
SCRIPTS = ("before_install.sh", "start.sh", "stop.sh", "validate.sh")


def is_running(pid: int) -> bool:
    """Alive and not a zombie: an orphaned server may never be reaped inside a container."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated host: its prefix directory and the environment the agent gives hook scripts."""

    prefix: Path
    port: int

    @property
    def app_dir(self) -> Path:
        return self.prefix / "opt" / "hello"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "var" / "run" / "hello.pid"

    def env(self, event: str, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LIFECYCLE_EVENT": event,
            "DEPLOYMENT_ID": "d-TEST00001",
            "APPLICATION_NAME": "hello",
            "DEPLOYMENT_GROUP_NAME": "hello-staging",
            "DEPLOYMENT_GROUP_ID": "hello-staging",
            "DEPLOYBOT_HOST": "host-a",
            "DEPLOYBOT_PREFIX": str(self.prefix),
            "DEPLOYBOT_PYTHON": sys.executable,
            "PORT": str(self.port),
            "HELLO_VALIDATE_ATTEMPTS": "400",  # success ends the wait; only a hang guard under load
            **extra,
        }

    def run(self, script: str, event: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EXAMPLE / "scripts" / script)],
            env=self.env(event, **extra),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def install(self) -> None:
        """What the agent does between BeforeInstall and AfterInstall for this appspec's `files`."""
        shutil.copytree(EXAMPLE / "app", self.app_dir, dirs_exist_ok=True)
        shutil.copy2(EXAMPLE / "VERSION", self.app_dir / "VERSION")

    def wait_answering(self) -> None:
        """Until the server answers HTTP at all (any status): what a failing check must see before it counts."""
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nothing answers on port {self.port}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.read().decode()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    host = Host(prefix=tmp_path / "host-a", port=free_port())
    try:
        yield host
    finally:
        host.run("stop.sh", "ApplicationStop")
        if host.pid_file.exists():  # stop.sh itself broke: do not leak the server
            pid = int(host.pid_file.read_text())
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


def deploy(host: Host, **extra: str) -> subprocess.CompletedProcess[str]:
    """BeforeInstall, Install, ApplicationStart; returns ValidateService's result. A check expected to fail
    (``HELLO_VALIDATE_ATTEMPTS`` given) runs once the server answers, so it fails on the answer, not on a slow
    start."""
    assert host.run("before_install.sh", "BeforeInstall").returncode == 0
    host.install()
    started = host.run("start.sh", "ApplicationStart", **extra)
    assert started.returncode == 0, started.stderr
    if "HELLO_VALIDATE_ATTEMPTS" in extra:
        host.wait_answering()
    return host.run("validate.sh", "ValidateService", **extra)


def test_appspec_declares_files_and_hooks() -> None:
    spec = yaml.safe_load((EXAMPLE / "appspec.yml").read_text())
    assert spec["version"] == 0.0
    assert spec["os"] == "linux"
    assert spec["files"] == [
        {"source": "app", "destination": "/opt/hello"},
        {"source": "VERSION", "destination": "/opt/hello"},
    ]
    hooks = {event: [(h["location"], h["timeout"]) for h in scripts] for event, scripts in spec["hooks"].items()}
    assert hooks == {
        "ApplicationStop": [("scripts/stop.sh", 30)],
        "BeforeInstall": [("scripts/before_install.sh", 30)],
        "ApplicationStart": [("scripts/start.sh", 30)],
        "ValidateService": [("scripts/validate.sh", 60)],
    }
    for scripts in hooks.values():
        for location, _timeout in scripts:
            assert (EXAMPLE / location).is_file()


def test_appspec_passes_deploybots_parser() -> None:
    spec = parse_appspec((EXAMPLE / "appspec.yml").read_text())
    assert len(spec.hooks) == 4


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_with_a_shebang(script: str) -> None:
    path = EXAMPLE / "scripts" / script
    assert os.access(path, os.X_OK), f"{script} needs the executable bit: the agent runs it directly"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")


def test_deploy_serves_the_version_then_stop_leaves_nothing_running(host: Host) -> None:
    validated = deploy(host)
    assert validated.returncode == 0, validated.stderr
    version = (EXAMPLE / "VERSION").read_text().strip()
    assert host.get("/") == f"hello {version} from host-a\n"
    assert host.get("/health") == "ok 1.0.0\n"
    pid = int(host.pid_file.read_text())
    assert is_running(pid)

    stopped = host.run("stop.sh", "ApplicationStop")

    assert stopped.returncode == 0, stopped.stderr
    assert not is_running(pid)
    assert not host.pid_file.exists()
    after = host.run("validate.sh", "ValidateService", HELLO_VALIDATE_ATTEMPTS="4")
    assert after.returncode == 1
    assert "did not answer 200" in after.stderr


def test_stop_returns_only_once_the_server_process_has_ended_not_when_its_command_line_changed(host: Host) -> None:
    """An exiting process loses its command line before it has finished exiting, so stop.sh waits on the process
    itself (its pid and start time). Here the "server" turns into another program under the same pid when told to
    stop and ends 0.5 s later: stop.sh must not say it stopped before then."""
    server = host.prefix / "server.py"
    server.parent.mkdir(parents=True)
    server.write_text("trap 'exec sleep 0.5' TERM\nwhile :; do sleep 0.05; done\n")
    process = subprocess.Popen(["bash", str(server)], stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        host.pid_file.parent.mkdir(parents=True)
        host.pid_file.write_text(f"{process.pid}\n")
        for _ in range(200):  # until bash runs the script (its command line names it)
            if b"server.py" in Path(f"/proc/{process.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)

        stopped = host.run("stop.sh", "ApplicationStop")

        assert stopped.returncode == 0, stopped.stderr
        assert process.poll() is not None, "stop.sh returned while the server's process was still running"
        assert f"stopped hello (pid {process.pid})" in stopped.stdout
        assert not host.pid_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_start_replaces_a_server_left_behind(host: Host) -> None:
    assert deploy(host).returncode == 0
    first = int(host.pid_file.read_text())

    assert deploy(host).returncode == 0  # no ApplicationStop in between, as after a failed deployment

    assert not is_running(first)
    assert is_running(int(host.pid_file.read_text()))


@pytest.mark.parametrize("how", ["marker file", "environment"])
def test_validate_fails_when_health_fails(host: Host, how: str) -> None:
    extra = {"HELLO_VALIDATE_ATTEMPTS": "4", **({"HELLO_FAIL_HEALTH": "1"} if how == "environment" else {})}
    if how == "marker file":
        host.app_dir.mkdir(parents=True)
        (host.app_dir / "fail-health").touch()

    validated = deploy(host, **extra)

    assert validated.returncode == 1
    assert "HTTP 500" in validated.stderr
    assert host.get("/").startswith("hello ")  # the app runs, it is only unhealthy


@pytest.mark.parametrize("pid_file_text", [None, "999999999\n", "garbage\n"])
def test_stop_never_fails_when_nothing_runs(host: Host, pid_file_text: str | None) -> None:
    if pid_file_text is not None:
        host.pid_file.parent.mkdir(parents=True)
        host.pid_file.write_text(pid_file_text)

    stopped = host.run("stop.sh", "ApplicationStop")

    assert stopped.returncode == 0, stopped.stderr
    assert not host.pid_file.exists()


@pytest.mark.parametrize("script", ["start.sh", "validate.sh"])
def test_scripts_need_a_port(host: Host, script: str) -> None:
    result = host.run(script, "ApplicationStart", PORT="")
    assert result.returncode == 1
    assert "PORT is not set" in result.stderr


def test_validate_fails_when_an_older_server_still_holds_the_port(host: Host, tmp_path: Path) -> None:
    assert deploy(host).returncode == 0  # 1.0.0 answers on the port
    squatter_pid = int(host.pid_file.read_text())
    newer = Host(prefix=tmp_path / "host-b", port=host.port)  # another install on the same port
    try:
        assert newer.run("before_install.sh", "BeforeInstall").returncode == 0
        newer.install()
        (newer.app_dir / "VERSION").write_text("2.0.0\n")
        assert newer.run("start.sh", "ApplicationStart").returncode == 0  # its server cannot bind and exits
        validated = newer.run("validate.sh", "ValidateService", HELLO_VALIDATE_ATTEMPTS="4")  # 1.0.0 answers at once
    finally:
        newer.run("stop.sh", "ApplicationStop")
    assert validated.returncode == 1
    assert "expected 2.0.0" in validated.stderr and "from version 1.0.0" in validated.stderr
    assert is_running(squatter_pid)
