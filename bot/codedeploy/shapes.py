"""CodeDeploy's service-model shapes built from deploybot's own documents (pure: no I/O, no engine calls).

A deploybot deployment document (engine.views) becomes ``DeploymentInfo``, its targets ``InstanceTarget``s with
``lifecycleEvents``; configurations become ``DeploymentConfigInfo``. Revisions travel in the S3 shape with the
bucket ``deploybot`` and the deploybot revision (``sha256:<hex>``, a path or ``git:REF``) as the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.configs import DeploymentConfig, MinimumHealthyHostsType, TrafficRoutingType
from engine.model import ROLLBACK_CREATOR, Platform, ScriptErrorCode

REVISION_BUCKET = "deploybot"
PLATFORMS = {Platform.SERVER: "Server", Platform.LAMBDA: "Lambda", Platform.ECS: "ECS"}
_STATUS = {"WaitingApproval": "Queued"}  # deploybot's approval gate looks like a queue to CodeDeploy clients
_OVERVIEW_KEYS = ("Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Ready")
_LIFECYCLE_ERRORS = {"ScriptMissing", "ScriptNotExecutable", "ScriptTimedOut", "ScriptFailed", "UnknownError"}


class ApiError(Exception):
    """An error in CodeDeploy's vocabulary: ``name`` is the modeled exception's name without ``Exception``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


def config_info(config: DeploymentConfig) -> dict[str, Any]:
    info: dict[str, Any] = {
        "deploymentConfigId": config.name,
        "deploymentConfigName": config.name,
        "computePlatform": PLATFORMS[config.compute_platform],
    }
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
            "scriptName": "",
            "message": event.get("message") or "",
            "logTail": event.get("log_tail") or "",
        }
    return out


def lifecycle_error(code: object) -> str:
    """The agent's numeric script error as CodeDeploy's LifecycleErrorCode (codes it lacks become UnknownError)."""
    try:
        label = ScriptErrorCode(int(str(code))).label
    except ValueError:
        return "UnknownError"
    return label if label in _LIFECYCLE_ERRORS else "UnknownError"


def revision_spec(revision: object) -> str | None:
    """The DeployRequest revision named by a CodeDeploy ``RevisionLocation`` (None: the application default)."""
    if revision is None:
        return None
    supported = (
        f'deploybot supports {{"revisionType": "S3", "s3Location": {{"bucket": "{REVISION_BUCKET}", '
        '"key": "sha256:<hex>" | path | "git:REF"}}, or no revision for the application\'s default'
    )
    if not isinstance(revision, Mapping) or revision.get("revisionType") != "S3":
        kind = revision.get("revisionType") if isinstance(revision, Mapping) else revision
        raise ApiError("InvalidRevision", f"revisionType {kind!r} is not supported: {supported}")
    location = revision.get("s3Location") or {}
    key = location.get("key")
    if location.get("bucket") != REVISION_BUCKET or not isinstance(key, str) or not key.strip():
        raise ApiError("InvalidRevision", f"S3 bucket {location.get('bucket')!r} is not supported: {supported}")
    return key.strip()


def deployment_info(doc: Mapping[str, Any]) -> dict[str, Any]:
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
        "revision": {
            "revisionType": "S3",
            "s3Location": {
                "bucket": REVISION_BUCKET,
                "key": "sha256:" + doc["revision"]["sha256"],
                "bundleType": "tgz",
            },
        },
    }
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


def target_json(doc: Mapping[str, Any], names: list[str], target_id: str) -> dict[str, Any]:
    if target_id not in names:
        raise ApiError("DeploymentTargetDoesNotExist", f"Deployment {doc['id']} has no target {target_id!r}")
    found = next((t for t in doc["targets"] if t["name"] == target_id), None)
    events = found["events"] if found else []
    times = [t for e in events for t in (e.get("started_at"), e.get("ended_at")) if t is not None]
    instance: dict[str, Any] = {
        "deploymentId": doc["id"],
        "targetId": target_id,
        "targetArn": target_id,
        "status": found["status"] if found else "Pending",
        "lifecycleEvents": [event_json(e) for e in events],
    }
    if times:
        instance["lastUpdatedAt"] = max(times)
    return {"deploymentTargetType": "InstanceTarget", "instanceTarget": instance}
