"""The composition root: the one place that picks the store and the adapters and hands them to the Deployer.

``deploybot serve`` calls ``assemble_deployer`` with the routers and alarms it built from the config; tests call it
with a fake clock. Nothing in engine/ chooses a concrete store, fleet or AWS runtime for itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from engine.adapters.aws.accounts import AwsAccounts
from engine.adapters.aws.runtime import AwsRuntime
from engine.adapters.clock import SystemClock
from engine.adapters.fleet import Fleet
from engine.core.config.model import EngineConfig
from engine.ports import Clock, TrafficRouter
from engine.runtime.deployer import AlarmFactory, Deployer
from engine.runtime.queue import GroupQueue
from engine.runtime.results import CommandResults
from engine.runtime.revisions import RevisionStore
from engine.store.sqlite import SqliteStore


async def assemble_deployer(
    config: EngineConfig,
    *,
    data_dir: Path,
    clock: Clock | None = None,
    routers: Mapping[str, TrafficRouter] | None = None,
    alarm_factory: AlarmFactory | None = None,
    aws: AwsAccounts | None = None,
) -> Deployer:
    """A Deployer over ``data_dir`` (SQLite, revision bundles, agent tokens), resumed where a previous server
    left off. ``aws``: one set of AWS clients shared with the routers and alarms (made from the config if None)."""
    clock = clock or SystemClock()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await SqliteStore.open(data_dir / "deploybot.db")
    try:
        revisions = RevisionStore(store, data_dir / "revisions", clock)
        results = CommandResults()
        fleet = Fleet(
            store,
            data_dir=data_dir,
            clock=clock,
            bundle_dir=revisions.directory,
            on_result=results.deliver,
            heartbeat_timeout=config.server.heartbeat_timeout,
        )
        platforms = AwsRuntime(config, clock=clock, on_result=results.deliver, revisions=revisions, accounts=aws)
        deployer = Deployer(
            config,
            store=store,
            fleet=fleet,
            platforms=platforms,
            revisions=revisions,
            results=results,
            clock=clock,
            queue=GroupQueue(),
            routers=routers,
            alarm_factory=alarm_factory,
        )
    except BaseException:
        await store.close()
        raise
    try:
        await deployer.open()
    except BaseException:
        await deployer.close()
        raise
    return deployer
