"""Run the real state machine against scripted outcomes, with no hosts and no time (pure).

``configs explain --fail 3,5`` and ``plan`` use it to predict what a deployment will do; tests use it to drive the
machine. Every ``RunEvent`` is answered at once (failing where the script says so), every traffic shift and timer
succeeds immediately, and a ready wait that would stop the deployment is continued, as a person does when nothing
goes wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.core.events import (
    Command,
    ContinueRequested,
    Event,
    EventFailed,
    EventSucceeded,
    Finish,
    RunEvent,
    ShiftTraffic,
    Started,
    StartRollback,
    StartTimer,
    TimerElapsed,
    TrafficShifted,
)
from engine.core.machine import DeploymentMachine, MachineOptions
from engine.core.model import DeploymentStatus, ErrorCode, LifecycleEvent, ScriptErrorCode
from engine.core.stages import Stage, WaitStage


@dataclass(slots=True)
class SimulationResult:
    status: DeploymentStatus
    error_code: ErrorCode | None
    message: str
    waves: list[tuple[str, ...]] = field(default_factory=list)  # targets started together, in order
    attempted: list[str] = field(default_factory=list)
    traffic: list[int] = field(default_factory=list)
    waited: float = 0.0
    rollback: StartRollback | None = None
    commands: list[Command] = field(default_factory=list)  # everything the machine asked for, in order


def simulate(
    stages: tuple[Stage, ...],
    failing: Mapping[str, LifecycleEvent] | None = None,
    options: MachineOptions | None = None,
) -> SimulationResult:
    """Drive a fresh machine to its end; ``failing`` maps a target to the event that fails on it."""
    machine = DeploymentMachine(stages, options or MachineOptions())
    failing = failing or {}
    result = SimulationResult(DeploymentStatus.CREATED, None, "")
    inbox: deque[Event] = deque([Started()])
    while inbox:
        commands = machine.send(inbox.popleft())
        result.commands.extend(commands)
        wave = tuple(c.target for c in commands if isinstance(c, RunEvent) and c.target not in result.attempted)
        if wave:
            result.waves.append(wave)
            result.attempted.extend(wave)
        for command in commands:
            inbox.extend(_answer(command, failing, result, machine))
    return result


def _answer(
    command: Command, failing: Mapping[str, LifecycleEvent], result: SimulationResult, machine: DeploymentMachine
) -> list[Event]:
    if isinstance(command, RunEvent):
        if failing.get(command.target) == command.event:
            return [EventFailed(command.target, command.event, ScriptErrorCode.SCRIPT_FAILED, "failed (simulated)")]
        return [EventSucceeded(command.target, command.event)]
    if isinstance(command, ShiftTraffic):
        result.traffic.append(command.percent)
        return [] if command.rollback else [TrafficShifted(command.percent)]
    if isinstance(command, StartTimer):
        stage = machine.stage
        if isinstance(stage, WaitStage) and stage.stop_on_timeout and command.name == machine.state.timer:
            return [ContinueRequested()]  # running out would stop it: that is a failure, which is not scripted
        result.waited += command.seconds
        return [TimerElapsed(command.name)]
    if isinstance(command, StartRollback):
        result.rollback = command
    if isinstance(command, Finish):
        result.status, result.error_code, result.message = command.status, command.error_code, command.message
    return []
