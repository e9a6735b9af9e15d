"""The registry of API-made things (registered revisions, on-premises instances, deployment configurations) on a
real SQLite file: its rules, and that a reopened registry sees what the previous one wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FakeClock, engine_config
from test_service import CONFIG

from engine.core.config.model import EngineConfig
from engine.core.configs import (
    DeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
    config_for_group,
)
from engine.core.errors import AppSpecInvalid, UnknownDeploymentConfig
from engine.core.model import Platform
from engine.core.registrations import (
    ConfiguredHostReadOnly,
    DeploymentConfigExists,
    DeploymentConfigInUse,
    DeploymentConfigReadOnly,
    IamArnAlreadyRegistered,
    InstanceAlreadyRegistered,
    InstanceNotRegistered,
    InvalidDeploymentConfig,
    TooManyTags,
    revision_key,
)
from engine.runtime.registry import Registry
from engine.runtime.revisions import RevisionStore
from engine.store.sqlite import SqliteStore

LAMBDA_APPSPEC = """version: 0.0
Resources:
  - fn:
      Type: AWS::Lambda::Function
      Properties: {Name: fn, Alias: live, CurrentVersion: "1", TargetVersion: "2"}
"""


@dataclass
class World:
    registry: Registry
    store: SqliteStore
    config: EngineConfig
    root: Path

    async def reopened(self) -> Registry:
        again = Registry(self.config, self.store, self.registry.clock, self.registry.revision_store)
        await again.load()
        return again


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    config = engine_config(CONFIG % {"heartbeat": 60}, tmp_path)
    store = await SqliteStore.open(tmp_path / "var" / "deploybot.db")
    clock = FakeClock(tick=1.0)  # every reading a second after the one before
    registry = Registry(config, store, clock, RevisionStore(store, tmp_path / "var" / "revisions", clock))
    await registry.load()
    try:
        yield World(registry, store, config, tmp_path)
    finally:
        await store.close()


async def test_instances_register_match_by_tags_and_survive_a_reopen(world: World) -> None:
    registry = world.registry
    await registry.register_instance("edge-1", iam_arn="arn:aws:iam::1:user/edge-1", tags={"env": "staging"})
    await registry.register_instance("edge-2", tags={"env": "staging", "role": "web"})
    await registry.register_instance("edge-3", tags={"env": "production"})
    assert registry.instances_matching({"env": "staging"}) == ("edge-1", "edge-2")  # registration order
    assert registry.instances_matching({"env": "staging", "role": "web"}) == ("edge-2",)
    assert registry.instances_matching({}) == ()  # an empty selector matches nothing, as for config hosts
    await registry.deregister_instance("edge-1")
    assert registry.instances_matching({"env": "staging"}) == ("edge-2",)
    again = await world.reopened()
    assert [(i.name, i.registered) for i in again.instances()] == [
        ("edge-1", False),
        ("edge-2", True),
        ("edge-3", True),
    ]
    assert again.instance("edge-1").iam_arn == "arn:aws:iam::1:user/edge-1"  # type: ignore[union-attr]
    await again.register_instance("edge-1", tags={"env": "production"})  # a deregistered name can come back
    assert again.instances_matching({"env": "production"}) == ("edge-3", "edge-1")


@pytest.mark.parametrize(
    ("name", "arn", "error"),
    [
        ("s1", None, InstanceAlreadyRegistered),  # a config host
        ("edge-1", None, InstanceAlreadyRegistered),
        ("edge-9", "arn:aws:iam::1:user/edge-1", IamArnAlreadyRegistered),
    ],
)
async def test_registration_refusals(world: World, name: str, arn: str | None, error: type[Exception]) -> None:
    await world.registry.register_instance("edge-1", iam_arn="arn:aws:iam::1:user/edge-1")
    with pytest.raises(error):
        await world.registry.register_instance(name, iam_arn=arn)
    assert [i.name for i in world.registry.instances()] == ["edge-1"]


async def test_tags_are_added_and_removed_all_or_nothing(world: World) -> None:
    registry = world.registry
    await registry.register_instance("a", tags={"env": "staging", "team": "x"})
    await registry.register_instance("b", tags={"env": "staging"})
    await registry.add_tags(["a", "b"], {"role": "web"})
    assert registry.instances_matching({"role": "web"}) == ("a", "b")
    await registry.remove_tags(["a", "b"], [("team", None), ("env", "production")])  # env=production: no match
    assert dict(registry.instance("a").tags) == {"env": "staging", "role": "web"}  # type: ignore[union-attr]
    many = {f"k{i}": "v" for i in range(9)}
    with pytest.raises(TooManyTags):
        await registry.add_tags(["b", "a"], many)  # b could take them, a cannot: neither changes
    assert dict((await world.reopened()).instance("b").tags) == {"env": "staging", "role": "web"}  # type: ignore[union-attr]
    with pytest.raises(ConfiguredHostReadOnly):
        await registry.add_tags(["s1"], {"x": "y"})
    with pytest.raises(InstanceNotRegistered):
        await registry.deregister_instance("ghost")


async def test_api_configs_are_created_used_and_deleted(world: World) -> None:
    registry = world.registry
    canary = DeploymentConfig(
        "FastCanary", Platform.LAMBDA, traffic_routing=TrafficRouting(TrafficRoutingType.CANARY, 20, 1)
    )
    hosts = DeploymentConfig("TwoAtATime", Platform.SERVER, MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 2))
    await registry.create_config(canary)
    await registry.create_config(hosts)
    merged = {**world.config.deployment_configs, **(await world.reopened()).deployment_configs()}
    assert config_for_group("TwoAtATime", Platform.SERVER, merged) == hosts
    assert merged["FastCanary"] == canary
    assert registry.config_created_at("FastCanary") is not None
    with pytest.raises(DeploymentConfigExists):
        await registry.create_config(hosts)
    with pytest.raises(InvalidDeploymentConfig) as invalid:
        await registry.create_config(
            DeploymentConfig("Bad", Platform.SERVER, MinimumHealthyHosts(MinimumHealthyHostsType.FLEET_PERCENT, 100))
        )
    assert "FLEET_PERCENT" in invalid.value.problems[0]
    await world.store.create_deployment(
        {
            "id": "d-RUNNING01",
            "application": "app",
            "environment": "staging",
            "group_name": "app-staging",
            "status": "InProgress",
            "revision_sha256": "0" * 64,
            "config_name": "TwoAtATime",
            "created_at": 1.0,
        }
    )
    with pytest.raises(DeploymentConfigInUse) as in_use:
        await registry.delete_config("TwoAtATime")
    assert in_use.value.users == ("d-RUNNING01",)
    await registry.delete_config("FastCanary")
    assert "FastCanary" not in (await world.reopened()).deployment_configs()
    with pytest.raises(UnknownDeploymentConfig):
        await registry.delete_config("FastCanary")
    with pytest.raises(DeploymentConfigReadOnly) as builtin:
        await registry.delete_config("CodeDeployDefault.AllAtOnce")
    assert builtin.value.origin == "built-in"


async def test_revisions_are_registered_once_per_location_and_remember_their_use(world: World) -> None:
    registry = world.registry
    s3 = {"revisionType": "S3", "s3Location": {"bucket": "b", "key": "app.tgz", "version": "v1"}}
    first = await registry.register_revision("app", s3, description="first")
    again = await registry.register_revision("app", dict(s3))  # same location: the same registration
    assert (again.registered_at, again.description, again.sha256) == (first.registered_at, "first", None)
    used = await registry.mark_used("app", s3, sha256="a" * 64)
    assert used.sha256 == "a" * 64 and used.first_used_at == used.last_used_at is not None
    later = await registry.mark_used("app", s3, sha256="a" * 64)
    assert later.first_used_at == used.first_used_at < later.last_used_at  # type: ignore[operator]
    assert registry.location_of("app", "a" * 64) == s3
    assert [r.location for r in (await world.reopened()).revisions("app")] == [s3]
    assert registry.revisions("other") == []


def test_inline_appspec_key_uses_the_content_hash() -> None:
    one = {"revisionType": "AppSpecContent", "appSpecContent": {"content": "version: 0.0\n"}}
    two = {"revisionType": "AppSpecContent", "appSpecContent": {"content": "version: 0.0\n", "sha256": "x"}}
    assert revision_key(one) == revision_key(two)
    assert "version" not in revision_key(one)


async def test_inline_appspec_bundles_are_reproducible(world: World) -> None:
    first = await world.registry.store_inline_appspec(LAMBDA_APPSPEC, Platform.LAMBDA)
    second = await world.registry.store_inline_appspec(LAMBDA_APPSPEC, Platform.LAMBDA)
    assert first.sha256 == second.sha256
    row = await world.store.get_revision(first.sha256)
    assert row is not None and row["platform"] == "lambda" and row["appspec"]["function_name"] == "fn"
    with pytest.raises(AppSpecInvalid):
        await world.registry.store_inline_appspec("version: 0.0\nResources: []\n", Platform.LAMBDA)
