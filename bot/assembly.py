"""The composition root: the one place that picks the store and the adapters and hands them to the Deployer.

``deploybot serve`` calls ``assemble_deployer`` with the routers and alarms it built from the config; tests call it
with a fake clock. Nothing in engine/ chooses a concrete store, fleet or AWS runtime for itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from engine.adapters.aws.accounts import AwsAccounts
from engine.core.config.model import EngineConfig
from engine.ports import Clock, TrafficRouter
from engine.runtime.deployer import AlarmFactory, Deployer


async def assemble_deployer(
    config: EngineConfig,
    *,
    data_dir: Path,
    clock: Clock | None = None,
    routers: Mapping[str, TrafficRouter] | None = None,
    alarm_factory: AlarmFactory | None = None,
    aws: AwsAccounts | None = None,
) -> Deployer:
    """A Deployer over ``data_dir``: its store opened, resumed where a previous server left off."""
    return await Deployer.open(
        config, data_dir=data_dir, clock=clock, routers=routers, alarm_factory=alarm_factory, aws=aws
    )
