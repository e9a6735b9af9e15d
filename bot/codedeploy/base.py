"""What every group of CodeDeploy operations shares: request checks, paging, and lookups in CodeDeploy's words.

Each operation is an ``async (body, actor) -> dict | Answer`` method named after the operation in snake case
(``ListApplications`` → ``list_applications``), ``actor`` being the caller's deploybot user (access.py); a class
lists the operations it answers in ``OPERATIONS``, each with the ``Access`` it needs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bot.codedeploy.access import Access, Target
from bot.codedeploy.shapes import ApiError, spec_platform
from bot.github.client import GitHubClient
from engine import (
    Application,
    ApplicationNotFound,
    DeploymentConfig,
    DeploymentGroup,
    DeploymentService,
    EngineError,
    Platform,
    Registrations,
    UnknownDeploymentConfig,
    resolve_config,
)

DEFAULT_PAGE_SIZE = 100
BATCH_LIMIT = 100
HOOK_STATUSES = ("Succeeded", "Failed")  # what a Lambda/ECS hook function may report
_DEPLOYMENT_ID = re.compile(r"^d-[A-Z0-9]{9}$")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response body with extra HTTP headers (for what the service model has no field for)."""

    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


Operation = Callable[[Mapping[str, Any], str], Awaitable[dict[str, Any] | Answer]]


def required(body: Mapping[str, Any], key: str, missing: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(missing, f"{key} is required")
    return value.strip()


def string_list(body: Mapping[str, Any], key: str, missing: str, *, limit: int = BATCH_LIMIT) -> list[str]:
    """A required, non-empty list of strings of at most ``limit`` items (BatchLimitExceeded beyond)."""
    values = body.get(key)
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ApiError(missing, f"{key} must be a non-empty list of names")
    if len(values) > limit:
        raise ApiError("BatchLimitExceeded", f"{key} holds {len(values)} items; the limit is {limit}")
    return [str(v) for v in values]


def checked_id(value: str) -> str:
    if not _DEPLOYMENT_ID.match(value):
        raise ApiError("InvalidDeploymentId", f"{value!r} is not a deployment id (d- and nine letters or digits)")
    return value


def deployment_id(body: Mapping[str, Any]) -> str:
    return checked_id(required(body, "deploymentId", "DeploymentIdRequired"))


def hook_request(body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """PutLifecycleEventHookExecutionStatus's (execution id, status, deployment id or None), checked in that order."""
    execution_id = body.get("lifecycleEventHookExecutionId")
    if not isinstance(execution_id, str) or not execution_id.strip():
        raise ApiError("InvalidLifecycleEventHookExecutionId", "lifecycleEventHookExecutionId is required")
    status = body.get("status")
    if status not in HOOK_STATUSES:
        raise ApiError("InvalidLifecycleEventHookExecutionStatus", f"status {status!r} must be Succeeded or Failed")
    deployment = deployment_id(body) if body.get("deploymentId") is not None else None
    return execution_id.strip(), str(status), deployment


def hook_not_waiting(execution_id: str, deployment: str | None) -> ApiError:
    where = f" of deployment {deployment}" if deployment else ""
    return ApiError(
        "LifecycleEventAlreadyCompleted",
        f"No hook execution {execution_id}{where} is waiting for a status: it was already reported, "
        "timed out, or its deployment ended",
    )


def offset(body: Mapping[str, Any]) -> int:
    token = body.get("nextToken")
    if token is None:
        return 0
    if not isinstance(token, str) or not token.isdigit():
        raise ApiError("InvalidNextToken", f"nextToken {token!r} was not issued by this server")
    return int(token)


def page(items: Sequence[Any], start: int, size: int) -> tuple[list[Any], str | None]:
    chunk = list(items[start : start + size])
    return chunk, str(start + size) if start + size < len(items) else None


def operation_method(name: str) -> str:
    """``ListApplications`` → ``list_applications``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class OperationsBase:
    """State and lookups shared by the operation groups (mixed into CodeDeployOperations).

    ``OPERATIONS`` is each group's own table (CodeDeployOperations reads it from every class of its MRO), not an
    attribute meant to be inherited: every group declares it with this same type."""

    OPERATIONS: ClassVar[Mapping[str, Access]] = {}

    def __init__(
        self,
        deployer: DeploymentService,
        *,
        scratch: Path,
        page_size: int = DEFAULT_PAGE_SIZE,
        github: GitHubClient | None = None,
    ) -> None:
        self.deployer = deployer
        self.page_size = page_size
        self.github = github  # set while the app runs when GitHub credentials exist (GitHub revisions)
        self.scratch = scratch  # where GitHub revisions are downloaded and unpacked

    @property
    def registry(self) -> Registrations:
        return self.deployer.registry

    def paged(self, items: Sequence[Any], body: Mapping[str, Any], key: str) -> dict[str, Any]:
        chunk, token = page(items, offset(body), self.page_size)
        return {key: chunk, **({"nextToken": token} if token else {})}

    def configs(self) -> dict[str, DeploymentConfig]:
        """Custom configurations: the config file's and those created through the API."""
        return {**self.deployer.config.deployment_configs, **self.registry.deployment_configs()}

    def config_named(self, name: str) -> DeploymentConfig:
        try:
            return resolve_config(name, self.configs())
        except UnknownDeploymentConfig:
            raise ApiError(
                "DeploymentConfigDoesNotExist", f"No deployment configuration found for name: {name}"
            ) from None

    def application(self, name: str) -> Application:
        try:
            return self.deployer.config.application(name)
        except ApplicationNotFound:
            raise ApiError("ApplicationDoesNotExist", f"No application found for name: {name}") from None

    def application_of(self, body: Mapping[str, Any]) -> Application:
        return self.application(required(body, "applicationName", "ApplicationNameRequired"))

    def group_of(self, body: Mapping[str, Any]) -> DeploymentGroup:
        """The group named by ``deploymentGroupName`` (its group name or, as a convenience, its environment)."""
        app = self.application_of(body)
        return self.group_in(app, required(body, "deploymentGroupName", "DeploymentGroupNameRequired"))

    def group_in(self, app: Application, name: str) -> DeploymentGroup:
        for environment, group in app.groups.items():
            if name in (group.name, environment) or name.casefold() == environment.casefold():
                return group
        names = ", ".join(g.name for g in app.groups.values())
        raise ApiError("DeploymentGroupDoesNotExist", f"No deployment group {name!r} in {app.name} (has: {names})")

    async def audit(self, kind: str, actor: str, **data: Any) -> None:
        """An audit log entry for a change to what is registered, made by ``actor`` (the caller's user)."""
        await self.deployer.store.append_log(kind, at=self.deployer.clock.now(), actor=actor, data=data)

    async def deployment_row(self, deployment: str) -> dict[str, Any]:
        row = await self.deployer.store.get_deployment(checked_id(deployment))
        if row is None:
            raise ApiError("DeploymentDoesNotExist", f"Deployment {deployment} does not exist")
        return row

    async def group_asked(self, access: Access, body: Mapping[str, Any]) -> DeploymentGroup | None:
        """The deployment group ``access`` asks the policy about (None: no group, or one the config no longer has);
        raises what the operation itself would for a request naming nothing that exists."""
        if access.target is Target.GROUP:
            return self.group_of(body)
        if access.target is Target.DEPLOYMENT:
            return await self.group_of_deployment(deployment_id(body))
        if access.target is Target.HOOK:
            execution_id, _, deployment = hook_request(body)
            if deployment is None:  # found even once answered, so that the same status again is answered alike
                known = await self.deployer.hooks.find(execution_id)
                if known is None:
                    raise hook_not_waiting(execution_id, None)
                deployment = str(known["deployment_id"])
            return await self.group_of_deployment(deployment)
        return None

    def group_of_row(self, row: Mapping[str, Any]) -> DeploymentGroup | None:
        """The stored deployment's group (None: one the config no longer has)."""
        try:
            return self.deployer.config.group(row["application"], row["environment"])
        except EngineError:
            return None

    def platform_of_row(self, row: Mapping[str, Any]) -> Platform:
        """The stored deployment's compute platform: its group's, else what its stored spec was made for."""
        group = self.group_of_row(row)
        return group.platform if group is not None else spec_platform((row.get("state") or {}).get("spec") or {})

    async def group_of_deployment(self, deployment: str) -> DeploymentGroup | None:
        return self.group_of_row(await self.deployment_row(deployment))
