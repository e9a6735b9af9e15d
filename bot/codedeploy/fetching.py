"""From a CodeDeploy ``RevisionLocation`` to a stored deploybot revision: S3 objects through the Deployer's S3
fetcher, GitHub commits as tarballs through bot/github's client, inline AppSpecs through the registry.

A location that always names the same content (a stored sha256, a commit, inline text, an S3 object pinned by
version or ETag) is fetched once: the registry remembers which bundle it became.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.codedeploy.base import OperationsBase
from bot.codedeploy.locations import inline_content, is_pinned, stored_key
from bot.codedeploy.shapes import ApiError
from bot.github.client import GitHubUnavailable
from bot.github.revisions import revision_from_commit, revision_label
from engine import AdapterError, Application, DeploymentGroup, DeploymentService, Platform, RevisionNotFound

_MISSING_S3 = ("NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404")


class _PlatformSink:
    """bot/github's RevisionSink storing with the group's platform and the commit as the revision's location."""

    def __init__(self, deployer: DeploymentService, platform: Platform, repository: str) -> None:
        self.deployer, self.platform, self.repository = deployer, platform, repository

    async def store_revision(
        self,
        path: Path,
        *,
        source: str,
        commit: str | None = None,
        application: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        committed = ((location or {}).get("github") or {}).get("committed_at")
        where = {"repository": self.repository, "commit": commit}
        stored = {"github": where | ({"committed_at": committed} if committed is not None else {})}
        revision = await self.deployer.revisions.add(
            path, label=source, commit=commit, platform=self.platform, location=stored
        )
        return {"sha256": revision.sha256, "size": revision.size, "source": revision.source}


class RevisionFetching(OperationsBase):
    async def known_sha(self, app: Application, location: Mapping[str, Any]) -> str | None:
        """The bundle a location names without fetching anything remote (RegisterApplicationRevision): a stored
        sha256 (checked), inline AppSpec text (stored now), or what an earlier fetch of a pinned location gave."""
        key = stored_key(location)
        if key is not None:
            if not key.startswith("sha256:"):
                return None  # a path or git:REF is resolved when it is deployed
            try:
                return str((await self.deployer.revisions.get(key.removeprefix("sha256:"))).sha256)
            except RevisionNotFound:
                raise ApiError("RevisionDoesNotExist", f"deploybot has no revision {key}") from None
        content = inline_content(location)
        if content is not None:
            if app.platform is Platform.SERVER:
                raise ApiError(
                    "InvalidRevision",
                    f"{app.name} is a Server application: an inline AppSpec is for Lambda and ECS (use S3 or GitHub)",
                )
            return str((await self.registry.store_inline_appspec(content, app.platform)).sha256)
        return await self._reusable(app, location)

    async def _reusable(self, app: Application, location: Mapping[str, Any]) -> str | None:
        registered = self.registry.revision(app.name, location)
        if registered is None or registered.sha256 is None or not is_pinned(location):
            return None
        try:
            await self.deployer.revisions.get(registered.sha256)
        except RevisionNotFound:
            return None
        return registered.sha256

    async def deployable(self, app: Application, group: DeploymentGroup, location: Mapping[str, Any]) -> str:
        """What DeployRequest.revision should say for ``location``: ``sha256:<hex>``, or a deploybot path/git:REF."""
        key = stored_key(location)
        if key is not None and not key.startswith("sha256:"):
            return key
        known = await self.known_sha(app, location)
        if known is not None:
            return f"sha256:{known}"
        if location["revisionType"] == "S3":
            return f"sha256:{await self._from_s3(group, location['s3Location'])}"
        return f"sha256:{await self._from_github(group, location['gitHubLocation'])}"

    async def _from_s3(self, group: DeploymentGroup, s3: Mapping[str, str]) -> str:
        try:
            revision = await self.deployer.fetch_s3_revision(
                s3["bucket"],
                s3["key"],
                version=s3.get("version"),
                etag=s3.get("eTag"),
                bundle_type=s3.get("bundleType"),
                account=str(group.extra.get("aws_account", "default")),
                platform=group.platform,
            )
        except AdapterError as exc:
            missing = any(code in exc.detail for code in _MISSING_S3)
            where = f"s3://{s3['bucket']}/{s3['key']}"
            raise ApiError("RevisionDoesNotExist" if missing else "InvalidRevision", f"{where}: {exc.detail}") from None
        return str(revision.sha256)

    async def _from_github(self, group: DeploymentGroup, github: Mapping[str, str]) -> str:
        repository, commit = github["repository"], github["commitId"]
        if self.github is None:
            raise ApiError(
                "InvalidGitHubAccountToken",
                "deploybot has no GitHub credentials for GitHub revisions: set GITHUB_TOKEN or GITHUB_APP_ID + key",
            )
        sink = _PlatformSink(self.deployer, group.platform, repository)
        try:
            stored = await revision_from_commit(self.github, sink, repository, commit, scratch=self.scratch)
        except GitHubUnavailable as exc:
            what = revision_label(repository, commit)
            if exc.status in (None, 401, 403):
                raise ApiError("InvalidGitHubAccountToken", f"GitHub refused {what}: {exc}") from None
            kind = "RevisionDoesNotExist" if exc.status == 404 else "InvalidRevision"
            raise ApiError(kind, f"could not download {what}: {exc}") from None
        return str(stored["sha256"])
