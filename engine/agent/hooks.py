"""Hook script runner: one lifecycle event's scripts, in order, with CodeDeploy's error codes (I/O, reference §1.5).

Theory of operation, per script:
  0. ``<archive>/<location>``, with every link resolved, must stay inside the revision, or nothing is touched and
     the event fails with code 5 (the AppSpec validator refuses ``..`` and absolute locations first; this is the
     agent's own check, which also covers links).
  1. ``<archive>/<location>`` must exist (else code 1) and be executable; the runner does ``chmod +x`` itself
     (code 2 if that fails).
  2. The script is exec'd directly (no shell), stdin is /dev/null, stdout and stderr share one pipe, and it runs in
     a new session, so its process group holds every child it starts.
  3. One deadline per script. If the script has not exited by then, the whole group gets SIGTERM, then SIGKILL
     after ``kill_grace`` seconds (code 3).
  4. After it exits, the pipe must reach EOF: a background child still holding stdout keeps it open. The runner
     waits until the deadline but at most ``output_grace`` seconds, then kills the group (code 6). A child that
     redirected its output (``cmd >/dev/null 2>&1 &``) is left alone: that is how hooks start servers.
  5. A non-zero exit is code 4.
  6. While a script runs, ``on_group`` is told its process group (``HookGroup``: the leader's pid and start time),
     and told None once the script has exited: the agent keeps it in its crash record, so an agent killed mid-hook
     can end the orphaned script when it starts again (``end_orphan``), before it reports code 7. Only a group
     whose leader is still that very script is signalled: once the script is gone, what is left in its group is
     what it started on purpose (a server), and a pid may have been reused.
Output goes to the capped ScriptLog and a bounded TailBuffer as it arrives (never accumulated), so a flood cannot
exhaust memory. ``runas`` switches user in the child (setuid/setgid/initgroups via Popen's ``user``/``group``/
``extra_groups``) and therefore needs a root agent; the child stays in the group the runner can kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from engine.agent.output import ScriptLog, TailBuffer
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.processes import ProcessIdentity, every_process

if TYPE_CHECKING:  # the AppSpec parser (and yaml) loads with the first command, not with an idle agent
    from engine.core.appspec import HookScript


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """Result of a script or of a whole event: code 0 is success."""

    code: ScriptErrorCode
    message: str
    log_tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.code is ScriptErrorCode.SUCCEEDED


class HookGroup(ProcessIdentity):
    """A running script's process group, by its leader: each script starts its own session, so the leader's pid is
    the group id, and its start time tells it from a later process with the same pid."""

    __slots__ = ()

    @property
    def pgid(self) -> int:
        return self.pid


OnGroup = Callable[[HookGroup | None], None]
"""Told each script's process group once it runs, and None once it has exited."""


class _ScriptProtocol(asyncio.SubprocessProtocol):
    """Feeds the pipe straight into the log and the tail; signals exit and EOF separately."""

    def __init__(self, log: ScriptLog, tail: TailBuffer) -> None:
        loop = asyncio.get_running_loop()
        self._log = log
        self._tail = tail
        self.exited: asyncio.Future[None] = loop.create_future()
        self.output_closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._log.output(data)
        self._tail.append(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.output_closed.done():
            self.output_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class HookRunner:
    """Runs the scripts of one lifecycle event."""

    def __init__(self, *, kill_grace: float = 2.0, output_grace: float = 10.0) -> None:
        self.kill_grace = kill_grace
        self.output_grace = output_grace

    async def run_event(
        self,
        event: LifecycleEvent,
        scripts: Sequence[HookScript],
        *,
        archive_dir: Path,
        env: Mapping[str, str],
        log: ScriptLog,
        on_group: OnGroup | None = None,
    ) -> HookOutcome:
        """Run ``scripts`` in order; the first failure ends the event. ``log_tail`` covers the whole event."""
        tail = TailBuffer()
        log.header(f"LifecycleEvent - {event}")
        revision = os.path.realpath(archive_dir)  # once per event: resolving a path costs a syscall per component
        for script in scripts:
            log.header(f"Script - {script.location}")
            try:
                outcome = await self._run_script(script, archive_dir, revision, env, log, tail, on_group)
            finally:
                log.end_script()
            if not outcome.succeeded:
                log.header(f"[deploybot] {outcome.message}")
                return HookOutcome(outcome.code, outcome.message, tail.text())
        return HookOutcome(ScriptErrorCode.SUCCEEDED, f"{len(scripts)} script(s) succeeded", tail.text())

    async def _run_script(
        self,
        script: HookScript,
        archive_dir: Path,
        revision: str,
        env: Mapping[str, str],
        log: ScriptLog,
        tail: TailBuffer,
        on_group: OnGroup | None,
    ) -> HookOutcome:
        """Run one script of ``archive_dir`` (``revision``: that directory, resolved)."""
        location = script.location.strip()
        path = Path(os.path.abspath(os.path.join(archive_dir, location.lstrip("/"))))
        resolved = os.path.realpath(path)
        if not is_inside(resolved, revision):
            return HookOutcome(
                ScriptErrorCode.UNKNOWN_ERROR,
                f"Script location {location} resolves to {resolved}, outside the revision ({archive_dir}): "
                "refused, nothing was changed or run",
            )
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = 0
        if not stat.S_ISREG(mode):
            return HookOutcome(ScriptErrorCode.SCRIPT_MISSING, f"Script does not exist at specified location: {path}")
        try:
            if not mode & 0o111:  # the agent's own "chmod +x" when the script is not executable at all
                os.chmod(path, stat.S_IMODE(mode) | 0o111)
        except OSError:
            return HookOutcome(
                ScriptErrorCode.SCRIPT_NOT_EXECUTABLE,
                f"Unable to set script at specified location: {location} as executable",
            )
        who = f"{location} run as user {script.runas}" if script.runas else location
        try:
            command, identity, child_env = _command_for(script, path, env)
        except _RunAsRefused as refused:
            return HookOutcome(ScriptErrorCode.SCRIPT_FAILED, f"Script at specified location: {who} {refused}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + script.timeout
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ScriptProtocol(log, tail),
                *command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_env,
                **identity,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return HookOutcome(
                ScriptErrorCode.SCRIPT_FAILED,
                f"Script at specified location: {who} failed with error {type(exc).__name__} with message {exc}",
            )
        pgid = transport.get_pid()
        try:
            group = HookGroup.of(pgid) if on_group is not None else None
            if on_group is not None and group is not None:
                on_group(group)
            if not await _until(protocol.exited, deadline):
                await self._kill_group(pgid, protocol)
                return HookOutcome(
                    ScriptErrorCode.SCRIPT_TIMED_OUT,
                    f"Script at specified location: {location} failed to complete in {script.timeout} seconds",
                )
            output_deadline = min(deadline, loop.time() + self.output_grace)
            if not await _until(protocol.output_closed, output_deadline):
                await self._kill_group(pgid, protocol)
                return HookOutcome(
                    ScriptErrorCode.OUTPUTS_LEFT_OPEN,
                    f"Script at specified location: {location} failed to close STDOUT",
                )
            code = transport.get_returncode()
            if code != 0:
                return HookOutcome(
                    ScriptErrorCode.SCRIPT_FAILED,
                    f"Script at specified location: {who} failed with exit code {_describe_exit(code)}",
                )
            return HookOutcome(ScriptErrorCode.SUCCEEDED, f"Script at specified location: {location} succeeded")
        except asyncio.CancelledError:
            _signal_group(pgid, signal.SIGKILL)
            raise
        finally:
            transport.close()
            if on_group is not None:
                on_group(None)

    async def _kill_group(self, pgid: int, protocol: _ScriptProtocol) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after the grace, then let the pipe drain."""
        loop = asyncio.get_running_loop()
        if _signal_group(pgid, signal.SIGTERM):
            grace_end = loop.time() + self.kill_grace
            while loop.time() < grace_end and _group_alive(pgid):
                await asyncio.sleep(0.02)
            _signal_group(pgid, signal.SIGKILL)
        await _until(protocol.exited, loop.time() + 1.0)
        await _until(protocol.output_closed, loop.time() + 1.0)

    async def end_orphan(self, group: HookGroup) -> bool:
        """End the group of a script a previous agent process left running: SIGTERM, SIGKILL after ``kill_grace``,
        until none of it is alive. Only when its leader is still that script (see the module docstring); True then.
        """
        if not group.running() or not _signal_group(group.pgid, signal.SIGTERM):
            return False
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.kill_grace
        while loop.time() < grace_end and _group_alive(group.pgid):
            await asyncio.sleep(0.02)
        if _group_alive(group.pgid):
            _signal_group(group.pgid, signal.SIGKILL)
            gone_by = loop.time() + self.kill_grace  # SIGKILL cannot be refused: this only lets the kernel act
            while loop.time() < gone_by and _group_alive(group.pgid):
                await asyncio.sleep(0.02)
        return True


def is_inside(path: str, root: str) -> bool:
    """True when the (already resolved) ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _RunAsRefused(Exception):
    pass


class _Identity(TypedDict, total=False):
    """Popen's ``user``/``group``/``extra_groups`` for a ``runas`` script; empty to keep the agent's own."""

    user: int
    group: int
    extra_groups: list[int]


def _command_for(script: HookScript, path: Path, env: Mapping[str, str]) -> tuple[list[str], _Identity, dict[str, str]]:
    """argv, Popen identity arguments and environment for ``script``."""
    child_env = dict(env)
    command = [str(path)]
    if script.sudo and os.geteuid() != 0:
        return (["sudo", "-n", *(["-u", script.runas] if script.runas else []), str(path)], {}, child_env)
    if not script.runas or _current_user() == script.runas:
        return command, {}, child_env
    if os.geteuid() != 0:
        raise _RunAsRefused("was not run: runas requires the agent to run as root")
    try:
        user = pwd.getpwnam(script.runas)
    except KeyError:
        raise _RunAsRefused(f"was not run: no such user {script.runas!r}") from None
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    child_env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell)
    identity: _Identity = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}
    return command, identity, child_env


def _describe_exit(code: int | None) -> str:
    if code is None or code >= 0:
        return str(code)
    try:
        return f"{code} (killed by {signal.Signals(-code).name})"
    except ValueError:
        return f"{code} (killed by signal {-code})"


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


async def _until(future: asyncio.Future[None], deadline: float) -> bool:
    """Wait for ``future`` until the loop-time ``deadline``; True when it completed."""
    remaining = deadline - asyncio.get_running_loop().time()
    if future.done():
        return True
    if remaining <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), remaining)
    return future.done()


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is in the group; zombies may never be reaped in a container."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return any(int(fields[2]) == pgid and fields[0] != b"Z" for _, fields in every_process())
