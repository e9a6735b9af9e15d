"""LocalFleet with real child processes: command lines, token files, a clean environment, private files, restart
with backoff, SIGTERM then SIGKILL on stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD, eventually

from bot.localfleet import AGENT_ENV, TOKEN_DIR, AgentProcess, LocalFleet, RestartPolicy, agent_processes
from engine import ProcessIdentity
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


async def _eventually(condition: object, timeout: float = HANG_GUARD) -> None:
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
        modes = {path.name: path.stat().st_mode & 0o777 for path in agent.log_path.parent.iterdir()}
    finally:
        await fleet.stop()
    environ = json.loads(seen.read_text())
    assert set(environ) <= set(AGENT_ENV) and environ["TZ"] == "UTC" and environ["PATH"] == os.environ["PATH"]
    assert modes == {"agent.log": 0o600, "agent.pid": 0o600, "agent.process": 0o600}
    assert agent.log_path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(path.name for path in agent.log_path.parent.iterdir()) == ["agent.log"]  # no pid of a gone agent


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
    # No SIGKILL within the hang guard: stop() ends only if SIGTERM ended both agents (not on how fast they went).
    patient = dataclasses.replace(FAST, stop_timeout=3600.0)
    fleet = LocalFleet([_python(tmp_path, "a", code), _python(tmp_path, "b", code)], patient)
    await fleet.start()
    log_a = tmp_path / "hosts" / "a" / "agent.log"
    await _eventually(lambda: len(fleet.pids()) == 2 and log_a.exists() and "up" in log_a.read_text())
    pids = list(fleet.pids().values())
    async with asyncio.timeout(HANG_GUARD):
        await fleet.stop()
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
    assert time.monotonic() - started >= FAST.stop_timeout  # SIGTERM's grace first (a lower bound: load cannot fail it)
    assert not _alive(pid)  # then SIGKILL: the agent itself would have slept a minute


async def test_an_agent_that_cannot_start_is_retried_not_fatal(tmp_path: Path) -> None:
    argv = ("/no/such/python", "-c", "pass")
    fleet = LocalFleet([AgentProcess("ghost", argv, tmp_path / "ghost.log")], FAST)
    await fleet.start()
    await _eventually(lambda: fleet.restarts["ghost"] >= 2)
    await fleet.stop()
    assert fleet.pids() == {}


SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
PREVIOUS_SERVER = """
import asyncio, sys
from pathlib import Path
from bot.localfleet import AgentProcess, LocalFleet

async def main():
    await LocalFleet([AgentProcess(sys.argv[1], tuple(sys.argv[3:]), Path(sys.argv[2]))]).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may never be reaped inside a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def processes() -> Iterator[list[int]]:
    """Pids (process groups) the test started outside a LocalFleet: killed at the end whatever happened."""
    started: list[int] = []
    yield started
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def _left_by_a_dead_server(agent: AgentProcess, processes: list[int]) -> int:
    """``agent`` started by a real LocalFleet in another process, which is then killed with SIGKILL (the agent
    lives on, in its own session, as after a server crash); returns the agent's pid."""
    argv = [sys.executable, "-c", PREVIOUS_SERVER, agent.name, str(agent.log_path), *agent.argv]
    runs = agent.log_path.read_text().count("up\n") if agent.log_path.exists() else 0
    server = subprocess.Popen(argv, cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    processes.append(server.pid)
    pid_file = agent.log_path.parent / "agent.pid"
    await eventually(lambda: pid_file.exists() and agent.log_path.read_text().count("up\n") > runs, "agent up")
    pid = int(pid_file.read_text())
    processes.append(pid)
    server.kill()
    server.wait(HANG_GUARD)
    assert _running(pid)
    return pid


async def test_a_restarted_fleet_adopts_its_own_agent_and_replaces_one_with_other_options(
    tmp_path: Path, processes: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="bot.localfleet")
    agent = _python(tmp_path, "web-1", SLEEPER)
    left = await _left_by_a_dead_server(agent, processes)
    fleet = LocalFleet([agent], FAST)
    await fleet.start()
    try:
        await eventually(lambda: fleet.pids() == {"web-1": left}, "the agent left running is adopted")
    finally:
        await fleet.stop()
    assert f"adopted local agent web-1 (pid {left})" in caplog.text
    await eventually(lambda: not _running(left), "the adopted agent is stopped with the fleet")

    left = await _left_by_a_dead_server(agent, processes)
    other = _python(tmp_path, "web-1", SLEEPER + "  # another server URL")
    fleet = LocalFleet([other], FAST)
    await fleet.start()
    try:
        await eventually(lambda: fleet.pids().get("web-1") not in (None, left), "a new agent runs")
        assert not _running(left)  # stopped before its replacement started
    finally:
        await fleet.stop()
    assert f"stopping local agent web-1 (pid {left}) started with other options" in caplog.text


@pytest.mark.parametrize("record", ["wrong start time", "bare pid of an older server"])
async def test_a_stale_pid_file_never_signals_the_process_that_now_has_the_pid(
    tmp_path: Path, processes: list[int], caplog: pytest.LogCaptureFixture, record: str
) -> None:
    caplog.set_level("INFO", logger="bot.localfleet")
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)  # got the pid after the agent died
    processes.append(unrelated.pid)
    agent = _python(tmp_path, "web-1", SLEEPER)
    agent.log_path.parent.mkdir(parents=True)
    (agent.log_path.parent / "agent.pid").write_text(f"{unrelated.pid}\n")
    if record == "wrong start time":
        identity = {"pid": unrelated.pid, "start_time": 1}  # the agent that had the pid started at boot
        (agent.log_path.parent / "agent.process").write_text(json.dumps(identity))
    fleet = LocalFleet([agent], FAST)
    await fleet.start()
    try:
        await eventually(lambda: fleet.pids().get("web-1") not in (None, unrelated.pid), "a new agent runs")
        assert int((agent.log_path.parent / "agent.pid").read_text()) == fleet.pids()["web-1"]
    finally:
        await fleet.stop()
    assert unrelated.poll() is None  # never signalled: neither when the fleet started, nor when it stopped
    stale = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert stale == [
        f"local agent web-1: ignoring stale agent.pid: pid {unrelated.pid} is another process now (the pid was reused)"
    ]


def _real_agent(tmp_path: Path, name: str) -> AgentProcess:
    """The real agent command, as agent_processes builds it, against a server that is not there (it polls on)."""
    token = tmp_path / f"{name}.token"
    token.write_text("agent-token\n")
    token.chmod(0o600)
    root = tmp_path / "hosts" / name
    argv = (sys.executable, "-m", "bot", "agent", "--server", "http://127.0.0.1:9", "--name", name)
    return AgentProcess(name, (*argv, "--token-file", str(token), "--root", str(root)), root / "agent.log")


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cmdline_of(pid: int) -> list[str]:
    return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if part]


async def test_real_agents_are_forked_from_one_warm_interpreter_holding_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "secret")
    agents = [_real_agent(tmp_path, "web-1"), _real_agent(tmp_path, "web-2")]
    fleet = LocalFleet(agents, FAST)
    await fleet.start()
    try:
        await eventually(lambda: all("poll failed" in _text(agent.log_path) for agent in agents), "both agents poll")
        pids = fleet.pids()
        (fork_server,) = {_parent(pid) for pid in pids.values()}  # one parent for both: not the server
        fork_server_argv = _cmdline_of(fork_server)
        fork_server_environ = Path(f"/proc/{fork_server}/environ").read_bytes().decode()
        recorded = json.loads((agents[0].log_path.parent / "agent.process").read_text())
        shown = [_cmdline_of(pid) for pid in pids.values()]
    finally:
        await fleet.stop()
    assert fork_server != os.getpid() and fork_server_argv[:3] == [sys.executable, "-m", "bot.localfleet"]
    assert shown == [list(agent.argv) for agent in agents]  # what ps shows: each agent's own command line
    assert "SLACK_BOT_TOKEN" not in fork_server_environ
    assert recorded["pid"] == pids["web-1"] and recorded["argv"] == list(agents[0].argv)
    assert all(f"agent {agent.name} stopped" in _text(agent.log_path) for agent in agents)  # SIGTERM, as exec'd
    await eventually(lambda: not _running(fork_server), "the fork server ends with the fleet")


async def test_a_forked_agent_that_dies_is_restarted_with_its_exit_code_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="bot.localfleet")
    agent = _real_agent(tmp_path, "web-1")
    fleet = LocalFleet([agent], FAST)
    await fleet.start()
    try:
        await eventually(lambda: "poll failed" in _text(agent.log_path), "the agent polls")
        first = fleet.pids()["web-1"]
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: fleet.pids().get("web-1") not in (None, first), "a new agent runs")
    finally:
        await fleet.stop()
    assert fleet.restarts["web-1"] == 1
    assert "local agent web-1 exited (code -9)" in caplog.text  # as the fork server saw it


async def test_a_forked_agent_left_by_a_dead_server_is_adopted(
    tmp_path: Path, processes: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="bot.localfleet")
    agent = _real_agent(tmp_path, "web-1")
    argv = [sys.executable, "-c", PREVIOUS_SERVER, agent.name, str(agent.log_path), *agent.argv]
    server = subprocess.Popen(argv, cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    processes.append(server.pid)
    pid_file = agent.log_path.parent / "agent.pid"
    await eventually(lambda: pid_file.exists() and "poll failed" in _text(agent.log_path), "the agent polls")
    left = int(pid_file.read_text())
    processes.append(left)
    server.kill()  # kill -9: its fork server sees its stdin close and exits; the agent lives on
    server.wait(HANG_GUARD)
    assert _running(left)
    fleet = LocalFleet([agent], FAST)
    await fleet.start()
    try:
        await eventually(lambda: fleet.pids() == {"web-1": left}, "the agent left running is adopted")
    finally:
        await fleet.stop()
    assert f"adopted local agent web-1 (pid {left})" in caplog.text
    await eventually(lambda: not _running(left), "the adopted agent is stopped with the fleet")


async def test_an_agent_whose_command_line_is_not_its_own_is_adopted_by_the_argv_recorded_for_it(
    tmp_path: Path, processes: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="bot.localfleet")
    # A forked agent whose command line could not be rewritten shows the fork server's: its record says what it runs.
    forked = subprocess.Popen(["sleep", "60"], start_new_session=True)
    processes.append(forked.pid)
    agent = _python(tmp_path, "web-1", SLEEPER)
    identity = ProcessIdentity.of(forked.pid)
    assert identity is not None
    agent.log_path.parent.mkdir(parents=True)
    record = {"pid": forked.pid, "start_time": identity.start_time, "argv": list(agent.argv)}
    (agent.log_path.parent / "agent.process").write_text(json.dumps(record))
    fleet = LocalFleet([agent], FAST)
    await fleet.start()
    try:
        await eventually(lambda: fleet.pids() == {"web-1": forked.pid}, "the recorded agent is adopted")
    finally:
        await fleet.stop()
    assert f"adopted local agent web-1 (pid {forked.pid})" in caplog.text
    assert forked.wait(HANG_GUARD) == -signal.SIGTERM  # stopped with the fleet, as its own agent
