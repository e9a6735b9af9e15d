"""Server side of the agent protocol: per-host command queues in the store, long-poll wake-ups, heartbeats.

Each host has its own queue (rows of ``host_commands``) and its own token; an agent sees only its own commands.
A long poll parks on a future for its host, and a command queued for a host whose poll is parked is claimed in the
transaction that queues it and handed straight to that poll — that is where the sub-50 ms pickup comes from. A host
whose agent stops talking while it owns work is failed after ``heartbeat_timeout`` seconds, so nothing waits
"Pending" forever.

Every interval here (an agent's silence, a claim's grace) is measured on ``clock.monotonic()``, kept in memory: a
wall-clock step (NTP, a VM resumed) must neither fail live agents nor keep dead ones alive. Wall time (``now()``)
is only what the store records and ``deploybot hosts`` shows. Nothing monotonic survives a restart, so a host or a
claim this server has not seen yet counts from when it first noticed it (the server's start, a monitor round).

Less per event: a host's consecutive events up to the next server-side step are queued together as one *run*
(``dispatch_runs``, for agents that said they can run them back to back: ``RUNS_CAPABILITY``), a whole engine
step's runs in one transaction; results that arrive together are recorded in one transaction (``report_result``
joins the batch being written), which also claims the next command of a run for its agent (``then``) and, for a
failure, cancels the rest of the run. A poll skips the claim while its host's queue is known to be empty: a claim
found nothing, or the host's run was claimed whole with nothing else of it Pending (``run_ends_queue``).

An agent downloads only the bundles of its own host's deployments (``bundle_for``), and a token is handed out once:
the doors issue one for a host without (``has_token``) and otherwise only rotate it (``revoke_token``, then
``token_for``). The tokens are engine/adapters/agent_tokens.py's: ``<data>/agent-tokens.json`` (0600) in a data
directory kept 0700, or the database when replicas share one (``tokens=AgentTokens.in_store(...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.adapters.agent_tokens import TOKEN_FILE, AgentTokens
from engine.adapters.batches import WriteBatches
from engine.core.agent_protocol import RUNS_CAPABILITY, CommandBody, HeartbeatBody, ResultBody, RunStep
from engine.core.errors import NotFound
from engine.core.leases import COMMANDS_QUEUED
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.ports import (
    AgentBeat,
    Clock,
    CommandQueue,
    CommandReport,
    FinishedReport,
    OnResult,
    QueuedRun,
    StepWrite,
)

log = logging.getLogger(__name__)

CLAIM_GRACE = 10.0
"""Seconds a claimed command may go unmentioned by its agent's heartbeats before it is handed out again."""
HEADS_KEPT = 50_000
"""Heads of handed-out commands kept to record reports without reading them (about 20 MB at most)."""
BEAT_GATHER_SECONDS = 0.05
"""How long a heartbeat waits for others to share its transaction (``gather_heartbeats``)."""


async def gather_heartbeats() -> None:
    """The server's ``gather_beats``: ``BEAT_GATHER_SECONDS`` on the loop's own time.

    1,000 agents send 200 heartbeats a second, each on its own, so written as they came each was a transaction of
    its own: 9-14 % of a core for an idle fleet. Gathered, about ten share one. No one waits on the answer (an agent
    beats from a task of its own) and the host counts as heard at once. Not on the engine's clock: a pause for
    batching measures nothing, and a test's clock need not move for a heartbeat to be written."""
    await asyncio.sleep(BEAT_GATHER_SECONDS)


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
        tokens: AgentTokens | None = None,
        gather_beats: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.bundle_dir = bundle_dir
        self.heartbeat_timeout = heartbeat_timeout
        self._on_result = on_result
        _private_dir(data_dir)
        self.tokens = tokens if tokens is not None else AgentTokens.in_file(data_dir / TOKEN_FILE)
        # Per host: the parked long polls, each a future that gets the row claimed for it (or None: claim again)
        # and whether that poll asked for the run.
        self._waiters: dict[str, list[tuple[asyncio.Future[dict[str, Any] | None], bool]]] = {}
        self._runs_ok: set[str] = set()  # hosts whose agent last said it runs consecutive events back to back
        # Results and heartbeats arriving together are written in one transaction each (engine/adapters/batches.py).
        self._reports = WriteBatches(self._finish_reports, after=self._deliver_results)
        # ``gather_beats`` (the server's: ``gather_heartbeats``) is awaited before each batch of heartbeats is taken.
        self._beats = WriteBatches(self._record_beats, gather=gather_beats)
        self._background: set[asyncio.Task[None]] = set()
        # (host, deployment, event) of the later events of runs this server queued: when the engine dispatches one
        # of them, it is queued already (or its agent ran it ahead, and its result went to the engine then), so the
        # dispatch needs nothing of the store and delivers nothing. A failure or a cancellation forgets the rest of
        # the run, so that a dispatch of it goes to the store again.
        self._queued_ahead: set[tuple[str, str, str]] = set()
        self._revision_sent: dict[str, str] = {}  # host -> sha256 of the revision its latest queued command names
        # Per host: a counter bumped whenever a command may have become Pending, and the value it had when a claim
        # last found nothing. While the two agree the queue is known empty and a poll skips the (write) claim.
        self._queue_changes: dict[str, int] = {}
        self._empty_at: dict[str, int] = {}
        # Per host: a run claimed with nothing else of the host Pending, as (its last command, the counter then):
        # once that command is claimed too (a result's ``then``), with the counter unchanged, the queue is empty.
        self._queue_ends: dict[str, tuple[int, int]] = {}
        self._last_seen: dict[str, float] = {}  # wall clock, for display only
        self._heard: dict[str, float] = {}  # monotonic: when each host's agent last talked to us
        self._claimed: dict[int, float] = {}  # monotonic: when this server handed out each InProgress command
        # The heads (id, host, deployment, event) of the commands handed out here and of the rest of their runs:
        # facts that never change, so a report of one is recorded without reading them back (finish_commands).
        self._heads: dict[int, dict[str, Any]] = {}
        self._noticed: dict[int, float] = {}  # monotonic: the first monitor round that saw each open command
        self._started = clock.monotonic()
        self._monitor: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    # -- tokens ----------------------------------------------------------------------------------------------

    def has_token(self, host: str) -> bool:
        """Whether ``host`` holds a token: the doors issue one only to a host without, and otherwise rotate it."""
        return self.tokens.has(host)

    def token_for(self, host: str) -> str:
        """The host's agent token, created (and written with mode 0600) on first use."""
        return self.tokens.token_for(host)

    def revoke_token(self, host: str) -> bool:
        """Forget the host's token (a deregistered instance): its agent is refused from now on."""
        return self.tokens.revoke(host)

    def authenticate(self, token: str) -> str | None:
        return self.tokens.authenticate(token)

    async def issue_token(self, host: str, *, rotate: bool = False) -> str:
        """The host's token (a new one when ``rotate``), stored (for every replica) before it is returned."""
        return await self.tokens.issue(host, rotate=rotate)

    async def withdraw_token(self, host: str) -> bool:
        """``revoke_token``, stored (for every replica) before it returns."""
        return await self.tokens.withdraw(host)

    # -- the queue -------------------------------------------------------------------------------------------

    async def dispatch(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        """Queue ``event`` for ``target``; a command that already exists is not queued twice (resume-safe)."""
        await self.dispatch_runs(deployment_id, [(target, (event,))], spec)

    async def dispatch_runs(
        self,
        deployment_id: str,
        runs: Sequence[tuple[str, Sequence[LifecycleEvent]]],
        spec: Mapping[str, Any],
        *,
        step: StepWrite | None = None,
    ) -> None:
        """Queue each target's run of consecutive events (its first event is the one the machine asks for now), all
        in one transaction, which writes ``step`` first (the deployment's step that decided on them; written all the
        same when nothing is queued). A host whose agent has not said it runs events back to back gets the first one
        only.

        Resume-safe as ``dispatch``: a run whose first event has a command already queues nothing, and when that
        command has finished, its stored result is handed over again instead of running it twice."""
        payload = dict(spec)
        queued: list[QueuedRun] = []
        for target, events in runs:
            key = (target, deployment_id, str(events[0]))
            if key in self._queued_ahead:
                self._queued_ahead.discard(key)
                continue  # queued with its run: its agent runs it (or ran it, and its result went to the engine)
            run = [str(e) for e in (events if target in self._runs_ok else events[:1])]
            queued.append((target, deployment_id, run, payload))
        if not queued:
            if step is not None:
                await self.store.enqueue_command_runs([], at=self.clock.now(), step=step)
            return
        # Shielded: a caller cancelled (a runner stepping down) once the store claimed a command for a parked poll
        # must still hand it over (or give it back), else it sits claimed by nobody until the agent's heartbeats
        # show it never arrived (CLAIM_GRACE later).
        await asyncio.shield(self._spawn(self._queue_runs(deployment_id, queued, step)))

    async def _queue_runs(self, deployment_id: str, queued: list[QueuedRun], step: StepWrite | None = None) -> None:
        parked = {target: self._parked_wants_run(target) for target, *_ in queued}
        hand_to = {host: wants_run for host, wants_run in parked.items() if wants_run is not None}
        changes = {host: self._queue_changes.get(host, 0) + 1 for host in hand_to}  # once this queueing is counted
        existing, claimed = await self.store.enqueue_command_runs(
            queued, at=self.clock.now(), hand_to=hand_to, step=step
        )
        for (target, _, queued_events, payload), command in zip(queued, existing, strict=True):
            revision = payload.get("revision") if payload is not None else None
            if isinstance(revision, Mapping) and isinstance(revision.get("sha256"), str):
                self._revision_sent[target] = revision["sha256"]
            if command is None:
                self._queue_changes[target] = self._queue_changes.get(target, 0) + 1
                self._queued_ahead.update((target, deployment_id, event) for event in queued_events[1:])
            elif command["status"] in ("Succeeded", "Failed") and command.get("result"):
                await self._on_result(command, command["result"])
        for host in {target for (target, *_), command in zip(queued, existing, strict=True) if command is None}:
            row = claimed.get(host)
            if row is None:
                self._wake(host)
            elif self._hand(host, row):
                self._note_run(host, row, changes[host])
            else:
                await self.release(host, row["id"])  # its poll ended meanwhile: the next one claims it

    def queued_ahead(self, deployment_id: str, target: str, event: LifecycleEvent) -> bool:
        """Whether ``event`` was queued for ``target`` with an earlier event's run: dispatching it queues nothing."""
        return (target, deployment_id, str(event)) in self._queued_ahead

    async def cancel(self, deployment_id: str) -> None:
        await self.store.cancel_commands(deployment_id, at=self.clock.now())
        # The deployment ends: the engine will not reach the commands its agents ran ahead of it.
        self._queued_ahead = {key for key in self._queued_ahead if key[1] != deployment_id}

    def _run_ended(self, failed: Mapping[str, Any]) -> None:
        """A command failed: the store cancelled the rest of its run, which must be queued anew should the engine
        still ask for it (a failure it may ignore). The failed one itself stays known: its result is delivered."""
        host, deployment_id, event = failed["host"], failed["deployment_id"], failed["event"]
        self._queued_ahead = {key for key in self._queued_ahead if key[:2] != (host, deployment_id) or key[2] == event}

    def is_parked(self, host: str) -> bool:
        """Whether a long poll of ``host`` waits to be handed a command."""
        return self._parked_wants_run(host) is not None

    def _parked_wants_run(self, host: str) -> bool | None:
        """Whether the host's first parked poll asked for runs; None when no poll of it is parked."""
        return next((runs for waiter, runs in self._waiters.get(host, ()) if not waiter.done()), None)

    def _hand(self, host: str, row: dict[str, Any]) -> bool:
        """Give a command claimed for ``host`` to its first parked poll; False when none is parked any more."""
        for waiter, runs in self._waiters.get(host, ()):
            if not waiter.done():
                self._claimed[row["id"]] = self.clock.monotonic()
                self._remember_heads(row)
                waiter.set_result(row if runs else {k: v for k, v in row.items() if k != "then"})
                return True
        return False

    def _wake(self, host: str) -> None:
        """Wake the host's parked polls to claim again."""
        for waiter, _ in self._waiters.get(host, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _queued(self, host: str) -> None:
        """A command may be Pending for ``host`` now (call after the store has it): claim again, wake its poll."""
        self._queue_changes[host] = self._queue_changes.get(host, 0) + 1
        self._wake(host)

    async def _claim(self, host: str, *, with_run: bool) -> dict[str, Any] | None:
        changes = self._queue_changes.get(host, 0)
        if self._empty_at.get(host) == changes:
            return None  # nothing was queued since a claim found the queue empty
        row = await self.store.claim_next_command(host, at=self.clock.now(), with_run=with_run)
        if row is None:
            self._empty_at[host] = changes  # read before the claim: a command queued meanwhile bumped it
        else:
            self._claimed[row["id"]] = self.clock.monotonic()
            self._remember_heads(row)
            self._note_run(host, row, changes)
        return row

    def _note_run(self, host: str, row: Mapping[str, Any], changes: int) -> None:
        """A run was claimed for ``host`` when its queue counter was ``changes``. With nothing else of the host
        Pending (``run_ends_queue``), the queue is empty once the run's last command is claimed too: after a run,
        its agent's next claim (the last result's wait for a command) would find nothing, and it would cost a
        store trip just as the engine queues the next host's run. A counter that moved meanwhile proves nothing."""
        if not row.get("run_ends_queue") or self._queue_changes.get(host, 0) != changes:
            return
        rest = row.get("then") or ()
        if rest:
            self._queue_ends[host] = (int(rest[-1]["id"]), changes)
        else:
            self._empty_at[host] = changes

    def _remember_heads(self, row: Mapping[str, Any]) -> None:
        """Keep the head of a claimed command and of each command of the rest of its run (``then``); the oldest go
        past ``HEADS_KEPT`` (a run cut short by a failure is never reported)."""
        host, deployment_id = row["host"], row["deployment_id"]
        for command in (row, *row.get("then", ())):
            head = {"id": command["id"], "host": host, "deployment_id": deployment_id, "event": command["event"]}
            self._heads[int(command["id"])] = head
        while len(self._heads) > HEADS_KEPT:
            del self._heads[next(iter(self._heads))]

    async def _heard_elsewhere(self, host: str, seen: float) -> float:
        """When ``host``'s agent last talked to any server on this store, on this server's monotonic clock: its
        heartbeats may go to another replica, which records them (``agents.last_seen``, wall clock)."""
        if not self.store.shared:  # one server: it hears every agent itself
            return seen
        agent = await self.store.get_agent(host)
        if agent is None or agent.get("last_seen") is None:
            return seen
        ago = max(0.0, self.clock.now() - float(agent["last_seen"]))
        return max(seen, self.clock.monotonic() - ago)

    def _heard_from(self, host: str) -> None:
        self._heard[host] = self.clock.monotonic()
        self._last_seen[host] = self.clock.now()

    def runs_events(self, host: str) -> bool:
        """Whether the host's agent said (last heartbeat or poll) that it runs consecutive events back to back."""
        return host in self._runs_ok

    def _can_run(self, host: str, runs: bool) -> None:
        """Note whether the host's agent runs consecutive events back to back (what it said last counts)."""
        if runs:
            self._runs_ok.add(host)
        else:
            self._runs_ok.discard(host)

    async def next_command(self, host: str, *, wait: float, runs: bool = False) -> CommandBody | None:
        """Long poll: the host's next command, as soon as there is one, or None after ``wait`` seconds.

        ``runs``: the agent runs consecutive events back to back, and the command carries the rest of its run."""
        self._heard_from(host)
        self._can_run(host, runs)
        deadline = self.clock.monotonic() + wait
        while True:
            changes = self._queue_changes.get(host, 0)
            row = await self._claim(host, with_run=runs)
            if row is not None:
                self._heard_from(host)
                return _command_object(row)
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                self._heard_from(host)
                return None
            if self._queue_changes.get(host, 0) != changes:
                continue  # queued while the claim ran, before this poll was parked to be woken
            row = await self._park(host, runs, remaining)
            if row is not None:
                self._heard_from(host)
                return _command_object(row)

    async def _park(self, host: str, runs: bool, seconds: float) -> dict[str, Any] | None:
        """Wait up to ``seconds`` for a command handed to this poll (returned), or a wake-up (None)."""
        waiter: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        entry = (waiter, runs)
        self._waiters.setdefault(host, []).append(entry)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns normally when the poll is cancelled just as
            # its wake-up arrives, and the cancelled poller would then go on polling for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and (row := waiter.result()) is not None:
                self._spawn(self.release(host, row["id"]))  # handed just as the poll ended: nobody will run it
            raise
        finally:
            waiting = self._waiters.get(host, [])
            waiting.remove(entry)
            if not waiting:
                self._waiters.pop(host, None)
        return waiter.result() if waiter.done() and not waiter.cancelled() else None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def report_result(self, host: str, command_id: int, result: ResultBody, *, then: int | None = None) -> bool:
        """Record an agent's result (a repeat is harmless) and deliver it; True when ``then``, the next command of
        its run, was claimed for the agent in the same transaction (go on), False when it must not run it (stop).

        Reports arriving together are written in one transaction, and delivered in the order they arrived."""
        self._heard_from(host)
        status = "Succeeded" if result.get("status") == "Succeeded" else "Failed"
        command, _, go_on = await self._reports.submit((command_id, host, status, result, then))
        if command is None:
            raise NotFound(f"no command {command_id} for host {host}")
        return go_on

    async def _finish_reports(self, reports: list[CommandReport]) -> list[FinishedReport]:
        """Write a batch of reports in one transaction and note what they change here; the agents are answered
        next, before the results are delivered (an agent going on with its run need not wait for the engine).
        Should the write fail, the agents retry: their results are not recorded."""
        heads = {report[0]: self._heads[report[0]] for report in reports if report[0] in self._heads}
        outcomes = await self.store.finish_commands(reports, at=self.clock.now(), heads=heads)
        for (command_id, host, status, _, then), (command, finished, go_on) in zip(reports, outcomes, strict=True):
            if command is None:
                continue
            self._claimed.pop(command_id, None)
            self._heads.pop(command_id, None)
            if go_on and then is not None:
                self._claimed[then] = self.clock.monotonic()
                ends = self._queue_ends.get(host)
                if ends is not None and ends[0] == then:  # the run's last command: nothing of the host is Pending
                    del self._queue_ends[host]
                    if self._queue_changes.get(host, 0) == ends[1]:
                        self._empty_at[host] = ends[1]
            if finished and status == "Failed":
                self._run_ended(command)
        return outcomes

    async def _deliver_results(self, reports: list[CommandReport], outcomes: list[FinishedReport]) -> None:
        """Deliver the results a batch finished, in the order they arrived. Here, not in the requests: a request
        cut short cannot lose a result."""
        for (command_id, _, _, result, _), (command, finished, _) in zip(reports, outcomes, strict=True):
            if command is None or not finished:
                continue
            try:
                await self._on_result(command, result or {})
            except Exception:
                log.exception("delivering the result of command %s failed", command_id)

    async def release(self, host: str, command_id: int) -> None:
        """The agent that claimed ``command_id`` is gone before it got it: queue it again for the next poll."""
        self._claimed.pop(command_id, None)
        if await self.store.release_command(command_id):
            log.info("requeued command %s: the poll that claimed it was no longer connected", command_id)
            self._queued(host)

    async def heartbeat(self, host: str, info: HeartbeatBody) -> None:
        """Record the heartbeat, then hand out again the host's claims its agent does not name. Heartbeats arriving
        while a batch gathers (``gather_beats``) or is written are written together, each answered once committed."""
        self._heard_from(host)
        self._can_run(host, RUNS_CAPABILITY in (info.get("capabilities") or ()))
        beat: AgentBeat = (host, self._last_seen[host], dict(info.get("tags") or {}), info.get("version"), "online")
        await self._beats.submit((beat, info.get("running_command")))

    async def _record_beats(self, beats: list[tuple[AgentBeat, object]]) -> list[None]:
        """Write a batch of heartbeats in one transaction, then check their hosts' claims (a failure: the agents
        send the next heartbeat all the same)."""
        claims = await self.store.record_heartbeats([beat for beat, _ in beats])
        await self._requeue_lost_claims(claims, {beat[0]: running for beat, running in beats})
        return [None] * len(beats)

    async def _requeue_lost_claims(self, claims: Sequence[Mapping[str, Any]], running: Mapping[str, object]) -> None:
        """A claim the live agent does not know about was lost in transit (e.g. a poll answered to a dead agent).

        Agents name their command in every heartbeat until its result is accepted, so a claim older than
        ``CLAIM_GRACE`` that the agent does not name never reached it and is safe to hand out again. A claim made
        before this server started counts from its start. ``claims``: the InProgress commands of the hosts that
        sent a heartbeat; ``running``: what each of them named.
        """
        now = self.clock.monotonic()
        for command in claims:
            host = command["host"]
            claimed = self._claimed.get(command["id"])
            if claimed is None:  # claimed before this server started, or by another replica: the store says when
                stamped = command.get("claimed_at")
                ago = self.clock.now() - float(stamped) if stamped is not None else now - self._started
                claimed = now - max(0.0, min(ago, now - self._started))
            if command["id"] != running.get(host) and now - claimed > CLAIM_GRACE:
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
        if path is None:
            return None
        # Known here when this server queued the host's command (the usual case: no store round trip on the way to
        # DownloadBundle); asked of the store otherwise (an older deployment, or one another replica queued).
        if self._revision_sent.get(host) != sha256 and not await self.store.host_uses_revision(host, sha256):
            return None
        return path

    # -- lost agents -----------------------------------------------------------------------------------------

    def start_monitor(self, interval: float = 1.0) -> None:
        self._monitor = asyncio.ensure_future(self._watch_heartbeats(interval))
        self._listener = asyncio.ensure_future(self._listen())

    async def stop_monitor(self) -> None:
        for task in (self._monitor, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _listen(self) -> None:
        """Hear commands queued by other replicas (nothing on an unshared store): a poll of that host parked here
        claims at once. Should the listening connection drop and come back, every parked poll claims once.

        Not this replica's own notices: what it queued, it counted (and handed to a parked poll, or woke it) as it
        did. Taken for news, its own notice made the host's next claim after a run, known to find nothing, a round
        trip to the database: one per host and deployment."""
        try:
            await self.store.listen(COMMANDS_QUEUED, self._queued, reopened=self._recheck_parked, own=False)
        except Exception:  # this replica's polls still claim at each poll's end; the log says why pickup is slow
            log.exception("cannot listen for commands queued by other replicas")

    def _recheck_parked(self) -> None:
        for host in list(self._waiters):
            self._queued(host)

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
            for open_command in await self.store.open_commands(status):
                command_id, host = open_command["id"], open_command["host"]
                open_ids.add(command_id)
                noticed = self._noticed.setdefault(command_id, now)
                seen = self._heard.get(host, noticed)
                if now - seen < self.heartbeat_timeout:
                    continue
                seen = await self._heard_elsewhere(host, seen)
                if now - seen < self.heartbeat_timeout:
                    continue
                command = await self.store.get_command(command_id)
                if command is None:
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
                    self._run_ended(command)
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
    """The command as its agent gets it; with ``then`` when it was claimed with its run (for a poll with runs)."""
    body = CommandBody(id=row["id"], deployment_id=row["deployment_id"], event=row["event"], spec=row["payload"])
    if "then" in row:
        body["then"] = [RunStep(id=step["id"], event=step["event"]) for step in row["then"]]
    return body
