"""Where the revision of a deployment request comes from, and what its AppSpec says.

A request names its revision as a stored bundle (``sha256:<hex>``), an S3 object (``s3://bucket/key``), a git ref
(``git:REF``) or a path (a directory, an archive, or — for Lambda and ECS — just the AppSpec file); without one, the
application's default ``revision`` applies. Lambda and ECS deployments act on what their AppSpec names, so the
stored AppSpec is read and checked against the group before anything is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.errors import DeploymentRefused
from engine.core.model import Platform, Revision
from engine.core.s3_urls import checked_s3_revision_url
from engine.ports import DeploymentStore, PlatformRuntime, RevisionArchive


class RevisionSources:
    def __init__(
        self, config: EngineConfig, store: DeploymentStore, revisions: RevisionArchive, aws: PlatformRuntime
    ) -> None:
        self.config = config
        self.store = store
        self.revisions = revisions
        self.aws = aws

    async def for_request(self, wanted: str | None, group: DeploymentGroup) -> Revision:
        """The revision ``wanted`` names (or the application's default), stored and checked."""
        wanted = wanted or self.config.application(group.application).revision
        if not wanted:
            raise DeploymentRefused(
                f"application {group.application} has no default revision; pass one (--revision DIR)"
            )
        if wanted.startswith("sha256:"):
            return await self.revisions.get(wanted.removeprefix("sha256:"))
        if wanted.startswith("s3://"):
            checked_s3_revision_url(wanted)
            account = str(group.extra.get("aws_account", "default"))
            return await self.aws.fetch_s3_url(wanted, account=account, platform=group.platform)
        base = Path(self.config.base_dir)
        if wanted.startswith("git:"):
            return await self.revisions.add(wanted, git_repo=base, platform=group.platform)
        path = Path(wanted) if Path(wanted).is_absolute() else base / wanted
        return await self.revisions.add(path, label=wanted, platform=group.platform)

    async def appspec_for(self, group: DeploymentGroup, revision: Revision) -> dict[str, Any] | None:
        """The stored AppSpec of a Lambda/ECS revision, checked against the group (None for server groups)."""
        if group.platform is Platform.SERVER:
            return None
        row = await self.store.get_revision(revision.sha256)
        if row is None or row.get("platform") != str(group.platform) or not row.get("appspec"):
            raise DeploymentRefused(
                f"revision {revision.sha256[:12]} is not a {group.platform} revision; {group.name} deploys "
                f"{group.platform} AppSpecs"
            )
        appspec: dict[str, Any] = row["appspec"]
        if group.platform is Platform.LAMBDA:
            for key in ("function_name", "alias"):
                wanted = group.extra.get(key)
                if wanted and appspec.get(key) != wanted:
                    raise DeploymentRefused(
                        f"the AppSpec names {key} {appspec.get(key)!r} but {group.name} deploys {wanted!r}"
                    )
        return appspec
