"""What the CodeDeploy API registers, in the store: application revisions, on-premises instances and deployment
configurations (the tables of migration 0003).

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py) like ``ReleaseRecords``: the SQL
lives here, and
engine/runtime/registry.py keeps the in-memory mirror and the rules on top of these rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.core.model import FINAL_STATUSES
from engine.store.statements import Row, SqlAccess, placeholders

_UPSERT_REVISION = (
    "INSERT INTO registered_revisions (application, revision_key, location, revision_sha256, description,"
    " registered_at, first_used_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (application, revision_key) DO UPDATE SET"
    " location = excluded.location,"
    " revision_sha256 = COALESCE(excluded.revision_sha256, registered_revisions.revision_sha256),"
    " description = COALESCE(excluded.description, registered_revisions.description),"
    " first_used_at = COALESCE(registered_revisions.first_used_at, excluded.first_used_at),"
    " last_used_at = COALESCE(excluded.last_used_at, registered_revisions.last_used_at) RETURNING *"
)
_REGISTER_INSTANCE = (
    "INSERT INTO onprem_instances (name, iam_arn, tags, registered_at, deregistered_at)"
    " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (name) DO UPDATE SET iam_arn = excluded.iam_arn,"
    " tags = excluded.tags, registered_at = excluded.registered_at, deregistered_at = NULL RETURNING *"
)


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class RegistryRecords(SqlAccess):
    """Registered revisions, on-premises instances and API-made configurations."""

    # -- deployment configurations

    async def list_api_configs(self) -> list[Row]:
        return await self._fetch("api_deployment_configs", "SELECT * FROM api_deployment_configs")

    async def insert_api_config(
        self, name: str, compute_platform: str, definition: Mapping[str, Any], *, at: float
    ) -> None:
        sql = "INSERT INTO api_deployment_configs (name, compute_platform, definition, created_at) VALUES (?, ?, ?, ?)"
        await self._change(sql, (name, compute_platform, _json(definition), at))

    async def delete_api_config(self, name: str) -> None:
        await self._change("DELETE FROM api_deployment_configs WHERE name = ?", (name,))

    async def unfinished_deployments_using(self, config_name: str) -> list[str]:
        """Ids of deployments with this configuration that have not ended (they still read it)."""
        final = sorted(FINAL_STATUSES)
        sql = f"SELECT id FROM deployments WHERE config_name = ? AND status NOT IN ({placeholders(len(final))})"
        return [row["id"] for row in await self._fetch("deployments", sql, (config_name, *final))]

    # -- on-premises instances

    async def list_onprem_instances(self) -> list[Row]:
        return await self._fetch("onprem_instances", "SELECT * FROM onprem_instances")

    async def register_onprem_instance(
        self, name: str, *, iam_arn: str | None, tags: Mapping[str, str], at: float
    ) -> Row:
        """Insert the instance, or re-register a deregistered one in place; the row as stored."""
        row = await self._fetch_one(
            "onprem_instances", _REGISTER_INSTANCE, (name, iam_arn, _json(tags), at), write=True
        )
        assert row is not None  # RETURNING of an upsert always yields the row
        return row

    async def deregister_onprem_instance(self, name: str, *, at: float) -> Row | None:
        sql = "UPDATE onprem_instances SET deregistered_at = ? WHERE name = ? RETURNING *"
        return await self._fetch_one("onprem_instances", sql, (at, name), write=True)

    async def set_onprem_tags(self, name: str, tags: Mapping[str, str]) -> Row | None:
        sql = "UPDATE onprem_instances SET tags = ? WHERE name = ? RETURNING *"
        return await self._fetch_one("onprem_instances", sql, (_json(tags), name), write=True)

    # -- application revisions

    async def list_registered_revisions(self) -> list[Row]:
        return await self._fetch("registered_revisions", "SELECT * FROM registered_revisions")

    async def upsert_registered_revision(
        self,
        application: str,
        key: str,
        location: Mapping[str, Any],
        *,
        sha256: str | None,
        description: str | None,
        registered_at: float,
        used_at: float | None,
    ) -> Row:
        """Register (or update) a revision location; a None ``sha256`` or ``description`` keeps the stored one,
        ``used_at`` sets the first/last use times."""
        params = (application, key, _json(location), sha256, description, registered_at, used_at, used_at)
        row = await self._fetch_one("registered_revisions", _UPSERT_REVISION, params, write=True)
        assert row is not None  # RETURNING of an upsert always yields the row
        return row
