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

Start-up: an agent is a fresh interpreter, and importing what it needs costs ~0.1 s of CPU; 200 local agents
paid that 200 times over on two cores. So the fleet starts one warm interpreter, the *fork server*
(``python -m bot.localfleet``, with AGENT_ENV only and nothing secret), which has imported the agent command once
and forks each agent from itself: a forked agent runs exactly what ``argv`` would (``bot.cli.main`` with its
arguments), in its own session, its output in its log, but costs a fork instead of a start. Only the agent command
of this very interpreter is forked (anything else, e.g. tests' stand-ins, is exec'd as before), and a fork server
that cannot start or dies leaves the fleet exec'ing agents. A forked agent writes its argv over the command line
it inherited (``ps`` shows it as an exec'd one); should that fail, ``agent.process`` also records the argv it was
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
from typing import Any

from engine import BASIC_ENV, Host, ProcessIdentity

log = logging.getLogger(__name__)

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
        self._forks: _ForkServer | None = None
        self._up: dict[str, asyncio.Event] = {}  # set once each agent was first started (or adopted, or failed to)

    def pids(self) -> dict[str, int]:
        """The process id of every agent currently running (started or adopted)."""
        running = {name: p.pid for name, p in self._processes.items() if p.returncode is None}
        return {**{name: p.pid for name, p in self._adopted.items()}, **running}

    async def start(self) -> None:
        """Start (or adopt) every agent, and return once each is running with its pid recorded (or failed to
        start, and is being retried): the server says it listens only then, as when agents were exec'd in turn."""
        self._stopping.clear()
        if self._forks is None and any(_forkable(agent) for agent in self.agents):
            self._forks = _ForkServer()
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
            if self._forks is not None and _forkable(agent):
                process = await self._forks.fork(agent)  # None: the fork server is gone, exec it instead
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


# --- the fork server ----------------------------------------------------------------------------------------------

FORK_SERVER_MODULE = "bot.localfleet"
"""``python -m bot.localfleet`` runs the fork server (see the module docstring)."""
_AGENT_COMMAND = ("-m", "bot", "agent")
COMMAND_LINE_ROOM = 8192
"""Bytes of command line the fork server is started with (one argument of dots), which each forked agent overwrites
with its own argv: ``ps`` and ``/proc/PID/cmdline`` then show the agent's command, as for an exec'd one."""


def _forkable(agent: AgentProcess) -> bool:
    """Only ``THIS_PYTHON -m bot agent ...`` is forked (that is what the fork server has imported), and only when its
    command line fits in the fork server's."""
    fits = sum(len(os.fsencode(part)) + 1 for part in agent.argv) <= COMMAND_LINE_ROOM
    return fits and agent.argv[:1] == (sys.executable,) and agent.argv[1:4] == _AGENT_COMMAND


class _ForkedAgent:
    """An agent the fork server forked: the server is not its parent, so the fork server reports its exit (or, once
    it is gone, the fleet sees the pid end). What LocalFleet uses of ``asyncio.subprocess.Process``."""

    def __init__(self, identity: ProcessIdentity) -> None:
        self.pid = identity.pid
        self.returncode: int | None = None
        self._identity = identity
        self._exited = asyncio.Event()

    def exited(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def terminate(self) -> None:
        if self._identity.running():
            os.kill(self.pid, signal.SIGTERM)

    async def wait(self) -> int:
        while not self._exited.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), 1.0)
            if not self._exited.is_set() and not self._identity.running():  # the fork server did not say (gone)
                self.exited(-1)
        assert self.returncode is not None
        return self.returncode


_Agent = asyncio.subprocess.Process | _ForkedAgent


class _ForkServer:
    """The server's side of the fork server: one JSON line per request on its stdin, one per answer on its stdout.

    ``{"id": N, "argv": [...], "log": PATH, "env": {...}}`` is answered ``{"id": N, "pid": P}`` (or ``"error"``);
    ``{"exited": P, "code": C}`` follows when that agent exits."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[bool] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._requests = 0
        self._answers: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._forked: dict[int, _ForkedAgent] = {}
        self._exits: dict[int, int] = {}  # exits reported before fork() had registered the agent
        self._lock = asyncio.Lock()
        self._gone = False  # it exited or said something we cannot read: agents are exec'd from then on

    async def fork(self, agent: AgentProcess) -> _ForkedAgent | None:
        """``agent`` forked from the fork server; None when there is no working fork server (exec it instead)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        if not await asyncio.shield(self._starting) or self._gone or self._process is None:
            return None
        if self._process.stdin is None:
            return None
        self._requests += 1
        request_id = self._requests
        answer = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        request = {"id": request_id, "argv": list(agent.argv), "log": str(agent.log_path), "env": agent_environment()}
        try:
            async with self._lock:
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                await self._process.stdin.drain()
            body = await answer
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            return None
        finally:
            self._answers.pop(request_id, None)
        pid = body.get("pid")
        identity = ProcessIdentity.of(pid) if isinstance(pid, int) else None
        if identity is None:  # it failed to fork, or the agent is gone already: exec'ing says why in its log
            return None
        forked = _ForkedAgent(identity)
        if identity.pid in self._exits:
            forked.exited(self._exits.pop(identity.pid))
        else:
            self._forked[identity.pid] = forked
        return forked

    async def _start(self) -> bool:
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                FORK_SERVER_MODULE,
                "." * COMMAND_LINE_ROOM,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=agent_environment(),
            )
            assert self._process.stdout is not None
            ready = await asyncio.wait_for(self._process.stdout.readline(), 60)
        except (OSError, TimeoutError) as exc:
            log.warning("local agents are started one interpreter each: no fork server (%s)", exc)
            return False
        if ready.strip() != b'{"ready": true}':
            log.warning("local agents are started one interpreter each: the fork server did not start")
            return False
        self._reader = asyncio.create_task(self._read(), name="local-agent-fork-server")
        return True

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            while line := await self._process.stdout.readline():
                body = _answer(line)
                if "exited" in body:
                    pid, code = int(body["exited"]), int(body["code"])
                    forked = self._forked.pop(pid, None)
                    if forked is not None:
                        forked.exited(code)
                    elif self._answers:  # a fork() may not have registered it yet
                        self._exits[pid] = code
                elif (answer := self._answers.get(int(body.get("id", 0)))) is not None and not answer.done():
                    answer.set_result(body)
        finally:  # gone: pending requests fail (their agents are exec'd); forked agents are watched by pid
            self._gone = True
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(ConnectionError("the fork server exited"))

    async def close(self) -> None:
        """End the fork server (the agents it forked are the fleet's to stop, and were)."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        process = self._process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _answer(line: bytes) -> dict[str, Any]:
    """One line of the fork server as a JSON object; ValueError when it is not one (ends the reader)."""
    body = json.loads(line)
    if not isinstance(body, dict):
        raise ValueError(f"not an answer of the fork server: {line[:200]!r}")
    return body


def _serve_forks() -> None:
    """The fork server's main loop (``python -m bot.localfleet``): import the agent command once, then fork each
    agent asked for on stdin and report it and its exit on stdout, until stdin closes."""
    import gc
    import io
    import selectors

    import bot.cli
    import bot.logs  # the agent command's logging

    with contextlib.redirect_stderr(io.StringIO()):
        bot.cli.main(["agent"])  # the command imports what it runs, then stops: no --server (its output is dropped)
    gc.freeze()  # what is imported stays shared with the agents: their collections never walk (and copy) it
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    os.write(1, b'{"ready": true}\n')
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fd == wake_read:
                os.read(wake_read, 4096)
                _reap()
                continue
            data = os.read(0, 65536)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = _fork_agent(request, (wake_read, wake_write))
                    answer: dict[str, object] = {"id": request["id"], "pid": pid}
                except OSError as exc:
                    answer = {"id": request["id"], "error": str(exc)}
                os.write(1, json.dumps(answer).encode() + b"\n")
        _reap()


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        os.write(1, json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def _fork_agent(request: dict[str, object], private_fds: tuple[int, int]) -> int:
    """Fork one agent: in the child, what ``ARGV`` (``python -m bot agent ...``) would run, in its own session with
    only ``env``, stdin /dev/null, stdout and stderr appended to ``log``."""
    argv, log_path, env = request["argv"], request["log"], request["env"]
    assert isinstance(argv, list) and isinstance(log_path, str) and isinstance(env, dict)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pid = os.fork()
    if pid:
        os.close(out)
        return pid
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in private_fds:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        os.environ.clear()
        os.environ.update({str(key): str(value) for key, value in env.items()})
        _show_command_line([str(part) for part in argv])
        from bot.cli import main

        sys.argv = ["deploybot", *argv[3:]]
        code = main(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _show_command_line(argv: list[str]) -> None:
    """Write ``argv`` over this process's own command line (the fork server's, inherited), NUL-padded: what
    ``/proc/self/cmdline`` reads from. Best effort: where it cannot be written, ``agent.process`` still tells."""
    text = b"".join(os.fsencode(part) + b"\0" for part in argv)
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49 of stat(5)
        if len(text) > end - start:
            return
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(text.ljust(end - start, b"\0"))
    except (OSError, ValueError, IndexError):
        pass


if __name__ == "__main__":
    _serve_forks()
