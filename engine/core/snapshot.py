"""JSON snapshots of a deployment's stages and machine state, so a restarted server resumes where it was (pure).

The stages are stored with the deployment when it starts: a config edited while it runs must not change the
deployment under its feet.
"""

from __future__ import annotations

from typing import Any

from engine.core.configs import MinimumHealthyHosts, MinimumHealthyHostsType, TrafficStep
from engine.core.machine import DeploymentState, TargetProgress
from engine.core.model import DeploymentStatus, ErrorCode, EventStatus, LifecycleEvent
from engine.core.stages import Stage, TargetStage, TrafficStage, WaitKind, WaitStage


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


def state_to_json(state: DeploymentState, targets: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``targets``: each target's ``target_to_json``, when the caller keeps them (most steps change few targets)."""
    return {
        "status": str(state.status),
        "stage_index": state.stage_index,
        "targets": targets if targets is not None else {name: target_to_json(p) for name, p in state.targets.items()},
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
