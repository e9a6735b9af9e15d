"""CodeDeploy's service-model shapes built from deploybot's own documents (pure: no I/O, no engine calls).

A deploybot deployment document (engine.core.document) becomes ``DeploymentInfo``, its targets ``InstanceTarget``s
(hosts), ``LambdaTarget``s (a Lambda function's alias) or ``ECSTarget``s (an ECS service), and the legacy
``InstanceSummary``s, with ``lifecycleEvents``; configurations become ``DeploymentConfigInfo``; registered revisions
``GenericRevisionInfo`` and on-premises hosts ``InstanceInfo``.

What a deployment keeps in its stored state (``row["state"]``) and these shapes read: ``spec`` (what every target
was told: for Lambda and ECS the AppSpec, for ECS also ``ecs``; the effective ``file_exists_behavior`` and
``ignore_application_stop_failures``; CreateDeployment's ``overrides``) and ``machine.traffic_percent``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine import (
    ROLLBACK_CREATOR,
    AutoRollback,
    DeploymentConfig,
    MinimumHealthyHostsType,
    OnPremInstance,
    Platform,
    RegisteredRevision,
    ScriptErrorCode,
    TrafficRoutingType,
)

PLATFORMS = {Platform.SERVER: "Server", Platform.LAMBDA: "Lambda", Platform.ECS: "ECS"}
_STATUS = {"WaitingApproval": "Queued"}  # deploybot's approval gate looks like a queue to CodeDeploy clients
_OVERVIEW_KEYS = ("Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Ready")
# The script errors CodeDeploy's LifecycleErrorCode has; the agent's others (6, 7) map to UnknownError.
_LIFECYCLE_ERRORS = {
    code.label
    for code in (
        ScriptErrorCode.SCRIPT_MISSING,
        ScriptErrorCode.SCRIPT_NOT_EXECUTABLE,
        ScriptErrorCode.SCRIPT_TIMED_OUT,
        ScriptErrorCode.SCRIPT_FAILED,
        ScriptErrorCode.UNKNOWN_ERROR,
    )
}


# Where the agent's failure messages (engine/agent/hooks.py, worded like CodeDeploy's agent) name the script: its
# AppSpec ``location``, except "does not exist", which names the full path inside the unpacked revision.
_SCRIPT_IN_MESSAGE = (
    re.compile(r"^Script at specified location: (?P<script>.+?)(?: run as user \S+)? (?:failed|succeeded)\b"),
    re.compile(r"^Unable to set script at specified location: (?P<script>.+) as executable$"),
    re.compile(r"^Script location (?P<script>.+?) resolves to "),
    re.compile(r"^Script does not exist at specified location: (?:.*/deployment-archive/)?(?P<script>.+)$"),
)
# Each platform's DeploymentTarget: its member and its deploymentTargetType.
_TARGET_SHAPES = {
    Platform.SERVER: ("instanceTarget", "InstanceTarget"),
    Platform.LAMBDA: ("lambdaTarget", "LambdaTarget"),
    Platform.ECS: ("ecsTarget", "ECSTarget"),
}


class ApiError(Exception):
    """An error in CodeDeploy's vocabulary: ``name`` is the modeled exception's name without ``Exception``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


def config_info(config: DeploymentConfig, created_at: float | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "deploymentConfigId": config.name,
        "deploymentConfigName": config.name,
        "computePlatform": PLATFORMS[config.compute_platform],
    }
    if created_at is not None:
        info["createTime"] = created_at
    mhh = config.minimum_healthy_hosts
    if mhh is not None:  # OneAtATime is "every host but one"; CodeDeploy shows it as FLEET_PERCENT 99
        most = mhh.type is MinimumHealthyHostsType.MOST_CONCURRENCY
        info["minimumHealthyHosts"] = {
            "type": "FLEET_PERCENT" if most else str(mhh.type),
            "value": 99 if most else mhh.value,
        }
    routing = config.traffic_routing
    if routing is not None:
        traffic: dict[str, Any] = {"type": str(routing.type)}
        interval = int(routing.interval_minutes)
        if routing.type is TrafficRoutingType.CANARY:
            traffic["timeBasedCanary"] = {"canaryPercentage": routing.percentage, "canaryInterval": interval}
        elif routing.type is TrafficRoutingType.LINEAR:
            traffic["timeBasedLinear"] = {"linearPercentage": routing.percentage, "linearInterval": interval}
        info["trafficRoutingConfig"] = traffic
    return info


def event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"lifecycleEventName": event["name"], "status": event["status"]}
    if event.get("started_at") is not None:
        out["startTime"] = event["started_at"]
    if event.get("ended_at") is not None:
        out["endTime"] = event["ended_at"]
    if event["status"] in ("Succeeded", "Failed"):
        out["diagnostics"] = {
            "errorCode": "Success" if event["status"] == "Succeeded" else lifecycle_error(event.get("error_code")),
            "scriptName": script_name(event.get("message") or ""),
            "message": event.get("message") or "",
            "logTail": event.get("log_tail") or "",
        }
    return out


def script_name(message: str) -> str:
    """The script an agent's event message names (its AppSpec location), or "" when it names none (several scripts
    that all succeeded, a Lambda/ECS hook function, an error before any script ran)."""
    first_line = message.splitlines()[0] if message else ""
    for pattern in _SCRIPT_IN_MESSAGE:
        found = pattern.match(first_line)
        if found:
            return found["script"].strip()
    return ""


def lifecycle_error(code: object) -> str:
    """The agent's numeric script error as CodeDeploy's LifecycleErrorCode (codes it lacks become UnknownError)."""
    try:
        label = ScriptErrorCode(int(str(code))).label
    except ValueError:
        return ScriptErrorCode.UNKNOWN_ERROR.label
    return label if label in _LIFECYCLE_ERRORS else ScriptErrorCode.UNKNOWN_ERROR.label


def spec_platform(spec: Mapping[str, Any]) -> Platform:
    """The compute platform a stored deployment's spec was made for: Lambda and ECS specs carry the AppSpec (ECS
    also its service), a server spec neither."""
    if spec.get("ecs") is not None:
        return Platform.ECS
    if spec.get("appspec") is not None:
        return Platform.LAMBDA
    return Platform.SERVER


def auto_rollback_json(rollback: AutoRollback) -> dict[str, Any]:
    return {"enabled": rollback.enabled, "events": sorted(str(e) for e in rollback.events)}


def deployment_info(
    doc: Mapping[str, Any],
    revision: Mapping[str, Any],
    *,
    platform: Platform = Platform.SERVER,
    spec: Mapping[str, Any] | None = None,
    auto_rollback: AutoRollback | None = None,
) -> dict[str, Any]:
    """``revision``: the RevisionLocation the deployment was made from (its stored bundle when none is known);
    ``spec``: the deployment's stored spec (its own fileExistsBehavior, ignoreApplicationStopFailures);
    ``auto_rollback``: the rollback settings it runs with (CreateDeployment's override, else its group's)."""
    overview = dict.fromkeys(_OVERVIEW_KEYS, 0)
    for target in doc["targets"]:
        if target["status"] in overview:
            overview[target["status"]] += 1
    info: dict[str, Any] = {
        "deploymentId": doc["id"],
        "applicationName": doc["application"],
        "deploymentGroupName": doc["group"],
        "deploymentConfigName": doc["config"],
        "status": _STATUS.get(doc["status"], doc["status"]),
        "creator": ROLLBACK_CREATOR if doc["created_by"] == ROLLBACK_CREATOR else "user",
        "description": doc["description"],
        "deploymentOverview": overview,
        "revision": dict(revision),
        "computePlatform": PLATFORMS[platform],
    }
    spec = spec or {}
    info["ignoreApplicationStopFailures"] = bool(spec.get("ignore_application_stop_failures"))
    if platform is Platform.SERVER and spec.get("file_exists_behavior"):
        info["fileExistsBehavior"] = str(spec["file_exists_behavior"])
    if auto_rollback is not None:
        info["autoRollbackConfiguration"] = auto_rollback_json(auto_rollback)
    if doc.get("deployment_type"):
        info["deploymentStyle"] = {"deploymentType": doc["deployment_type"]}
    for key, field in (("createTime", "created_at"), ("startTime", "started_at"), ("completeTime", "ended_at")):
        if doc.get(field) is not None:
            info[key] = doc[field]
    if doc.get("error"):
        info["errorInformation"] = {"code": doc["error"]["code"] or "", "message": doc["error"]["message"]}
    rollback = doc["rollback"]
    if rollback["by"] or rollback["of"]:
        rollback_info: dict[str, Any] = {}
        if rollback["by"]:
            rollback_info["rollbackDeploymentId"] = rollback["by"]
            rollback_info["rollbackMessage"] = f"Rolled back by deployment {rollback['by']}"
        if rollback["of"]:
            rollback_info["rollbackTriggeringDeploymentId"] = rollback["of"]
            rollback_info.setdefault("rollbackMessage", f"Rollback of deployment {rollback['of']}")
        info["rollbackInfo"] = rollback_info
    return info


def target_json(
    doc: Mapping[str, Any],
    names: list[str],
    target_id: str,
    labels: Mapping[str, str] | None = None,
    *,
    platform: Platform = Platform.SERVER,
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``DeploymentTarget`` of one target in its platform's shape: a host is an ``instanceTarget`` (labelled
    Blue/Green per ``labels`` in a blue/green deployment), a Lambda function's alias a ``lambdaTarget`` with its
    versions and the target version's share of traffic (percent), an ECS service an ``ecsTarget`` with the traffic
    of its original (Blue) and replacement (Green) task sets. ``state``: the deployment's stored state."""
    if target_id not in names:
        raise ApiError("DeploymentTargetDoesNotExist", f"Deployment {doc['id']} has no target {target_id!r}")
    member, kind = _TARGET_SHAPES[platform]
    target: dict[str, Any] = {"deploymentId": doc["id"], "targetId": target_id, "targetArn": target_id}
    target.update(_progress(doc, target_id))
    state = state or {}
    weight = float((state.get("machine") or {}).get("traffic_percent") or 0)
    if platform is Platform.LAMBDA:
        appspec = (state.get("spec") or {}).get("appspec") or {}
        target["lambdaFunctionInfo"] = {
            "functionName": str(appspec.get("function_name", "")),
            "functionAlias": str(appspec.get("alias", "")),
            "currentVersion": str(appspec.get("current_version", "")),
            "targetVersion": str(appspec.get("target_version", "")),
            "targetVersionWeight": weight,
        }
    elif platform is Platform.ECS:
        target["taskSetsInfo"] = [
            {"taskSetLabel": "Blue", "trafficWeight": 100.0 - weight},
            {"taskSetLabel": "Green", "trafficWeight": weight},
        ]
    elif labels and target_id in labels:
        target["instanceLabel"] = labels[target_id]
    return {"deploymentTargetType": kind, member: target}


def instance_summary(doc: Mapping[str, Any], instance_id: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The legacy ``InstanceSummary`` (ListDeploymentInstances and friends) of one target."""
    summary: dict[str, Any] = {"deploymentId": doc["id"], "instanceId": instance_id}
    summary.update(_progress(doc, instance_id))
    if instance_id in labels:
        summary["instanceType"] = labels[instance_id]
    return summary


def _progress(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    found = next((t for t in doc["targets"] if t["name"] == name), None)
    events = found["events"] if found else []
    times = [t for e in events for t in (e.get("started_at"), e.get("ended_at")) if t is not None]
    out: dict[str, Any] = {
        "status": found["status"] if found else "Pending",
        "lifecycleEvents": [event_json(e) for e in events],
    }
    if times:
        out["lastUpdatedAt"] = max(times)
    return out


def blue_green_labels(state: Mapping[str, Any]) -> dict[str, str]:
    """Blue for the original fleet, Green for the replacement, read off a stored deployment's stages (empty for
    anything but a server blue/green deployment)."""
    stages = state.get("stages") or []
    if not any(stage.get("kind") == "traffic" for stage in stages):
        return {}
    target_stages = [stage for stage in stages if stage.get("kind") == "targets"]
    labels: dict[str, str] = {}
    for stage in target_stages:
        if stage.get("name") == "block-original":
            labels.update(dict.fromkeys(stage["targets"], "Blue"))
    if target_stages:
        labels.update(dict.fromkeys(target_stages[0]["targets"], "Green"))
    return labels


def revision_info(
    revision: RegisteredRevision, used: tuple[float | None, float | None, tuple[str, ...]]
) -> dict[str, Any]:
    """``GenericRevisionInfo``; ``used``: (first, last, groups) of the deployments of its bundle, which every front
    makes (the registration's own times, set by CreateDeployment, stand in when there are none)."""
    first, last, groups = used
    info: dict[str, Any] = {"registerTime": revision.registered_at, "deploymentGroups": list(groups)}
    if revision.description:
        info["description"] = revision.description
    if first is None:
        first, last = revision.first_used_at, revision.last_used_at
    if first is not None:
        info["firstUsedTime"] = first
    if last is not None:
        info["lastUsedTime"] = last
    return info


def instance_info(name: str, tags: Mapping[str, str], instance: OnPremInstance | None) -> dict[str, Any]:
    """``InstanceInfo`` of a host: registered through the API (``instance``) or declared in the config file."""
    info: dict[str, Any] = {
        "instanceName": name,
        "instanceArn": f"arn:deploybot:codedeploy:::instance/{name}",
        "tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
    }
    if instance is not None:
        info["registerTime"] = instance.registered_at
        if instance.deregistered_at is not None:
            info["deregisterTime"] = instance.deregistered_at
        if instance.iam_arn:
            info["iamSessionArn" if ":sts:" in instance.iam_arn else "iamUserArn"] = instance.iam_arn
    return info
