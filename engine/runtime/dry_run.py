"""The dry run behind ``deploybot plan``: what a deployment of a group would do, from config alone.

It builds the same stages a deployment would (blue/green installs on the idle half of the pool) and lets the
release flow add its gates, diff and ETA; nothing is stored and no host is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.core.configs import config_for_group, traffic_config_for_hosts
from engine.core.model import DeploymentType, Platform
from engine.core.plan import build_plan
from engine.core.snapshot import stages_to_json

if TYPE_CHECKING:
    from engine.runtime.deployer import Deployer, DeployRequest


async def dry_run(deployer: Deployer, request: DeployRequest) -> dict[str, Any]:
    group = deployer.config.group(request.application, request.environment)
    config = config_for_group(
        request.config_name or group.deployment_config,
        group.platform,
        {**deployer.config.deployment_configs, **deployer.registry.deployment_configs()},
    )
    traffic = (
        traffic_config_for_hosts(group.traffic_config, deployer.config.deployment_configs)
        if group.traffic_config and group.platform is Platform.SERVER
        else None
    )
    targets = deployer.blueprint.target_names(group)
    blue_green = group.platform is Platform.SERVER and group.deployment_type is DeploymentType.BLUE_GREEN
    original: tuple[str, ...] = ()
    if blue_green:  # the revision goes to the idle half of the pool, exactly as a deployment would do it
        original, targets = await deployer.blueprint.sides(group)
    plan = build_plan(
        application=group.application,
        environment=group.environment,
        group=group.name,
        platform=group.platform,
        deployment_type=group.deployment_type,
        config=config,
        targets=targets,
        traffic_config=traffic if group.deployment_type is DeploymentType.BLUE_GREEN else None,
        with_load_balancer=deployer.blueprint.stage_options(group, config).with_load_balancer,
    )
    stages = await deployer.blueprint.stages_for(group, config)
    document = {**plan.as_dict(), "stages": stages_to_json(stages)}
    if blue_green:
        document["original"] = list(original)
    return await deployer.release.plan(group, request, document)
