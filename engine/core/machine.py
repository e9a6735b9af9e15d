"""The deployment state machine: events in, commands out. Pure: no asyncio, no clock, no I/O.

Theory of operation
-------------------
A deployment is a list of stages (engine/core/stages.py). The machine walks them in order:

- In a ``TargetStage`` targets start in *waves*. A wave is as many untried targets as can go offline without the
  healthy count dropping below the stage's minimum (CodeDeploy's minimum-healthy-hosts rule, reference §6.1):
  ``capacity = (n - failed) - minimum``. Each target runs its events one after another: the machine emits
  ``RunEvent`` and waits for ``EventSucceeded`` / ``EventFailed``. The next wave starts when the wave is done, so
  with nothing failing the waves are exactly the plan's batches.
- The stop rule: as soon as untried targets remain and ``(n - failed) - 1 < minimum`` no further target can ever be
  taken offline, so the deployment fails at once (``HEALTH_CONSTRAINTS``). When every target was tried, it succeeds
  if at least ``max(minimum, 1)`` succeeded — the OneAtATime last-host exception falls out of this.
- In a ``TrafficStage`` the machine emits ``ShiftTraffic(percent)``, waits for ``TrafficShifted``, then
  ``StartTimer`` for the step's wait and moves on at ``TimerElapsed``.
- In a ``WaitStage`` it waits for its timer or ``ContinueRequested``.

Rules:
1. Everything that decides what happens next lives here. The runner only executes commands and reports results.
2. Time is data: waits are ``StartTimer`` commands; the runner answers with ``TimerElapsed(name)``. A timer whose
   name is not the one the machine is waiting for is stale (a resumed runner may deliver it) and is ignored.
3. Illegal input raises ``InvalidTransition``; the state is unchanged when it does.
4. A rollback is never decided by a rollback deployment (no rollback loops). When traffic already moved to a
   replacement fleet, rollback is a reroute (``ShiftTraffic(0)``), not a redeploy.
5. Weights are always taken off a deployment that did not succeed, whatever its rollback setting: any ending other
   than success, from the first shift on — and for a server blue/green deployment from its start — reroutes
   (``ShiftTraffic(0, rollback=True)``) while the original fleet can still take the traffic back, leaving it exactly
   where it was before the deployment. A rollback of such a deployment is then that reroute (``rerouted=True``):
   nothing is reinstalled on hosts that are serving.

The transition table ``_TRANSITIONS`` maps (status, event type) to a handler; anything not in it is illegal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.core.configs import minimum_healthy_count
from engine.core.errors import InvalidTransition
from engine.core.events import (
    AlarmFired,
    CancelTargets,
    Command,
    ContinueRequested,
    Event,
    EventFailed,
    EventSucceeded,
    Finish,
    InternalError,
    PauseRequested,
    PromoteRequested,
    ResumeRequested,
    RunEvent,
    ShiftTraffic,
    StartBlocked,
    Started,
    StartRollback,
    StartTimer,
    StopRequested,
    TargetLost,
    TimerElapsed,
    TrafficShifted,
    TrafficShiftFailed,
)
from engine.core.model import (
    AutoRollback,
    AutoRollbackEvent,
    DeploymentStatus,
    ErrorCode,
    EventStatus,
    LifecycleEvent,
    Platform,
    ScriptErrorCode,
)
from engine.core.stages import (
    Stage,
    TargetStage,
    TrafficStage,
    WaitKind,
    WaitStage,
    has_original_fleet,
    with_fleets,
)

# -- state --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TargetProgress:
    events: list[LifecycleEvent]
    statuses: dict[LifecycleEvent, EventStatus]
    status: EventStatus = EventStatus.PENDING
    position: int = 0

    @classmethod
    def fresh(cls, events: tuple[LifecycleEvent, ...]) -> TargetProgress:
        return cls(list(events), {e: EventStatus.PENDING for e in events})

    @property
    def current(self) -> LifecycleEvent:
        return self.events[self.position]


@dataclass(slots=True)
class DeploymentState:
    status: DeploymentStatus = DeploymentStatus.CREATED
    stage_index: int = -1
    targets: dict[str, TargetProgress] = field(default_factory=dict)
    minimum_healthy: int = 0
    traffic_step: int = -1
    traffic_percent: int = 0
    timer: str | None = None
    paused: bool = False
    error_code: ErrorCode | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class MachineOptions:
    auto_rollback: AutoRollback = field(default_factory=AutoRollback)
    ignore_application_stop_failures: bool = False
    is_rollback: bool = False
    platform: Platform = Platform.SERVER  # only for the words: what the deployment's targets are called


# What each platform's targets are called in messages (one, several): a Lambda or ECS deployment has one target.
_TARGET_WORDS = {
    Platform.SERVER: ("host", "hosts"),
    Platform.LAMBDA: ("Lambda function", "Lambda functions"),
    Platform.ECS: ("ECS task set", "ECS task sets"),
}


_STOP_FAILURE_TOLERANT = frozenset(
    {
        LifecycleEvent.APPLICATION_STOP,
        LifecycleEvent.BEFORE_BLOCK_TRAFFIC,
        LifecycleEvent.AFTER_BLOCK_TRAFFIC,
    }
)

_ACTIVE = (DeploymentStatus.IN_PROGRESS, DeploymentStatus.READY, DeploymentStatus.BAKING)


class DeploymentMachine:
    """Drive one deployment through its stages; see the module docstring for the rules."""

    def __init__(
        self,
        stages: tuple[Stage, ...],
        options: MachineOptions = MachineOptions(),
        state: DeploymentState | None = None,
    ) -> None:
        self.stages = stages
        self.options = options
        self.state = state if state is not None else DeploymentState()
        self._in_flight_hint: str | None = None  # a target seen in flight last time (a cache, not state)

    # -- the one entry point ---------------------------------------------------------------------------------

    def send(self, event: Event) -> list[Command]:
        handler = _TRANSITIONS.get(self.state.status, {}).get(type(event))
        if handler is None:
            raise InvalidTransition(str(self.state.status), type(event).__name__)
        return handler(self, event)

    def name_fleets(self, original: tuple[str, ...], replacement: tuple[str, ...]) -> None:
        """Name a provisioned green fleet and the original it replaces (blue/green copy_auto_scaling_group): they
        exist only once the deployment runs, so they are named just before it starts, never after."""
        if self.state.status is not DeploymentStatus.CREATED:
            raise InvalidTransition(str(self.state.status), "name_fleets")
        self.stages = with_fleets(self.stages, original, replacement)

    @property
    def stage(self) -> Stage | None:
        i = self.state.stage_index
        return self.stages[i] if 0 <= i < len(self.stages) else None

    # -- handlers --------------------------------------------------------------------------------------------

    def _on_started(self, _: Started) -> list[Command]:
        self.state.status = DeploymentStatus.IN_PROGRESS
        return self._enter_stage(0)

    def _on_event_succeeded(self, ev: EventSucceeded) -> list[Command]:
        progress = self._running_target(ev.target, ev.event)
        progress.statuses[ev.event] = EventStatus.SUCCEEDED
        return self._advance_target(ev.target, progress)

    def _on_event_failed(self, ev: EventFailed) -> list[Command]:
        progress = self._running_target(ev.target, ev.event)
        progress.statuses[ev.event] = EventStatus.FAILED
        if ev.event in _STOP_FAILURE_TOLERANT and self.options.ignore_application_stop_failures:
            return self._advance_target(ev.target, progress)
        for later in progress.events[progress.position + 1 :]:
            progress.statuses[later] = EventStatus.SKIPPED
        progress.status = EventStatus.FAILED
        detail = f"{ev.event} failed on {ev.target}" + (f": {ev.message}" if ev.message else "")
        return self._after_target_failed(detail)

    def _on_target_lost(self, ev: TargetLost) -> list[Command]:
        progress = self.state.targets.get(ev.target)
        if progress is None or progress.status is not EventStatus.IN_PROGRESS:
            return []  # a host that is not working for us right now may come and go freely
        return self._on_event_failed(EventFailed(ev.target, progress.current, ScriptErrorCode.UNKNOWN_ERROR, ev.reason))

    def _on_traffic_shifted(self, ev: TrafficShifted) -> list[Command]:
        stage = self.stage
        if not isinstance(stage, TrafficStage) or self.state.traffic_step < 0:
            raise InvalidTransition(str(self.state.status), "TrafficShifted")
        expected = stage.steps[self.state.traffic_step].percent
        if ev.percent != expected:
            raise InvalidTransition(str(self.state.status), f"TrafficShifted({ev.percent} != {expected})")
        self.state.traffic_percent = ev.percent
        wait = stage.steps[self.state.traffic_step].wait_seconds
        if wait > 0 and self.state.traffic_step < len(stage.steps) - 1:
            return self._start_timer(f"{self.state.stage_index}:traffic:{self.state.traffic_step}", wait)
        return self._next_traffic_step()

    def _on_traffic_shift_failed(self, ev: TrafficShiftFailed) -> list[Command]:
        return self._fail(ErrorCode.INTERNAL_ERROR, f"traffic shift failed: {ev.message}")

    def _on_timer_elapsed(self, ev: TimerElapsed) -> list[Command]:
        if ev.name != self.state.timer:
            return []  # stale (rule 2)
        self.state.timer = None
        stage = self.stage
        if isinstance(stage, TrafficStage):
            return self._next_traffic_step()
        if isinstance(stage, WaitStage):
            if stage.stop_on_timeout:
                return self._stop(
                    ErrorCode.TIMEOUT, "nobody continued the deployment before the ready wait ended", False
                )
            return self._enter_stage(self.state.stage_index + 1)
        return []

    def _on_start_blocked(self, ev: StartBlocked) -> list[Command]:
        self.state.error_code, self.state.message = ev.code, ev.message
        return self._finish(DeploymentStatus.STOPPED)

    def _on_internal_error(self, ev: InternalError) -> list[Command]:
        started = self.state.status is not DeploymentStatus.CREATED  # before it, nothing changed: no rollback
        return self._fail(ErrorCode.INTERNAL_ERROR, ev.message, rollback=None if started else False)

    def _on_stop_requested(self, ev: StopRequested) -> list[Command]:
        who = f" by {ev.actor}" if ev.actor else ""
        return self._stop(ErrorCode.MANUAL_STOP, f"stopped{who}", ev.rollback)

    def _on_alarm_fired(self, ev: AlarmFired) -> list[Command]:
        return self._stop(
            ErrorCode.ALARM_ACTIVE,
            f"alarm {', '.join(ev.alarms)} fired",
            None,
            trigger=AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM,
        )

    def _on_continue(self, _: ContinueRequested) -> list[Command]:
        stage = self.stage
        if not isinstance(stage, WaitStage) or stage.kind is WaitKind.WATCH:
            raise InvalidTransition(str(self.state.status), "ContinueRequested")
        self.state.timer = None
        return self._enter_stage(self.state.stage_index + 1)

    def _on_pause(self, _: PauseRequested) -> list[Command]:
        self.state.paused = True
        return []

    def _on_resume(self, _: ResumeRequested) -> list[Command]:
        if not self.state.paused:
            return []
        self.state.paused = False
        stage = self.stage
        if isinstance(stage, TargetStage):
            return self._check_stage()
        if isinstance(stage, TrafficStage) and self.state.timer is None:
            step = self.state.traffic_step
            if step >= 0 and self.state.traffic_percent == stage.steps[step].percent:
                return self._next_traffic_step()
        return []

    def _on_promote(self, _: PromoteRequested) -> list[Command]:
        stage = self.stage
        if not isinstance(stage, TrafficStage):
            raise InvalidTransition(str(self.state.status), "PromoteRequested")
        self.state.timer = None
        self.state.paused = False
        self.state.traffic_step = len(stage.steps) - 1
        return [ShiftTraffic(stage.steps[-1].percent)]

    # -- stage walking ---------------------------------------------------------------------------------------

    def _enter_stage(self, index: int) -> list[Command]:
        self.state.targets = {}  # a new stage; the per-target record of earlier stages is the store's
        self.state.stage_index = index
        if index >= len(self.stages):
            return self._finish(DeploymentStatus.SUCCEEDED)
        stage = self.stages[index]
        if isinstance(stage, TargetStage):
            return self._enter_target_stage(stage, index)
        if isinstance(stage, TrafficStage):
            self.state.status = DeploymentStatus.IN_PROGRESS
            self.state.traffic_step = 0
            return [ShiftTraffic(stage.steps[0].percent)]
        self.state.status = DeploymentStatus.READY if stage.kind is WaitKind.READY else DeploymentStatus.BAKING
        if stage.seconds <= 0 and not stage.stop_on_timeout:
            return self._enter_stage(index + 1)
        return self._start_timer(f"{index}:{stage.kind}", stage.seconds)

    def _enter_target_stage(self, stage: TargetStage, index: int) -> list[Command]:
        self.state.status = DeploymentStatus.IN_PROGRESS
        n = len(stage.targets)
        if n == 0:
            if index == 0:
                return self._fail(ErrorCode.NO_INSTANCES, "the deployment group has no targets")
            return self._enter_stage(index + 1)
        self.state.targets = {t: TargetProgress.fresh(stage.events) for t in stage.targets}
        self.state.minimum_healthy = minimum_healthy_count(stage.health, n) if stage.enforce_health else n
        if stage.enforce_health and self.state.minimum_healthy >= n:
            return self._fail(
                ErrorCode.HEALTH_CONSTRAINTS_INVALID,
                f"the minimum of {self.state.minimum_healthy} healthy hosts out of {n} leaves none to deploy to",
            )
        return self._check_stage()

    def _check_stage(self, last_failure: str = "") -> list[Command]:
        """Start the next wave, finish the stage, or fail it — whichever the counts call for."""
        stage = self.stage
        assert isinstance(stage, TargetStage)
        if self._any_in_flight():
            return []
        counts = self._counts()
        if counts["pending"]:
            if self.state.paused:
                return []
            capacity = (len(stage.targets) - counts["failed"]) - self.state.minimum_healthy
            if not stage.enforce_health:
                capacity = counts["pending"]
            wave = [t for t in stage.targets if self.state.targets[t].status is EventStatus.PENDING][: max(capacity, 0)]
            if not wave:
                return self._fail(ErrorCode.HEALTH_CONSTRAINTS, self._health_message(counts))
            commands: list[Command] = []
            for target in wave:
                progress = self.state.targets[target]
                progress.status = EventStatus.IN_PROGRESS
                progress.statuses[progress.current] = EventStatus.IN_PROGRESS
                commands.append(RunEvent(target, progress.current))
            return commands
        needed = max(self.state.minimum_healthy, 1)
        if counts["succeeded"] < needed:
            message = self._health_message(counts)
            return self._fail(ErrorCode.HEALTH_CONSTRAINTS, f"{last_failure} ({message})" if last_failure else message)
        return self._enter_stage(self.state.stage_index + 1)

    def _advance_target(self, target: str, progress: TargetProgress) -> list[Command]:
        progress.position += 1
        if progress.position < len(progress.events):
            progress.statuses[progress.current] = EventStatus.IN_PROGRESS
            return [RunEvent(target, progress.current)]
        progress.status = EventStatus.SUCCEEDED
        return self._check_stage()

    def _after_target_failed(self, detail: str) -> list[Command]:
        stage = self.stage
        assert isinstance(stage, TargetStage)
        counts = self._counts()
        if not stage.enforce_health:
            return self._fail(ErrorCode.HEALTH_CONSTRAINTS, detail)
        hopeless = counts["pending"] > 0 and (len(stage.targets) - counts["failed"]) - 1 < self.state.minimum_healthy
        if hopeless:
            return self._fail(ErrorCode.HEALTH_CONSTRAINTS, f"{detail} ({self._health_message(counts)})")
        return self._check_stage(detail)

    def _next_traffic_step(self) -> list[Command]:
        stage = self.stage
        assert isinstance(stage, TrafficStage)
        if self.state.traffic_step >= len(stage.steps) - 1:
            return self._enter_stage(self.state.stage_index + 1)
        if self.state.paused:
            return []
        self.state.traffic_step += 1
        return [ShiftTraffic(stage.steps[self.state.traffic_step].percent)]

    def _start_timer(self, name: str, seconds: float) -> list[Command]:
        self.state.timer = name
        return [StartTimer(name, seconds)]

    # -- endings ---------------------------------------------------------------------------------------------

    def _fail(self, code: ErrorCode, message: str, *, rollback: bool | None = None) -> list[Command]:
        self.state.error_code, self.state.message = code, message
        return self._end(DeploymentStatus.FAILED, AutoRollbackEvent.DEPLOYMENT_FAILURE, rollback)

    def _stop(
        self,
        code: ErrorCode,
        message: str,
        rollback: bool | None,
        trigger: AutoRollbackEvent = AutoRollbackEvent.DEPLOYMENT_STOP_ON_REQUEST,
    ) -> list[Command]:
        self.state.error_code, self.state.message = code, message
        return self._end(DeploymentStatus.STOPPED, trigger, rollback)

    def _end(self, status: DeploymentStatus, trigger: AutoRollbackEvent, explicit: bool | None) -> list[Command]:
        commands: list[Command] = []
        unfinished = tuple(
            t for t, p in self.state.targets.items() if p.status in (EventStatus.PENDING, EventStatus.IN_PROGRESS)
        )
        for target in unfinished:
            progress = self.state.targets[target]
            for event, s in progress.statuses.items():
                if s is EventStatus.PENDING:
                    progress.statuses[event] = EventStatus.SKIPPED
                elif s is EventStatus.IN_PROGRESS:
                    progress.statuses[event] = EventStatus.UNKNOWN
            progress.status = (
                EventStatus.SKIPPED
                if progress.position == 0 and (progress.statuses[progress.events[0]] is EventStatus.SKIPPED)
                else EventStatus.UNKNOWN
            )
        if unfinished:
            commands.append(CancelTargets(unfinished))
        self.state.timer = None
        rerouted = self._reroutable()
        if rerouted:  # rule 5
            commands.append(ShiftTraffic(0, rollback=True))
            self.state.traffic_percent = 0
        wants = explicit if explicit is not None else self.options.auto_rollback.applies_to(trigger)
        if wants and not self.options.is_rollback:
            commands.append(StartRollback(trigger, rerouted=rerouted))
        commands.extend(self._finish(status))
        return commands

    def _finish(self, status: DeploymentStatus) -> list[Command]:
        self.state.status = status
        return [Finish(status, self.state.error_code, self.state.message)]

    # -- small derived facts ---------------------------------------------------------------------------------

    def _running_target(self, target: str, event: LifecycleEvent) -> TargetProgress:
        progress = self.state.targets.get(target)
        if progress is None or progress.status is not EventStatus.IN_PROGRESS or progress.current != event:
            raise InvalidTransition(str(self.state.status), f"result of {event} on {target}")
        return progress

    def _any_in_flight(self) -> bool:
        """Whether a target of the stage still runs. Asked as each target finishes, so it must not count the whole
        stage (that made a 1,000-host stage O(N²)): the target found last time is looked at first, else the scan
        starts from the most recently started targets, the last to finish."""
        targets = self.state.targets
        hint = targets.get(self._in_flight_hint) if self._in_flight_hint is not None else None
        if hint is not None and hint.status is EventStatus.IN_PROGRESS:
            return True
        for name in reversed(targets):
            if targets[name].status is EventStatus.IN_PROGRESS:
                self._in_flight_hint = name
                return True
        return False

    def _counts(self) -> dict[str, int]:
        counts = {"pending": 0, "in_flight": 0, "succeeded": 0, "failed": 0}
        key = {
            EventStatus.PENDING: "pending",
            EventStatus.IN_PROGRESS: "in_flight",
            EventStatus.SUCCEEDED: "succeeded",
            EventStatus.FAILED: "failed",
        }
        for progress in self.state.targets.values():
            counts[key[progress.status]] += 1
        return counts

    def _health_message(self, counts: dict[str, int]) -> str:
        n, minimum = len(self.state.targets), self.state.minimum_healthy
        one, several = _TARGET_WORDS[self.options.platform]
        if self.options.platform is not Platform.SERVER and n == 1:
            return f"the {one} did not succeed"
        if counts["pending"] == 0:
            return f"{counts['succeeded']} of {n} {several} succeeded; at least {max(minimum, 1)} must"
        return (
            f"{counts['failed']} of {n} {several} failed; deploying to the other {counts['pending']} would leave "
            f"fewer than the minimum of {minimum} healthy {several}"
        )

    def _reroutable(self) -> bool:
        """Rule 5: may traffic be on the replacement, or on its way there, with the original still able to take it
        all back? From the first shift on (a shift that failed half-way counts); for a server blue/green deployment
        from its start, since a reroute there only restores the weights the group had before."""
        if self.state.stage_index < 0 or not self._original_kept():
            return False
        traffic_at = next((i for i, s in enumerate(self.stages) if isinstance(s, TrafficStage)), None)
        if traffic_at is None:
            return False
        if self.state.traffic_percent > 0 or self.state.stage_index >= traffic_at:
            return True
        return has_original_fleet(self.stages)

    def _original_kept(self) -> bool:
        """Until a stage that releases the original fleet has passed, traffic can go back to it.

        Only target and wait stages can release it; a traffic stage has no ``ends_reroute`` of its own."""
        return not any(
            not isinstance(s, TrafficStage) and s.ends_reroute for s in self.stages[: self.state.stage_index]
        )


Handler = Callable[[DeploymentMachine, Any], list[Command]]

_ACTIVE_HANDLERS: dict[type, Handler] = {
    EventSucceeded: DeploymentMachine._on_event_succeeded,
    EventFailed: DeploymentMachine._on_event_failed,
    TargetLost: DeploymentMachine._on_target_lost,
    TrafficShifted: DeploymentMachine._on_traffic_shifted,
    TrafficShiftFailed: DeploymentMachine._on_traffic_shift_failed,
    TimerElapsed: DeploymentMachine._on_timer_elapsed,
    StopRequested: DeploymentMachine._on_stop_requested,
    InternalError: DeploymentMachine._on_internal_error,
    AlarmFired: DeploymentMachine._on_alarm_fired,
    ContinueRequested: DeploymentMachine._on_continue,
    PauseRequested: DeploymentMachine._on_pause,
    ResumeRequested: DeploymentMachine._on_resume,
    PromoteRequested: DeploymentMachine._on_promote,
}

_TRANSITIONS: dict[DeploymentStatus, dict[type, Handler]] = {
    DeploymentStatus.CREATED: {
        Started: DeploymentMachine._on_started,
        StartBlocked: DeploymentMachine._on_start_blocked,
        StopRequested: DeploymentMachine._on_stop_requested,
        InternalError: DeploymentMachine._on_internal_error,
    },
    **{status: _ACTIVE_HANDLERS for status in _ACTIVE},
}
