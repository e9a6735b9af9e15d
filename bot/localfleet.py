"""Supervisor of the local agent processes ``deploybot serve`` spawns for the config's ``local: true`` hosts.

Theory of operation: one asyncio task per agent runs spawn → wait → (crashed?) back off → spawn again, until
``stop()``. A crash-looping agent is restarted after 0.5 s, 1 s, 2 s ... up to 30 s; a run that lasted
``stable_after`` seconds resets the delay. Agents get their own session (``start_new_session``) so a Ctrl-C in the
terminal reaches only the server, which then stops them in order: SIGTERM, a grace period, then SIGKILL to the
agent's whole process group. Output goes to ``<data>/hosts/NAME/agent.log`` (appended, one banner per start).

Local agents stand in for real hosts, so they outlive a server that dies without stopping them (kill -9): they
finish their hook and keep offering its result. Each running agent's pid is kept in ``<data>/hosts/NAME/agent.pid``
and, in ``agent.process``, with its start time (``/proc/PID/stat`` field 22), which tells that very process from
a later one given the same pid; both files go when the agent exits. A restarted server trusts a pid only when that
process is still the one recorded: then it adopts the agent if its command line is exactly the one it would start
(instead of starting a second agent for the same host), and stops and replaces it otherwise (another URL or
options). A pid that is no longer the recorded agent (it exited, or the pid was reused by an unrelated process) is
stale: one line in the log, and it is never signalled. A bare ``agent.pid`` of an older server, with no start time,
is trusted only for an exact command line, and then only adopted.

Start-up: an agent is a fresh interpreter, and importing what it needs costs ~0.1 s of CPU; 200 local agents paid
that 200 times over on two cores. So the fleet starts one warm interpreter, the *fork server* (bot/forkserver.py, run
as ``python -m bot.localfleet``, with AGENT_ENV only and nothing secret), which has imported the agent command once
and forks each agent from itself: a forked agent runs exactly what ``argv`` would (``bot.cli.main`` with its
arguments), in its own session, its output in its log, but costs a fork instead of a start. Only the agent command of
this very interpreter is forked (anything else, e.g. tests' stand-ins, is exec'd as before), and a fork server that
cannot start or dies leaves the fleet exec'ing agents. A forked agent writes its argv over the command line it
inherited (``ps`` shows it as an exec'd one); should that fail, ``agent.process`` also records the argv it was
started with, which a restarted server trusts only for the very process recorded (pid and start time) to adopt or
replace the agent as by its command line. The fork server reports each agent's exit; when it is gone the fleet
watches the pid instead. It exits when the server closes its stdin (or dies): the agents it forked live on, like
exec'd ones.

Secrets stay with the server: an agent starts with only AGENT_ENV of the server's environment (its hooks run there,
and the server's holds Slack, GitHub, AWS and API secrets), and its token is read from a 0600 file under
``<data>/local-agent-tokens/`` (``--token-file``), never given on the command line, which ``ps`` shows anyone.
The files written here (token files, ``agent.log``, ``agent.pid``, ``agent.process``) are 0600, in 0700
directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.forkserver import ForkedAgent, ForkServer, forkable, serve_forks
from engine import BASIC_ENV, Host, ProcessIdentity

log = logging.getLogger(__name__)

_Agent = asyncio.subprocess.Process | ForkedAgent

AGENT_ENV = BASIC_ENV
"""The only variables of the server's environment a local agent gets: the ones the agent itself passes on to hooks."""
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
    log_format: str = "text",
) -> tuple[AgentProcess, ...]:
    """The agent command line of every local host: ``python -m bot agent --server URL --name NAME ...``; writes each
        host's token file (``--token-file``). ``ca_file`` (``server.tls.ca``) is passed as ``--ca-file``: an https://
        server's certificate is then verified against it, else against the system CAs. ``log_format`` is the server's
    (``--log-format``): local agents' logs read as the server's do.

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
        if log_format != "text":
            argv += ["--log-format", log_format]
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
        self._processes: dict[str, _Agent] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._adopted: dict[str, ProcessIdentity] = {}
        self._forks: ForkServer | None = None
        self._up: dict[str, asyncio.Event] = {}  # set once each agent was first started (or adopted, or failed to)

    def pids(self) -> dict[str, int]:
        """The process id of every agent currently running (started or adopted)."""
        running = {name: p.pid for name, p in self._processes.items() if p.returncode is None}
        return {**{name: p.pid for name, p in self._adopted.items()}, **running}

    async def start(self) -> None:
        """Start (or adopt) every agent, and return once each is running with its pid recorded (or failed to
        start, and is being retried): the server says it listens only then, as when agents were exec'd in turn."""
        self._stopping.clear()
        if self._forks is None and any(forkable(agent.argv) for agent in self.agents):
            self._forks = ForkServer(agent_environment())
        self._up = {agent.name: asyncio.Event() for agent in self.agents}
        for agent in self.agents:
            self._tasks.append(asyncio.create_task(self._supervise(agent), name=f"local-agent-{agent.name}"))
        await asyncio.gather(*(up.wait() for up in self._up.values()))

    def _is_up(self, agent: AgentProcess) -> None:
        if (up := self._up.get(agent.name)) is not None:
            up.set()

    async def stop(self) -> None:
        """SIGTERM every agent, SIGKILL the process groups of those still alive after the grace period."""
        self._stopping.set()
        await asyncio.gather(*(_stop(process, self.policy.stop_timeout) for process in self._adopted.values()))
        await self._terminate([p for p in self._processes.values() if p.returncode is None])
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # An agent whose spawn was in flight when stop() began is only known now.
        await self._terminate([p for p in self._processes.values() if p.returncode is None])
        if self._forks is not None:
            await self._forks.close()
            self._forks = None

    async def _terminate(self, running: list[_Agent]) -> None:
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
                self._is_up(agent)
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
            process: _Agent | None = None
            if self._forks is not None and forkable(agent.argv):
                # None: the fork server is gone, exec it instead
                process = await self._forks.fork(agent.argv, agent.log_path)
            if process is None:
                process = await asyncio.create_subprocess_exec(
                    *agent.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env=agent_environment(),
                )
        self._processes[agent.name] = process
        try:
            started = ProcessIdentity.of(process.pid)
            if started is not None:  # None: it is gone already, and its exit is what happens next
                try:
                    _record(agent, started)
                except OSError as exc:  # the agent runs all the same; a restarted server just cannot adopt it
                    log.warning("cannot record local agent %s's pid in %s: %s", agent.name, _pid_file(agent), exc)
            self._is_up(agent)
            return await process.wait()
        finally:
            if process.returncode is not None:  # a pid file names a running agent only
                _forget(agent)

    async def _adopt_or_replace(self, agent: AgentProcess) -> None:
        """Wait on an agent left running by a previous server, if it is exactly ours; stop it if it is ours with
        other options; leave any other process alone."""
        process = _recorded(agent)
        if process is None:
            return
        if agent.argv not in (_cmdline(process.pid), _recorded_argv(agent, process)):
            log.info("stopping local agent %s (pid %d) started with other options", agent.name, process.pid)
            await _stop(process, self.policy.stop_timeout)
            _forget(agent)
            return
        log.info("adopted local agent %s (pid %d) left running by a previous server", agent.name, process.pid)
        self._adopted[agent.name] = process
        with contextlib.suppress(OSError):
            _record(agent, process)  # an older server's bare agent.pid gains the start time
        self._is_up(agent)
        while not self._stopping.is_set() and process.running():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
        self._adopted.pop(agent.name, None)
        if self._stopping.is_set():
            await _stop(process, self.policy.stop_timeout)
        if not process.running():
            _forget(agent)


def _pid_file(agent: AgentProcess) -> Path:
    return agent.log_path.parent / "agent.pid"


def _process_file(agent: AgentProcess) -> Path:
    return agent.log_path.parent / "agent.process"


def _record(agent: AgentProcess, process: ProcessIdentity) -> None:
    """``agent.process`` (pid, start time: what ``_recorded`` trusts, and the argv it runs) first, then the bare
    ``agent.pid``."""
    identity = json.dumps({"pid": process.pid, "start_time": process.start_time, "argv": list(agent.argv)})
    _write_private(_process_file(agent), identity + "\n")
    _write_private(_pid_file(agent), f"{process.pid}\n")


def _forget(agent: AgentProcess) -> None:
    _pid_file(agent).unlink(missing_ok=True)
    _process_file(agent).unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """``path`` replaced whole (mode 0600): a reader never sees half a pid."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)
        out.write(text)
    os.replace(partial, path)


def _recorded(agent: AgentProcess) -> ProcessIdentity | None:
    """The agent a previous server recorded, if that very process is still running; None when there is no record,
    or (saying so in one line) when the pid no longer is that agent: it must never be signalled."""
    recorded = _read_record(agent)
    if recorded is None:
        return None
    pid, start_time = recorded
    process = ProcessIdentity.of(pid)
    if process is not None and (start_time == process.start_time if start_time is not None else _exact(agent, pid)):
        return process
    state = "no longer running" if process is None else "another process now (the pid was reused)"
    log.info("local agent %s: ignoring stale %s: pid %d is %s", agent.name, _pid_file(agent).name, pid, state)
    return None


def _read_record(agent: AgentProcess) -> tuple[int, int | None] | None:
    """The recorded pid and start time; an ``agent.pid`` of an older server gives a pid without a start time."""
    try:
        body = json.loads(_process_file(agent).read_text())
        return int(body["pid"]), int(body["start_time"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    try:
        return int(_pid_file(agent).read_text().strip()), None
    except (OSError, ValueError):
        return None


def _recorded_argv(agent: AgentProcess, process: ProcessIdentity) -> tuple[str, ...] | None:
    """The argv ``agent.process`` says ``process`` runs (a forked agent's command line is the fork server's): only
    when the record is of that very process (pid and start time)."""
    try:
        body = json.loads(_process_file(agent).read_text())
        identity, argv = (body["pid"], body["start_time"]), body["argv"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if identity != (process.pid, process.start_time) or not isinstance(argv, list):
        return None
    return tuple(argv) if all(isinstance(part, str) for part in argv) else None


def _exact(agent: AgentProcess, pid: int) -> bool:
    """Without a recorded start time only the exact command line we would start marks a process as our agent."""
    return _cmdline(pid) == agent.argv


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


async def _stop(process: ProcessIdentity, timeout: float) -> None:
    """SIGTERM, then SIGKILL to its process group after ``timeout``; each signal only while it is still ``process``."""
    if not process.running():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.running() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if process.running():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":  # ``python -m bot.localfleet``: the fork server this module starts (bot/forkserver.py)
    serve_forks()
