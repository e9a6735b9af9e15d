"""LocalFleet with real child processes: command lines, token files, a clean environment, private files, restart
with backoff, SIGTERM then SIGKILL on stop."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from pathlib import Path

import pytest

from bot.localfleet import AGENT_ENV, TOKEN_DIR, AgentProcess, LocalFleet, RestartPolicy, agent_processes
from engine.core.config.model import Host

FAST = RestartPolicy(initial_delay=0.05, max_delay=0.2, stable_after=30.0, stop_timeout=0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _python(tmp_path: Path, name: str, code: str) -> AgentProcess:
    return AgentProcess(name, (sys.executable, "-c", code), tmp_path / "hosts" / name / "agent.log")


async def _eventually(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_agent_processes_builds_one_command_per_local_host(tmp_path: Path) -> None:
    hosts = [
        Host("web-1", {"role": "web", "env": "staging"}, local=True, port=9101),
        Host("remote", {"env": "staging"}, local=False, port=9000),
        Host("worker", {}, local=True, port=None),
    ]
    processes = agent_processes(
        hosts, server_url="http://127.0.0.1:8123", data_dir=tmp_path, token_for=lambda h: f"tok-{h}", python="/py"
    )
    assert [p.name for p in processes] == ["web-1", "worker"]
    root = tmp_path.absolute() / "hosts" / "web-1"
    tokens = tmp_path.absolute() / TOKEN_DIR
    assert processes[0].argv == (
        "/py",
        "-m",
        "bot",
        "agent",
        "--server",
        "http://127.0.0.1:8123",
        "--name",
        "web-1",
        "--token-file",
        str(tokens / "web-1.token"),
        "--root",
        str(root),
        "--prefix",
        str(root / "fs"),
        "--env",
        "PORT=9101",
        "--env",
        "DEPLOYBOT_PYTHON=/py",
        "--tag",
        "env=staging",
        "--tag",
        "role=web",
    )
    assert processes[0].log_path == root / "agent.log"
    assert "PORT=" not in " ".join(processes[1].argv)
    assert not any("tok-" in part for process in processes for part in process.argv)  # `ps` shows the argv
    assert (tokens / "web-1.token").read_text() == "tok-web-1\n"
    assert tokens.stat().st_mode & 0o777 == 0o700
    assert {path.name: path.stat().st_mode & 0o777 for path in tokens.iterdir()} == {
        "web-1.token": 0o600,
        "worker.token": 0o600,
    }


async def test_agents_start_with_only_the_basics_of_the_servers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SLACK_BOT_TOKEN", "DEPLOYBOT_TOKEN", "AWS_SECRET_ACCESS_KEY", "DEPLOYBOT_AGENT_TOKEN"):
        monkeypatch.setenv(name, "secret")
    monkeypatch.setenv("TZ", "UTC")
    seen = tmp_path / "environ.json"
    code = f"import json, os; open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ))); print('up', flush=True)"
    agent = _python(tmp_path, "web-1", code + "; import time; time.sleep(60)")
    fleet = LocalFleet([agent], FAST)
    await fleet.start()
    try:
        await _eventually(lambda: seen.exists() and seen.read_text())
    finally:
        await fleet.stop()
    environ = json.loads(seen.read_text())
    assert set(environ) <= set(AGENT_ENV) and environ["TZ"] == "UTC" and environ["PATH"] == os.environ["PATH"]
    modes = {path.name: path.stat().st_mode & 0o777 for path in agent.log_path.parent.iterdir()}
    assert modes == {"agent.log": 0o600, "agent.pid": 0o600}
    assert agent.log_path.parent.stat().st_mode & 0o777 == 0o700


async def test_a_crashing_agent_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = (
        f"import time; open({str(runs)!r}, 'a').write(f'{{time.monotonic()}}\\n'); print('boom'); raise SystemExit(3)"
    )
    fleet = LocalFleet([_python(tmp_path, "web-1", code)], FAST)
    await fleet.start()
    try:
        await _eventually(lambda: runs.exists() and len(runs.read_text().split()) >= 4)
    finally:
        await fleet.stop()
    starts = [float(t) for t in runs.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.05 and gaps[2] >= 0.2 * 0.9  # 0.05, 0.1, 0.2 (capped)
    assert fleet.restarts["web-1"] >= 3
    log = (tmp_path / "hosts" / "web-1" / "agent.log").read_text()
    assert log.count("starting agent web-1") >= 4
    assert "boom" in log


async def test_stop_terminates_running_agents_with_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)));"
        " print('up', flush=True); time.sleep(60)"
    )
    fleet = LocalFleet([_python(tmp_path, "a", code), _python(tmp_path, "b", code)], FAST)
    await fleet.start()
    log_a = tmp_path / "hosts" / "a" / "agent.log"
    await _eventually(lambda: len(fleet.pids()) == 2 and log_a.exists() and "up" in log_a.read_text())
    pids = list(fleet.pids().values())
    started = time.monotonic()
    await fleet.stop()
    assert time.monotonic() - started < FAST.stop_timeout
    assert not any(_alive(pid) for pid in pids)
    assert "bye" in log_a.read_text()
    assert fleet.restarts == {"a": 0, "b": 0}


async def test_stop_kills_an_agent_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    fleet = LocalFleet([_python(tmp_path, "stubborn", code)], FAST)
    await fleet.start()
    log = tmp_path / "hosts" / "stubborn" / "agent.log"
    await _eventually(lambda: log.exists() and "up" in log.read_text())
    (pid,) = fleet.pids().values()
    started = time.monotonic()
    await fleet.stop()
    assert FAST.stop_timeout <= time.monotonic() - started < FAST.stop_timeout + 2
    assert not _alive(pid)


async def test_an_agent_that_cannot_start_is_retried_not_fatal(tmp_path: Path) -> None:
    argv = ("/no/such/python", "-c", "pass")
    fleet = LocalFleet([AgentProcess("ghost", argv, tmp_path / "ghost.log")], FAST)
    await fleet.start()
    await _eventually(lambda: fleet.restarts["ghost"] >= 2)
    await fleet.stop()
    assert fleet.pids() == {}
