"""The Deployer as the doors see it (bot/: JSON API, agent protocol, Slack, GitHub, CodeDeploy API, pages).

Protocols only: the doors are typed against this structural contract, never against the Deployer class, so they do
not import the runtime's internals and tests can hand the app a fake of the same shape (tests/fake_deployer.py).
Documents (deployments, plans, hosts, locks) are JSON, hence ``dict[str, Any]``.

    DeploymentService    the whole facade: start, read, control deployments; its parts below as read-only members
      release            ReleaseService: promotion, locks, approvals, the queue
      fleet              AgentFleet (engine.ports): the agent protocol's routes and agent tokens
      hooks              HookCallbacks (engine.ports): Lambda/ECS hooks waiting for their status callback
      store              DeploymentRecords: stored deployment rows, the audit log, webhook deliveries
      revisions          RevisionArchive (engine.ports): the stored revision bundles
      registry           Registrations: what the CodeDeploy API registers (configs, instances, revisions)
      tokens             ApiTokenService: per-user API tokens (who is asking), page sessions, the bootstrap token
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.configs import DeploymentConfig
from engine.core.model import Platform, Revision
from engine.core.registrations import ApiApplication, ApiGroup, OnPremInstance, RegisteredRevision, ResourceRef
from engine.core.requests import DeployRequest
from engine.ports import AgentFleet, Clock, EventListener, HookCallbacks, IntentRecords, Notifier, RevisionArchive
from engine.runtime.tokens import ApiToken, BootstrapChange, TokenCheck


class ReleaseService(Protocol):
    """Promotion, environment locks, approvals and the queue (the Deployer's ``release``)."""

    async def promote(
        self,
        application: str,
        source: str,
        target: str,
        *,
        actor: str,
        override: bool = False,
        revision: str | None = None,
    ) -> dict[str, Any]: ...

    async def where(self, application: str) -> dict[str, Any]: ...

    async def lock(
        self,
        application: str,
        environment: str,
        *,
        actor: str,
        reason: str = "",
        expires_in_minutes: float | None = None,
    ) -> dict[str, Any]: ...

    async def unlock(self, application: str, environment: str, *, actor: str) -> dict[str, Any]: ...

    async def locks(self) -> list[dict[str, Any]]: ...

    async def approve(self, deployment_id: str, *, actor: str) -> dict[str, Any]: ...

    async def reject(self, deployment_id: str, *, actor: str, reason: str = "") -> dict[str, Any]: ...

    async def queue(self, application: str | None = None, environment: str | None = None) -> list[dict[str, Any]]: ...


class DeploymentRecords(IntentRecords, Protocol):
    """The stored rows the doors read beside the documents: deployments (CodeDeploy's listings, metrics), the audit
    log (who registered what), webhook deliveries (a redelivered webhook is taken once) and the intents the doors
    took (engine/core/intents.py)."""

    async def get_deployment(self, deployment_id: str) -> dict[str, Any] | None: ...

    async def list_deployments(
        self,
        *,
        application: str | None = None,
        environment: str | None = None,
        group_name: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]: ...

    async def append_log(
        self,
        kind: str,
        *,
        at: float,
        actor: str,
        deployment_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int: ...

    async def record_delivery(self, delivery_id: str, source: str, at: float) -> bool: ...


class Registrations(Protocol):
    """What the CodeDeploy API registers beside the config file: deployment configurations, on-premises instances
    and application revisions."""

    def deployment_configs(self) -> Mapping[str, DeploymentConfig]: ...

    def config_created_at(self, name: str) -> float | None: ...

    async def create_config(self, config: DeploymentConfig) -> None: ...

    async def delete_config(self, name: str) -> None: ...

    def instances(self) -> list[OnPremInstance]: ...

    async def register_instance(
        self, name: str, *, iam_arn: str | None = None, tags: Mapping[str, str] | None = None
    ) -> OnPremInstance: ...

    async def deregister_instance(self, name: str) -> OnPremInstance: ...

    async def add_tags(self, names: Sequence[str], tags: Mapping[str, str]) -> None: ...

    async def remove_tags(self, names: Sequence[str], tags: Iterable[tuple[str, str | None]]) -> None: ...

    def revisions(self, application: str) -> list[RegisteredRevision]: ...

    def revision(self, application: str, location: Mapping[str, Any]) -> RegisteredRevision | None: ...

    def location_of(self, application: str, sha256: str) -> Mapping[str, Any] | None: ...

    async def register_revision(
        self,
        application: str,
        location: Mapping[str, Any],
        *,
        sha256: str | None = None,
        description: str | None = None,
    ) -> RegisteredRevision: ...

    async def mark_used(self, application: str, location: Mapping[str, Any], *, sha256: str) -> RegisteredRevision: ...

    def api_application(self, name: str) -> ApiApplication | None: ...

    def api_group(self, name: str) -> ApiGroup | None: ...

    async def create_application(
        self, name: str, platform: Platform, *, tags: Mapping[str, str] | None = None
    ) -> ApiApplication: ...

    async def rename_application(self, name: str, new_name: str) -> ApiApplication: ...

    async def delete_application(self, name: str) -> bool: ...

    async def create_group(
        self, application: str, name: str, definition: Mapping[str, Any], *, tags: Mapping[str, str] | None = None
    ) -> DeploymentGroup: ...

    async def update_group(
        self, application: str, name: str, request: Mapping[str, Any], *, new_name: str | None = None
    ) -> DeploymentGroup: ...

    async def delete_group(self, application: str, name: str) -> bool: ...

    def tags_of(self, resource: ResourceRef) -> Mapping[str, str]: ...

    async def tag_resource(self, resource: ResourceRef, tags: Mapping[str, str]) -> None: ...

    async def untag_resource(self, resource: ResourceRef, keys: Iterable[str]) -> None: ...

    async def store_inline_appspec(self, content: str, platform: Platform) -> Revision: ...


class ApiTokenService(Protocol):
    """Per-user API tokens (engine/runtime/tokens.py): the doors learn who is asking from a credential, checked
    against the store on every request, so a revocation or an expiry counts at once on every server."""

    async def create(
        self, user: str, *, name: str, expires_in: float | None = None, actor: str = "api"
    ) -> tuple[ApiToken, str]:
        """The new token and its plaintext, shown once; ValueError for a bad user, name or lifetime."""

    async def authenticate(self, token: str) -> TokenCheck: ...

    async def start_session(self, token: str) -> TokenCheck:
        """``authenticate``, with the page session cookie's value on success."""

    async def resume_session(self, session: str) -> TokenCheck: ...

    async def list(self, user: str | None = None) -> list[ApiToken]: ...

    async def revoke(self, token_id: str, *, actor: str = "api") -> ApiToken:
        """Raises TokenNotFound (a NotFound) for an unknown id; revoking twice keeps the first time."""

    async def register_bootstrap(self, tokens: Iterable[str], *, source: str | None = None) -> BootstrapChange:
        """Register var/api-token's and DEPLOYBOT_TOKEN's secrets once, revoke this server's bootstrap tokens no
        longer there (``source``: this server's name among servers sharing the store)."""


class DeploymentService(Protocol):
    """What every door needs from the Deployer (engine.runtime.deployer.Deployer).

    Its parts are read-only members, so the Deployer may hold any implementation of them. ``notifiers`` is the list
    a front adds its Notifier to for the app's lifetime (Slack threads, GitHub statuses), ``event_listeners`` the
    one for an EventListener (the pages' metrics)."""

    @property
    def config(self) -> EngineConfig: ...

    @property
    def release(self) -> ReleaseService: ...

    @property
    def fleet(self) -> AgentFleet: ...

    @property
    def hooks(self) -> HookCallbacks: ...

    @property
    def notifiers(self) -> list[Notifier]: ...

    @property
    def event_listeners(self) -> list[EventListener]: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def store(self) -> DeploymentRecords: ...

    @property
    def revisions(self) -> RevisionArchive: ...

    @property
    def registry(self) -> Registrations: ...

    @property
    def tokens(self) -> ApiTokenService: ...

    # -- revisions

    async def store_revision(
        self,
        path: Path,
        *,
        source: str,
        commit: str | None = None,
        application: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...

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
    ) -> Revision: ...

    # -- deployments

    async def start(self, request: DeployRequest) -> dict[str, Any]: ...

    async def plan(self, request: DeployRequest) -> dict[str, Any]: ...

    async def get(self, deployment_id: str) -> dict[str, Any]: ...

    async def history(
        self, application: str, environment: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]: ...

    async def watch(self, deployment_id: str, *, after: int = 0, timeout: float = 25.0) -> dict[str, Any]: ...

    async def event_log(self, deployment_id: str) -> list[dict[str, Any]]: ...

    async def stop(self, deployment_id: str, *, rollback: bool | None = None, actor: str = "cli") -> dict[str, Any]: ...

    async def control(self, deployment_id: str, action: str, *, actor: str = "cli") -> dict[str, Any]: ...

    async def rollback(self, application: str, environment: str, *, actor: str = "cli") -> dict[str, Any]: ...

    async def put_hook_status(
        self, execution_id: str, status: str, *, deployment_id: str | None = None, actor: str = "api"
    ) -> dict[str, Any]: ...

    # -- what there is

    def applications(self) -> list[dict[str, Any]]: ...

    async def hosts(self) -> list[dict[str, Any]]: ...
