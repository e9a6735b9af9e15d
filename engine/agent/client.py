"""The agent's HTTP side: long-poll for commands, run them one at a time, report results, send heartbeats (I/O).

Theory of operation:
  - ``GET /agent/v1/commands/next?wait=N`` is a long poll (HTTP timeout above N). A received command runs at once
    and the next poll starts as soon as its result is accepted: an idle agent never sleeps between polls.
  - A result is POSTed with ``?next=S``: the server answers with the host's next command when it queues one within
    S seconds (it usually does, milliseconds after taking the result), which saves one round trip per lifecycle
    event. A server that does not know ``next`` answers without a command, and the agent simply polls.
  - Runs: the agent polls with ``runs=1`` and names ``"runs"`` in its heartbeats' ``capabilities``, so the server
    may hand it a host's consecutive events at once (a command whose ``then`` lists the ones queued behind it, up to
    the next server-side step). It runs them back to back: each result is POSTed as it finishes with
    ``?then=<next id>``, and the next event starts only when the answer says ``"stop": false`` (the server claimed
    it for this agent); anything else (``"stop": true``: the deployment was stopped, a refused or failed result)
    ends the run there, and the agent polls. Each event of a run has its own crash record, so a crash mid-run
    reports that event with code 7 and the server cancels the rest of the run: nothing runs twice.
  - Connection errors and unexpected answers back off 0.5 s, doubling to 5 s; any good answer resets the delay.
  - Before a command runs, its start is appended to the crash-record journal (``ongoing-command/journal``, see
    layout.py); once it has run, its result is appended too and POSTed until the server accepts it (it may be
    restarting), and only then is the command marked done. While a hook script runs, its process group is recorded
    there too. On start, every leftover record is reported: its stored result if it had one,
    else Failed with code 7 (the command was cut short by an agent restart) — but first the script a killed agent
    left running is ended (its group SIGTERMed, then SIGKILLed), if it is still that script, so an orphaned hook
    never runs on into the rollback the failure starts.
  - Heartbeats go out every ``heartbeat_interval`` seconds from their own task, whatever the poll loop is doing.
  - The token comes from a file (``--token-file``) or DEPLOYBOT_AGENT_TOKEN, never a command line (``ps`` shows
    those). A 401 makes the agent read its token file again, so a token rotated on the server and written to the
    file is picked up without a restart.
  - An https:// server's certificate is always verified (TLS 1.2 or later): against the system CAs, or the CA file
    given with ``--ca-file`` for a private CA. There is no way to skip it. A certificate that fails verification is
    not a network hiccup that waiting cures: the agent stops with ServerNotTrusted (``deploybot agent`` exits 1
    with one line saying why), instead of retrying forever unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.agent.executor import TOKEN_VARIABLE, CommandExecutor
from engine.agent.hooks import HookGroup, HookOutcome, HookRunner
from engine.agent.layout import AgentLayout, OngoingCommand, StoredResult
from engine.agent.version import agent_version
from engine.core import log_context
from engine.core.agent_protocol import (
    RESTART_MESSAGE,
    RUNS_CAPABILITY,
    Command,
    CommandResult,
    HeartbeatBody,
    MalformedCommand,
    ResultBody,
)
from engine.core.model import ScriptErrorCode
from engine.http11 import HttpClient

log = logging.getLogger("deploybot.agent")

_FIRST_DELAY = 0.5
NEXT_WAIT = 0.25
"""Seconds the server may hold a result POST to hand over the next command (see the module docstring)."""
_MAX_DELAY = 5.0
_NETWORK_ERRORS = (TimeoutError, OSError)  # OSError covers refused, reset, TLS and broken answers
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers that say "not now" (a load balancer with no healthy replica behind it answers 503, one whose replica
died mid-answer 502): the request is sent again. Any other refusal stands."""
BUNDLE_RETRY_SECONDS = 60.0
"""How long DownloadBundle keeps asking for a bundle the server cannot serve for the moment (a network error, or an
answer in ``_TRANSIENT_STATUSES``), 1 s after the first try and then doubling up to 5 s apart, before the event
fails: long enough for replicas on PostgreSQL to hand a dead one's work over (10 s leases) behind a balancer. Results,
polls and heartbeats are sent again for as long as it takes; a bundle's event is running, so its wait is bounded."""
_BUNDLE_FIRST_DELAY = 1.0


POLL_WAIT = 25
"""Seconds an idle agent's long poll asks the server to hold it open; a command queued meanwhile answers it at once."""
TIDY_AFTER = 1.0
"""Seconds an agent waits for a command before it deletes old revisions: never on a deployment's clock."""


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What ``deploybot agent`` was given. ``prefix`` maps absolute install paths under a directory (local fleets);
    ``ca_file`` is the PEM file of the CA that signed an https:// server's certificate (default: the system CAs).

    ``token`` is the agent token as read at start; ``token_file``, when given, is where it came from and is read
    again after a 401. The token is left out of the repr, so logging the options never logs it. ``tidy_after``: how
    long a poll waits for a command before old revisions are deleted.
    """

    server: str
    name: str
    token: str = field(default="", repr=False)
    token_file: Path | None = None
    root: Path | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    prefix: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    poll_wait: int = POLL_WAIT
    heartbeat_interval: float = 5.0
    ca_file: Path | None = None
    tidy_after: float = TIDY_AFTER

    @property
    def agent_root(self) -> Path:
        """``--root``, else ``var/agents/<name>`` (relative to the working directory)."""
        return self.root if self.root is not None else Path("var") / "agents" / self.name


def read_token_file(path: Path) -> str:
    """The token in ``path``, without surrounding whitespace; ValueError naming the file when it is unreadable or
    empty. A file others may read is used but warned about: the token is as good as a password for this host."""
    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the agent token file {path}: {reason}") from None
    if not token:
        raise ValueError(f"the agent token file {path} is empty")
    if mode & 0o077:
        log.warning("agent token file %s can be read by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return token


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The client side of TLS: certificates and host names verified, TLS 1.2 or later, trusting ``ca_file`` (PEM)
    when given, else the system CAs. ValueError naming the file when it cannot be read or holds no certificate."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except ssl.SSLError:
        raise ValueError(f"cannot use the CA file {ca_file}: no PEM certificate in it") from None
    except OSError as exc:
        raise ValueError(f"cannot use the CA file {ca_file}: {exc.strerror or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ServerNotTrusted(Exception):
    """The server's TLS certificate failed verification (wrong or missing CA, a name the certificate does not
    cover, an expired certificate): fatal to the agent, since retrying cannot fix it."""

    def __init__(self, server: str, error: ssl.SSLCertVerificationError, ca_file: Path | None = None) -> None:
        self.server = server
        detail = error.verify_message or str(error)
        trusted = f"the CA file {ca_file}" if ca_file is not None else "the system CAs"
        super().__init__(
            f"cannot trust the server {server}: certificate verify failed: {detail} (checked against {trusted}; "
            "give the CA that signed its certificate with --ca-file PATH)"
        )


def parse_assignment(item: str, *, what: str = "KEY=VALUE") -> tuple[str, str]:
    """``"k=v"`` (one ``--tag``/``--env`` option) as ``("k", "v")``; the value may hold ``=`` or be empty. Raises
    ValueError naming the item when it has no ``=`` or no key."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"expected {what}, got {item!r}")
    return key, value


def parse_assignments(items: Iterable[str], *, what: str = "KEY=VALUE") -> dict[str, str]:
    """``["k=v", ...]`` from repeated ``--tag``/``--env`` options (the last of a key wins); raises ValueError naming
    the bad item."""
    return dict(parse_assignment(item, what=what) for item in items)


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {body[:200]}")


class Agent:
    """One host's agent, talking to its server through ``http`` (a client bound to ``options.server``)."""

    def __init__(self, options: AgentOptions, http: HttpClient, *, hook_runner: HookRunner | None = None) -> None:
        self.options = options
        self.layout = AgentLayout(options.agent_root)
        self.running_command: int | None = None
        self._http = http
        self._base = options.server.rstrip("/")
        token = options.token or (read_token_file(options.token_file) if options.token_file else "")
        if not token:
            raise ValueError(f"no agent token: give a token file or set {TOKEN_VARIABLE}")
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": f"deploybot-agent/{agent_version()}"}
        self.hook_runner = hook_runner or HookRunner()
        self.executor = CommandExecutor(
            self.layout,
            host=options.name,
            fetch=self._fetch_bundle,
            prefix=options.prefix,
            extra_env=options.env,
            hook_runner=self.hook_runner,
        )

    def _path(self, url: str) -> str:
        """A server path; a full URL is accepted only on this agent's own server (bundles are served there)."""
        if "://" not in url:
            return url
        if url.startswith(self._base + "/"):
            return url[len(self._base) :]
        raise ValueError(f"{url} is not on this agent's server {self._base}")

    def _refused(self, status: int) -> bool:
        """After a refusal: on a 401, read the token file again; True when it held a new token (retry at once)."""
        if status != 401 or self.options.token_file is None:
            return False
        try:
            token = read_token_file(self.options.token_file)
        except ValueError as exc:
            log.warning("%s", exc)
            return False
        if token == self._token:
            return False
        log.info("the server refused the agent token; using the new one in %s", self.options.token_file)
        self._token = token
        self._headers["Authorization"] = f"Bearer {token}"
        return True

    def _check_trusted(self, error: BaseException) -> None:
        """Raise ServerNotTrusted for a certificate that failed verification (any other error is retried)."""
        if isinstance(error, ssl.SSLCertVerificationError):
            raise ServerNotTrusted(self._base, error, self.options.ca_file) from None

    async def run(self) -> None:
        """Recover, then poll and run commands until cancelled (each log line names this host)."""
        with log_context.bind(host=self.options.name):
            await self._run()

    async def _run(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        heartbeats = asyncio.create_task(self._heartbeats(), name="agent-heartbeats")
        try:
            await self.recover()
            await self._poll_loop()
        finally:
            heartbeats.cancel()
            self.executor.stop_tidying()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            self.layout.close()

    async def recover(self) -> None:
        """Report the commands a previous agent process left unfinished (§8), after ending their orphaned scripts.

        Heartbeats name each one until its result is accepted, as for a command run now: ending a script takes up
        to two kill graces, and the server must not hand the command out again meanwhile."""
        for ongoing in self.layout.ongoing():
            self.running_command = ongoing.command_id
            if ongoing.group is not None and await self.hook_runner.end_orphan(ongoing.group):
                log.warning(
                    "ended the hook script (process group %d) of command %s (%s) left running by a previous run",
                    ongoing.group.pgid,
                    ongoing.command_id,
                    ongoing.event,
                )
            body: ResultBody | StoredResult = (
                ongoing.result
                or CommandResult.of(
                    ScriptErrorCode.FAILED_AFTER_RESTART, RESTART_MESSAGE, "", ongoing.started_at, time.time()
                ).to_json()
            )
            log.warning("reporting command %s (%s) left over by a previous run", ongoing.command_id, ongoing.event)
            await self._post_result(ongoing.command_id, body)
            self.layout.clear_ongoing(ongoing.command_id)
            self.running_command = None

    # --- polling ------------------------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        delay = _FIRST_DELAY
        body: dict[str, Any] | None = None
        while True:
            if body is None:
                # Old revisions go once the host has waited a while for a command. Deleted as soon as a run ended,
                # they took the CPU from the hosts (and the server) still busy with the same deployment.
                idle = asyncio.get_running_loop().call_later(self.options.tidy_after, self.executor.tidy_soon)
                try:
                    body = await self._poll()
                except (*_NETWORK_ERRORS, _Refused, ValueError) as exc:
                    self._check_trusted(exc)
                    if isinstance(exc, _Refused) and self._refused(exc.status):
                        continue
                    log.warning("poll failed (%s); retrying in %.1f s", exc or type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_DELAY)
                    continue
                finally:
                    idle.cancel()
                delay = _FIRST_DELAY
                if body is None:
                    continue
            command = body
            try:
                body = await self._handle(command)
            except ServerNotTrusted:
                raise
            except Exception:  # e.g. a full disk: keep the agent alive, the server times the event out
                log.exception("could not handle command %s", command.get("id"))
                body = None
                await asyncio.sleep(_FIRST_DELAY)

    async def _poll(self) -> dict[str, Any] | None:
        wait = self.options.poll_wait
        path = f"/agent/v1/commands/next?wait={wait}&runs=1"
        response = await self._http.request("GET", path, headers=self._headers, total=wait + 15)
        if response.status == 204:
            return None
        if response.status != 200:
            raise _Refused(response.status, response.text())
        return _command_in(response.json())

    # --- running a command --------------------------------------------------------------------------------------

    async def _handle(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run one command, or a run of them back to back, reporting each; the next command when the server handed
        one over with the last answer."""
        started = time.time()
        try:
            command: Command | None = Command.from_json(body)
        except MalformedCommand as bad:
            log.error("%s", bad.reason)
            if bad.command_id is not None:
                refused = CommandResult.of(ScriptErrorCode.UNKNOWN_ERROR, bad.reason, "", started, time.time())
                await self._post_result(bad.command_id, refused.to_json())
            return None
        while command is not None:
            result = await self._run_command(command)
            following = command.following() if result["status"] == "Succeeded" else None
            if following is None:
                handed_over: list[dict[str, Any]] = []
                await self._post_result(command.id, result, handed_over=handed_over)
                self._done_with(command.id)
                return handed_over[0] if handed_over else None
            answer: list[object] = []
            accepted = await self._post_result(command.id, result, then=following.id, answer=answer)
            go_on = accepted and isinstance(answer[-1], dict) and answer[-1].get("stop") is False
            if go_on:
                # Named from now on: the server claimed it for us, and must not hand it to anyone else.
                self.running_command = following.id
            self._done_with(command.id)
            if not go_on:
                log.info("command %s: the server stopped the run before %s", following.id, following.event)
            command = following if go_on else None
        return None

    async def _run_command(self, command: Command) -> ResultBody:
        """Run one command under its crash record; the result, also stored in that record until it is accepted."""
        with log_context.bind(
            deployment=command.deployment_id, application=command.spec.application_name, event=command.event
        ):
            return await self._run_recorded(command)

    async def _run_recorded(self, command: Command) -> ResultBody:
        started = time.time()
        record = OngoingCommand(command.id, command.deployment_id, command.event, started)
        self.layout.mark_ongoing(record)
        self.running_command = command.id
        log.debug("command %s: %s of %s", command.id, command.event, command.deployment_id)
        try:
            outcome = await self.executor.execute(command, on_group=functools.partial(self._record_group, command.id))
        except asyncio.CancelledError:
            await self._report_interrupted(command.id, started)
            raise
        except Exception as exc:  # an agent bug must still end as a result, never as a stuck event
            log.exception("command %s crashed", command.id)
            outcome = HookOutcome(ScriptErrorCode.UNKNOWN_ERROR, f"agent error: {type(exc).__name__}: {exc}")
        result = CommandResult.of(outcome.code, outcome.message, outcome.log_tail, started, time.time()).to_json()
        # One line per command, when it ends: the agent's log is written for every lifecycle event of every host.
        log.info(
            "command %s: %s of %s: %s (%s) %s",
            command.id,
            command.event,
            command.deployment_id,
            result["status"],
            result["error_code"],
            outcome.message,
        )
        self.layout.mark_ongoing(record, result=result)
        return result

    def _done_with(self, command_id: int) -> None:
        """Its result was accepted (or refused for good): forget its crash record and stop naming it.

        Only now is the command off our hands: heartbeats name it until the server has its result, so the server
        never mistakes a finished-but-unreported command for one this agent never received."""
        self.layout.clear_ongoing(command_id)
        if self.running_command == command_id:
            self.running_command = None

    def _record_group(self, command_id: int, group: HookGroup | None) -> None:
        """Keep the running script's process group in the crash record; a failure to write it stops nothing."""
        try:
            self.layout.mark_group(command_id, group)
        except OSError as exc:
            log.warning("cannot record the script of command %s (%s): a crash would leave it running", command_id, exc)

    async def _report_interrupted(self, command_id: int, started: float) -> None:
        """One quick try to fail the command when the agent is stopped mid-run; else the next start reports it."""
        message = "Failed: the agent was stopped while the lifecycle event was running."
        body = CommandResult.of(ScriptErrorCode.FAILED_AFTER_RESTART, message, "", started, time.time()).to_json()
        with contextlib.suppress(Exception):
            path = f"/agent/v1/commands/{command_id}/result"
            response = await self._http.request("POST", path, json_body=body, headers=self._headers, total=2)
            if response.status < 300:
                self.layout.clear_ongoing(command_id)

    async def _post_result(
        self,
        command_id: int,
        body: ResultBody | StoredResult,
        *,
        handed_over: list[dict[str, Any]] | None = None,
        then: int | None = None,
        answer: list[object] | None = None,
    ) -> bool:
        """POST until accepted; False when the server refuses it for good (a 4xx other than auth/throttling).

        ``body`` is a result made now, or one stored by a previous run (posted as it was stored: it is not checked
        here, the server does).

        Given ``handed_over``, the server may answer with the host's next command, which is appended to it: from
        then on that command is this agent's to run (the server has claimed it for us). Given ``then`` (the next
        command of a run), the accepted answer's JSON is appended to ``answer``: it says whether to go on.
        """
        path = f"/agent/v1/commands/{command_id}/result"
        if then is not None:
            path += f"?then={then}"
        elif handed_over is not None:
            path += f"?next={NEXT_WAIT:g}&runs=1"
        delay = _FIRST_DELAY
        while True:
            try:
                response = await self._http.request("POST", path, json_body=body, headers=self._headers, total=30)
                if response.status < 300:
                    if handed_over is not None or answer is not None:
                        payload = response.json()
                        if answer is not None:
                            answer.append(payload)
                        command = _command_in(payload) if handed_over is not None else None
                        if handed_over is not None and command is not None:
                            handed_over.append(command)
                    return True
                if 400 <= response.status < 500 and response.status not in (401, 403, 408, 429):
                    log.error(
                        "server refused the result of command %s: HTTP %s %s",
                        command_id,
                        response.status,
                        response.text(),
                    )
                    return False
                if self._refused(response.status):
                    continue
                log.warning("result of command %s not accepted: HTTP %s", command_id, response.status)
            except _NETWORK_ERRORS as exc:
                self._check_trusted(exc)
                log.warning("posting the result of command %s failed (%s); retrying", command_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def _fetch_bundle(self, url: str, dest: Path) -> str:
        """Stream the bundle to ``dest``; returns the sha256 of what was written. A server that cannot serve it for
        the moment is asked again, for up to ``BUNDLE_RETRY_SECONDS`` (see there); a refusal for good fails now."""
        delay, waited = _BUNDLE_FIRST_DELAY, 0.0
        while True:
            try:
                return await self._download(url, dest)
            except _Refused as refused:
                if self._refused(refused.status):
                    continue  # a new token in the token file: at once
                if refused.status not in _TRANSIENT_STATUSES or waited >= BUNDLE_RETRY_SECONDS:
                    raise
                log.warning("the bundle %s: HTTP %s; trying again in %.1f s", url, refused.status, delay)
            except _NETWORK_ERRORS as exc:
                self._check_trusted(exc)
                if waited >= BUNDLE_RETRY_SECONDS:
                    raise
                log.warning("the bundle %s: %s; trying again in %.1f s", url, exc or type(exc).__name__, delay)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, _MAX_DELAY)

    async def _download(self, url: str, dest: Path) -> str:
        import hashlib  # only DownloadBundle needs it

        digest = hashlib.sha256()
        with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:

            def write(chunk: bytes) -> None:
                digest.update(chunk)
                out.write(chunk)

            response = await self._http.download(self._path(url), write, headers=self._headers, read=60)
        if response.status != 200:
            raise _Refused(response.status, response.text())
        return digest.hexdigest()

    # --- heartbeats ---------------------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Every ``heartbeat_interval``; after a network error sooner (0.5 s, doubling up to the interval): a server
        still starting (a local fleet's agents start with it) hears from every agent as soon as it listens."""
        path = "/agent/v1/heartbeat"
        delay = _FIRST_DELAY
        while True:
            body: HeartbeatBody = {
                "tags": dict(self.options.tags),
                "version": agent_version(),
                "running_command": self.running_command,
                "capabilities": [RUNS_CAPABILITY],
            }
            wait = self.options.heartbeat_interval
            try:
                response = await self._http.request("POST", path, json_body=body, headers=self._headers, total=10)
                delay = _FIRST_DELAY
                if response.status >= 300 and not self._refused(response.status):
                    log.warning("heartbeat refused: HTTP %s", response.status)
            except Exception as exc:  # a heartbeat must never stop the agent
                log.debug("heartbeat failed: %s", exc)
                wait, delay = min(delay, wait), min(delay * 2, _MAX_DELAY)
            await asyncio.sleep(wait)


def _command_in(payload: object) -> dict[str, Any] | None:
    """The ``command`` object of a poll or result answer, if it has one."""
    command = payload.get("command") if isinstance(payload, dict) else None
    return command if isinstance(command, dict) else None


async def run_agent(options: AgentOptions) -> None:
    """The ``deploybot agent`` entry point: runs until cancelled or sent SIGTERM/SIGINT (then returns cleanly).

    Raises ServerNotTrusted when the server's certificate fails verification, ValueError for an unusable CA file.
    """
    https = options.server.lower().startswith("https://")
    # Only an https:// server needs the context: loading the system CAs costs an agent ~20 ms of CPU at start.
    context = tls_context(options.ca_file) if https else None
    if options.ca_file is not None and not https:
        log.warning("--ca-file %s is not used: the server URL %s is not https://", options.ca_file, options.server)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop_requested = False

    def stop() -> None:
        nonlocal stop_requested
        stop_requested = True
        task.cancel()

    restore_watcher = _watch_hooks_by_pidfd(loop)
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller cancels us instead
    try:
        http = HttpClient(options.server, tls=context, user_agent=f"deploybot-agent/{agent_version()}")
        try:
            await Agent(options, http).run()
        finally:
            await http.close()
    except asyncio.CancelledError:
        if not stop_requested:
            raise
        log.info("agent %s stopped", options.name)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        restore_watcher()


def _watch_hooks_by_pidfd(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """On Python 3.11, learn of each hook script's exit from a pidfd on the event loop instead of asyncio's default
    (a thread per script, started and joined for every lifecycle event); returns what puts the default back.

    Python 3.12 already does this by itself (and deprecates choosing), as does any Linux without pidfds: nothing
    changes there."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open") or sys.platform != "linux":
        return lambda: None
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3, or a sandbox refusing the call
        return lambda: None
    previous = asyncio.get_child_watcher()
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    return functools.partial(asyncio.set_child_watcher, previous)
