"""Application revisions through the CodeDeploy API: register, list (sorted, filtered, paged), get, batch get.

Registering records a location with an application (the registry's ``registered_revisions``); nothing remote is
fetched until a deployment needs it. CreateDeployment registers its location too, as CodeDeploy does, so
``firstUsedTime``/``lastUsedTime`` and ``deploymentGroups`` tell where each revision went.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bot.codedeploy.access import ADMIN, READ, Access
from bot.codedeploy.base import required
from bot.codedeploy.fetching import RevisionFetching
from bot.codedeploy.locations import INLINE_TYPES, normalized_location
from bot.codedeploy.shapes import ApiError, revision_info
from engine import Application, RegisteredRevision

REVISION_BATCH_LIMIT = 25
SORT_KEYS = ("registerTime", "firstUsedTime", "lastUsedTime")  # also the GenericRevisionInfo members
Usage = tuple[float | None, float | None, tuple[str, ...]]


class RevisionOperations(RevisionFetching):
    OPERATIONS: ClassVar[Mapping[str, Access]] = {
        "RegisterApplicationRevision": ADMIN,
        "ListApplicationRevisions": READ,
        "GetApplicationRevision": READ,
        "BatchGetApplicationRevisions": READ,
    }

    async def register_application_revision(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        location = normalized_location(body.get("revision"))
        description = body.get("description")
        sha256 = await self.known_sha(app, location)
        await self.registry.register_revision(
            app.name, location, sha256=sha256, description=str(description) if description else None
        )
        inline = location["revisionType"] in INLINE_TYPES  # the AppSpec itself: its sha256 says which
        await self.audit(
            "revision.registered", actor, application=app.name, location=None if inline else location, sha256=sha256
        )
        return {}

    async def _usage(self, app: Application) -> dict[str, Usage]:
        """Per bundle sha256: (first, last) creation time of its deployments and the groups they went to."""
        seen: dict[str, list[Any]] = {}
        for row in await self.deployer.store.list_deployments(application=app.name, limit=None, newest_first=False):
            entry = seen.setdefault(row["revision_sha256"], [row["created_at"], row["created_at"], []])
            entry[1] = row["created_at"]
            if row["group_name"] not in entry[2]:
                entry[2].append(row["group_name"])
        return {sha: (first, last, tuple(groups)) for sha, (first, last, groups) in seen.items()}

    @staticmethod
    def _used(revision: RegisteredRevision, usage: Mapping[str, Usage]) -> Usage:
        return usage.get(revision.sha256 or "", (None, None, ()))

    async def list_application_revisions(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        sort_by = body.get("sortBy") or "registerTime"
        if sort_by not in SORT_KEYS:
            raise ApiError("InvalidSortBy", f"sortBy {sort_by!r} is not one of {', '.join(SORT_KEYS)}")
        order = body.get("sortOrder") or "ascending"
        if order not in ("ascending", "descending"):
            raise ApiError("InvalidSortOrder", f"sortOrder {order!r} is not ascending or descending")
        deployed = body.get("deployed") or "ignore"
        if deployed not in ("include", "exclude", "ignore"):
            raise ApiError("InvalidDeployedStateFilter", f"deployed {deployed!r} is not include, exclude or ignore")
        bucket, prefix = body.get("s3Bucket"), body.get("s3KeyPrefix")
        if prefix and not bucket:
            raise ApiError("BucketNameFilterRequired", "s3KeyPrefix needs s3Bucket")
        usage = await self._usage(app)
        rows: list[tuple[RegisteredRevision, dict[str, Any]]] = []
        for revision in self.registry.revisions(app.name):
            s3 = revision.location.get("s3Location") or {}
            if bucket and (s3.get("bucket") != bucket or not str(s3.get("key", "")).startswith(prefix or "")):
                continue
            info = revision_info(revision, self._used(revision, usage))
            if deployed != "ignore" and ("firstUsedTime" in info) != (deployed == "include"):
                continue
            rows.append((revision, info))
        known = sorted((r for r in rows if sort_by in r[1]), key=lambda r: (r[1][sort_by], r[0].key))
        if order == "descending":
            known.reverse()
        never = [r for r in rows if sort_by not in r[1]]  # never deployed: last whatever the order
        return self.paged([dict(r.location) for r, _ in [*known, *never]], body, "revisions")

    def _registered(self, app: Application, location: Mapping[str, Any]) -> RegisteredRevision:
        found = self.registry.revision(app.name, location)
        if found is None:
            raise ApiError("RevisionDoesNotExist", f"The revision is not registered with application {app.name}")
        return found

    async def get_application_revision(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application_of(body)
        revision = self._registered(app, normalized_location(body.get("revision")))
        return {
            "applicationName": app.name,
            "revision": dict(revision.location),
            "revisionInfo": revision_info(revision, self._used(revision, await self._usage(app))),
        }

    async def batch_get_application_revisions(self, body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        app = self.application(required(body, "applicationName", "ApplicationNameRequired"))
        wanted = body.get("revisions")
        if not isinstance(wanted, list) or not wanted:
            raise ApiError("RevisionRequired", "revisions must list at least one RevisionLocation")
        if len(wanted) > REVISION_BATCH_LIMIT:
            raise ApiError("BatchLimitExceeded", f"at most {REVISION_BATCH_LIMIT} revisions per call")
        usage = await self._usage(app)
        found, missing = [], 0
        for location in (normalized_location(w) for w in wanted):
            revision = self.registry.revision(app.name, location)
            if revision is None:
                missing += 1
                continue
            info = revision_info(revision, self._used(revision, usage))
            found.append({"revisionLocation": dict(revision.location), "genericRevisionInfo": info})
        answer: dict[str, Any] = {"applicationName": app.name, "revisions": found}
        if missing:
            answer["errorMessage"] = f"{missing} of the revisions are not registered with {app.name}"
        return answer
