"""The fork server of the local fleet (bot/localfleet.py): one warm interpreter that has imported the agent command
once and forks each local agent from itself, so starting 200 agents costs 200 forks, not 200 interpreter starts.

Protocol: one JSON line per request on its stdin, one per answer on its stdout (``ForkServer`` is the server's side,
``serve_forks`` the fork server's). A forked agent runs exactly what its argv would (``bot.cli.main``), in its own
session with only the environment it is given, its output appended to its log, and writes its argv over the command
line it inherited, so ``ps`` and ``/proc/PID/cmdline`` show it as an exec'd agent. The fork server reports each
agent's exit, and exits when its stdin closes; the agents it forked live on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine import ProcessIdentity

log = logging.getLogger("bot.localfleet")  # its lines belong with the fleet's

FORK_SERVER_MODULE = "bot.localfleet"
"""``python -m bot.localfleet`` runs the fork server (``serve_forks``): the module that starts it names it."""
_AGENT_COMMAND = ("-m", "bot", "agent")
COMMAND_LINE_ROOM = 8192
"""Bytes of command line the fork server is started with (one argument of dots), which each forked agent overwrites
with its own argv: ``ps`` and ``/proc/PID/cmdline`` then show the agent's command, as for an exec'd one."""


def forkable(argv: Sequence[str]) -> bool:
    """Only ``THIS_PYTHON -m bot agent ...`` is forked (that is what the fork server has imported), and only when its
    command line fits in the fork server's."""
    fits = sum(len(os.fsencode(part)) + 1 for part in argv) <= COMMAND_LINE_ROOM
    return fits and tuple(argv[:1]) == (sys.executable,) and tuple(argv[1:4]) == _AGENT_COMMAND


class ForkedAgent:
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


class ForkServer:
    """The server's side of the fork server: one JSON line per request on its stdin, one per answer on its stdout.

    ``{"id": N, "argv": [...], "log": PATH, "env": {...}}`` is answered ``{"id": N, "pid": P}`` (or ``"error"``);
    ``{"exited": P, "code": C}`` follows when that agent exits."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = dict(environment)  # the fork server's, and each agent's: nothing secret
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[bool] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._requests = 0
        self._answers: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._forked: dict[int, ForkedAgent] = {}
        self._exits: dict[int, int] = {}  # exits reported before fork() had registered the agent
        self._lock = asyncio.Lock()
        self._gone = False  # it exited or said something we cannot read: agents are exec'd from then on

    async def fork(self, argv: Sequence[str], log_path: Path) -> ForkedAgent | None:
        """The agent ``argv`` runs, forked from the fork server, its output appended to ``log_path``; None when there
        is no working fork server (exec it instead)."""
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
        request = {"id": request_id, "argv": list(argv), "log": str(log_path), "env": self._environment}
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
        forked = ForkedAgent(identity)
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
                env=self._environment,
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


def serve_forks() -> None:
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
