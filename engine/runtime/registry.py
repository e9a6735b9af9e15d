"""What the CodeDeploy API registers besides the config file: application revisions, on-premises instances and
deployment configurations (tables of migration 0003), applications and deployment groups with the tags of what the
API made (migration 0007).

API-made applications reach every holder of the config through ``EngineConfig.applications`` (an ``Applications``
view: the file's, then the registry's), rebuilt here after each change, so ``config.application(name)``,
``config.group(app, env)`` and ``config.groups()`` find them. An API group is the one group of the environment
named like it (engine/core/api_groups.py builds it from its CreateDeploymentGroup definition); an application's
environments are its groups in the order they were made.

The config file stays the source of truth for what it declares: its hosts and configurations are read-only here,
and a name it uses cannot be registered again. Every table is small, so the whole of it is mirrored in memory at
open and after each write: target selection (``instances_matching``) and configuration lookups
(``deployment_configs``) are synchronous reads that never touch SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from engine.core.api_groups import build_group, group_definition, updated_definition
from engine.core.config.model import FROM_API, Application, Applications, DeploymentGroup, EngineConfig
from engine.core.configs import BUILTIN_CONFIGS, DeploymentConfig, validate_custom_config
from engine.core.errors import ApplicationNotFound, EngineError, EnvironmentNotFound, UnknownDeploymentConfig
from engine.core.model import Platform, Revision
from engine.core.registrations import (
    MAX_INSTANCE_TAGS,
    ApiApplication,
    ApiConfig,
    ApiGroup,
    ApplicationExists,
    ConfiguredHostReadOnly,
    ConfiguredResourceReadOnly,
    DeploymentConfigExists,
    DeploymentConfigInUse,
    DeploymentConfigReadOnly,
    DeploymentGroupExists,
    IamArnAlreadyRegistered,
    InstanceAlreadyRegistered,
    InstanceNotRegistered,
    InvalidDeploymentConfig,
    OnPremInstance,
    RegisteredRevision,
    ResourceBusy,
    ResourceKind,
    ResourceRef,
    TagsInvalid,
    TooManyTags,
    application_from_row,
    config_definition,
    config_from_row,
    group_from_row,
    instance_from_row,
    revision_from_row,
    revision_key,
    tags_problem,
)
from engine.ports import ApplicationRecords, Clock, RegistryRecords, RevisionArchive

log = logging.getLogger(__name__)

INLINE_MTIME = 0  # inline AppSpecs are bundled with a fixed mtime, so the same text is always the same sha256


# -- the registry ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Mirror:
    revisions: dict[tuple[str, str], RegisteredRevision] = field(default_factory=dict)
    instances: dict[str, OnPremInstance] = field(default_factory=dict)
    configs: dict[str, ApiConfig] = field(default_factory=dict)
    config_tags: dict[str, Mapping[str, str]] = field(default_factory=dict)
    applications: dict[str, ApiApplication] = field(default_factory=dict)  # by name
    groups: dict[str, ApiGroup] = field(default_factory=dict)  # by group name (unique across deploybot)


class RegistryStore(RegistryRecords, ApplicationRecords, Protocol):
    """The store's part the registry writes through."""


class Registry:
    """The Deployer's ``registry``: writes go to SQLite first, then to the mirror every read uses."""

    def __init__(self, config: EngineConfig, store: RegistryStore, clock: Clock, revisions: RevisionArchive) -> None:
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
            mirror.config_tags[row["name"]] = dict(row.get("tags") or {})
        by_id = {}
        for row in await self.store.list_api_applications():
            application = application_from_row(row)
            mirror.applications[application.name] = application
            by_id[application.id] = application.name
        for row in await self.store.list_api_groups():
            if row["application_id"] in by_id:  # a group left by a delete stopped half-way has no application
                api_group = group_from_row({**row, "application": by_id[row["application_id"]]})
                mirror.groups[api_group.name] = api_group
        self._mirror = mirror
        self._publish()

    # -- applications and deployment groups ------------------------------------------------------------------

    def api_application(self, name: str) -> ApiApplication | None:
        """The API-made application called ``name`` (its exact name), or None (a file's, or none)."""
        return self._mirror.applications.get(name)

    def api_group(self, name: str) -> ApiGroup | None:
        """The API-made deployment group called ``name``, or None."""
        return self._mirror.groups.get(name)

    async def create_application(
        self, name: str, platform: Platform, *, tags: Mapping[str, str] | None = None
    ) -> ApiApplication:
        """Raises ApplicationExists (names are unique ignoring case, as the config file's are) or TagsInvalid."""
        self._check_application_free(name)
        tags = self._checked_tags(tags or {})
        row = await self.store.insert_api_application(
            str(uuid.uuid4()), name, str(platform), tags=tags, at=self.clock.now()
        )
        application = application_from_row(row)
        self._mirror.applications[name] = application
        self._publish()
        return application

    async def rename_application(self, name: str, new_name: str) -> ApiApplication:
        """Raises ApplicationNotFound, ConfiguredResourceReadOnly, ApplicationExists or ResourceBusy. Deployments
        and registered revisions made before stay under the old name."""
        application = self._own_application(name)
        if new_name == application.name:
            return application
        if new_name.casefold() != application.name.casefold():
            self._check_application_free(new_name)
        await self._check_idle(application.name, self._group_names(application.name))
        row = await self.store.rename_api_application(application.id, new_name)
        assert row is not None  # _own_application found it
        renamed = application_from_row(row)
        del self._mirror.applications[application.name]
        self._mirror.applications[new_name] = renamed
        for group in [g for g in self._mirror.groups.values() if g.application == application.name]:
            self._mirror.groups[group.name] = ApiGroup(
                new_name, group.name, group.definition, group.created_at, group.tags
            )
        self._publish()
        return renamed

    async def delete_application(self, name: str) -> bool:
        """Delete an API-made application and its groups; False when there is none (CodeDeploy answers that
        alike). Raises ConfiguredResourceReadOnly or ResourceBusy."""
        try:
            application = self._own_application(name)
        except ApplicationNotFound:
            return False
        groups = self._group_names(application.name)
        await self._check_idle(application.name, groups)
        await self.store.delete_api_application(application.id)
        del self._mirror.applications[application.name]
        for group in groups:
            self._mirror.groups.pop(group, None)
        self._publish()
        return True

    async def create_group(
        self, application: str, name: str, definition: Mapping[str, Any], *, tags: Mapping[str, str] | None = None
    ) -> DeploymentGroup:
        """A group of an API-made application, from the CreateDeploymentGroup members of ``definition`` (others
        are left out); raises ApplicationNotFound, ConfiguredResourceReadOnly (an
        application of the file), DeploymentGroupExists, GroupDefinitionInvalid, UnknownDeploymentConfig or
        TagsInvalid."""
        owner = self._own_application(application)
        self._check_group_free(name)
        definition = group_definition(definition)
        group = build_group(owner.name, owner.platform, name, definition, self._configs())
        tags = self._checked_tags(tags or {})
        row = await self.store.insert_api_group(name, owner.id, definition, tags=tags, at=self.clock.now())
        self._mirror.groups[name] = group_from_row({**row, "application": owner.name})
        self._publish()
        return group

    async def update_group(
        self, application: str, name: str, request: Mapping[str, Any], *, new_name: str | None = None
    ) -> DeploymentGroup:
        """Replace the members ``request`` names (and rename to ``new_name``); raises like ``create_group``, and
        EnvironmentNotFound, and ResourceBusy for a rename while a deployment of the group has not ended."""
        current = self._own_group(application, name)
        owner = self._mirror.applications[current.application]
        target = new_name or current.name
        if target != current.name:
            if target.casefold() != current.name.casefold():
                self._check_group_free(target)
            await self._check_idle(owner.name, [current.name])
        definition = updated_definition(current.definition, request)
        group = build_group(owner.name, owner.platform, target, definition, self._configs())
        row = await self.store.update_api_group(current.name, new_name=target, definition=definition)
        assert row is not None  # _own_group found it
        del self._mirror.groups[current.name]
        self._mirror.groups[target] = group_from_row({**row, "application": owner.name})
        self._publish()
        return group

    async def delete_group(self, application: str, name: str) -> bool:
        """False when there is no such group (CodeDeploy answers that alike); raises ApplicationNotFound,
        ConfiguredResourceReadOnly or ResourceBusy."""
        try:
            current = self._own_group(application, name)
        except EnvironmentNotFound:
            return False
        await self._check_idle(current.application, [current.name])
        await self.store.delete_api_group(current.name)
        del self._mirror.groups[current.name]
        self._publish()
        return True

    # -- tags of what the API made ---------------------------------------------------------------------------

    def tags_of(self, resource: ResourceRef) -> Mapping[str, str]:
        """The resource's tags ({} for one of the config file or a built-in); raises ApplicationNotFound,
        EnvironmentNotFound or UnknownDeploymentConfig when it does not exist."""
        if resource.kind is ResourceKind.DEPLOYMENT_CONFIG:
            known = (BUILTIN_CONFIGS, self.config.deployment_configs, self._mirror.configs)
            if not any(resource.name in names for names in known):
                raise UnknownDeploymentConfig(resource.name)
            return dict(self._mirror.config_tags.get(resource.name, {}))
        app = self.config.application(resource.name)
        if resource.kind is ResourceKind.DEPLOYMENT_GROUP:
            group = _group_named(app, resource.group or "")
            api_group = self._mirror.groups.get(group.name) if app.origin == FROM_API else None
            return dict(api_group.tags) if api_group else {}
        api_app = self._mirror.applications.get(app.name) if app.origin == FROM_API else None
        return dict(api_app.tags) if api_app else {}

    async def tag_resource(self, resource: ResourceRef, tags: Mapping[str, str]) -> None:
        """Add (or change the value of) ``tags``; raises like ``tags_of``, ConfiguredResourceReadOnly,
        DeploymentConfigReadOnly or TagsInvalid."""
        await self._set_resource_tags(resource, {**self.tags_of(resource), **tags})

    async def untag_resource(self, resource: ResourceRef, keys: Iterable[str]) -> None:
        """Remove the tags with these keys (keys it does not have are no error)."""
        gone = set(keys)
        await self._set_resource_tags(resource, {k: v for k, v in self.tags_of(resource).items() if k not in gone})

    async def _set_resource_tags(self, resource: ResourceRef, tags: Mapping[str, str]) -> None:
        tags = self._checked_tags(tags)
        if resource.kind is ResourceKind.DEPLOYMENT_CONFIG:
            if resource.name in BUILTIN_CONFIGS:
                raise DeploymentConfigReadOnly(resource.name, "built-in")
            if resource.name in self.config.deployment_configs:
                raise DeploymentConfigReadOnly(resource.name, "config file")
            await self.store.set_api_config_tags(resource.name, tags)
            self._mirror.config_tags[resource.name] = tags
        elif resource.kind is ResourceKind.DEPLOYMENT_GROUP:
            api_group = self._own_group(resource.name, resource.group or "")
            row = await self.store.set_api_group_tags(api_group.name, tags)
            assert row is not None  # _own_group found it
            self._mirror.groups[api_group.name] = group_from_row({**row, "application": api_group.application})
        else:
            application = self._own_application(resource.name)
            row = await self.store.set_api_application_tags(application.id, tags)
            assert row is not None  # _own_application found it
            self._mirror.applications[application.name] = application_from_row(row)

    # -- the rules behind them

    def _own_application(self, name: str) -> ApiApplication:
        """The API-made application ``name`` (any case); raises ApplicationNotFound or, for the file's,
        ConfiguredResourceReadOnly."""
        app = self.config.application(name)
        if app.origin != FROM_API:
            raise ConfiguredResourceReadOnly(app.name, None, self.config.source)
        return self._mirror.applications[app.name]

    def _own_group(self, application: str, name: str) -> ApiGroup:
        """The API-made group ``name`` (its name or environment, any case) of ``application``; raises
        ApplicationNotFound, EnvironmentNotFound or ConfiguredResourceReadOnly."""
        app = self.config.application(application)
        group = _group_named(app, name)
        if app.origin != FROM_API:
            raise ConfiguredResourceReadOnly(app.name, group.name, self.config.source)
        return self._mirror.groups[group.name]

    def _check_application_free(self, name: str) -> None:
        try:
            found = self.config.application(name)
        except ApplicationNotFound:
            return
        raise ApplicationExists(found.name, in_config=found.origin != FROM_API)

    def _check_group_free(self, name: str) -> None:
        """Group names are unique ignoring case, among the file's groups and every stored API group (one that no
        longer builds too: its row keeps the name)."""
        taken = [(g.name, g.application) for g in self.config.groups()]
        taken += [(g.name, g.application) for g in self._mirror.groups.values()]
        holder = next((app for group, app in taken if group.casefold() == name.casefold()), None)
        if holder is not None:
            raise DeploymentGroupExists(name, holder)

    def _group_names(self, application: str) -> list[str]:
        return [g.name for g in self._mirror.groups.values() if g.application == application]

    async def _check_idle(self, application: str, groups: list[str]) -> None:
        busy = await self.store.unfinished_deployments_in(application, groups)
        if busy:
            what = f"deployment group {groups[0]}" if len(groups) == 1 else f"application {application}"
            raise ResourceBusy(what, tuple(busy))

    @staticmethod
    def _checked_tags(tags: Mapping[str, str]) -> dict[str, str]:
        problem = tags_problem(tags)
        if problem is not None:
            raise TagsInvalid(problem)
        return dict(tags)

    def _configs(self) -> dict[str, DeploymentConfig]:
        return {**self.config.deployment_configs, **self.deployment_configs()}

    def _publish(self) -> None:
        """Rebuild the API-made applications every holder of the config sees (``EngineConfig.applications``)."""
        configs = self._configs()
        built: dict[str, Application] = {}
        for api_app in self._mirror.applications.values():
            groups: dict[str, DeploymentGroup] = {}
            for api_group in self._mirror.groups.values():
                if api_group.application != api_app.name:
                    continue
                try:
                    groups[api_group.name] = build_group(
                        api_app.name, api_app.platform, api_group.name, api_group.definition, configs
                    )
                except EngineError as exc:  # stored by an older deploybot that allowed it: say so, keep the rest
                    log.warning("deployment group %s of %s cannot be used: %s", api_group.name, api_app.name, exc)
            built[api_app.name] = Application(
                name=api_app.name,
                platform=api_app.platform,
                environments=tuple(groups),
                groups=MappingProxyType(groups),
                origin=FROM_API,
            )
        applications = self.config.applications
        assert isinstance(applications, Applications)  # EngineConfig makes it one
        applications.api = MappingProxyType(built)

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


def _group_named(app: Application, name: str) -> DeploymentGroup:
    """The group called ``name`` in ``app`` (its group name or environment, any case); raises EnvironmentNotFound."""
    wanted = name.casefold()
    for environment, group in app.groups.items():
        if wanted in (group.name.casefold(), environment.casefold()):
            return group
    raise EnvironmentNotFound(app.name, name, app.environments)


def _write_inline_tree(tree: Path, content: str) -> None:
    tree.mkdir()
    appspec = tree / "appspec.yml"
    appspec.write_text(content, encoding="utf-8")
    appspec.chmod(0o644)
    tree.chmod(0o755)
    for path in (appspec, tree):
        os.utime(path, (INLINE_MTIME, INLINE_MTIME))
