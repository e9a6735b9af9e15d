"""JSON snapshots of a deployment's stages and machine state, and of what its end still owes, so a restarted server
resumes where it was (pure).

The stages are stored with the deployment when it starts: a config edited while it runs must not change the
deployment under its feet.
"""

from __future__ import annotations

import json
from typing import Any

from engine.core.configs import MinimumHealthyHosts, MinimumHealthyHostsType, TrafficStep
from engine.core.events import CancelTargets, Command, Finish, ShiftTraffic, StartRollback
from engine.core.machine import DeploymentState, TargetProgress
from engine.core.model import AutoRollbackEvent, DeploymentStatus, ErrorCode, EventStatus, LifecycleEvent
from engine.core.stages import Stage, TargetStage, TrafficStage, WaitKind, WaitStage


class EncodedJson(str):
    """A JSON value already encoded: a store writes it to a JSON column as it is, where any other value is encoded
    there. For a document rewritten every step whose large parts rarely change (engine/core/step_record.py): they
    are kept encoded and only joined, instead of encoding the whole document again."""

    __slots__ = ()


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every call: ``json.dumps`` with any non-default argument builds a new one each time."""


def encode(value: Any) -> str:
    """Compact JSON text, as the stores write it."""
    return _COMPACT.encode(value)


def stages_to_json(stages: tuple[Stage, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for stage in stages:
        if isinstance(stage, TargetStage):
            out.append(
                {
                    "kind": "targets",
                    "name": stage.name,
                    "targets": list(stage.targets),
                    "events": [str(e) for e in stage.events],
                    "health": {"type": str(stage.health.type), "value": stage.health.value},
                    "enforce_health": stage.enforce_health,
                    "ends_reroute": stage.ends_reroute,
                }
            )
        elif isinstance(stage, TrafficStage):
            steps = [{"percent": s.percent, "wait_seconds": s.wait_seconds} for s in stage.steps]
            out.append({"kind": "traffic", "name": stage.name, "steps": steps})
        else:
            out.append(
                {
                    "kind": "wait",
                    "name": stage.name,
                    "wait_kind": str(stage.kind),
                    "seconds": stage.seconds,
                    "stop_on_timeout": stage.stop_on_timeout,
                    "ends_reroute": stage.ends_reroute,
                }
            )
    return out


def stages_from_json(data: list[dict[str, Any]]) -> tuple[Stage, ...]:
    stages: list[Stage] = []
    for item in data:
        if item["kind"] == "targets":
            health = MinimumHealthyHosts(MinimumHealthyHostsType(item["health"]["type"]), item["health"]["value"])
            stages.append(
                TargetStage(
                    item["name"],
                    tuple(item["targets"]),
                    tuple(LifecycleEvent(e) for e in item["events"]),
                    health,
                    item["enforce_health"],
                    item.get("ends_reroute", False),
                )
            )
        elif item["kind"] == "traffic":
            steps = tuple(TrafficStep(s["percent"], s["wait_seconds"]) for s in item["steps"])
            stages.append(TrafficStage(item["name"], steps))
        else:
            stages.append(
                WaitStage(
                    item["name"],
                    WaitKind(item["wait_kind"]),
                    item["seconds"],
                    item["stop_on_timeout"],
                    item.get("ends_reroute", False),
                )
            )
    return tuple(stages)


def target_to_json(progress: TargetProgress) -> dict[str, Any]:
    return {
        "events": [str(e) for e in progress.events],
        "statuses": {str(e): str(s) for e, s in progress.statuses.items()},
        "status": str(progress.status),
        "position": progress.position,
    }


def state_to_json(state: DeploymentState) -> dict[str, Any]:
    return {
        "status": str(state.status),
        "stage_index": state.stage_index,
        "targets": {name: target_to_json(p) for name, p in state.targets.items()},
        **_state_fields(state),
    }


def encode_state(state: DeploymentState, targets: str) -> EncodedJson:
    """``state_to_json`` encoded, given its targets already encoded as one JSON object (``targets``)."""
    head = encode({"status": str(state.status), "stage_index": state.stage_index})
    return EncodedJson(f'{head[:-1]},"targets":{targets},{encode(_state_fields(state))[1:]}')


def _state_fields(state: DeploymentState) -> dict[str, Any]:
    """The state's fields after its targets."""
    return {
        "minimum_healthy": state.minimum_healthy,
        "traffic_step": state.traffic_step,
        "traffic_percent": state.traffic_percent,
        "timer": state.timer,
        "paused": state.paused,
        "error_code": str(state.error_code) if state.error_code else None,
        "message": state.message,
    }


def state_from_json(data: dict[str, Any]) -> DeploymentState:
    targets = {
        name: TargetProgress(
            [LifecycleEvent(e) for e in t["events"]],
            {LifecycleEvent(e): EventStatus(s) for e, s in t["statuses"].items()},
            EventStatus(t["status"]),
            t["position"],
        )
        for name, t in data["targets"].items()
    }
    return DeploymentState(
        status=DeploymentStatus(data["status"]),
        stage_index=data["stage_index"],
        targets=targets,
        minimum_healthy=data["minimum_healthy"],
        traffic_step=data["traffic_step"],
        traffic_percent=data["traffic_percent"],
        timer=data["timer"],
        paused=data["paused"],
        error_code=ErrorCode(data["error_code"]) if data["error_code"] else None,
        message=data["message"],
    )


def wind_up_to_json(commands: list[Command]) -> list[dict[str, Any]]:
    """The end's commands among ``commands`` (engine/core/machine.py ``_end``: CancelTargets, ShiftTraffic,
    StartRollback, Finish), as stored in ``wind_up`` with the final status: what is still owed, to be done by
    whoever resumes the deployment should the server stop first. A command to run an event or start a timer is
    dropped, since it no longer matters to an ended deployment."""
    encoded: list[dict[str, Any]] = []
    for command in commands:
        if isinstance(command, CancelTargets):
            encoded.append({"command": "CancelTargets", "targets": list(command.targets)})
        elif isinstance(command, ShiftTraffic):
            encoded.append({"command": "ShiftTraffic", "percent": command.percent, "rollback": command.rollback})
        elif isinstance(command, StartRollback):
            encoded.append({"command": "StartRollback", "trigger": str(command.trigger), "rerouted": command.rerouted})
        elif isinstance(command, Finish):
            encoded.append(
                {
                    "command": "Finish",
                    "status": str(command.status),
                    "error_code": str(command.error_code) if command.error_code else None,
                    "message": command.message,
                }
            )
    return encoded


def wind_up_from_json(data: list[dict[str, Any]]) -> list[Command]:
    commands: list[Command] = []
    for item in data:
        kind = item["command"]
        if kind == "CancelTargets":
            commands.append(CancelTargets(tuple(item["targets"])))
        elif kind == "ShiftTraffic":
            commands.append(ShiftTraffic(int(item["percent"]), rollback=bool(item["rollback"])))
        elif kind == "StartRollback":
            commands.append(StartRollback(AutoRollbackEvent(item["trigger"]), rerouted=bool(item["rerouted"])))
        elif kind == "Finish":
            code = ErrorCode(item["error_code"]) if item["error_code"] else None
            commands.append(Finish(DeploymentStatus(item["status"]), code, item["message"]))
        else:
            raise ValueError(f"unknown wind-up command {kind!r}")
    return commands
