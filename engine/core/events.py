"""What the deployment state machine takes (events, past tense) and gives (commands, imperative). Pure values.

Kept apart from engine/core/machine.py so the runner, the simulator and the tests can speak the machine's language
without reading its rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.model import AutoRollbackEvent, DeploymentStatus, ErrorCode, LifecycleEvent, ScriptErrorCode

# -- inputs (past tense) ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    pass


@dataclass(frozen=True, slots=True)
class EventSucceeded:
    target: str
    event: LifecycleEvent


@dataclass(frozen=True, slots=True)
class EventFailed:
    target: str
    event: LifecycleEvent
    code: int = ScriptErrorCode.SCRIPT_FAILED
    message: str = ""


@dataclass(frozen=True, slots=True)
class TargetLost:
    """The target stopped answering (agent heartbeats missed); its current event fails."""

    target: str
    reason: str = "the host's agent stopped sending heartbeats"


@dataclass(frozen=True, slots=True)
class TrafficShifted:
    percent: int


@dataclass(frozen=True, slots=True)
class TrafficShiftFailed:
    message: str


@dataclass(frozen=True, slots=True)
class TimerElapsed:
    name: str


@dataclass(frozen=True, slots=True)
class StartBlocked:
    """The deployment must not start (e.g. an alarm was already firing): it stops without a rollback."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class InternalError:
    """deploybot itself failed while driving the deployment (an exception none of its rules expects): the deployment
    fails as any failure does, its unfinished hosts cancelled, traffic back on the original fleet (rule 5) and the
    automatic rollback for DEPLOYMENT_FAILURE; one that had not started changed nothing and is not rolled back."""

    message: str


@dataclass(frozen=True, slots=True)
class StopRequested:
    rollback: bool | None = None  # None: follow the group's auto-rollback setting
    actor: str = ""


@dataclass(frozen=True, slots=True)
class AlarmFired:
    alarms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContinueRequested:
    pass


@dataclass(frozen=True, slots=True)
class PauseRequested:
    pass


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    pass


@dataclass(frozen=True, slots=True)
class PromoteRequested:
    """Skip the remaining traffic steps and waits of the current traffic stage."""


Event = (
    Started
    | StartBlocked
    | InternalError
    | EventSucceeded
    | EventFailed
    | TargetLost
    | TrafficShifted
    | TrafficShiftFailed
    | TimerElapsed
    | StopRequested
    | AlarmFired
    | ContinueRequested
    | PauseRequested
    | ResumeRequested
    | PromoteRequested
)

# -- outputs (imperative) -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunEvent:
    target: str
    event: LifecycleEvent


@dataclass(frozen=True, slots=True)
class CancelTargets:
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShiftTraffic:
    percent: int  # share of traffic on the replacement
    rollback: bool = False


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class StartRollback:
    trigger: AutoRollbackEvent
    rerouted: bool = False  # traffic already went back to the original fleet


@dataclass(frozen=True, slots=True)
class Finish:
    status: DeploymentStatus
    error_code: ErrorCode | None = None
    message: str = ""


Command = RunEvent | CancelTargets | ShiftTraffic | StartTimer | StartRollback | Finish
