"""Supervisor of the local agent processes ``deploybot serve`` spawns for the config's ``local: true`` hosts.

Theory of operation: one asyncio task per agent runs spawn → wait → (crashed?) back off → spawn again, until
``stop()``. A crash-looping agent is restarted after 0.5 s, 1 s, 2 s ... up to 30 s; a run that lasted
``stable_after`` seconds resets the delay. Agents get their own session (``start_new_session``) so a Ctrl-C in the
terminal reaches only the server, which then stops them in order: SIGTERM, a grace period, then SIGKILL to the
agent's whole process group. Output goes to ``<data>/hosts/NAME/agent.log`` (appended, one banner per start).

Local agents stand in for real hosts, so they outlive a server that dies without stopping them (kill -9): they
finish their hook and keep offering its result. Each agent's pid is kept in ``<data>/hosts/NAME/agent.pid``; a
restarted server adopts a still-running agent whose command line is exactly the one it would start, instead of
starting a second agent for the same host. An agent with a different command line (another URL or options) is
stopped and replaced.

Secrets stay with the server: an agent starts with only AGENT_ENV of the server's environment (its hooks run there,
and the server's holds Slack, GitHub, AWS and API secrets), and its token is read from a 0600 file under
``<data>/local-agent-tokens/`` (``--token-file``), never given on the command line, which ``ps`` shows anyone.
The files written here (token files, ``agent.log``, ``agent.pid``) are 0600, in 0700 directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import Host

log = logging.getLogger(__name__)

AGENT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The only variables of the server's environment a local agent gets: the names the agent itself passes on to hooks
(engine.agent.BASIC_ENV, which bot/ may not import; a test keeps the two equal)."""
TOKEN_DIR = "local-agent-tokens"
"""Directory (0700) of the data directory holding each local agent's token file, ``NAME.token`` (0600)."""


@dataclass(frozen=True, slots=True)
class AgentProcess:
    """How to run one local agent: its host name, full argv and log file."""

    name: str
    argv: tuple[str, ...]
    log_path: Path


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0
    stop_timeout: float = 5.0


def agent_processes(
    hosts: Iterable[Host],
    *,
    server_url: str,
    data_dir: Path,
    token_for: Callable[[str], str],
    python: str = sys.executable,
    ca_file: Path | None = None,
) -> tuple[AgentProcess, ...]:
    """The agent command line of every local host: ``python -m bot agent --server URL --name NAME ...``; writes each
    host's token file (``--token-file``). ``ca_file`` (``server.tls.ca``) is passed as ``--ca-file``: an https://
    server's certificate is then verified against it, else against the system CAs.

    Each host gets ``<data>/hosts/NAME`` as its agent root and ``.../fs`` as the prefix that absolute appspec
    destinations are placed under, so the local fleet never writes outside the data directory. ``PORT`` tells the
    deployed application where to listen; ``DEPLOYBOT_PYTHON`` lets hook scripts run the server's interpreter.
    """
    processes = []
    for host in hosts:
        if not host.local:
            continue
        root = (data_dir / "hosts" / host.name).absolute()
        token_file = write_token_file(data_dir.absolute() / TOKEN_DIR, host.name, token_for(host.name))
        argv = [python, "-m", "bot", "agent", "--server", server_url, "--name", host.name]
        argv += ["--token-file", str(token_file), "--root", str(root), "--prefix", str(root / "fs")]
        if ca_file is not None:
            argv += ["--ca-file", str(ca_file.absolute())]
        if host.port is not None:
            argv += ["--env", f"PORT={host.port}"]
        argv += ["--env", f"DEPLOYBOT_PYTHON={python}"]
        for key, value in sorted(host.tags.items()):
            argv += ["--tag", f"{key}={value}"]
        processes.append(AgentProcess(host.name, tuple(argv), root / "agent.log"))
    return tuple(processes)


def write_token_file(directory: Path, name: str, token: str) -> Path:
    """``directory/NAME.token`` holding ``token``: mode 0600 in a 0700 directory, replaced whole (an agent reading it
    after a 401 never sees half a token)."""
    private_dir(directory)
    path = directory / f"{name}.token"
    partial = directory / f".{name}.token.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # a partial file left by a crash may have had another mode
        out.write(token + "\n")
    os.replace(partial, path)
    return path


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) with mode 0700; an existing one is tightened to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)


def agent_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """AGENT_ENV of ``source`` (the server's environment): what a local agent process starts with."""
    server = os.environ if source is None else source
    return {name: server[name] for name in AGENT_ENV if name in server}


class LocalFleet:
    """Keeps a set of agent processes running until ``stop()``; restarts crashed ones with backoff."""

    def __init__(self, agents: Sequence[AgentProcess], policy: RestartPolicy | None = None) -> None:
        self.agents = tuple(agents)
        self.policy = policy or RestartPolicy()
        self.restarts: dict[str, int] = {agent.name: 0 for agent in self.agents}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._adopted: dict[str, int] = {}

    def pids(self) -> dict[str, int]:
        """The process id of every agent currently running (started or adopted)."""
        running = {name: p.pid for name, p in self._processes.items() if p.returncode is None}
        return {**self._adopted, **running}

    async def start(self) -> None:
        self._stopping.clear()
        for agent in self.agents:
            self._tasks.append(asyncio.create_task(self._supervise(agent), name=f"local-agent-{agent.name}"))

    async def stop(self) -> None:
        """SIGTERM every agent, SIGKILL the process groups of those still alive after the grace period."""
        self._stopping.set()
        await asyncio.gather(*(_stop_pid(pid, self.policy.stop_timeout) for pid in self._adopted.values()))
        await self._terminate([p for p in self._processes.values() if p.returncode is None])
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # An agent whose spawn was in flight when stop() began is only known now.
        await self._terminate([p for p in self._processes.values() if p.returncode is None])

    async def _terminate(self, running: list[asyncio.subprocess.Process]) -> None:
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        if not running:
            return
        waiters = [asyncio.ensure_future(p.wait()) for p in running]
        await asyncio.wait(waiters, timeout=self.policy.stop_timeout)
        for process in running:
            if process.returncode is None:
                log.warning("local agent pid %d ignored SIGTERM; killing its process group", process.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        await asyncio.gather(*waiters)

    async def _supervise(self, agent: AgentProcess) -> None:
        loop = asyncio.get_running_loop()
        delay = self.policy.initial_delay
        await self._adopt_or_replace(agent)
        while not self._stopping.is_set():
            started = loop.time()
            try:
                returncode = await self._run_once(agent)
            except OSError as exc:  # a missing interpreter or an unwritable log: retried like a crash
                log.error("cannot start local agent %s: %s", agent.name, exc)
                returncode = None
            if self._stopping.is_set():
                return
            if loop.time() - started >= self.policy.stable_after:
                delay = self.policy.initial_delay
            log.warning(
                "local agent %s exited (code %s); restarting in %.1f s (log: %s)",
                agent.name,
                returncode,
                delay,
                agent.log_path,
            )
            self.restarts[agent.name] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.policy.max_delay)

    async def _run_once(self, agent: AgentProcess) -> int:
        private_dir(agent.log_path.parent)
        fd = os.open(agent.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            os.fchmod(fd, 0o600)  # a log made by an older server was world-readable
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting agent {agent.name}\n".encode())
            out.flush()
            process = await asyncio.create_subprocess_exec(
                *agent.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=agent_environment(),
            )
        self._processes[agent.name] = process
        pid_fd = os.open(_pid_file(agent), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(pid_fd, "w") as pid_file:
            pid_file.write(str(process.pid))
        return await process.wait()

    async def _adopt_or_replace(self, agent: AgentProcess) -> None:
        """Wait on an agent left running by a previous server, if it is exactly ours; stop it otherwise."""
        pid = _running_pid(agent)
        if pid is None:
            return
        if _cmdline(pid) != agent.argv:
            log.info("stopping local agent %s (pid %d) started with other options", agent.name, pid)
            await _stop_pid(pid, self.policy.stop_timeout)
            return
        log.info("adopted local agent %s (pid %d) left running by a previous server", agent.name, pid)
        self._adopted[agent.name] = pid
        while not self._stopping.is_set() and _alive(pid):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
        self._adopted.pop(agent.name, None)
        if self._stopping.is_set():
            await _stop_pid(pid, self.policy.stop_timeout)


def _pid_file(agent: AgentProcess) -> Path:
    return agent.log_path.parent / "agent.pid"


def _running_pid(agent: AgentProcess) -> int | None:
    try:
        pid = int(_pid_file(agent).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


async def _stop_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
