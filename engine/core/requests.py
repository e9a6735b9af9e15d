"""A request to deploy, as every door (CLI, API, Slack, GitHub, CodeDeploy API, promotion) hands it to the engine."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.overrides import GroupOverrides


@dataclass(frozen=True, slots=True)
class DeployRequest:
    application: str
    environment: str
    revision: str | None = None
    config_name: str | None = None
    actor: str = "cli"
    description: str = ""
    ignore_alarms: bool = False  # start even though an alarm is firing, and let no alarm stop the deployment
    source: str = "manual"  # engine.release.rules.RequestSource: manual | merge | promotion | rollback
    promoted_from: str | None = None  # the environment a promotion takes its revision from
    overrides: GroupOverrides | None = None  # CreateDeployment's per-deployment changes to the group's settings
