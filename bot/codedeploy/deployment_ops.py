"""Deployments through the CodeDeploy API: create, read, list, stop, continue, skip the termination wait, and the
status callback of Lambda/ECS lifecycle hooks.

Each maps onto one Deployer call with the caller's deploybot user as the actor, so a deployment made here shows in
Slack, GitHub and the CLI like any other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from bot.codedeploy.access import READ, Access, Target
from bot.codedeploy.base import checked_id, deployment_id, hook_not_waiting, hook_request, string_list
from bot.codedeploy.fetching import RevisionFetching
from bot.codedeploy.locations import normalized_location, stored_location
from bot.codedeploy.shapes import ApiError, deployment_info
from engine import (
    FILE_EXISTS_BEHAVIORS,
    FINAL_STATUSES,
    Action,
    AlarmConfiguration,
    AutoRollback,
    AutoRollbackEvent,
    DeployRequest,
    EngineError,
    GroupOverrides,
    InvalidLifecycleHookStatus,
    LifecycleHookNotFound,
    Platform,
)

DEPLOYMENTS_BATCH_LIMIT = 25  # BatchGetDeployments' deploymentIds, per the service model
LISTABLE_STATUSES = ("Created", "Queued", "InProgress", "Baking", "Succeeded", "Failed", "Stopped", "Ready")
WAIT_TYPES = ("READY_WAIT", "TERMINATION_WAIT")
NOT_STARTED = ("Queued", "WaitingApproval")


def current_wait(row: Mapping[str, Any]) -> str | None:
    """The kind of wait (``ready``, ``termination``, ``watch``) a stored deployment is in, or None."""
    state = row.get("state") or {}
    index = (state.get("machine") or {}).get("stage_index")
    stages = state.get("stages") or []
    if not isinstance(index, int) or not 0 <= index < len(stages) or stages[index].get("kind") != "wait":
        return None
    return str(stages[index].get("wait_kind"))


class DeploymentOperations(RevisionFetching):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "CreateDeployment": Access(Action.DEPLOY, Target.GROUP),
        "GetDeployment": READ,
        "BatchGetDeployments": READ,
        "ListDeployments": READ,
        "StopDeployment": Access(Action.CONTROL, Target.DEPLOYMENT, rollback_flag="autoRollbackEnabled"),
        "ContinueDeployment": Access(Action.CONTROL, Target.DEPLOYMENT),
        "SkipWaitTimeForInstanceTermination": Access(Action.CONTROL, Target.DEPLOYMENT),
        "PutLifecycleEventHookExecutionStatus": Access(Action.CONTROL, Target.HOOK),
    }

    async def create_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        group = self.group_of(body)
        app = self.application(group.application)
        config_name = body.get("deploymentConfigName")
        if config_name is not None:
            self.config_named(str(config_name))
        location = normalized_location(body["revision"]) if body.get("revision") is not None else None
        request = DeployRequest(
            application=group.application,
            environment=group.environment,
            revision=await self.deployable(app, group, location) if location else None,
            config_name=str(config_name) if config_name else None,
            actor=actor,
            description=str(body.get("description") or ""),
            overrides=group_overrides(body),
        )
        try:
            deployment = await self.deployer.start(request)
        except EngineError as exc:
            if request.revision is None and "no default revision" in str(exc):
                raise ApiError("RevisionRequired", str(exc)) from None
            raise
        if location is not None:
            await self.registry.mark_used(app.name, location, sha256=deployment["revision"]["sha256"])
        return {"deploymentId": deployment["id"]}

    async def _deployment_info(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """``DeploymentInfo`` with the settings kept with the deployment: its platform, fileExistsBehavior and
        ignoreApplicationStopFailures from its stored spec, and the automatic rollback it runs with
        (CreateDeployment's override, else its group's, as the engine decides it)."""
        doc = await self.deployer.get(str(row["id"]))
        sha256 = doc["revision"]["sha256"]
        location = self.registry.location_of(doc["application"], sha256) or stored_location(sha256)
        spec = (row.get("state") or {}).get("spec") or {}
        overridden = GroupOverrides.from_json(spec.get("overrides")).auto_rollback
        group = self.group_of_row(row)
        rollback = overridden or (group.auto_rollback if group is not None else None)
        return deployment_info(doc, location, platform=self.platform_of_row(row), spec=spec, auto_rollback=rollback)

    async def get_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        return {"deploymentInfo": await self._deployment_info(await self.deployment_row(deployment_id(body)))}

    async def batch_get_deployments(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        """The known deployments of ``deploymentIds``, in order; an unknown id is left out (the operation has no
        DeploymentDoesNotExist error), a malformed one is InvalidDeploymentId; at most 25 ids."""
        ids = [
            checked_id(i)
            for i in string_list(body, "deploymentIds", "DeploymentIdRequired", limit=DEPLOYMENTS_BATCH_LIMIT)
        ]
        answer = []
        for deployment in dict.fromkeys(ids):
            row = await self.deployer.store.get_deployment(deployment)
            if row is not None:
                answer.append(await self._deployment_info(row))
        return {"deploymentsInfo": answer}

    async def list_deployments(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        application = group_name = None
        if body.get("applicationName"):
            application = self.application(str(body["applicationName"])).name
            if body.get("deploymentGroupName"):
                group_name = self.group_of(body).name
        elif body.get("deploymentGroupName"):
            raise ApiError("ApplicationNameRequired", "deploymentGroupName needs applicationName")
        statuses = [str(s) for s in body.get("includeOnlyStatuses") or []]
        unknown = [s for s in statuses if s not in LISTABLE_STATUSES]
        if unknown:
            raise ApiError(
                "InvalidDeploymentStatus", f"unknown status {unknown[0]!r}; use {', '.join(LISTABLE_STATUSES)}"
            )
        if "Queued" in statuses:
            statuses.append("WaitingApproval")
        start, end = create_time_range(body.get("createTimeRange"))
        rows = await self.deployer.store.list_deployments(
            application=application, group_name=group_name, status=statuses or None, limit=None
        )
        chosen = [row["id"] for row in rows if start <= float(row.get("created_at") or 0) <= end]
        return self.paged(chosen, body, "deployments")

    async def stop_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment = deployment_id(body)
        current = await self.deployer.get(deployment)
        if current["status"] in FINAL_STATUSES:
            raise ApiError("DeploymentAlreadyCompleted", f"Deployment {deployment} is already {current['status']}")
        rollback = body.get("autoRollbackEnabled")
        doc = await self.deployer.stop(
            deployment, rollback=rollback if isinstance(rollback, bool) else None, actor=actor
        )
        message = f"Deployment {deployment} is {doc['status']}"
        if doc["rollback"]["by"]:
            message += f"; rolled back by {doc['rollback']['by']}"
        return {"status": "Succeeded" if doc["status"] == "Stopped" else "Pending", "statusMessage": message}

    async def _waiting_row(self, deployment: str) -> dict[str, Any]:
        row = await self.deployment_row(deployment)
        if row["status"] in FINAL_STATUSES:
            raise ApiError("DeploymentAlreadyCompleted", f"Deployment {deployment} is already {row['status']}")
        return row

    async def continue_deployment(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        """READY_WAIT: install done, shift traffic now (a deploybot-paused deployment resumes); TERMINATION_WAIT:
        release the original fleet now, like SkipWaitTimeForInstanceTermination."""
        deployment = deployment_id(body)
        wait_type = body.get("deploymentWaitType") or "READY_WAIT"
        if wait_type not in WAIT_TYPES:
            raise ApiError(
                "InvalidDeploymentWaitType", f"deploymentWaitType {wait_type!r} is not {' or '.join(WAIT_TYPES)}"
            )
        row = await self._waiting_row(deployment)
        if wait_type == "TERMINATION_WAIT":
            return await self._end_termination_wait(deployment, row, actor)
        wait = current_wait(row)
        if wait == "ready":
            await self.deployer.control(deployment, "continue", actor=actor)
        elif ((row.get("state") or {}).get("machine") or {}).get("paused"):
            await self.deployer.control(deployment, "resume", actor=actor)
        else:
            raise ApiError("DeploymentIsNotInReadyState", f"Deployment {deployment} is {row['status']}, not Ready")
        return {}

    async def skip_wait_time_for_instance_termination(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        deployment = deployment_id(body)
        if (await self.deployment_row(deployment)).get("deployment_type") != "BLUE_GREEN":
            raise ApiError(
                "UnsupportedActionForDeploymentType", f"Deployment {deployment} is in-place: it keeps no original fleet"
            )
        row = await self._waiting_row(deployment)
        if row["status"] in NOT_STARTED:
            raise ApiError("DeploymentNotStarted", f"Deployment {deployment} has not started ({row['status']})")
        return await self._end_termination_wait(deployment, row, actor)

    async def _end_termination_wait(self, deployment: str, row: Mapping[str, Any], actor: str) -> dict[str, Any]:
        if current_wait(row) != "termination":
            raise ApiError(
                "DeploymentIsNotInReadyState",
                f"Deployment {deployment} is {row['status']} and not waiting to release its original instances",
            )
        await self.deployer.control(deployment, "continue", actor=actor)
        return {}

    async def put_lifecycle_event_hook_execution_status(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        execution_id, status, deployment = hook_request(body)
        row = await self.deployment_row(deployment) if deployment else None
        if row is not None and self.platform_of_row(row) is Platform.SERVER:
            raise ApiError(
                "UnsupportedActionForDeploymentType",
                f"Deployment {deployment} deploys to hosts, whose agents report hooks themselves",
            )
        try:
            answer = await self.deployer.put_hook_status(execution_id, status, deployment_id=deployment, actor=actor)
        except InvalidLifecycleHookStatus:
            raise ApiError("InvalidLifecycleEventHookExecutionStatus", f"status {status!r} is not accepted") from None
        except LifecycleHookNotFound:
            raise hook_not_waiting(execution_id, deployment) from None
        return {"lifecycleEventHookExecutionId": answer["lifecycleEventHookExecutionId"]}


def create_time_range(value: object) -> tuple[float, float]:
    """ListDeployments' ``createTimeRange`` as (start, end) epoch seconds, both included; a missing bound (or
    range) is open. boto3 sends timestamps as epoch seconds."""
    if value is None:
        return -math.inf, math.inf
    if not isinstance(value, Mapping):
        raise ApiError("InvalidTimeRange", "createTimeRange must be {start, end}")
    bounds = []
    for name, open_end in (("start", -math.inf), ("end", math.inf)):
        bound = value.get(name)
        if bound is None:
            bounds.append(open_end)
        elif isinstance(bound, int | float) and not isinstance(bound, bool) and math.isfinite(bound):
            bounds.append(float(bound))
        else:
            raise ApiError("InvalidTimeRange", f"createTimeRange.{name} {bound!r} is not a time")
    start, end = bounds
    if start > end:
        raise ApiError("InvalidTimeRange", "createTimeRange starts after it ends")
    return start, end


def group_overrides(body: Mapping[str, Any]) -> GroupOverrides | None:
    """CreateDeployment's per-deployment settings: fileExistsBehavior, ignoreApplicationStopFailures,
    autoRollbackConfiguration and overrideAlarmConfiguration (CloudWatch alarms by name)."""
    behavior = body.get("fileExistsBehavior")
    if behavior is not None and behavior not in FILE_EXISTS_BEHAVIORS:
        raise ApiError(
            "InvalidFileExistsBehavior", f"fileExistsBehavior must be one of {', '.join(FILE_EXISTS_BEHAVIORS)}"
        )
    ignore_stop = body.get("ignoreApplicationStopFailures")
    rollback = None
    if isinstance(raw := body.get("autoRollbackConfiguration"), Mapping):
        try:
            events = frozenset(AutoRollbackEvent(e) for e in raw.get("events") or ())
        except ValueError as exc:
            raise ApiError("InvalidAutoRollbackConfig", f"unknown rollback event: {exc}") from None
        enabled = bool(raw.get("enabled"))
        if enabled and not events:
            events = frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE})
        rollback = AutoRollback(enabled, events)
    alarms = None
    if isinstance(raw := body.get("overrideAlarmConfiguration"), Mapping):
        names = [str(a.get("name")) for a in raw.get("alarms") or () if isinstance(a, Mapping) and a.get("name")]
        if len(names) > 10:
            raise ApiError("InvalidAlarmConfig", f"at most 10 alarms, got {len(names)}")
        alarms = AlarmConfiguration(
            enabled=bool(raw.get("enabled")),
            ignore_poll_alarm_failure=bool(raw.get("ignorePollAlarmFailure")),
            alarms=tuple({"name": name, "type": "cloudwatch"} for name in names),
        )
    overrides = GroupOverrides(
        file_exists_behavior=str(behavior) if behavior is not None else None,
        ignore_application_stop_failures=bool(ignore_stop) if ignore_stop is not None else None,
        auto_rollback=rollback,
        alarms=alarms,
    )
    return overrides if overrides.to_json() else None
