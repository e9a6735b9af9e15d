"""What the Deployer needs from AWS, in one place: the Lambda and ECS drivers, hook executions waiting for their
callbacks, EC2 instances found by tag, and S3 revisions.

Nothing here talks to AWS until a group or a revision asks for it: a server that deploys only to its own agents
never creates a client, and needs no credentials. Hook executions are kept through the store's
``HookExecutionRecords`` port, given by the composition root: ``open`` takes up the ones an earlier server left
waiting, before any deployment resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from engine.adapters.aws.accounts import AwsAccounts
from engine.adapters.aws.hook_executions import HookExecutions
from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.model import Platform, Revision
from engine.ports import Clock, HookExecutionRecords, OnResult, PlatformDriver, RevisionArchive, TrafficRouter

log = logging.getLogger(__name__)


class AwsRuntime:
    def __init__(
        self,
        config: EngineConfig,
        *,
        clock: Clock,
        on_result: OnResult,
        revisions: RevisionArchive,
        hook_records: HookExecutionRecords,
        accounts: AwsAccounts | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.revisions = revisions
        self.accounts = accounts or AwsAccounts(dict(config.aws_accounts))
        self.hooks = HookExecutions(hook_records, clock)
        self._on_result = on_result
        self._drivers: dict[Platform, PlatformDriver] = {}

    async def open(self) -> None:
        """Take up the hook executions an earlier server left waiting (the doors list them at once)."""
        await self.hooks.load()

    def driver(self, platform: Platform) -> PlatformDriver | None:
        """The driver of a Lambda or ECS group (made on first use); None for server groups (agents)."""
        if platform is Platform.SERVER:
            return None
        if platform not in self._drivers:
            if platform is Platform.LAMBDA:
                from engine.adapters.aws.lambda_ import LambdaDriver

                self._drivers[platform] = LambdaDriver(self.accounts, self.hooks, self.clock, self._on_result)
            else:
                from engine.adapters.aws.ecs import EcsDriver

                self._drivers[platform] = EcsDriver(self.accounts, self.hooks, self.clock, self._on_result)
        return self._drivers[platform]

    async def ec2_instances(self, group: DeploymentGroup) -> tuple[str, ...]:
        """Running EC2 instances carrying the group's ``ec2_tags``, by instance id (the agents' host names)."""
        from engine.adapters.aws.ec2 import instances_with_tags

        tags = group.extra.get("ec2_tags") or {}
        clients = self.accounts.clients(str(group.extra.get("aws_account", "default")))
        return await instances_with_tags(clients, dict(tags))  # type: ignore[call-overload]

    def with_green_fleets(self, routers: Mapping[str, TrafficRouter]) -> dict[str, TrafficRouter]:
        """``routers`` with each blue/green group that copies its Auto Scaling group (``green_fleet_provisioning:
        copy_auto_scaling_group``) given an ``AutoScalingGreenFleet`` around its ELBv2 router."""
        from engine.adapters.aws.autoscaling import AutoScalingGreenFleet

        wrapped = dict(routers)
        for group in self.config.groups():
            router = wrapped.get(group.name)
            if router is None or not group.blue_green.copies_auto_scaling_group:
                continue
            clients = self.accounts.clients(str(group.extra.get("aws_account", "default")))
            wrapped[group.name] = AutoScalingGreenFleet(clients, router, clock=self.clock)
        return wrapped

    async def fetch_s3_revision(
        self,
        bucket: str,
        key: str,
        *,
        version: str | None = None,
        etag: str | None = None,
        bundle_type: str | None = None,
        account: str = "default",
        platform: Platform = Platform.SERVER,
    ) -> Revision:
        """Download an S3 revision, check its ETag and sha256, and store it with its location."""
        from engine.adapters.aws.s3 import S3Revisions

        fetcher = S3Revisions(self.accounts.clients(account), self.revisions)
        return await fetcher.fetch(bucket, key, version=version, etag=etag, bundle_type=bundle_type, platform=platform)

    async def fetch_s3_url(
        self, url: str, *, account: str = "default", platform: Platform = Platform.SERVER
    ) -> Revision:
        """``fetch_s3_revision`` of an ``s3://`` revision URL; ValueError when it is not one."""
        from engine.core.s3_urls import parse_s3_revision_url

        location = parse_s3_revision_url(url)
        bucket, key = location["bucket"], location["key"]
        assert bucket and key  # the parser refuses a URL without them
        return await self.fetch_s3_revision(
            bucket, key, version=location["version"], etag=location["etag"], account=account, platform=platform
        )

    async def close(self) -> None:
        """Hook waits end first, recording nothing (the next server waits on), then the AWS clients close."""
        self.hooks.close()
        await self.accounts.close()
