"""Server side of the agent protocol: per-host command queues in the store, long-poll wake-ups, heartbeats.

Each host has its own queue (rows of ``host_commands``) and its own token; an agent sees only its own commands.
A long poll parks on an ``asyncio.Event`` for its host, so a command enqueued for an idle agent is handed over in
the same event-loop turn — that is where the sub-50 ms pickup comes from. A host whose agent stops talking while it
owns work is failed after ``heartbeat_timeout`` seconds, so nothing waits "Pending" forever.

Every interval here (an agent's silence, a claim's grace) is measured on ``clock.monotonic()``, kept in memory: a
wall-clock step (NTP, a VM resumed) must neither fail live agents nor keep dead ones alive. Wall time (``now()``)
is only what the store records and ``deploybot hosts`` shows. Nothing monotonic survives a restart, so a host or a
claim this server has not seen yet counts from when it first noticed it (the server's start, a monitor round).

An agent downloads only the bundles of its own host's deployments (``bundle_for``), and a token is handed out once:
the doors issue one for a host without (``has_token``) and otherwise only rotate it (``revoke_token``, then
``token_for``). The tokens live in ``<data>/agent-tokens.json`` (0600) in a data directory kept 0700.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.core.agent_protocol import CommandBody, HeartbeatBody, ResultBody
from engine.core.errors import NotFound
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.ports import Clock, CommandQueue, OnResult

log = logging.getLogger(__name__)

CLAIM_GRACE = 10.0
"""Seconds a claimed command may go unmentioned by its agent's heartbeats before it is handed out again."""


class Fleet:
    def __init__(
        self,
        store: CommandQueue,
        *,
        data_dir: Path,
        clock: Clock,
        bundle_dir: Path,
        on_result: OnResult,
        heartbeat_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.bundle_dir = bundle_dir
        self.heartbeat_timeout = heartbeat_timeout
        self._on_result = on_result
        self._token_file = data_dir / "agent-tokens.json"
        _private_dir(data_dir)
        self._tokens: dict[str, str] = self._load_tokens()
        self._wakeups: dict[str, asyncio.Event] = {}
        # Per host: a counter bumped whenever a command may have become Pending, and the value it had when a claim
        # last found nothing. While the two agree the queue is known empty and a poll skips the (write) claim.
        self._queue_changes: dict[str, int] = {}
        self._empty_at: dict[str, int] = {}
        self._last_seen: dict[str, float] = {}  # wall clock, for display only
        self._heard: dict[str, float] = {}  # monotonic: when each host's agent last talked to us
        self._claimed: dict[int, float] = {}  # monotonic: when this server handed out each InProgress command
        self._noticed: dict[int, float] = {}  # monotonic: the first monitor round that saw each open command
        self._started = clock.monotonic()
        self._monitor: asyncio.Task[None] | None = None

    # -- tokens ----------------------------------------------------------------------------------------------

    def _load_tokens(self) -> dict[str, str]:
        if not self._token_file.exists():
            return {}
        data: dict[str, str] = json.loads(self._token_file.read_text())
        return data

    def has_token(self, host: str) -> bool:
        """Whether ``host`` holds a token: the doors issue one only to a host without, and otherwise rotate it."""
        return host in self._tokens

    def token_for(self, host: str) -> str:
        """The host's agent token, created (and written with mode 0600) on first use."""
        if host not in self._tokens:
            # A fixed prefix: a token_urlsafe value may start with "-", which a command line takes for an option.
            self._tokens[host] = "dbt_" + secrets.token_urlsafe(24)
            self._save_tokens()
        return self._tokens[host]

    def revoke_token(self, host: str) -> bool:
        """Forget the host's token (a deregistered instance): its agent is refused from now on."""
        if self._tokens.pop(host, None) is None:
            return False
        self._save_tokens()
        return True

    def _save_tokens(self) -> None:
        _private_dir(self._token_file.parent)
        tmp = self._token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._tokens, f, indent=1)
        os.replace(tmp, self._token_file)

    def authenticate(self, token: str) -> str | None:
        found = None
        for host, known in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = host
        return found

    # -- the queue -------------------------------------------------------------------------------------------

    async def dispatch(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        """Queue ``event`` for ``target``; a command that already exists is not queued twice (resume-safe)."""
        now = self.clock.now()
        command = await self.store.enqueue_command_once(target, deployment_id, str(event), dict(spec), at=now)
        if command is None:
            self._queued(target)
        elif command["status"] in ("Succeeded", "Failed") and command.get("result"):
            await self._on_result(command, command["result"])

    async def cancel(self, deployment_id: str) -> None:
        await self.store.cancel_commands(deployment_id, at=self.clock.now())

    def _wakeup(self, host: str) -> asyncio.Event:
        return self._wakeups.setdefault(host, asyncio.Event())

    def _queued(self, host: str) -> None:
        """A command may be Pending for ``host`` now (call after the store has it): claim again, wake its poll."""
        self._queue_changes[host] = self._queue_changes.get(host, 0) + 1
        self._wakeup(host).set()

    async def _claim(self, host: str) -> dict[str, Any] | None:
        changes = self._queue_changes.get(host, 0)
        if self._empty_at.get(host) == changes:
            return None  # nothing was queued since a claim found the queue empty
        row = await self.store.claim_next_command(host, at=self.clock.now())
        if row is None:
            self._empty_at[host] = changes  # read before the claim: a command queued meanwhile bumped it
        else:
            self._claimed[row["id"]] = self.clock.monotonic()
        return row

    def _heard_from(self, host: str) -> None:
        self._heard[host] = self.clock.monotonic()
        self._last_seen[host] = self.clock.now()

    async def next_command(self, host: str, *, wait: float) -> CommandBody | None:
        """Long poll: the host's next command, as soon as there is one, or None after ``wait`` seconds."""
        self._heard_from(host)
        deadline = self.clock.monotonic() + wait
        while True:
            wakeup = self._wakeup(host)
            wakeup.clear()
            row = await self._claim(host)
            if row is not None:
                self._heard_from(host)
                return _command_object(row)
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                self._heard_from(host)
                return None
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns normally when the poll is cancelled just as
            # its wake-up arrives, and the cancelled poller would then go on polling for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await wakeup.wait()

    async def report_result(self, host: str, command_id: int, result: ResultBody) -> None:
        self._heard_from(host)
        status = "Succeeded" if result.get("status") == "Succeeded" else "Failed"
        command, finished = await self.store.finish_command(command_id, host, status, result, at=self.clock.now())
        if command is None:
            raise NotFound(f"no command {command_id} for host {host}")
        self._claimed.pop(command_id, None)
        if finished:
            await self._on_result(command, result)

    async def release(self, host: str, command_id: int) -> None:
        """The agent that claimed ``command_id`` is gone before it got it: queue it again for the next poll."""
        self._claimed.pop(command_id, None)
        if await self.store.release_command(command_id):
            log.info("requeued command %s: the poll that claimed it was no longer connected", command_id)
            self._queued(host)

    async def heartbeat(self, host: str, info: HeartbeatBody) -> None:
        self._heard_from(host)
        await self.store.upsert_agent(
            host,
            last_seen=self._last_seen[host],
            tags=dict(info.get("tags") or {}),
            version=info.get("version"),
            state="online",
        )
        await self._requeue_lost_claims(host, info.get("running_command"))

    async def _requeue_lost_claims(self, host: str, running: object) -> None:
        """A claim the live agent does not know about was lost in transit (e.g. a poll answered to a dead agent).

        Agents name their command in every heartbeat until its result is accepted, so a claim older than
        ``CLAIM_GRACE`` that the agent does not name never reached it and is safe to hand out again. A claim made
        before this server started counts from its start.
        """
        now = self.clock.monotonic()
        for command in await self.store.list_commands(host=host, status="InProgress"):
            claimed = self._claimed.get(command["id"], self._started)
            if command["id"] != running and now - claimed > CLAIM_GRACE:
                await self.release(host, command["id"])

    def last_seen(self, host: str) -> float | None:
        """Wall-clock time the host's agent last talked to this server (what ``deploybot hosts`` shows)."""
        return self._last_seen.get(host)

    def bundle_path(self, sha256: str) -> Path | None:
        """The stored bundle ``sha256``, whoever asks (see ``bundle_for`` for an agent's request)."""
        if not all(c in "0123456789abcdef" for c in sha256) or len(sha256) != 64:
            return None
        path = self.bundle_dir / f"{sha256}.tar.gz"
        return path if path.exists() else None

    async def bundle_for(self, host: str, sha256: str) -> Path | None:
        """The stored bundle ``sha256`` if ``host`` has (or had) a command of a deployment of it, else None: an
        agent fetches its own deployments' revisions only, and cannot tell another's from one that does not exist."""
        path = self.bundle_path(sha256)
        if path is None or not await self.store.host_uses_revision(host, sha256):
            return None
        return path

    # -- lost agents -----------------------------------------------------------------------------------------

    def start_monitor(self, interval: float = 1.0) -> None:
        self._monitor = asyncio.ensure_future(self._watch_heartbeats(interval))

    async def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    async def _watch_heartbeats(self, interval: float) -> None:
        while True:
            await self.clock.sleep(interval)
            try:
                await self.fail_silent_hosts()
            except Exception:  # the monitor must outlive a bad round; the next one tries again
                log.exception("heartbeat check failed")

    async def fail_silent_hosts(self) -> list[int]:
        """Fail every open command of a host not heard from for ``heartbeat_timeout`` seconds (monotonic).

        A host this server never heard from counts from when the command was first noticed here: a monitor round
        of this server, so the server's start for commands left open by a previous one.
        """
        now = self.clock.monotonic()
        failed: list[int] = []
        open_ids: set[int] = set()
        for status in ("InProgress", "Pending"):
            for command in await self.store.list_commands(status=status):
                open_ids.add(command["id"])
                noticed = self._noticed.setdefault(command["id"], now)
                seen = self._heard.get(command["host"], noticed)
                if now - seen < self.heartbeat_timeout:
                    continue
                silent = int(now - seen)
                ended_at = self.clock.now()
                result = ResultBody(
                    status="Failed",
                    error_code=int(ScriptErrorCode.UNKNOWN_ERROR),
                    message=f"the agent on {command['host']} has not been heard from for {silent} s "
                    f"(heartbeat limit {self.heartbeat_timeout:g} s)",
                    log_tail="",
                    started_at=None,
                    ended_at=ended_at,
                )
                if await self.store.complete_command(command["id"], "Failed", result, at=ended_at):
                    failed.append(command["id"])
                    await self._on_result(command, result)
        # Forget finished commands, so the maps stay as small as the queue; a claim made during this round was not
        # listed, and is kept.
        for gone in self._noticed.keys() - open_ids:
            del self._noticed[gone]
        for gone in [i for i, at in self._claimed.items() if at < now and i not in open_ids]:
            del self._claimed[gone]
        return failed


def _private_dir(path: Path) -> None:
    """Make ``path`` with mode 0700, or tighten an existing one that others could read, saying so once."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode != 0o700:
        path.chmod(0o700)
        log.warning("%s was mode %o; now 0700: it holds agent tokens, the database and deployment output", path, mode)


def _command_object(row: Mapping[str, Any]) -> CommandBody:
    return CommandBody(id=row["id"], deployment_id=row["deployment_id"], event=row["event"], spec=row["payload"])
