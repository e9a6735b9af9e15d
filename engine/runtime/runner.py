"""The async driver of one deployment: feeds the pure machine, persists every transition, executes its commands.

Rules:
1. One inbox, one consumer: every input (agent results, timers, traffic results, stop requests) is queued and the
   machine sees them one at a time, so no two transitions ever interleave.
2. Persist, then act: the machine's new state is written before any of its commands runs. A server killed between
   the two re-executes the commands on resume; every command is idempotent (dispatch skips a command that already
   exists, weights are absolute, timers keep their absolute deadline).
   A *quiet* step acts on nothing, so nothing waits for its write: it changes no milestone (only which lifecycle
   event a host is at) and its only commands are events its agent already has, queued with their run (rule 7).
   Its rows and state go with the next step that writes, or within ``QUIET_WRITE_SECONDS`` of the first step left
   unwritten since the last write (a ``_WriteUnwritten`` in the inbox), and its change is announced then: an agent's
   run costs one write per result (the result's own, which also claims the next event) instead of two. A server
   killed meanwhile resumes from the step before, and the results stored since are handed over again by the
   idempotent dispatch, as when it dies between a result and the step that takes it.
3. The runner never decides anything; it only translates commands to ports and results to events.
4. A traffic shift is done when the router reads its weights back as asked (argo-rollouts' VerifyWeight): until then
   the machine does not hear ``TrafficShifted``, so the step holds; a router that cannot tell is trusted (noted once),
   and weights that stay wrong past ``verify_timeout`` are a ``TrafficShiftFailed``.
5. A shift or a reroute (``ShiftTraffic(rollback=True)``) first cancels the shift in flight, so no late weight lands
   after it; a reroute is read back too: the log says whether the original fleet holds all the traffic again.
6. ``ignore_alarms`` (``--ignore-alarms``) covers the whole deployment: no alarm gates its start or stops it.
7. The agents' fleet gets a step's lifecycle events together, each with the rest of its target's run (the events
   that follow it up to the next server-side step, ``agent_run``): one transaction queues them all, and an agent
   runs a run back to back. The machine still hears each result in order and dispatches each next event as usual;
   that dispatch finds the command already queued (rule 2's idempotent dispatch).
8. A provisioned green fleet (blue/green ``copy_auto_scaling_group``: the router is a ``GreenFleet`` and the spec
   has ``green_fleet``) is made before the machine starts: the copy is named in the stored spec first, then made,
   then its agents must come online within ``agent_wait``; the machine then hears the fleets' names and
   ``Started`` (or ``StartBlocked`` when the copy or its agents failed). A stop request is heard meanwhile. When
   the deployment ends the original is retired (success: terminated or kept alive) or the copy discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from engine.core import log_context
from engine.core.agent_protocol import agent_run
from engine.core.config.model import AlarmConfiguration
from engine.core.early_results import EarlyResults
from engine.core.errors import EngineError, InvalidTransition
from engine.core.events import (
    AlarmFired,
    CancelTargets,
    Command,
    Event,
    EventFailed,
    EventSucceeded,
    Finish,
    InternalError,
    RunEvent,
    ShiftTraffic,
    StartBlocked,
    Started,
    StartRollback,
    StartTimer,
    StopRequested,
    TimerElapsed,
    TrafficShifted,
    TrafficShiftFailed,
)
from engine.core.lifecycle import TRAFFIC_EVENTS
from engine.core.machine import DeploymentMachine
from engine.core.model import DeploymentStatus, ErrorCode, EventStatus, LifecycleEvent, ScriptErrorCode
from engine.core.snapshot import EncodedJson, wind_up_from_json, wind_up_to_json
from engine.core.stages import TrafficStage, WaitStage
from engine.core.step_record import StepRecord
from engine.ports import (
    AlarmSource,
    Clock,
    DeploymentStore,
    GreenFleet,
    HostExecutor,
    HostFleet,
    StepWrite,
    TrafficRouter,
)
from engine.runtime.blueprint import (
    blue_green_roles,
    current_auto_scaling_group,
    green_fleet_name,
    settled_state,
    unsettled_green_fleets,
)

log = logging.getLogger(__name__)

MAX_BATCH = 1000
VERIFY_INTERVAL_SECONDS = 10.0  # argo-rollouts' default retry interval for an unverified weight
VERIFY_TIMEOUT_SECONDS = 600.0  # argo-rollouts' default progressDeadlineSeconds
AGENT_WAIT_SECONDS = 600.0  # how long a provisioned green fleet's agents have to come online (rule 8)
AGENT_POLL_SECONDS = 1.0
QUIET_WRITE_SECONDS = 0.05  # rule 2: the pages and notifiers show progress every 50 ms at most anyway


@dataclass(frozen=True, slots=True)
class _WriteUnwritten:
    """In the inbox: the time a quiet step may stay unwritten is up (rule 2), for the steps left unwritten when
    ``since`` steps had been written. A step written since took them, and the quiet steps after it have time left."""

    since: int


class DeploymentRunner:
    def __init__(
        self,
        deployment_id: str,
        machine: DeploymentMachine,
        *,
        store: DeploymentStore,
        executor: HostExecutor,
        router: TrafficRouter | None,
        group: str,
        spec: Mapping[str, Any],
        clock: Clock,
        on_change: Callable[[str], Awaitable[None]],
        on_rollback: Callable[[str, StartRollback], Awaitable[None]],
        on_finish: Callable[[str], Awaitable[None]],
        on_event_finished: Callable[[str, str, float], None] | None = None,
        timers: dict[str, float] | None = None,
        alarms: AlarmSource | None = None,
        alarm_config: AlarmConfiguration | None = None,
        roles: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
        verify_interval: float = VERIFY_INTERVAL_SECONDS,
        verify_timeout: float = VERIFY_TIMEOUT_SECONDS,
        fleet: HostFleet | None = None,
        agent_wait: float = AGENT_WAIT_SECONDS,
    ) -> None:
        """``fleet``: the agents' fleet when it is the ``executor`` (rule 7); other executors get one event at a
        time."""
        self.deployment_id = deployment_id
        self.machine = machine
        self.store = store
        self.executor = executor
        self.router = router
        self.group = group
        self.spec = dict(spec)
        self.clock = clock
        self._on_change = on_change
        self._on_rollback = on_rollback
        self._on_finish = on_finish
        self._on_event_finished = on_event_finished  # (event, status, seconds) of each result, once
        self.timers: dict[str, float] = dict(timers or {})
        self.alarms = alarms
        self.alarm_config = alarm_config or AlarmConfiguration()
        self.roles = roles  # (original, replacement) of a blue/green deployment
        self.verify_interval = verify_interval
        self.verify_timeout = verify_timeout
        self.fleet = fleet
        self.agent_wait = agent_wait  # rule 8
        self._shifts = 0  # traffic shifts started; a shift overtaken by a later one (a promotion) stays silent
        self._shift_tasks: set[asyncio.Future[None]] = set()
        self._unverifiable_noted = False
        self.inbox: asyncio.Queue[Event | _WriteUnwritten] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._record = StepRecord()  # what the steps wrote, so each writes only what changed
        self._unwritten: list[dict[str, Any]] | None = None  # quiet steps' rows, while there are any (rule 2)
        self._steps_written = 0  # a quiet step's timer is due only while no step has been written since it started
        self._milestones_written: tuple[Any, ...] | None = None  # as of the last step written
        self._early = EarlyResults()  # results that came before the one they follow (engine/core/early_results.py)
        self.finished = asyncio.Event()

    # -- inputs ----------------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Its final status is stored: what is left is its wind-up, which no event changes."""
        return self.machine.state.status.is_final

    def post(self, event: Event) -> None:
        self.inbox.put_nowait(event)

    async def record_result(self, target: str, event: LifecycleEvent, result: Mapping[str, Any]) -> None:
        """An agent (or adapter) finished ``event`` on ``target``: keep its details, then tell the machine.

        The details are written with the step that takes the result (one transaction with the new state), before
        anything acts on it. Should the server die first, the result is still in ``host_commands``, and resuming
        re-dispatches the event, which hands that stored result over again instead of running it twice.
        """
        succeeded = result.get("status") == "Succeeded"
        error_code = int(result.get("error_code", 0 if succeeded else ScriptErrorCode.UNKNOWN_ERROR))
        message = str(result.get("message", ""))
        status = EventStatus.SUCCEEDED if succeeded else EventStatus.FAILED
        ended_at = float(result.get("ended_at") or self.clock.now())
        fields = {
            "status": str(status),
            "started_at": result.get("started_at"),
            "ended_at": ended_at,
            "error_code": error_code,
            "message": message,
            "log_tail": str(result.get("log_tail", "")),
        }
        details = {k: v for k, v in fields.items() if v is not None}
        first, marked_at = self._record.take_result(target, str(event), details)
        if first and self._on_event_finished is not None:
            # The agent's own start, else when this server marked it in progress (as the deployment's document does)
            started = result.get("started_at")
            started = float(started) if started is not None else marked_at
            if started is not None:
                self._on_event_finished(str(event), str(status), max(0.0, ended_at - started))
        if self.machine.state.status.is_final:  # no step will come to write them: a late result is kept all the same
            await self.store.save_progress(self.deployment_id, self._record.take_details())
        if succeeded:
            self.post(EventSucceeded(target, event))
        else:
            self.post(EventFailed(target, event, error_code, message))

    def has_outcome(self, target: str, event: str) -> bool:
        """Whether the machine already knows how ``event`` ended on ``target`` (or will: its result is on the way
        in), so a stored result read again must not be fed to it twice."""
        if self._record.has_taken(target, event):
            return True
        progress = self.machine.state.targets.get(target)
        status = progress.statuses.get(LifecycleEvent(event)) if progress is not None else None
        return status in (EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.SKIPPED)

    # -- the loop --------------------------------------------------------------------------------------------

    async def run(self, *, resume: bool = False, row: Mapping[str, Any] | None = None) -> None:
        """Drive the deployment to its end; each log line of it (and of the tasks it starts) names it. ``row``, its
        stored row when the caller has it, gives the log its environment and creator."""
        if row is None:
            row = await self.store.get_deployment(self.deployment_id)
        with log_context.bind(
            deployment=self.deployment_id,
            application=self.spec.get("application_name"),
            environment=row.get("environment") if row else None,
            deployment_group=self.group,
            actor=row.get("created_by") if row else None,
        ):
            how = "started" if not resume else "resumed to be wound up" if self.ended else "resumed"
            log.info("deployment %s %s", self.deployment_id, how)
            await self._drive(resume=resume, row=row)
            log.info("deployment %s ended: %s", self.deployment_id, self.machine.state.status)

    async def fail_internally(self, message: str) -> bool:
        """End the deployment after ``run`` raised (deploybot failed, not one of its rules): as any failure ends, in
        one step, its failure written with what its end owes, then its unfinished hosts cancelled, traffic back on
        the original fleet, the automatic rollback and the wind-up. False when that did not end it: it had ended
        already (the crash came while its end was being done: that end is stored as owed, and is not decided again),
        or its machine did not take the failure."""
        if self.machine.state.status.is_final:
            return False
        with log_context.bind(deployment=self.deployment_id, deployment_group=self.group):
            await self._step(InternalError(message))
        return self.machine.state.status.is_final

    async def _drive(self, *, resume: bool, row: Mapping[str, Any] | None) -> None:
        try:
            if resume and self.machine.state.status.is_final:
                await self._wind_up(wind_up_from_json((row or {}).get("wind_up") or []))
                return
            starting = not (resume and self.machine.state.status is not DeploymentStatus.CREATED)
            provisions = starting and self._provisions_green_fleet()
            unprepared = None
            if self.roles is not None and self.router is not None and not provisions:
                unprepared = await self._prepare_router(self.roles)
            if not starting:
                if unprepared is not None:  # a shift or BlockTraffic that needs the fleets fails with its own reason
                    log.warning("deployment %s resumed: %s", self.deployment_id, unprepared)
                await self._resume(row)
            else:
                blocked = await self._alarms_before_start()
                start: Event
                if blocked:
                    start = StartBlocked(ErrorCode.ALARM_ACTIVE, blocked)
                elif unprepared is not None:
                    start = StartBlocked(ErrorCode.INTERNAL_ERROR, unprepared)
                elif provisions:
                    start = await self._provision_green_fleet()
                else:
                    start = Started()
                await self._step(start)
            if self.alarms is not None and self.spec.get("ignore_alarms"):
                await self._log("alarms.ignored", reason="deployed with --ignore-alarms: no alarm is watched")
            elif self.alarms is not None:
                self._spawn(self._watch_alarms())
            while not self.machine.state.status.is_final:
                batch = [await self.inbox.get()]
                while not self.inbox.empty() and len(batch) < MAX_BATCH:
                    batch.append(self.inbox.get_nowait())
                await self._step(*batch)
        finally:
            for task in self._tasks:
                task.cancel()
            self.finished.set()

    async def _wind_up(self, owed: list[Command]) -> None:
        """Finish the end of a deployment that was stored final but whose server stopped before it was wound up:
        each of its end's commands again (each is idempotent: a cancel, a reroute, a rollback that exists already is
        not made again), then the wind-up itself (``Finish``)."""
        state = self.machine.state
        if not any(isinstance(command, Finish) for command in owed):
            owed = [*owed, Finish(state.status, state.error_code, state.message)]
        if self.roles is not None and self.router is not None and any(isinstance(c, ShiftTraffic) for c in owed):
            unprepared = await self._prepare_router(self.roles)
            if unprepared is not None:
                log.warning("deployment %s is wound up: %s", self.deployment_id, unprepared)
        await self._execute_all(owed)

    async def _prepare_router(self, roles: tuple[tuple[str, ...], tuple[str, ...]]) -> str | None:
        """Name the two fleets to the router (an ELBv2 router registers each side in its target group): None when
        done, else why not. A balancer that cannot be reached is a deployment failure with its reason, not a crash."""
        assert self.router is not None
        try:
            await self.router.prepare(self.group, *roles)
        except EngineError as exc:
            return f"the traffic router could not be given the original and replacement fleets: {exc}"
        return None

    async def _step(self, *inputs: Event | _WriteUnwritten) -> None:
        """Feed the machine every event that is waiting, persist the result once, then act on it (rule 2).

        Batching is what keeps a 200-host deployment cheap: results that arrive together cost one write.
        """
        events = [event for event in inputs if not isinstance(event, _WriteUnwritten)]
        # What quiet steps left unwritten is written by this one, quiet or not, when their time is up; not when an
        # earlier timer's is (steps written since then took it): that would write steps taken a moment ago.
        due = any(isinstance(given, _WriteUnwritten) and given.since == self._steps_written for given in inputs)
        commands: list[Command] = []
        accepted = False
        for event in events:
            if self.machine.state.status.is_final:
                log.info("deployment %s ended; ignored %s", self.deployment_id, type(event).__name__)
                continue
            try:
                commands += self.machine.send(event)
                accepted = True
            except InvalidTransition as exc:
                result = event if isinstance(event, EventSucceeded | EventFailed) else None
                if result is not None and (waits_for := self._early.hold(self.machine.state, result)) is not None:
                    log.info(
                        "deployment %s: the result of %s on %s came before the one of %s; it is applied after it",
                        self.deployment_id,
                        result.event,
                        result.target,
                        waits_for,
                    )
                else:
                    log.info("deployment %s ignored %s: %s", self.deployment_id, type(event).__name__, exc)
                continue
            if self._early:
                commands += self._early.feed_due(self.machine)
        if accepted and not due and self._is_quiet(commands):
            if self._unwritten is None:  # the first step left unwritten since the last write: its time starts now
                self._unwritten = []
                self._spawn(self._write_later(self._steps_written))
            self._unwritten += self._record.take_details() + self._record.rows(self.machine.state, self.clock.now())
            await self._execute_all(commands)
        elif accepted or (due and self._unwritten is not None):
            await self._execute_all(commands, step=self._step_write(commands))
            await self._on_change(self.deployment_id)
        elif self._unwritten is not None:  # results the machine had no use for, while steps wait to be written
            self._unwritten += self._record.take_details()
        elif self._record.has_details:  # results the machine had no use for (it ended): kept with their details
            await self.store.save_progress(self.deployment_id, self._record.take_details())

    def _is_quiet(self, commands: list[Command]) -> bool:
        """Whether the step just taken need not be written now (rule 2): the same milestones as the last step
        written, and no command but events already queued with their agent's run."""
        fleet = self.fleet
        if fleet is None or self.machine.state.status.is_final or self.milestones() != self._milestones_written:
            return False
        return all(
            self._for_the_fleet(command) and fleet.queued_ahead(self.deployment_id, command.target, command.event)
            for command in commands
        )

    async def _write_later(self, since: int) -> None:
        await self.clock.sleep(QUIET_WRITE_SECONDS)
        self.inbox.put_nowait(_WriteUnwritten(since))

    def _step_write(self, commands: list[Command]) -> StepWrite:
        """What this step writes before any of its ``commands`` is executed (rule 2)."""
        state = self.machine.state
        # The rows first: the start of each event marked in progress now is noted there, and the snapshot keeps it.
        rows = (self._unwritten or []) + self._record.take_details() + self._record.rows(state, self.clock.now())
        self._unwritten = None
        self._steps_written += 1  # a timer started for what this writes is due no more
        self._milestones_written = self.milestones()
        fields: dict[str, Any] = {"status": str(state.status), "state": self.snapshot()}
        if state.status.is_final:  # the outcome lands in one write, never a "Failed" without its reason
            fields.update(
                ended_at=self.clock.now(),
                error_code=str(state.error_code) if state.error_code else None,
                error_message=state.message or None,
                # What the end still owes (hosts cancelled, traffic back, a rollback, the wind-up): owed from this
                # write on, so a server that stops before it is done does it when it resumes the deployment.
                wind_up=wind_up_to_json(commands),
            )
        return StepWrite(self.deployment_id, rows, fields)

    def milestones(self) -> tuple[Any, ...]:
        """What notifiers react to, as a comparable value: everything but which lifecycle event each host is at."""
        state = self.machine.state
        hosts = tuple(progress.status for progress in state.targets.values())
        return (
            state.status,
            state.stage_index,
            state.traffic_step,
            state.traffic_percent,
            state.timer,
            state.paused,
            state.error_code,
            state.message,
            hosts,
        )

    def snapshot(self) -> EncodedJson:
        """What is persisted of the deployment: its stages, its machine's state, timers and spec, as JSON text."""
        return self._record.snapshot(self.machine.stages, self.machine.state, self.timers, self.spec)

    # -- commands --------------------------------------------------------------------------------------------

    async def _execute_all(self, commands: list[Command], *, step: StepWrite | None = None) -> None:
        """Execute in order; consecutive lifecycle events for the agents go to the fleet together (rule 7). ``step``
        is written first: in the transaction that queues the first runs when the commands start with them (one trip
        to the store, not two), else alone."""
        if step is not None and not (commands and self._for_the_fleet(commands[0])):
            await self.store.save_progress(step.deployment_id, step.rows, **step.fields)
            step = None
        events: list[RunEvent] = []
        for command in commands:
            if self._for_the_fleet(command):
                events.append(command)
                continue
            await self._dispatch_runs(events, step)
            step, events = None, []
            await self._execute(command)
        await self._dispatch_runs(events, step)

    def _for_the_fleet(self, command: Command) -> TypeGuard[RunEvent]:
        """A lifecycle event the agents run (not a traffic event, which the router does)."""
        return self.fleet is not None and isinstance(command, RunEvent) and command.event not in TRAFFIC_EVENTS

    async def _dispatch_runs(self, events: list[RunEvent], step: StepWrite | None) -> None:
        """Queue ``events``' runs, ``step`` written first in that transaction."""
        if not events or self.fleet is None:
            return
        runs = [(event.target, self._run_from(event)) for event in events]
        await self.fleet.dispatch_runs(self.deployment_id, runs, self.spec, step=step)

    def _run_from(self, command: RunEvent) -> tuple[LifecycleEvent, ...]:
        """The target's events from ``command.event`` up to the next server-side step (just it, should the machine's
        record of the target not show it as the current event)."""
        progress = self.machine.state.targets.get(command.target)
        # The machine may have moved past it in the same step (results of a run arriving together), even to the end.
        if progress is None or progress.position >= len(progress.events) or progress.current != command.event:
            return (command.event,)
        return agent_run(progress.events, progress.position)

    async def _execute(self, command: Command) -> None:
        if isinstance(command, RunEvent):
            if command.event in TRAFFIC_EVENTS:
                self._spawn(self._route_target(command.target, command.event))
            else:
                await self.executor.dispatch(self.deployment_id, command.target, command.event, self.spec)
        elif isinstance(command, CancelTargets):
            await self.executor.cancel(self.deployment_id)
        elif isinstance(command, ShiftTraffic) and command.rollback:
            await self._reroute(command.percent)
        elif isinstance(command, ShiftTraffic):
            self._spawn_shift(command.percent)
        elif isinstance(command, StartTimer):
            self.timers[command.name] = self.clock.now() + command.seconds
            await self.store.update_deployment(self.deployment_id, state=self.snapshot())
            self._arm(command.name)
        elif isinstance(command, StartRollback):
            await self._on_rollback(self.deployment_id, command)
        elif isinstance(command, Finish):
            await self._settle_green_fleet(command.status)
            await self._on_finish(self.deployment_id)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_shift(self, percent: int) -> None:
        """A shift overtakes any still in flight (a promotion during a health wait): the older one must not land
        its weights after this one."""
        for older in self._shift_tasks:
            older.cancel()
        task = self._spawn(self._shift(percent))
        self._shift_tasks.add(task)
        task.add_done_callback(self._shift_tasks.discard)

    def _arm(self, name: str) -> None:
        async def fire() -> None:
            delay = self.timers[name] - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            self.timers.pop(name, None)
            self.post(TimerElapsed(name))

        self._spawn(fire())

    async def _shift(self, percent: int) -> None:
        self._shifts += 1
        shift = self._shifts
        if self.router is not None:
            try:
                await self.router.set_weight(self.group, percent)
            except EngineError as exc:
                self.post(TrafficShiftFailed(str(exc)))
                return
            failure = await self._verify(percent, shift)
            if shift != self._shifts:
                return  # a later shift took over: it reports for itself, and these weights are gone
            if failure is not None:
                self.post(TrafficShiftFailed(failure))
                return
        # one entry per completed shift: the deployment page draws weights over time from these
        await self._log("traffic.shifted", percent=percent)
        self.post(TrafficShifted(percent))

    async def _verify(self, percent: int, shift: int) -> str | None:
        """Read the weights back until they show ``percent`` (rule 4): None once the step may go on, else why the
        shift failed. Entries never carry ``percent`` for unverified weights: the page draws those as traffic."""
        assert self.router is not None
        started, checks, holding = self.clock.monotonic(), 0, False
        while shift == self._shifts:
            checks += 1
            problem = f"the router does not show {percent}% of the traffic on the replacement"
            try:
                verified = await self.router.verify_weight(self.group, percent)
            except EngineError as exc:
                verified, problem = False, f"the router's weights could not be read back ({exc})"
            if verified is None:
                await self._note_unverifiable(percent)
                return None
            elapsed = self.clock.monotonic() - started
            if verified:
                if holding:
                    await self._log("traffic.verified", wanted_percent=percent, checks=checks, seconds=elapsed)
                return None
            if elapsed >= self.verify_timeout:
                return f"{problem} {elapsed:g} s after the shift ({checks} checks)"
            if not holding:
                holding = True
                reason = (
                    f"{problem} yet: the traffic step holds and checks again every {self.verify_interval:g} s "
                    f"for up to {self.verify_timeout:g} s"
                )
                log.warning("deployment %s: %s", self.deployment_id, reason)
                await self._log("traffic.verify_holding", wanted_percent=percent, reason=reason)
                await self._on_change(self.deployment_id)
            await self.clock.sleep(min(self.verify_interval, self.verify_timeout - elapsed))
        return None

    async def _note_unverifiable(self, percent: int) -> None:
        """A router that cannot read its weights back is trusted, and the deployment's log says so once."""
        if self._unverifiable_noted:
            return
        self._unverifiable_noted = True
        reason = "the router cannot read its weights back, so traffic shifts go on unverified"
        log.info("deployment %s: %s", self.deployment_id, reason)
        await self._log("traffic.unverified", wanted_percent=percent, reason=reason)

    async def _log(self, kind: str, **data: Any) -> None:
        await self.store.append_log(
            kind, at=self.clock.now(), actor="deploybot", deployment_id=self.deployment_id, data=data
        )

    async def _reroute(self, percent: int) -> None:
        """Rollback of a traffic shift: done inline, before the deployment is finished, timed, then read back
        (rule 5). A shift still in flight — waiting for health, verifying — is cancelled first."""
        if self.router is None:
            return
        self._shifts += 1  # any verification loop of an earlier shift stops here
        in_flight = list(self._shift_tasks)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        started = self.clock.monotonic()
        try:  # no health wait: the original fleet was serving a moment ago, and speed is the point
            await self.router.set_weight(self.group, percent, wait=False)
        except EngineError as exc:
            log.error("deployment %s: reroute to the original fleet failed: %s", self.deployment_id, exc)
            await self._log("traffic.reroute_failed", error=str(exc))
            return
        elapsed_ms = round((self.clock.monotonic() - started) * 1000, 1)
        try:
            verified = await self.router.verify_weight(self.group, percent)
        except EngineError:
            verified = False
        await self._log("traffic.rerouted", percent=percent, milliseconds=elapsed_ms, verified=verified)
        if verified is False:
            log.error("deployment %s: the router does not show the reroute to %d%%", self.deployment_id, percent)

    async def _route_target(self, target: str, event: LifecycleEvent) -> None:
        started = self.clock.now()
        result: dict[str, Any] = {"status": "Succeeded", "started_at": started}
        if self.router is not None:
            try:
                if event is LifecycleEvent.BLOCK_TRAFFIC:
                    await self.router.block(self.group, target)
                else:
                    await self.router.allow(self.group, target)
            except EngineError as exc:
                result = {
                    "status": "Failed",
                    "error_code": int(ScriptErrorCode.UNKNOWN_ERROR),
                    "message": str(exc),
                    "started_at": started,
                }
        result["ended_at"] = self.clock.now()
        await self.record_result(target, event, result)

    # -- a provisioned green fleet (rule 8) -------------------------------------------------------------------

    def _provisions_green_fleet(self) -> bool:
        """Whether this deployment makes its green fleet (a rollback's stages shift no traffic: it makes none)."""
        return "green_fleet" in self.spec and blue_green_roles(self.machine.stages) is not None

    def _green_fleet(self) -> GreenFleet | None:
        """The router, when it provisions this deployment's green fleet."""
        wanted = self._provisions_green_fleet()
        return self.router if wanted and isinstance(self.router, GreenFleet) else None

    async def _provision_green_fleet(self) -> Event:
        """Copy the group's Auto Scaling group and wait for its agents, hearing a stop request meanwhile; the event
        the machine starts with (``Started`` with both fleets named, or why it cannot start)."""
        provisioning = asyncio.ensure_future(self._provision())
        held: list[Event] = []
        try:
            while not provisioning.done():
                getting = asyncio.ensure_future(self.inbox.get())
                await asyncio.wait({provisioning, getting}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    continue
                event = getting.result()
                if isinstance(event, _WriteUnwritten):  # no step has been taken yet: nothing is unwritten
                    continue
                if isinstance(event, StopRequested):
                    provisioning.cancel()
                    await asyncio.gather(provisioning, return_exceptions=True)
                    return event
                held.append(event)
            return provisioning.result()
        finally:
            for event in held:
                self.post(event)

    async def _provision(self) -> Event:
        fleet = self._green_fleet()
        if fleet is None:  # e.g. a server started without the group's ELBv2 router
            return StartBlocked(ErrorCode.INTERNAL_ERROR, f"{self.group} has no router that can copy its fleet")
        for row in await unsettled_green_fleets(self.store, self.group):  # left by a server that died, or failed
            state = row["state"]
            try:
                await self._settle(fleet, state["spec"]["green_fleet"], row["status"] == DeploymentStatus.SUCCEEDED)
            except EngineError as exc:  # still unsettled: the next deployment tries again
                await self._log("green_fleet.settle_failed", deployment=row["id"], error=str(exc))
                continue
            await self.store.update_deployment(row["id"], state=settled_state(state))
        plan = self.spec["green_fleet"] = dict(self.spec["green_fleet"])
        if not plan.get("copy"):
            plan["source"] = await current_auto_scaling_group(self.store, self.group, str(plan["auto_scaling_group"]))
            plan["copy"] = green_fleet_name(self.group, self.deployment_id)
            await self.store.update_deployment(self.deployment_id, state=self.snapshot())  # named before it exists
        await self._log("green_fleet.provisioning", source=plan["source"], copy=plan["copy"])
        await self._on_change(self.deployment_id)
        try:
            original, replacement = await fleet.provision(self.group, plan["source"], plan["copy"])
        except EngineError as exc:
            return StartBlocked(ErrorCode.INTERNAL_ERROR, f"the green fleet could not be provisioned: {exc}")
        await self._log("green_fleet.provisioned", copy=plan["copy"], instances=list(replacement))
        silent = await self._agents_online(replacement)
        if silent:
            return StartBlocked(
                ErrorCode.AGENT_ISSUE,
                f"the agents of {', '.join(silent)} ({plan['copy']}) did not come online within {self.agent_wait:g} s",
            )
        try:
            await fleet.prepare(self.group, original, replacement)  # each side in its own target group
        except EngineError as exc:
            return StartBlocked(ErrorCode.INTERNAL_ERROR, f"the green fleet could not be registered: {exc}")
        self.machine.name_fleets(original, replacement)
        self.roles = (original, replacement)
        return Started()

    async def _agents_online(self, hosts: tuple[str, ...]) -> tuple[str, ...]:
        """Wait until every host's agent has talked to the server; the ones still silent after ``agent_wait``."""
        started = self.clock.monotonic()
        while True:
            silent = tuple(h for h in hosts if self.fleet is not None and self.fleet.last_seen(h) is None)
            if not silent or self.clock.monotonic() - started >= self.agent_wait:
                return silent
            await self.clock.sleep(AGENT_POLL_SECONDS)

    async def _settle_green_fleet(self, status: DeploymentStatus) -> None:
        """The deployment ended: retire the original Auto Scaling group, or discard the copy (rule 8), then mark it
        settled. Failures are logged, never raised: the deployment's outcome is already stored; the group's next
        deployment settles what is left unsettled."""
        fleet = self._green_fleet()
        plan = self.spec.get("green_fleet") or {}
        if fleet is None or not plan.get("copy"):
            return
        try:
            await self._settle(fleet, plan, status is DeploymentStatus.SUCCEEDED)
        except EngineError as exc:
            log.error("deployment %s: green fleet not settled: %s", self.deployment_id, exc)
            await self._log("green_fleet.settle_failed", error=str(exc))
            return
        self.spec["green_fleet"] = {**plan, "settled": True}
        await self.store.update_deployment(self.deployment_id, state=self.snapshot())

    async def _settle(self, fleet: GreenFleet, plan: Mapping[str, Any], succeeded: bool) -> None:
        if succeeded:
            terminate = bool(plan.get("terminate"))
            await fleet.retire(self.group, plan["source"], terminate=terminate)
            await self._log("green_fleet.retired", original=plan["source"], copy=plan["copy"], terminated=terminate)
        else:
            await fleet.discard(self.group, plan["copy"])
            await self._log("green_fleet.discarded", copy=plan["copy"])

    # -- alarms ----------------------------------------------------------------------------------------------

    async def _alarms_before_start(self) -> str | None:
        """An alarm already firing blocks the start instead of rolling back at once (no rollback loop)."""
        if self.alarms is None or self.spec.get("ignore_alarms"):
            return None
        try:
            firing = await self.alarms.firing(self.alarm_config.alarms)
        except Exception as exc:  # an adapter bug must not look like "no alarm firing"
            log.warning("deployment %s: alarms unreadable before start: %s", self.deployment_id, exc)
            if self.alarm_config.ignore_poll_alarm_failure:
                return None
            # Reference §7.2: alarms that cannot be read stop the deployment unless ignore_poll_alarm_failure.
            return (
                f"the alarms could not be read before the deployment started ({exc}); nothing was changed "
                "(set ignore_poll_alarm_failure, or deploy again with --ignore-alarms to go ahead anyway)"
            )
        if not firing:
            return None
        return (
            f"alarm {', '.join(firing)} was already firing before the deployment started; nothing was changed "
            "(deploy again with --ignore-alarms to go ahead anyway)"
        )

    async def _watch_alarms(self) -> None:
        """Poll the group's alarms for as long as the deployment runs; the first one that fires stops it."""
        while not self.machine.state.status.is_final:
            await self.clock.sleep(self.alarm_config.poll_seconds)
            if self.alarms is None or self.machine.state.status.is_final:
                return
            try:
                firing = await self.alarms.firing(self.alarm_config.alarms)
            except Exception as exc:  # any failure to read is "cannot tell", never a silently dead watcher
                if self.alarm_config.ignore_poll_alarm_failure:
                    log.info("deployment %s: alarms unreadable, going on as configured: %s", self.deployment_id, exc)
                    continue
                firing = (f"(alarm state unreadable: {exc})",)
            if firing:
                details = getattr(self.alarms, "details", {})
                self.post(AlarmFired(tuple(_described(name, details.get(name, ())) for name in firing)))
                return

    # -- resume after a restart ------------------------------------------------------------------------------

    def _traffic_started(self) -> bool:
        index = self.machine.state.stage_index
        return any(isinstance(s, TrafficStage) for s in self.machine.stages[: index + 1]) and (
            self.machine.state.traffic_step >= 0 or not isinstance(self.machine.stage, TrafficStage)
        )

    async def _resume(self, row: Mapping[str, Any] | None) -> None:
        """Re-issue whatever the persisted state is waiting on (rule 2: every re-issue is idempotent)."""
        state = self.machine.state
        persisted = ((row or {}).get("state") or {}).get("machine") or {}
        self._record.seed(state, persisted.get("targets"))  # as persisted: written already
        await self._execute_all(
            [
                RunEvent(target, progress.current)
                for target, progress in state.targets.items()
                if progress.status is EventStatus.IN_PROGRESS
            ]
        )
        stage = self.machine.stage
        for name in list(self.timers):
            if name == state.timer:
                self._arm(name)
            else:
                self.timers.pop(name)
        if self.router is not None and self._traffic_started():
            try:  # the balancer may have been restarted: put the weights back where the machine left them
                await self.router.set_weight(self.group, state.traffic_percent)
            except EngineError as exc:
                log.warning("deployment %s: could not restore traffic weights: %s", self.deployment_id, exc)
        if isinstance(stage, TrafficStage) and state.timer is None and not state.paused:
            with contextlib.suppress(IndexError):
                self._spawn_shift(stage.steps[state.traffic_step].percent)
        if isinstance(stage, WaitStage) and state.timer and state.timer not in self.timers:
            self.post(TimerElapsed(state.timer))
        await self._on_change(self.deployment_id)


def _described(name: str, details: tuple[str, ...]) -> str:
    return f"{name} ({'; '.join(details)})" if details else name
