"""ReleaseFlow: the release rules (engine.release.rules) applied to the store; the Deployer owns one as
``deployer.release``.

The Deployer asks it two questions: may this new request start (``admit``: refused, queued, or waiting for
approval) and which queued deployments may start now (``startable``: a lock holds all but automatic rollbacks).
Everything that can let a held deployment go — an approval completing, a lock released or expiring — calls the
Deployer's ``_start_next`` for the groups concerned, under the Deployer's lock, like every other start.

Every decision a person makes here (lock, unlock, freeze, approve, reject, promote, and every refused request) is
appended to the audit log with its actor and time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.core import policy
from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.errors import DeploymentNotFound, DeploymentRefused
from engine.core.model import ROLLBACK_CREATOR, DeploymentStatus, Revision
from engine.core.requests import DeployRequest
from engine.ports import Clock, DeploymentQueue, Deployments, RevisionArchive, Store
from engine.release import views as release_views
from engine.release.plan import agents_gate, offline_targets, release_plan
from engine.release.promotion import check_promotion, tenure
from engine.release.rules import (
    EVERYWHERE,
    Admission,
    Approval,
    ApprovalPolicy,
    ApprovalState,
    Lock,
    LockPolicy,
    RequestSource,
    admission,
    approval_refusal,
    approval_state,
    blocking_lock,
    expired,
    is_automatic_rollback,
    lock_conflict,
    rejection_refusal,
)
from engine.release.views import HISTORY


class ReleaseFlow:
    """Given the store, the clock, the group queue (to start what it held back) and the deployments (to start
    a promotion, read and signal documents) — never the Deployer itself."""

    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        clock: Clock,
        *,
        queue: DeploymentQueue,
        documents: Deployments,
        revisions: RevisionArchive,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.group_queue = queue
        self.deployments = documents
        self.revisions = revisions
        self._expiry_timers: dict[tuple[str, str], tuple[float, asyncio.Task[None]]] = {}

    @property
    def _store(self) -> Store:
        return self.store

    def _now(self) -> float:
        return self.clock.now()

    def is_admin(self, actor: str) -> bool:
        return policy.is_admin(self.config, actor)

    def approval_policy(self, group: DeploymentGroup) -> ApprovalPolicy:
        """The group's approvers and the admins, with ``@role`` entries expanded to the people they stand for."""
        return ApprovalPolicy(
            group.required_approvals,
            self.config.members(group.approvers),
            policy.admins(self.config),
            group.approval_ttl_minutes * 60.0,
        )

    def group_named(self, name: str) -> DeploymentGroup | None:
        return next((g for g in self.config.groups() if g.name == name), None)

    async def _log(self, kind: str, actor: str, *, deployment_id: str | None = None, **data: Any) -> None:
        await self._store.append_log(kind, at=self._now(), actor=actor, deployment_id=deployment_id, data=data)

    # -- admission (called by the Deployer) ----------------------------------------------------------------------

    async def admit(self, group: DeploymentGroup, revision: Revision, request: DeployRequest) -> Admission:
        """Refused (with the reason, logged), Queued, or WaitingApproval — the first status of a new deployment."""
        now = self._now()
        automatic = request.actor == ROLLBACK_CREATOR
        source = RequestSource(request.source)
        approvals = None
        if group.required_approvals > 0 and not automatic and source is not RequestSource.ROLLBACK:
            approvals = await self.approval_state(group, revision.sha256, request.actor, now)
        decision = admission(
            application=group.application,
            environment=group.environment,
            automatic_rollback=automatic,
            source=source,
            lock=None if automatic else await self.blocking(group),
            policy=LockPolicy(group.lock_policy),
            approvals=approvals,
            now=now,
        )
        if not decision.refused and not automatic:
            decision = await self._admit_agents(group, decision, now)
        if decision.refused:
            await self._log(
                "deployment.refused",
                request.actor,
                application=group.application,
                environment=group.environment,
                revision=revision.sha256,
                source=str(source),
                reason=decision.reason,
            )
        return decision

    async def _admit_agents(self, group: DeploymentGroup, decision: Admission, now: float) -> Admission:
        """Targets whose agents are offline, before anything starts: refused (naming them) when the group says
        ``offline_hosts: refuse``; otherwise the deployment proceeds and the audit log says which hosts were
        offline (they fail at the heartbeat limit). Only the config's hosts are looked at here."""
        targets = [h.name for h in self.config.targets(group)]
        offline = await offline_targets(self.store, self.config.server.agent_offline_after_seconds, group, targets, now)
        if not offline:
            return decision
        gate = agents_gate(group, offline, now)
        if gate["state"] == "refuse":
            return Admission(reason=gate["message"], details={"gate": "agents", "offline": gate["offline"]})
        silent = [h for h in gate["offline"] if h["last_seen"] is not None]  # never seen: not yet set up, no news
        if silent:
            await self._log("deployment.offline_hosts", "deploybot", group=group.name, offline=silent)
        return decision

    async def startable(self, group_name: str, queued: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The queued deployments that may start now: all, unless a lock holds the group (then only rollbacks
        deploybot started by itself, which must never wait behind a lock)."""
        group = self.group_named(group_name)
        if not queued or group is None or await self.blocking(group) is None:
            return list(queued)
        return [row for row in queued if is_automatic_rollback(row)]

    async def _start_held(self, groups: Iterable[DeploymentGroup]) -> None:
        for group in groups:
            await self.group_queue.start_held(group.name)

    # -- locks ---------------------------------------------------------------------------------------------------

    async def all_locks(self) -> list[Lock]:
        return [Lock.from_row(row) for row in await self._store.list_locks()]

    async def blocking(self, group: DeploymentGroup, *, watch_expiry: bool = True) -> Lock | None:
        """The lock (or freeze) holding ``group`` now; its expiry is then watched so held work starts on time."""
        lock = blocking_lock(await self.all_locks(), group.application, group.environment, self._now())
        if lock is not None and lock.expires_at is not None and watch_expiry:
            self._watch_expiry(lock)
        return lock

    def _watch_expiry(self, lock: Lock) -> None:
        assert lock.expires_at is not None
        key = (lock.application, lock.environment)
        known = self._expiry_timers.get(key)
        if known is not None and known[0] == lock.expires_at and not known[1].done():
            return
        task = self.group_queue.spawn(self._expire_later(lock.expires_at))
        self._expiry_timers[key] = (lock.expires_at, task)

    async def _expire_later(self, expires_at: float) -> None:
        clock = self.clock
        while (left := expires_at - clock.now()) > 0:
            await clock.sleep(min(left, 5.0) + 0.01)  # re-read the clock: wall time may jump
        await self.release_expired()

    async def release_expired(self) -> list[Lock]:
        """Delete locks past their expiry (logged as ``lock.expired``) and start what they held back."""
        now = self._now()
        released = []
        for lock in expired(await self.all_locks(), now):
            if await self._store.delete_lock(lock.application, lock.environment, created_at=lock.created_at):
                released.append(lock)
                await self._log(
                    "freeze.expired" if lock.is_freeze else "lock.expired", "deploybot", lock=lock.as_dict()
                )
        await self._start_held(self._groups_under(released))
        return released

    def _groups_under(self, locks: Iterable[Lock]) -> list[DeploymentGroup]:
        groups: dict[str, DeploymentGroup] = {}
        for lock in locks:
            for group in self.config.groups():
                if lock.is_freeze or (group.application, group.environment) == (lock.application, lock.environment):
                    groups[group.name] = group
        return list(groups.values())

    def _where(self, application: str, environment: str) -> tuple[str, str]:
        """Declared spellings of an environment, or the freeze's ``("*", "*")``."""
        if application == EVERYWHERE:
            return EVERYWHERE, EVERYWHERE
        app = self.config.application(application)
        return app.name, app.environment(environment)

    async def lock(
        self,
        application: str,
        environment: str,
        *,
        actor: str,
        reason: str = "",
        expires_in_minutes: float | None = None,
    ) -> dict[str, Any]:
        """Lock one environment (``application="*"``: freeze everything, admins only); replaces the actor's own
        lock, or anyone's for an admin."""
        app, env = self._where(application, environment)
        if app == EVERYWHERE and not self.is_admin(actor):
            raise DeploymentRefused("only an admin (server.admins) may freeze deployments", gate="freeze")
        if expires_in_minutes is not None and not expires_in_minutes > 0:
            raise DeploymentRefused("a lock's expiry must be a positive number of minutes", gate="lock")
        now = self._now()
        row = await self._store.get_lock(app, env)
        existing = Lock.from_row(row) if row else None
        conflict = lock_conflict(existing, actor=actor, is_admin=self.is_admin(actor), now=now)
        if conflict is not None:
            assert existing is not None
            raise DeploymentRefused(conflict, gate="lock", lock=existing.as_dict())
        expires_at = now + expires_in_minutes * 60.0 if expires_in_minutes is not None else None
        lock = Lock(app, env, actor, reason.strip(), now, expires_at)
        await self._store.put_lock(
            app, env, owner=actor, created_at=now, reason=lock.reason or None, expires_at=expires_at
        )
        replaced = existing.as_dict() if existing else None
        await self._log("freeze.set" if lock.is_freeze else "lock.set", actor, lock=lock.as_dict(), replaced=replaced)
        if expires_at is not None:
            self._watch_expiry(lock)
        return lock.as_dict()

    async def unlock(self, application: str, environment: str, *, actor: str) -> dict[str, Any]:
        """Anyone may unlock an environment (the log keeps whose lock it was); only admins lift the freeze."""
        app, env = self._where(application, environment)
        if app == EVERYWHERE and not self.is_admin(actor):
            raise DeploymentRefused("only an admin (server.admins) may lift the freeze", gate="freeze")
        row = await self._store.get_lock(app, env)
        if row is None:
            return {"released": False, "lock": None}
        lock = Lock.from_row(row)
        await self._store.delete_lock(app, env, created_at=lock.created_at)
        known = self._expiry_timers.pop((app, env), None)
        if known is not None:
            known[1].cancel()
        await self._log("freeze.released" if lock.is_freeze else "lock.released", actor, lock=lock.as_dict())
        await self._start_held(self._groups_under([lock]))
        return {"released": True, "lock": lock.as_dict()}

    async def locks(self) -> list[dict[str, Any]]:
        """Live locks (the freeze first); expired ones are released on the way."""
        await self.release_expired()
        now = self._now()
        live = [lock for lock in await self.all_locks() if lock.active(now)]
        return [lock.as_dict() for lock in sorted(live, key=lambda lock: (not lock.is_freeze, lock.application))]

    # -- approvals -----------------------------------------------------------------------------------------------

    async def approval_state(self, group: DeploymentGroup, revision: str, requester: str, now: float) -> ApprovalState:
        rows = await self._store.list_approvals(
            application=group.application, environment=group.environment, revision_sha256=revision
        )
        policy = self.approval_policy(group)
        return approval_state(
            (Approval.from_row(r) for r in rows), revision=revision, requester=requester, policy=policy, now=now
        )

    async def _waiting(self, deployment_id: str) -> tuple[dict[str, Any], DeploymentGroup, str]:
        row = await self._row(deployment_id)
        group = self.config.group(row["application"], row["environment"])
        requester = str((row.get("request") or {}).get("actor") or row.get("created_by"))
        return row, group, requester

    async def approve(self, deployment_id: str, *, actor: str) -> dict[str, Any]:
        """Record ``actor``'s approval of this deployment's revision; with enough of them it joins the queue."""
        row, group, requester = await self._waiting(deployment_id)
        policy = self.approval_policy(group)
        refusal = approval_refusal(
            policy, actor=actor, requester=requester, status=row["status"], deployment_id=deployment_id
        )
        if refusal is not None:
            raise DeploymentRefused(refusal, gate="approval", deployment_id=deployment_id)
        now = self._now()
        expires_at = now + policy.ttl_seconds
        await self._store.add_approval(
            deployment_id,
            application=group.application,
            environment=group.environment,
            revision_sha256=row["revision_sha256"],
            actor=actor,
            decision="approved",
            created_at=now,
            expires_at=expires_at,
        )
        await self._log(
            "approval.granted",
            actor,
            deployment_id=deployment_id,
            revision=row["revision_sha256"],
            expires_at=expires_at,
        )
        await self._queue_if_approved(deployment_id, group, requester)
        await self.deployments.changed(deployment_id, group=group.name)
        return await self.deployments.get(deployment_id)

    async def _row(self, deployment_id: str) -> dict[str, Any]:
        row = await self.store.get_deployment(deployment_id)
        if row is None:
            raise DeploymentNotFound(deployment_id)
        return row

    async def _queue_if_approved(self, deployment_id: str, group: DeploymentGroup, requester: str) -> None:
        async with self.group_queue.lock:
            row = await self._row(deployment_id)
            if row["status"] != DeploymentStatus.WAITING_APPROVAL:
                return
            state = await self.approval_state(group, row["revision_sha256"], requester, self._now())
            if not state.satisfied:
                return
            request = {**(row.get("request") or {}), "approved_by": list(state.approved_by)}
            await self._store.update_deployment(deployment_id, status=str(DeploymentStatus.QUEUED), request=request)
            await self._log(
                "approval.satisfied", "deploybot", deployment_id=deployment_id, approved_by=list(state.approved_by)
            )
            await self.group_queue.start_next(group.name)

    async def reject(self, deployment_id: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Stop a deployment waiting for approval (approvers, admins, or its requester withdrawing it)."""
        row, group, requester = await self._waiting(deployment_id)
        policy = self.approval_policy(group)
        async with self.group_queue.lock:
            row = await self._row(deployment_id)
            refusal = rejection_refusal(
                policy, actor=actor, requester=requester, status=row["status"], deployment_id=deployment_id
            )
            if refusal is not None:
                raise DeploymentRefused(refusal, gate="approval", deployment_id=deployment_id)
            now = self._now()
            await self._store.add_approval(
                deployment_id,
                application=group.application,
                environment=group.environment,
                revision_sha256=row["revision_sha256"],
                actor=actor,
                decision="rejected",
                created_at=now,
                reason=reason or None,
            )
            message = f"rejected by {actor}" + (f": {reason}" if reason else "")
            await self._store.update_deployment(
                deployment_id, status="Stopped", ended_at=now, error_code="MANUAL_STOP", error_message=message
            )
            await self._log("approval.rejected", actor, deployment_id=deployment_id, reason=reason)
        await self.deployments.changed(deployment_id, group=group.name)
        return await self.deployments.get(deployment_id)

    # -- promotion -----------------------------------------------------------------------------------------------

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
        """Deploy to ``target`` the very bundle that last succeeded in ``source`` (or ``revision``, which must
        have succeeded there); refused with every reason that applies."""
        app = self.config.application(application)
        src, dst = app.environment(source), app.environment(target)
        source_group = app.groups[src]
        rows = await self._store.list_deployments(group_name=source_group.name, limit=HISTORY)
        current = tenure(rows)
        requested = _match_revision(revision, rows) if revision else None
        decision = check_promotion(
            application=app.name,
            environments=app.environments,
            source=src,
            target=dst,
            current=current,
            requested_revision=requested,
            revision_succeeded=any(r["revision_sha256"] == requested and r["status"] == "Succeeded" for r in rows),
            min_soak_seconds=source_group.min_soak_minutes * 60.0,
            now=self._now(),
            override=override,
            is_admin=self.is_admin(actor),
        )
        data: dict[str, Any] = {
            "application": app.name,
            "from": src,
            "to": dst,
            "revision": decision.revision,
            "override": override,
        }
        if not decision.allowed:
            await self._log("promotion.refused", actor, **data, reason=decision.reason)
            checks = [r.check for r in decision.refusals]
            raise DeploymentRefused(decision.reason, gate="promotion", checks=checks, **data)
        overridden = [r.message for r in decision.overridden]
        await self._log("promotion.requested", actor, **data, overridden=overridden)
        assert decision.revision is not None
        origin = f" ({current.deployment_id})" if current and current.revision == decision.revision else ""
        return await self.deployments.start(
            DeployRequest(
                app.name,
                dst,
                revision=f"sha256:{decision.revision}",
                actor=actor,
                description=f"promoted from {src}{origin}" + (" with override" if overridden else ""),
                source=str(RequestSource.PROMOTION),
                promoted_from=src,
            )
        )

    # -- reading (engine.release.views) --------------------------------------------------------------------------

    async def where(self, application: str) -> dict[str, Any]:
        """Per environment, in promotion order: what runs there, since when, who put it there, and what waits."""
        return await release_views.where(self, application)

    async def queue(self, application: str | None = None, environment: str | None = None) -> list[dict[str, Any]]:
        """Waiting deployments (queued in FIFO order with position and ETA, then those awaiting approval)."""
        return await release_views.queue(self, application, environment)

    async def eta(self, group_name: str, position: int) -> float | None:
        """Seconds until the deployment at queue ``position`` (1-based) of the group starts; None if unknown."""
        return await release_views.eta(self, group_name, position)

    async def plan(self, group: DeploymentGroup, request: DeployRequest, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (the deployment's shape) with the release side of the dry run; writes nothing."""
        return await release_plan(self, group, request, base)

    async def decorate(self, row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
        """The release-flow fields of the deployment JSON: source, duration, ETA, what it waits for, approvals."""
        return await release_views.decorate(self, row, document)


def _match_revision(wanted: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A full sha256 from ``sha256:HEX``, a full hex, or a prefix of a revision deployed in the group."""
    wanted = wanted.removeprefix("sha256:").lower()
    matches = {r["revision_sha256"] for r in rows if str(r["revision_sha256"]).startswith(wanted)}
    return matches.pop() if len(matches) == 1 else wanted
