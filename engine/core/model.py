"""Frozen value types and enums shared by the whole engine (pure: no I/O).

Names and string values follow CodeDeploy's own spelling (``DeploymentStatus.IN_PROGRESS == "InProgress"``,
``LifecycleEvent.BEFORE_ALLOW_TRAFFIC == "BeforeAllowTraffic"``) so that JSON we emit, the CodeDeploy-compatible API and
users' knowledge of CodeDeploy all agree.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Platform(enum.StrEnum):
    """Compute platform of a deployment group (CodeDeploy's ``computePlatform``, lower-cased as in our YAML)."""

    SERVER = "server"
    LAMBDA = "lambda"
    ECS = "ecs"


class DeploymentType(enum.StrEnum):
    IN_PLACE = "IN_PLACE"
    BLUE_GREEN = "BLUE_GREEN"


class DeploymentStatus(enum.StrEnum):
    """CodeDeploy's deployment statuses, plus ``WaitingApproval`` for our approval gate."""

    CREATED = "Created"
    QUEUED = "Queued"
    WAITING_APPROVAL = "WaitingApproval"
    IN_PROGRESS = "InProgress"
    READY = "Ready"
    BAKING = "Baking"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES: frozenset[DeploymentStatus] = frozenset(
    {DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.STOPPED}
)
"""The statuses a deployment never leaves. Members are str, so a status string read from JSON or SQL tests ``in``
it as well (``"Failed" in FINAL_STATUSES``)."""


class EventStatus(enum.StrEnum):
    """Status of one lifecycle event on one target, and of a target as a whole (CodeDeploy's enums)."""

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    UNKNOWN = "Unknown"
    READY = "Ready"


class LifecycleEvent(enum.StrEnum):
    """Every lifecycle event of every platform, in CodeDeploy spelling."""

    APPLICATION_STOP = "ApplicationStop"
    DOWNLOAD_BUNDLE = "DownloadBundle"
    BEFORE_INSTALL = "BeforeInstall"
    INSTALL = "Install"
    AFTER_INSTALL = "AfterInstall"
    APPLICATION_START = "ApplicationStart"
    VALIDATE_SERVICE = "ValidateService"
    BEFORE_BLOCK_TRAFFIC = "BeforeBlockTraffic"
    BLOCK_TRAFFIC = "BlockTraffic"
    AFTER_BLOCK_TRAFFIC = "AfterBlockTraffic"
    BEFORE_ALLOW_TRAFFIC = "BeforeAllowTraffic"
    ALLOW_TRAFFIC = "AllowTraffic"
    AFTER_ALLOW_TRAFFIC = "AfterAllowTraffic"
    ALLOW_TEST_TRAFFIC = "AllowTestTraffic"
    AFTER_ALLOW_TEST_TRAFFIC = "AfterAllowTestTraffic"


class ScriptErrorCode(enum.IntEnum):
    """The agent's script error codes (reference §1.5), sent with every failed event."""

    SUCCEEDED = 0
    SCRIPT_MISSING = 1
    SCRIPT_NOT_EXECUTABLE = 2
    SCRIPT_TIMED_OUT = 3
    SCRIPT_FAILED = 4
    UNKNOWN_ERROR = 5
    OUTPUTS_LEFT_OPEN = 6
    FAILED_AFTER_RESTART = 7

    @property
    def label(self) -> str:
        return _SCRIPT_ERROR_LABELS[self]


_SCRIPT_ERROR_LABELS = {
    ScriptErrorCode.SUCCEEDED: "Succeeded",
    ScriptErrorCode.SCRIPT_MISSING: "ScriptMissing",
    ScriptErrorCode.SCRIPT_NOT_EXECUTABLE: "ScriptNotExecutable",
    ScriptErrorCode.SCRIPT_TIMED_OUT: "ScriptTimedOut",
    ScriptErrorCode.SCRIPT_FAILED: "ScriptFailed",
    ScriptErrorCode.UNKNOWN_ERROR: "UnknownError",
    ScriptErrorCode.OUTPUTS_LEFT_OPEN: "OutputsLeftOpen",
    ScriptErrorCode.FAILED_AFTER_RESTART: "FailedAfterRestart",
}


class ErrorCode(enum.StrEnum):
    """Deployment-level error codes, a subset of CodeDeploy's ``ErrorInformation.code`` enum."""

    HEALTH_CONSTRAINTS = "HEALTH_CONSTRAINTS"
    HEALTH_CONSTRAINTS_INVALID = "HEALTH_CONSTRAINTS_INVALID"
    NO_INSTANCES = "NO_INSTANCES"
    ALARM_ACTIVE = "ALARM_ACTIVE"
    MANUAL_STOP = "MANUAL_STOP"
    TIMEOUT = "TIMEOUT"
    AGENT_ISSUE = "AGENT_ISSUE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    REVISION_MISSING = "REVISION_MISSING"
    HOOK_EXECUTION_FAILURE = "HOOK_EXECUTION_FAILURE"
    DEPLOYMENT_GROUP_MISSING = "DEPLOYMENT_GROUP_MISSING"
    RESOURCE_LIMIT_EXCEEDED = "RESOURCE_LIMIT_EXCEEDED"
    INVALID_REVISION = "INVALID_REVISION"


class AutoRollbackEvent(enum.StrEnum):
    DEPLOYMENT_FAILURE = "DEPLOYMENT_FAILURE"
    DEPLOYMENT_STOP_ON_ALARM = "DEPLOYMENT_STOP_ON_ALARM"
    DEPLOYMENT_STOP_ON_REQUEST = "DEPLOYMENT_STOP_ON_REQUEST"


ROLLBACK_CREATOR = "codeDeployRollback"
"""``creator`` of a rollback deployment, as in CodeDeploy."""


@dataclass(frozen=True, slots=True)
class AutoRollback:
    enabled: bool = False
    events: frozenset[AutoRollbackEvent] = frozenset()

    def applies_to(self, event: AutoRollbackEvent) -> bool:
        return self.enabled and event in self.events


@dataclass(frozen=True, slots=True)
class Revision:
    """A stored revision bundle: identified by the sha256 of its canonical tar.gz.

    ``location`` is where it was fetched from when not a local file, e.g. ``{"s3": {"bucket", "key", "version",
    "etag", "bundle_type"}}``: hooks see it as BUNDLE_* variables, the CodeDeploy API as ``revisionLocation``."""

    sha256: str
    source: str
    commit: str | None = None
    size: int = 0
    location: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Target:
    """One host (server platform) with the tags it was selected by."""

    name: str
    tags: tuple[tuple[str, str], ...] = field(default=())
