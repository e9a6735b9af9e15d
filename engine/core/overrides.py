"""Per-deployment overrides of a group's settings (pure): what CodeDeploy's CreateDeployment may change for one
deployment — ``fileExistsBehavior``, ``ignoreApplicationStopFailures``, ``autoRollbackConfiguration`` and
``alarmConfiguration`` (via ``overrideAlarmConfiguration``).

They are stored with the deployment (as JSON in its spec), so a resumed deployment and its rollback decision use
exactly what was asked for, whatever the config file says later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.core.config.model import AlarmConfiguration, DeploymentGroup
from engine.core.model import AutoRollback, AutoRollbackEvent

FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")


@dataclass(frozen=True, slots=True)
class GroupOverrides:
    file_exists_behavior: str | None = None
    ignore_application_stop_failures: bool | None = None
    auto_rollback: AutoRollback | None = None
    alarms: AlarmConfiguration | None = None

    def __post_init__(self) -> None:
        if self.file_exists_behavior is not None and self.file_exists_behavior not in FILE_EXISTS_BEHAVIORS:
            raise ValueError(f"file_exists_behavior must be one of {', '.join(FILE_EXISTS_BEHAVIORS)}")

    def apply(self, group: DeploymentGroup) -> DeploymentGroup:
        """``group`` with the overridden settings replaced (the rest as configured)."""
        changes: dict[str, Any] = {
            name: value
            for name in ("file_exists_behavior", "ignore_application_stop_failures", "auto_rollback", "alarms")
            if (value := getattr(self, name)) is not None
        }
        return dataclasses.replace(group, **changes) if changes else group

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.file_exists_behavior is not None:
            out["file_exists_behavior"] = self.file_exists_behavior
        if self.ignore_application_stop_failures is not None:
            out["ignore_application_stop_failures"] = self.ignore_application_stop_failures
        if self.auto_rollback is not None:
            out["auto_rollback"] = {
                "enabled": self.auto_rollback.enabled,
                "events": sorted(str(e) for e in self.auto_rollback.events),
            }
        if self.alarms is not None:
            out["alarms"] = {
                "enabled": self.alarms.enabled,
                "ignore_poll_alarm_failure": self.alarms.ignore_poll_alarm_failure,
                "alarms": [dict(a) for a in self.alarms.alarms],
                "poll_seconds": self.alarms.poll_seconds,
            }
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> GroupOverrides:
        data = data or {}
        rollback = data.get("auto_rollback")
        alarms = data.get("alarms")
        return cls(
            file_exists_behavior=data.get("file_exists_behavior"),
            ignore_application_stop_failures=data.get("ignore_application_stop_failures"),
            auto_rollback=AutoRollback(
                bool(rollback["enabled"]), frozenset(AutoRollbackEvent(e) for e in rollback["events"])
            )
            if rollback is not None
            else None,
            alarms=AlarmConfiguration(
                enabled=bool(alarms["enabled"]),
                ignore_poll_alarm_failure=bool(alarms["ignore_poll_alarm_failure"]),
                alarms=tuple(alarms["alarms"]),
                poll_seconds=float(alarms["poll_seconds"]),
            )
            if alarms is not None
            else None,
        )
