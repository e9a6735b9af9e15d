"""Applications and deployment groups made through the CodeDeploy API, and the tags of API-made resources (the
tables of migration 0007).

A mixin of the store like ``RegistryRecords``: the SQL lives here, engine/runtime/registry.py keeps the in-memory
mirror and the rules on top of these rows. Written for both SQLite and PostgreSQL (``?`` placeholders, no
``INSERT OR``, no rowid); every timestamp comes from the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from engine.core.model import FINAL_STATUSES
from engine.store.statements import Row, SqlAccess, placeholders


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class ApplicationRecords(SqlAccess):
    """API-made applications (by id, so renaming is one statement) and their groups (by name, unique)."""

    # -- applications

    async def list_api_applications(self) -> list[Row]:
        return await self._fetch("api_applications", "SELECT * FROM api_applications ORDER BY created_at, name")

    async def insert_api_application(
        self, app_id: str, name: str, compute_platform: str, *, tags: Mapping[str, str], at: float
    ) -> Row:
        sql = (
            "INSERT INTO api_applications (id, name, compute_platform, tags, created_at) VALUES (?, ?, ?, ?, ?)"
            " RETURNING *"
        )
        row = await self._fetch_one(
            "api_applications", sql, (app_id, name, compute_platform, _json(tags), at), write=True
        )
        assert row is not None  # RETURNING of an insert yields the row
        return row

    async def rename_api_application(self, app_id: str, name: str) -> Row | None:
        sql = "UPDATE api_applications SET name = ? WHERE id = ? RETURNING *"
        return await self._fetch_one("api_applications", sql, (name, app_id), write=True)

    async def set_api_application_tags(self, app_id: str, tags: Mapping[str, str]) -> Row | None:
        sql = "UPDATE api_applications SET tags = ? WHERE id = ? RETURNING *"
        return await self._fetch_one("api_applications", sql, (_json(tags), app_id), write=True)

    async def delete_api_application(self, app_id: str) -> None:
        """Its groups first: stopped half-way, what is left is an application without groups, never a group
        without its application."""
        await self._change("DELETE FROM api_deployment_groups WHERE application_id = ?", (app_id,))
        await self._change("DELETE FROM api_applications WHERE id = ?", (app_id,))

    # -- deployment groups

    async def list_api_groups(self) -> list[Row]:
        sql = "SELECT * FROM api_deployment_groups ORDER BY created_at, name"
        return await self._fetch("api_deployment_groups", sql)

    async def insert_api_group(
        self, name: str, application_id: str, definition: Mapping[str, Any], *, tags: Mapping[str, str], at: float
    ) -> Row:
        sql = (
            "INSERT INTO api_deployment_groups (name, application_id, definition, tags, created_at)"
            " VALUES (?, ?, ?, ?, ?) RETURNING *"
        )
        params = (name, application_id, _json(definition), _json(tags), at)
        row = await self._fetch_one("api_deployment_groups", sql, params, write=True)
        assert row is not None  # RETURNING of an insert yields the row
        return row

    async def update_api_group(self, name: str, *, new_name: str, definition: Mapping[str, Any]) -> Row | None:
        sql = "UPDATE api_deployment_groups SET name = ?, definition = ? WHERE name = ? RETURNING *"
        return await self._fetch_one("api_deployment_groups", sql, (new_name, _json(definition), name), write=True)

    async def set_api_group_tags(self, name: str, tags: Mapping[str, str]) -> Row | None:
        sql = "UPDATE api_deployment_groups SET tags = ? WHERE name = ? RETURNING *"
        return await self._fetch_one("api_deployment_groups", sql, (_json(tags), name), write=True)

    async def delete_api_group(self, name: str) -> None:
        await self._change("DELETE FROM api_deployment_groups WHERE name = ?", (name,))

    # -- tags of API-made deployment configurations (migration 0007 gave their table a tags column)

    async def set_api_config_tags(self, name: str, tags: Mapping[str, str]) -> Row | None:
        sql = "UPDATE api_deployment_configs SET tags = ? WHERE name = ? RETURNING *"
        return await self._fetch_one("api_deployment_configs", sql, (_json(tags), name), write=True)

    # -- what stops a rename or a delete

    async def unfinished_deployments_in(self, application: str, environments: Sequence[str]) -> list[str]:
        """Ids of deployments of ``application`` in any of ``environments`` that have not ended."""
        if not environments:
            return []
        final = sorted(FINAL_STATUSES)
        sql = (
            f"SELECT id FROM deployments WHERE application = ? AND environment IN ({placeholders(len(environments))})"
            f" AND status NOT IN ({placeholders(len(final))}) ORDER BY created_at"
        )
        rows = await self._fetch("deployments", sql, (application, *environments, *final))
        return [row["id"] for row in rows]
