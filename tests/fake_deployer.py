"""FakeDeployer and FakeFleet: hand-written stand-ins of engine.DeploymentService and engine.AgentFleet (the
Protocols of engine/service.py), so bot/ routes and the CLI are tested over real HTTP without an engine.

They record every call, raise the real engine errors, and can play a deployment forward (``script``) so the CLI's
``--wait`` follows real long polls. What the tests never reach through the fake (the release flow's gates, hook
callbacks, S3, the CodeDeploy API's registrations) is there in shape only: empty, or refused with an engine error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine import (
    FINAL_STATUSES,
    AdapterError,
    ApplicationNotFound,
    AppSpecInvalid,
    DeploymentConfig,
    DeploymentNotFound,
    DeploymentRefused,
    DeployRequest,
    EngineConfig,
    EnvironmentNotFound,
    InvalidTransition,
    LifecycleHookNotFound,
    NotFound,
    OnPremInstance,
    Platform,
    Problem,
    RegisteredRevision,
    Revision,
    RevisionNotFound,
    UnknownDeploymentConfig,
    parse_config,
)
from engine.ports import EventListener, Notifier
from engine.runtime.tokens import ApiTokens

EVENTS = ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "ApplicationStart", "ValidateService")
CONFIG = """
hosts:
  - {name: web-1}
  - {name: web-2}
applications:
  hello:
    environments: [staging, production]
    deployment_groups:
      staging: {targets: {hosts: [web-1, web-2]}}
      production: {targets: {hosts: [web-1, web-2]}}
  api:
    environments: [production]
    deployment_groups:
      production: {targets: {hosts: [web-1, web-2]}}
"""


class FakeFleet:
    """Per-host command queues; tokens are ``token-<host>``."""

    def __init__(self, hosts: tuple[str, ...] = ("web-1", "web-2"), bundle_dir: Path | None = None) -> None:
        self.tokens = {f"token-{host}": host for host in hosts}
        self.bundle_dir = bundle_dir
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.owners: dict[int, str] = {}
        self.results: list[tuple[str, int, dict[str, Any]]] = []
        self.finished: set[int] = set()
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        self.waits: list[float] = []
        self.released: list[int] = []

    def enqueue(self, host: str, command: dict[str, Any]) -> None:
        self.owners[command["id"]] = host
        self._queue(host).put_nowait(command)

    def _queue(self, host: str) -> asyncio.Queue[dict[str, Any]]:
        return self.queues.setdefault(host, asyncio.Queue())

    def authenticate(self, token: str) -> str | None:
        return self.tokens.get(token)

    def token_for(self, host: str) -> str:
        return f"token-{host}"

    def has_token(self, host: str) -> bool:
        return host in self.tokens.values()

    async def bundle_for(self, host: str, sha256: str) -> Path | None:
        return self.bundle_path(sha256)

    def revoke_token(self, host: str) -> bool:
        return self.tokens.pop(f"token-{host}", None) is not None

    async def next_command(self, host: str, *, wait: float, runs: bool = False) -> dict[str, Any] | None:
        self.waits.append(wait)
        queue = self._queue(host)
        if not queue.empty():  # like the real Fleet: claim first, then wait
            return queue.get_nowait()
        try:
            return await asyncio.wait_for(queue.get(), wait)
        except TimeoutError:
            return None

    async def release(self, host: str, command_id: int) -> None:
        self.released.append(command_id)

    async def report_result(
        self, host: str, command_id: int, result: dict[str, Any], *, then: int | None = None
    ) -> bool:
        """Record a result; never hands on a run's next command (False: the agent polls for it)."""
        if self.owners.get(command_id) != host:
            raise NotFound(f"no command {command_id} for host {host}")
        if command_id in self.finished:
            return False
        self.finished.add(command_id)
        self.results.append((host, command_id, result))
        return False

    async def heartbeat(self, host: str, info: Mapping[str, Any]) -> None:
        self.heartbeats.append((host, dict(info)))

    def bundle_path(self, sha256: str) -> Path | None:
        if self.bundle_dir is None:
            return None
        path = self.bundle_dir / f"{sha256}.tar.gz"
        return path if path.exists() else None


class FakeClock:
    """Engine time that moves one second per reading, so ``created_at`` and friends are distinct and predictable."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.at = start

    def now(self) -> float:
        self.at += 1
        return self.at

    def monotonic(self) -> float:
        return self.at

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeRevisions:
    """Uploaded bundles by sha256 (tests iterate it); ``add``/``get`` are the RevisionArchive side."""

    def __init__(self) -> None:
        self.bundles: dict[str, bytes] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self.bundles)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self.bundles

    def keep(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.bundles[sha] = data
        return sha

    async def add(
        self,
        source: str | Path,
        *,
        label: str | None = None,
        platform: Platform = Platform.SERVER,
        commit: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> Revision:
        data = Path(source).read_bytes()
        return Revision(self.keep(data), label or str(source), commit, len(data), location)

    async def get(self, sha256: str) -> Revision:
        if sha256 not in self.bundles:
            raise RevisionNotFound(sha256)
        return Revision(sha256, "fake", None, len(self.bundles[sha256]))


_UNCHANGED: Any = object()


class FakeRecords:
    """The fake's deployments as stored rows, plus the audit log, webhook deliveries and API token rows (in memory,
    behind the real engine ApiTokens, so the doors' token checks are the real ones)."""

    def __init__(self, deployments: Mapping[str, dict[str, Any]]) -> None:
        self.deployments = deployments
        self.log: list[dict[str, Any]] = []
        self.deliveries: set[str] = set()
        self.api_tokens: dict[str, dict[str, Any]] = {}
        self.intents: dict[str, dict[str, Any]] = {}

    # -- engine.ports.IntentRecords (in memory, with the store's one-row-per-key and compare-and-move)

    async def add_intent(
        self,
        key: str,
        *,
        source: str,
        kind: str,
        payload: Mapping[str, Any],
        at: float,
        scope: str | None = None,
        actor: str | None = None,
        state: str = "pending",
        not_before: float | None = None,
    ) -> tuple[dict[str, Any], bool]:
        if key in self.intents:
            return dict(self.intents[key]), False
        self.intents[key] = {
            "seq": len(self.intents) + 1,
            "key": key,
            "source": source,
            "kind": kind,
            "scope": scope,
            "actor": actor,
            "state": state,
            "payload": dict(payload),
            "outcome": None,
            "attempts": 0,
            "created_at": at,
            "updated_at": at,
            "not_before": not_before,
        }
        return dict(self.intents[key]), True

    async def get_intent(self, key: str) -> dict[str, Any] | None:
        row = self.intents.get(key)
        return None if row is None else dict(row)

    async def move_intent(
        self,
        key: str,
        state: str,
        *,
        at: float,
        only_from: Collection[str] | None = None,
        outcome: Mapping[str, Any] | None = _UNCHANGED,
        not_before: float | None = _UNCHANGED,
        attempt: bool = False,
    ) -> dict[str, Any] | None:
        row = self.intents.get(key)
        if row is None or (only_from is not None and row["state"] not in only_from):
            return None
        row.update(state=state, updated_at=at)
        if outcome is not _UNCHANGED:
            row["outcome"] = None if outcome is None else dict(outcome)
        if not_before is not _UNCHANGED:
            row["not_before"] = not_before
        if attempt:
            row["attempts"] += 1
        return dict(row)

    async def list_intents(
        self,
        *,
        source: str | None = None,
        kind: str | None = None,
        scope: str | None = None,
        states: Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        rows = [
            dict(r)
            for r in self.intents.values()
            if (source is None or r["source"] == source)
            and (kind is None or r["kind"] == kind)
            and (scope is None or r["scope"] == scope)
            and (states is None or r["state"] in states)
        ]
        return rows[:limit] if limit is not None else rows

    # -- engine.ports.TokenRecords

    async def insert_api_token(
        self,
        token_id: str,
        *,
        user: str,
        name: str,
        token_sha256: str,
        created_at: float,
        expires_at: float | None = None,
    ) -> bool:
        if token_id in self.api_tokens or await self.api_token_by_hash(token_sha256) is not None:
            return False
        self.api_tokens[token_id] = {
            "id": token_id,
            "user": user,
            "name": name,
            "token_sha256": token_sha256,
            "created_at": created_at,
            "expires_at": expires_at,
            "revoked_at": None,
            "last_used_at": None,
        }
        return True

    async def api_token_by_hash(self, token_sha256: str) -> dict[str, Any] | None:
        row = next((r for r in self.api_tokens.values() if r["token_sha256"] == token_sha256), None)
        return None if row is None else dict(row)

    async def get_api_token(self, token_id: str) -> dict[str, Any] | None:
        row = self.api_tokens.get(token_id)
        return None if row is None else dict(row)

    async def list_api_tokens(self, *, user: str | None = None) -> list[dict[str, Any]]:
        rows = [dict(r) for r in self.api_tokens.values() if user in (None, r["user"])]
        return sorted(rows, key=lambda r: (r["created_at"], r["id"]))

    async def revoke_api_token(self, token_id: str, *, at: float) -> dict[str, Any] | None:
        row = self.api_tokens.get(token_id)
        if row is not None and row["revoked_at"] is None:
            row["revoked_at"] = at
        return None if row is None else dict(row)

    async def touch_api_token(self, token_id: str, *, at: float) -> None:
        row = self.api_tokens[token_id]
        row["last_used_at"] = max(at, row["last_used_at"] or at)

    @staticmethod
    def _row(doc: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": doc["id"],
            "application": doc["application"],
            "environment": doc["environment"],
            "group_name": doc["group"],
            "status": doc["status"],
            "revision_sha256": doc["revision"]["sha256"],
            "created_by": doc["created_by"],
            "created_at": doc["created_at"],
            "state": {},
        }

    async def get_deployment(self, deployment_id: str) -> dict[str, Any] | None:
        doc = self.deployments.get(deployment_id)
        return None if doc is None else self._row(doc)

    async def list_deployments(
        self,
        *,
        application: str | None = None,
        environment: str | None = None,
        group_name: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        statuses = (status,) if isinstance(status, str) else status
        rows = [
            self._row(doc)
            for doc in self.deployments.values()
            if application in (None, doc["application"])
            and environment in (None, doc["environment"])
            and group_name in (None, doc["group"])
            and (statuses is None or doc["status"] in statuses)
        ]
        rows.sort(key=lambda row: row["created_at"], reverse=newest_first)
        return rows if limit is None else rows[:limit]

    async def append_log(
        self,
        kind: str,
        *,
        at: float,
        actor: str,
        deployment_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        entry = {"kind": kind, "at": at, "actor": actor, "deployment_id": deployment_id, "data": data}
        self.log.append({"id": len(self.log) + 1, **entry})
        return len(self.log)

    async def record_delivery(self, delivery_id: str, source: str, at: float) -> bool:
        first = delivery_id not in self.deliveries
        self.deliveries.add(delivery_id)
        return first


class FakeRelease:
    """No gates: nothing is locked or queued. Promotion, locks and approvals are refused (the real release flow is
    tested with the real Deployer in tests/test_release_api.py)."""

    @staticmethod
    def _refused(what: str) -> DeploymentRefused:
        return DeploymentRefused(f"FakeDeployer has no release flow: {what}")

    async def promote(
        self,
        application: str,
        source: str,
        target: str,
        *,
        actor: str,
        override: bool = False,
        revision: str | None = None,
    ) -> dict[str, Any]:
        raise self._refused("promote")

    async def where(self, application: str) -> dict[str, Any]:
        raise self._refused("where")

    async def lock(
        self,
        application: str,
        environment: str,
        *,
        actor: str,
        reason: str = "",
        expires_in_minutes: float | None = None,
    ) -> dict[str, Any]:
        raise self._refused("lock")

    async def unlock(self, application: str, environment: str, *, actor: str) -> dict[str, Any]:
        raise self._refused("unlock")

    async def locks(self) -> list[dict[str, Any]]:
        return []

    async def approve(self, deployment_id: str, *, actor: str) -> dict[str, Any]:
        raise self._refused("approve")

    async def reject(self, deployment_id: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        raise self._refused("reject")

    async def queue(self, application: str | None = None, environment: str | None = None) -> list[dict[str, Any]]:
        return []


class FakeHooks:
    """No Lambda/ECS hook ever waits for its callback."""

    def pending(self, deployment_id: str | None = None) -> list[dict[str, Any]]:
        return []

    async def find(self, execution_id: str) -> dict[str, Any] | None:
        return None


class FakeRegistry:
    """Nothing registered through the CodeDeploy API, and nothing can be."""

    @staticmethod
    def _refused(what: str) -> DeploymentRefused:
        return DeploymentRefused(f"FakeDeployer registers nothing: {what}")

    def deployment_configs(self) -> Mapping[str, DeploymentConfig]:
        return {}

    def config_created_at(self, name: str) -> float | None:
        return None

    async def create_config(self, config: DeploymentConfig) -> None:
        raise self._refused("create_config")

    async def delete_config(self, name: str) -> None:
        raise self._refused("delete_config")

    def instances(self) -> list[OnPremInstance]:
        return []

    async def register_instance(
        self, name: str, *, iam_arn: str | None = None, tags: Mapping[str, str] | None = None
    ) -> OnPremInstance:
        raise self._refused("register_instance")

    async def deregister_instance(self, name: str) -> OnPremInstance:
        raise self._refused("deregister_instance")

    async def add_tags(self, names: Sequence[str], tags: Mapping[str, str]) -> None:
        raise self._refused("add_tags")

    async def remove_tags(self, names: Sequence[str], tags: Iterable[tuple[str, str | None]]) -> None:
        raise self._refused("remove_tags")

    def revisions(self, application: str) -> list[RegisteredRevision]:
        return []

    def revision(self, application: str, location: Mapping[str, Any]) -> RegisteredRevision | None:
        return None

    def location_of(self, application: str, sha256: str) -> Mapping[str, Any] | None:
        return None

    async def register_revision(
        self,
        application: str,
        location: Mapping[str, Any],
        *,
        sha256: str | None = None,
        description: str | None = None,
    ) -> RegisteredRevision:
        raise self._refused("register_revision")

    async def mark_used(self, application: str, location: Mapping[str, Any], *, sha256: str) -> RegisteredRevision:
        raise self._refused("mark_used")

    async def store_inline_appspec(self, content: str, platform: Platform) -> Revision:
        raise self._refused("store_inline_appspec")


class FakeDeployer:
    """Applications ``hello`` (staging, production) and ``api`` (production); hosts web-1 and web-2.

    ``script`` decides what a started deployment does on its own: None (stays Created), "succeed" or "fail".
    Uploaded bundles whose bytes start with ``b"bad"`` or whose source says "broken" have an invalid AppSpec.
    ``tokens`` is the real ApiTokens over in-memory rows: the app registers its bootstrap token (as deploybot-admin)
    when it starts, and ``token_for(user)`` makes a token a test acts as someone else with.
    """

    def __init__(self, *, fleet: FakeFleet | None = None, script: str | None = None, step: float = 0.01) -> None:
        self.config: EngineConfig = parse_config(CONFIG)
        self.fleet = fleet or FakeFleet()
        self.script = script
        self.step = step
        self.apps = {"hello": ("staging", "production"), "api": ("production",)}
        self.calls: list[tuple[Any, ...]] = []
        self.revisions = FakeRevisions()
        self.deployments: dict[str, dict[str, Any]] = {}
        self.clock = FakeClock()
        self.store = FakeRecords(self.deployments)
        self.tokens = ApiTokens(self.store, self.clock)  # type: ignore[arg-type]  # the token rows and the log only
        self.release = FakeRelease()
        self.hooks = FakeHooks()
        self.registry = FakeRegistry()
        self.notifiers: list[Notifier] = []
        self.event_listeners: list[EventListener] = []
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- helpers for tests --------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock.now()

    async def token_for(self, user: str, *, name: str = "test") -> str:
        """A fresh API token of ``user`` (its plaintext)."""
        _, plaintext = await self.tokens.create(user, name=name)
        return plaintext

    def advance(self, deployment_id: str, **changes: Any) -> dict[str, Any]:
        deployment = self.deployments[deployment_id]
        deployment.update(changes)
        deployment["version"] += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return deployment

    def set_event(self, deployment_id: str, host: str, event: str, status: str, **extra: Any) -> None:
        deployment = self.deployments[deployment_id]
        for target in deployment["targets"]:
            if target["name"] == host:
                for item in target["events"]:
                    if item["name"] == event:
                        item.update(status=status, **extra)
                statuses = {e["status"] for e in target["events"]}
                target["status"] = next(
                    (s for s in ("Failed", "InProgress") if s in statuses),
                    "Succeeded" if statuses == {"Succeeded"} else "Pending",
                )
        self.advance(deployment_id)

    def _resolve(self, application: str, environment: str) -> tuple[str, str]:
        app = next((a for a in self.apps if a.casefold() == application.casefold()), None)
        if app is None:
            raise ApplicationNotFound(application, tuple(self.apps))
        env = next((e for e in self.apps[app] if e.casefold() == environment.casefold()), None)
        if env is None:
            raise EnvironmentNotFound(app, environment, self.apps[app])
        return app, env

    def _create(self, application: str, environment: str, revision: str, actor: str, **extra: Any) -> dict[str, Any]:
        ident = f"d-{len(self.deployments) + 1:09d}"
        deployment = {
            "id": ident,
            "application": application,
            "environment": environment,
            "group": f"{application}-{environment}",
            "status": "Created",
            "revision": {"sha256": revision, "source": "fake", "commit": None},
            "config": extra.pop("config", None) or "CodeDeployDefault.OneAtATime",
            "deployment_type": "IN_PLACE",
            "created_by": actor,
            "created_at": self._now(),
            "started_at": None,
            "ended_at": None,
            "error": None,
            "rollback": {"of": extra.pop("rollback_of", None), "by": None},
            "version": 1,
            "queue_position": None,
            "targets": [
                {"name": host, "status": "Pending", "events": [_event(name) for name in EVENTS]}
                for host in ("web-1", "web-2")
            ],
            "traffic": None,
            **extra,
        }
        self.deployments[ident] = deployment
        if self.script is not None:
            task = asyncio.get_running_loop().create_task(self._play(ident, self.script))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return deployment

    async def _play(self, ident: str, outcome: str) -> None:
        await asyncio.sleep(self.step)
        self.advance(ident, status="InProgress", started_at=self._now())
        for host in ("web-1", "web-2"):
            for event in EVENTS:
                await asyncio.sleep(self.step)
                failing = outcome == "fail" and host == "web-2" and event == "ValidateService"
                self.set_event(ident, host, event, "InProgress")
                if failing:
                    self.set_event(
                        ident,
                        host,
                        event,
                        "Failed",
                        error_code=1,
                        message="script failed",
                        log_tail="curl: (7) Failed to connect to 127.0.0.1 port 9102",
                    )
                    error = {"code": "HEALTH_CONSTRAINTS", "message": "ValidateService failed on web-2"}
                    self.advance(ident, status="Failed", ended_at=self._now(), error=error)
                    return
                self.set_event(ident, host, event, "Succeeded")
        self.advance(ident, status="Succeeded", ended_at=self._now())

    # -- the Deployer contract ----------------------------------------------------------------------------------

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def store_revision(
        self,
        path: Path,
        *,
        source: str,
        commit: str | None = None,
        application: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = path.read_bytes()
        self.calls.append(("store_revision", source, data))
        if data.startswith(b"bad") or "broken" in source:
            raise AppSpecInvalid([Problem("appspec.yml", 3, 5, "unknown key 'hoks' (did you mean 'hooks'?)")])
        sha = self.revisions.keep(data)
        return {"sha256": sha, "size": len(data), "source": source}

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
        self.calls.append(("fetch_s3_revision", bucket, key))
        raise AdapterError("s3", "FakeDeployer reaches no S3")

    async def start(self, request: DeployRequest) -> dict[str, Any]:
        self.calls.append(("start", request))
        app, env = self._resolve(request.application, request.environment)
        if request.config_name == "Nope":
            raise UnknownDeploymentConfig(request.config_name)
        if app == "api":
            raise DeploymentRefused("api/production is locked", holder="alice")
        revision = request.revision or "sha256:" + "0" * 64
        if revision.startswith("sha256:") and request.revision and revision[7:] not in self.revisions:
            raise RevisionNotFound(revision[7:])
        return dict(self._create(app, env, revision[7:], request.actor, config=request.config_name))

    async def get(self, deployment_id: str) -> dict[str, Any]:
        if deployment_id not in self.deployments:
            raise DeploymentNotFound(deployment_id)
        return dict(self.deployments[deployment_id])

    async def history(self, application: str, environment: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        self.calls.append(("history", application, environment, limit))
        app, env = self._resolve(application, environment or self.apps.get(application, ("",))[0])
        found = [
            d
            for d in self.deployments.values()
            if d["application"] == app and (environment is None or d["environment"] == env)
        ]
        return sorted(found, key=lambda d: d["created_at"], reverse=True)[:limit]

    async def watch(self, deployment_id: str, *, after: int = 0, timeout: float = 25.0) -> dict[str, Any]:
        self.calls.append(("watch", deployment_id, after, timeout))
        deployment = await self.get(deployment_id)
        if deployment["version"] <= after and deployment["status"] not in FINAL_STATUSES:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return await self.get(deployment_id)

    async def stop(self, deployment_id: str, *, rollback: bool | None = None, actor: str = "cli") -> dict[str, Any]:
        self.calls.append(("stop", deployment_id, rollback, actor))
        deployment = await self.get(deployment_id)
        if deployment["status"] in FINAL_STATUSES:
            raise InvalidTransition(deployment["status"], "StopRequested")
        error = {"code": "MANUAL_STOP", "message": f"stopped by {actor}"}
        return dict(self.advance(deployment_id, status="Stopped", ended_at=self._now(), error=error))

    async def rollback(self, application: str, environment: str, *, actor: str = "cli") -> dict[str, Any]:
        self.calls.append(("rollback", application, environment, actor))
        app, env = self._resolve(application, environment)
        previous = [d for d in self.deployments.values() if d["application"] == app and d["environment"] == env]
        if not previous:
            raise DeploymentRefused(f"nothing has been deployed to {app}-{env} yet")
        return dict(self._create(app, env, previous[0]["revision"]["sha256"], actor, rollback_of=previous[-1]["id"]))

    async def control(self, deployment_id: str, action: str, *, actor: str = "cli") -> dict[str, Any]:
        self.calls.append(("control", deployment_id, action, actor))
        deployment = await self.get(deployment_id)
        if deployment["status"] in FINAL_STATUSES:
            raise InvalidTransition(deployment["status"], action)
        return dict(self.advance(deployment_id, paused=action == "pause"))

    async def plan(self, request: DeployRequest) -> dict[str, Any]:
        self.calls.append(("plan", request))
        app, env = self._resolve(request.application, request.environment)
        plan = {
            "application": app,
            "environment": env,
            "group": f"{app}-{env}",
            "config": {"name": request.config_name or "CodeDeployDefault.OneAtATime"},
            "minimum_healthy": 1,
            "batches": [["web-1"], ["web-2"]],
            "events": list(EVENTS),
            "traffic_steps": [{"percent": 100, "wait_seconds": 0}],
            "startable": True,
            "problem": None,
        }
        return {"plan": plan, "stages": []}

    async def put_hook_status(
        self, execution_id: str, status: str, *, deployment_id: str | None = None, actor: str = "api"
    ) -> dict[str, Any]:
        self.calls.append(("put_hook_status", execution_id, status, actor))
        raise LifecycleHookNotFound(execution_id, deployment_id)

    async def event_log(self, deployment_id: str) -> list[dict[str, Any]]:
        await self.get(deployment_id)
        return [{"id": 1, "at": 0.0, "actor": "api", "kind": "deployment.requested", "data": None}]

    async def hosts(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "web-1",
                "tags": {},
                "local": True,
                "agent": "online",
                "last_seen": 1.0,
                "version": "0",
                "running": None,
            }
        ]

    def applications(self) -> list[dict[str, Any]]:
        return [{"name": name, "environments": [{"name": env} for env in envs]} for name, envs in self.apps.items()]


def _event(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": "Pending",
        "started_at": None,
        "ended_at": None,
        "error_code": None,
        "message": "",
        "log_tail": "",
    }
