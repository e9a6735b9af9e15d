"""The dry run behind ``deploybot plan``: what a deployment of a group would do, from config alone.

It builds the same stages a deployment would (blue/green installs on the idle half of the pool) and lets the
release flow add its gates, diff and ETA; nothing is stored and no host is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.config.model import DeploymentGroup
from engine.core.configs import DeploymentConfig, config_for_group, traffic_config_for_hosts
from engine.core.model import DeploymentType, Platform
from engine.core.plan import build_plan
from engine.core.snapshot import stages_to_json
from engine.runtime.blueprint import Blueprint


async def dry_run(
    group: DeploymentGroup,
    config_name: str | None,
    *,
    configs: Mapping[str, DeploymentConfig],
    file_configs: Mapping[str, DeploymentConfig],
    blueprint: Blueprint,
) -> dict[str, Any]:
    """The plan document of a deployment of ``group`` (before the release flow's gates): ``configs`` are every
    custom configuration (file and API), ``file_configs`` the file's alone (traffic configs for host fleets)."""
    config = config_for_group(config_name or group.deployment_config, group.platform, configs)
    traffic = (
        traffic_config_for_hosts(group.traffic_config, file_configs)
        if group.traffic_config and group.platform is Platform.SERVER
        else None
    )
    blue_green = group.platform is Platform.SERVER and group.deployment_type is DeploymentType.BLUE_GREEN
    # The same stages a deployment would walk (blue/green installs on the idle half of the pool), so the plan
    # cannot disagree with the machine: it is read from them.
    stages = await blueprint.stages_for(group, config)
    plan = build_plan(
        stages,
        application=group.application,
        environment=group.environment,
        group=group.name,
        platform=group.platform,
        deployment_type=group.deployment_type,
        config=config,
        traffic_config=traffic if group.deployment_type is DeploymentType.BLUE_GREEN else None,
    )
    document = {**plan.as_dict(), "stages": stages_to_json(stages)}
    if blue_green:
        document["original"] = list(plan.original)
    return document
