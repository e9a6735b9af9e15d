"""What the CodeDeploy API registers besides the config file: application revisions, on-premises instances and
deployment configurations (tables of migration 0003).

The config file stays the source of truth for what it declares: its hosts and configurations are read-only here,
and a name it uses cannot be registered again. Every table is small, so the whole of it is mirrored in memory at
open and after each write: target selection (``instances_matching``) and configuration lookups
(``deployment_configs``) are synchronous reads that never touch SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.core.config.model import EngineConfig
from engine.core.configs import BUILTIN_CONFIGS, DeploymentConfig, validate_custom_config
from engine.core.errors import UnknownDeploymentConfig
from engine.core.model import Platform, Revision
from engine.core.registrations import (
    MAX_INSTANCE_TAGS,
    ApiConfig,
    ConfiguredHostReadOnly,
    DeploymentConfigExists,
    DeploymentConfigInUse,
    DeploymentConfigReadOnly,
    IamArnAlreadyRegistered,
    InstanceAlreadyRegistered,
    InstanceNotRegistered,
    InvalidDeploymentConfig,
    OnPremInstance,
    RegisteredRevision,
    TooManyTags,
    config_definition,
    config_from_row,
    instance_from_row,
    revision_from_row,
    revision_key,
)
from engine.ports import Clock, RegistryRecords, RevisionArchive

INLINE_MTIME = 0  # inline AppSpecs are bundled with a fixed mtime, so the same text is always the same sha256


# -- the registry ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Mirror:
    revisions: dict[tuple[str, str], RegisteredRevision] = field(default_factory=dict)
    instances: dict[str, OnPremInstance] = field(default_factory=dict)
    configs: dict[str, ApiConfig] = field(default_factory=dict)


class Registry:
    """The Deployer's ``registry``: writes go to SQLite first, then to the mirror every read uses."""

    def __init__(self, config: EngineConfig, store: RegistryRecords, clock: Clock, revisions: RevisionArchive) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.revision_store = revisions
        self._mirror = _Mirror()

    async def load(self) -> None:
        """Fill the in-memory mirror from the tables (once, at open)."""
        mirror = _Mirror()
        for row in await self.store.list_registered_revisions():
            revision = revision_from_row(row)
            mirror.revisions[(revision.application, revision.key)] = revision
        for row in await self.store.list_onprem_instances():
            mirror.instances[row["name"]] = instance_from_row(row)
        for row in await self.store.list_api_configs():
            mirror.configs[row["name"]] = ApiConfig(config_from_row(row), row["created_at"])
        self._mirror = mirror

    # -- deployment configurations ---------------------------------------------------------------------------

    def deployment_configs(self) -> Mapping[str, DeploymentConfig]:
        """The configurations created through the API (the file's and the built-ins are not included)."""
        return MappingProxyType({name: api.config for name, api in self._mirror.configs.items()})

    def config_created_at(self, name: str) -> float | None:
        api = self._mirror.configs.get(name)
        return api.created_at if api else None

    async def create_config(self, config: DeploymentConfig) -> None:
        """Raises DeploymentConfigExists (a built-in, file or API name) or InvalidDeploymentConfig."""
        name = config.name
        if name in BUILTIN_CONFIGS or name in self.config.deployment_configs or name in self._mirror.configs:
            raise DeploymentConfigExists(name)
        problems = validate_custom_config(config)
        if problems:
            raise InvalidDeploymentConfig(name, tuple(problems))
        now = self.clock.now()
        await self.store.insert_api_config(name, str(config.compute_platform), config_definition(config), at=now)
        self._mirror.configs[name] = ApiConfig(config, now)

    async def delete_config(self, name: str) -> None:
        """Raises DeploymentConfigReadOnly, UnknownDeploymentConfig or DeploymentConfigInUse."""
        if name in BUILTIN_CONFIGS:
            raise DeploymentConfigReadOnly(name, "built-in")
        if name in self.config.deployment_configs:
            raise DeploymentConfigReadOnly(name, "config file")
        if name not in self._mirror.configs:
            raise UnknownDeploymentConfig(name)
        users = [g.name for g in self.config.groups() if name in (g.deployment_config, g.traffic_config)]
        users += await self.store.unfinished_deployments_using(name)
        if users:
            raise DeploymentConfigInUse(name, tuple(users))
        await self.store.delete_api_config(name)
        self._mirror.configs.pop(name, None)

    # -- on-premises instances -------------------------------------------------------------------------------

    def instance(self, name: str) -> OnPremInstance | None:
        return self._mirror.instances.get(name)

    def instances(self) -> list[OnPremInstance]:
        """Every instance registered through the API (deregistered ones too), by name."""
        return sorted(self._mirror.instances.values(), key=lambda i: i.name)

    def instances_matching(self, tags: Mapping[str, str]) -> tuple[str, ...]:
        """Registered (not deregistered) instances carrying every tag of ``tags``, by registration time."""
        found = [i for i in self._mirror.instances.values() if i.registered and i.matches(tags)]
        return tuple(i.name for i in sorted(found, key=lambda i: (i.registered_at, i.name)))

    async def register_instance(
        self, name: str, *, iam_arn: str | None = None, tags: Mapping[str, str] | None = None
    ) -> OnPremInstance:
        """Register (or re-register a deregistered) instance; raises InstanceAlreadyRegistered,
        IamArnAlreadyRegistered, TooManyTags."""
        if name in self.config.hosts:
            raise InstanceAlreadyRegistered(name, in_config=True)
        known = self._mirror.instances.get(name)
        if known is not None and known.registered:
            raise InstanceAlreadyRegistered(name)
        if iam_arn is not None:
            holder = next(
                (i.name for i in self._mirror.instances.values() if i.registered and i.iam_arn == iam_arn), None
            )
            if holder is not None:
                raise IamArnAlreadyRegistered(iam_arn, holder)
        tags = dict(tags or {})
        if len(tags) > MAX_INSTANCE_TAGS:
            raise TooManyTags(name, len(tags))
        row = await self.store.register_onprem_instance(name, iam_arn=iam_arn, tags=tags, at=self.clock.now())
        return self._remember(row)

    async def deregister_instance(self, name: str) -> OnPremInstance:
        """Raises ConfiguredHostReadOnly or InstanceNotRegistered (also for one deregistered before)."""
        self._registered(name)
        row = await self.store.deregister_onprem_instance(name, at=self.clock.now())
        assert row is not None  # _registered found it
        return self._remember(row)

    async def add_tags(self, names: Sequence[str], tags: Mapping[str, str]) -> None:
        """Add (or change the value of) ``tags`` on every instance, all or none; raises like ``deregister``, and
        TooManyTags."""
        changed = {}
        for name in names:
            merged = {**self._registered(name).tags, **tags}
            if len(merged) > MAX_INSTANCE_TAGS:
                raise TooManyTags(name, len(merged))
            changed[name] = merged
        await self._set_tags(changed)

    async def remove_tags(self, names: Sequence[str], tags: Iterable[tuple[str, str | None]]) -> None:
        """Remove each ``(key, value)`` tag (``value`` None: whatever its value) from every instance."""
        wanted = list(tags)
        changed = {}
        for name in names:
            current = self._registered(name).tags
            changed[name] = {
                k: v for k, v in current.items() if not any(k == key and value in (None, v) for key, value in wanted)
            }
        await self._set_tags(changed)

    async def _set_tags(self, changed: Mapping[str, Mapping[str, str]]) -> None:
        # Every instance was checked before the first write, so a refusal never leaves half of them changed.
        for name, tags in changed.items():
            row = await self.store.set_onprem_tags(name, tags)
            if row is not None:
                self._remember(row)

    def _registered(self, name: str) -> OnPremInstance:
        if name in self.config.hosts:
            raise ConfiguredHostReadOnly(name)
        known = self._mirror.instances.get(name)
        if known is None or not known.registered:
            raise InstanceNotRegistered(name)
        return known

    def _remember(self, row: Mapping[str, Any]) -> OnPremInstance:
        instance = instance_from_row(row)
        self._mirror.instances[instance.name] = instance
        return instance

    # -- application revisions -------------------------------------------------------------------------------

    def revisions(self, application: str) -> list[RegisteredRevision]:
        return [r for (app, _), r in self._mirror.revisions.items() if app == application]

    def revision(self, application: str, location: Mapping[str, Any]) -> RegisteredRevision | None:
        return self._mirror.revisions.get((application, revision_key(location)))

    def location_of(self, application: str, sha256: str) -> Mapping[str, Any] | None:
        """The location a stored revision was last deployed (or registered) from, if the API named one."""
        found = [r for r in self.revisions(application) if r.sha256 == sha256]
        if not found:
            return None
        return max(found, key=lambda r: (r.last_used_at or 0.0, r.registered_at)).location

    async def register_revision(
        self,
        application: str,
        location: Mapping[str, Any],
        *,
        sha256: str | None = None,
        description: str | None = None,
    ) -> RegisteredRevision:
        """Register ``location`` with the application (again: its description and bundle are updated)."""
        return await self._upsert_revision(application, location, sha256, description, None)

    async def mark_used(self, application: str, location: Mapping[str, Any], *, sha256: str) -> RegisteredRevision:
        """A deployment of ``location`` was created: registered if it was not (as CodeDeploy does), times set."""
        return await self._upsert_revision(application, location, sha256, None, self.clock.now())

    async def _upsert_revision(
        self,
        application: str,
        location: Mapping[str, Any],
        sha256: str | None,
        description: str | None,
        used_at: float | None,
    ) -> RegisteredRevision:
        row = await self.store.upsert_registered_revision(
            application,
            revision_key(location),
            location,
            sha256=sha256,
            description=description,
            registered_at=self.clock.now(),
            used_at=used_at,
        )
        revision = revision_from_row(row)
        self._mirror.revisions[(application, revision.key)] = revision
        return revision

    async def store_inline_appspec(self, content: str, platform: Platform) -> Revision:
        """A Lambda/ECS AppSpec given as text becomes a revision bundle holding only ``appspec.yml``.

        The file gets a fixed mtime and mode, so the same text always gives the same sha256. Raises AppSpecInvalid.
        """
        digest = hashlib.sha256(content.encode()).hexdigest()
        with tempfile.TemporaryDirectory(dir=self.revision_store.directory) as scratch:
            tree = Path(scratch) / "tree"
            await asyncio.to_thread(_write_inline_tree, tree, content)
            return await self.revision_store.add(tree, label=f"appspec:{digest[:12]}", platform=platform)


def _write_inline_tree(tree: Path, content: str) -> None:
    tree.mkdir()
    appspec = tree / "appspec.yml"
    appspec.write_text(content, encoding="utf-8")
    appspec.chmod(0o644)
    tree.chmod(0o755)
    for path in (appspec, tree):
        os.utime(path, (INLINE_MTIME, INLINE_MTIME))
