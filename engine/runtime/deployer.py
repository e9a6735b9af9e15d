"""The Deployer facade: the one object every front (CLI, API, Slack, GitHub) talks to (engine.DeploymentService).

It is given its parts — the store, the agents' fleet, the AWS platforms, the revision archive, the clock and the
group queue — by the composition root (bot/assembly.py), and owns one runner per active deployment, rollbacks
(a new deployment of the last good revision, linked both ways), and resuming unfinished deployments after a
restart. At most one deployment is in flight per group; the rest wait in the GroupQueue.

Replicas (several servers on one PostgreSQL store): a replica drives a group's deployments only while it holds the
group's lease (engine/runtime/ownership.py, engine/core/leases.py), and its runner there gets the store and the
executors *fenced* by that lease, so nothing it writes lands once another replica has taken the group over. Every
decision to start or resume a group's work (``_start_next``) first takes the lease; a replica that cannot (another
one holds it) tells the owner through the store (``GROUP_WORK``). On a shared store a loop renews the leases every
third of the lease time, steps down from lost groups (``_step_down``: the runner cancelled, nothing stopped or rolled
back) and takes over groups whose owner died, resuming them as a restart does. Agents' results stored by another
replica reach the runner from the store (``RESULTS_RECORDED``, and each round as a safety net), and a stop or a
control action asked of a replica that does not drive the deployment is passed to the one that does
(``DEPLOYMENT_CONTROL``). SQLite is the same code with one replica: leases are taken (and kept) and writes fenced,
with no loop (nobody else to take over)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import string
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.configs import (
    DEFAULT_SERVER_CONFIG,
    config_for_group,
)
from engine.core.document import deployment_json
from engine.core.errors import DeploymentNotFound, DeploymentRefused, EngineError, InvalidTransition
from engine.core.events import (
    ContinueRequested,
    PauseRequested,
    PromoteRequested,
    ResumeRequested,
    StartRollback,
    StopRequested,
)
from engine.core.leases import DEPLOYMENT_CONTROL, GROUP_WORK, RESULTS_RECORDED, Lease, LeaseLost
from engine.core.machine import DeploymentMachine, MachineOptions
from engine.core.model import (
    FINAL_STATUSES,
    ROLLBACK_CREATOR,
    DeploymentType,
    LifecycleEvent,
    Platform,
    Revision,
)
from engine.core.overrides import GroupOverrides
from engine.core.requests import DeployRequest
from engine.core.snapshot import stages_from_json, stages_to_json, state_from_json
from engine.core.stages import (
    Stage,
)
from engine.ports import (
    AlarmSource,
    Clock,
    EventListener,
    HostFleet,
    Notifier,
    PlatformRuntime,
    RevisionArchive,
    Row,
    Store,
    TrafficRouter,
)
from engine.release.flow import ReleaseFlow
from engine.runtime.blueprint import Blueprint, blue_green_roles, installed_targets
from engine.runtime.dry_run import dry_run
from engine.runtime.inventory import Inventory
from engine.runtime.notifications import Notifications
from engine.runtime.ownership import Ownership, new_replica_id
from engine.runtime.queue import GroupQueue
from engine.runtime.registry import Registry
from engine.runtime.results import CommandResults
from engine.runtime.revision_sources import RevisionSources
from engine.runtime.rollbacks import Rollbacks
from engine.runtime.runner import DeploymentRunner
from engine.runtime.tokens import ApiTokens

log = logging.getLogger(__name__)

_ACTIVE = ("Created", "InProgress", "Ready", "Baking")
_STOP_WAIT = 30.0  # how long a stop asked of another replica is waited for (as a local one)
_STOP_ASK_AGAIN = 2.0
_STOP_POLL = 0.1
_AFTER_EXPIRY = 0.05  # seconds past another replica's lease expiry before looking (the store's clock may lag ours)
_CONTROL_EVENTS: dict[str, type[ContinueRequested | PauseRequested | ResumeRequested | PromoteRequested]] = {
    "continue": ContinueRequested,
    "pause": PauseRequested,
    "resume": ResumeRequested,
    "promote": PromoteRequested,
}


AlarmFactory = Callable[[DeploymentGroup, Sequence[str]], AlarmSource | None]
"""Builds the alarms of one deployment of a group (given the targets getting the new revision)."""


def new_deployment_id() -> str:
    """CodeDeploy-shaped ids: ``d-`` and nine upper-case letters or digits."""
    alphabet = string.ascii_uppercase + string.digits
    return "d-" + "".join(secrets.choice(alphabet) for _ in range(9))


class Deployer:
    def __init__(
        self,
        config: EngineConfig,
        *,
        store: Store,
        fleet: HostFleet,
        platforms: PlatformRuntime,
        revisions: RevisionArchive,
        results: CommandResults,
        clock: Clock,
        queue: GroupQueue,
        routers: Mapping[str, TrafficRouter] | None = None,
        alarm_factory: AlarmFactory | None = None,
        replica_id: str | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        """``replica_id`` names this server among the replicas on one store (made up when not given);
        ``lease_seconds`` is the groups' lease time (``server.lease_seconds`` when not given)."""
        self.config = config
        self.store = store
        self.fleet = fleet
        self.aws = platforms
        self.revisions = revisions
        self.clock = clock
        self.queue = queue
        self.routers = dict(routers or {})
        self.alarm_factory = alarm_factory
        self.hooks = platforms.hooks  # Lambda/ECS hook executions waiting for their status callback
        # An S3 revision, downloaded, checked (ETag, sha256) and stored with its location (API, CodeDeploy API).
        self.fetch_s3_revision = platforms.fetch_s3_revision
        self.registry = Registry(config, store, clock, revisions)
        self.blueprint = Blueprint(
            config, store, registered_hosts=self.registry.instances_matching, ec2_lookup=platforms.ec2_instances
        )
        self.sources = RevisionSources(config, store, revisions, platforms)
        self.inventory = Inventory(config, store, fleet, clock, self.blueprint, self.registry)
        self.notifiers: list[Notifier] = []
        self.event_listeners: list[EventListener] = []
        self._notifications = Notifications(self.notifiers, self.get)
        self._runners: dict[str, DeploymentRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._versions: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self.replica_id = replica_id or new_replica_id(config.server.listen_port or None)
        self.ownership = Ownership(store, clock, self.replica_id, lease_seconds or config.server.lease_seconds)
        self._leases: dict[str, Lease] = {}  # deployment id -> the lease its runner writes under
        self._wound_up_again: set[str] = set()  # deployments whose wind-up a crash cut short, done again once
        self._delivered: dict[str, set[int]] = {}  # deployment id -> commands whose results its runner was given
        self._reading_results: dict[str, bool] = {}  # deployment id -> whether to read its stored results again
        self._keeper: asyncio.Task[None] | None = None
        # Locks, approvals, promotion; consulted when a deployment is created and when a group's next one starts.
        self.release = ReleaseFlow(config, store, clock, queue=queue, documents=self, revisions=revisions)
        self.rollbacks = Rollbacks(config, store, clock, revisions, self.registry, create=self._create)
        self.tokens = ApiTokens(store, clock)  # per-user API tokens: who asks, checked against the store per request
        results.subscribe(self._on_command_result)
        queue.serve(self._start_next)

    async def open(self) -> None:
        """Take up what the store holds: agent tokens for the configured hosts, the API's registrations, traffic
        on each blue/green group's live side, and every unfinished deployment where it stopped."""
        for host in self.config.hosts:
            self.fleet.token_for(host)
        await self.registry.load()
        await self.restore_traffic()
        await self.resume_unfinished()
        self.fleet.start_monitor()
        if self.store.shared:
            await self.store.listen(GROUP_WORK, self._heard_group_work, reopened=self._heard_anything)
            # Not its own notices: what this replica recorded, it delivered to its runners as it did (Fleet).
            await self.store.listen(RESULTS_RECORDED, self._heard_results, reopened=self._heard_anything, own=False)
            await self.store.listen(DEPLOYMENT_CONTROL, self._heard_control)
            self._keeper = asyncio.ensure_future(self._keep_leases())

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self.fleet.stop_monitor()
        await self._notifications.close()
        await self.queue.close()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for group in self.ownership.held():  # another replica may take them over at once, not after the lease time
            with contextlib.suppress(Exception):
                await self.ownership.release(group)
        await self.aws.close()
        await self.store.close()

    # -- revisions -------------------------------------------------------------------------------------------

    async def store_revision(
        self,
        path: Path,
        *,
        source: str,
        commit: str | None = None,
        application: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Keep an uploaded bundle; its AppSpec is checked for ``application``'s platform (server by default).
        ``location``: where it was fetched from (``{"github": {repository, commit, committed_at}}``)."""
        platform = self.config.application(application).platform if application else Platform.SERVER
        revision = await self.revisions.add(path, label=source, commit=commit, platform=platform, location=location)
        return {"sha256": revision.sha256, "size": revision.size, "source": revision.source}

    async def _revision_for(self, request: DeployRequest, group: DeploymentGroup) -> Revision:
        return await self.sources.for_request(request.revision, group)

    # -- starting --------------------------------------------------------------------------------------------

    async def start(self, request: DeployRequest) -> dict[str, Any]:
        group = self.config.group(request.application, request.environment)
        revision = await self._revision_for(request, group)
        return await self._create(
            group,
            revision,
            request.config_name,
            request.actor,
            request.description,
            ignore_alarms=request.ignore_alarms,
            request=request,
        )

    async def _create(
        self,
        group: DeploymentGroup,
        revision: Revision,
        config_name: str | None,
        actor: str,
        description: str,
        *,
        rollback_of: str | None = None,
        stages: tuple[Stage, ...] | None = None,
        ignore_alarms: bool = False,
        request: DeployRequest | None = None,
    ) -> dict[str, Any]:
        overrides = request.overrides if request is not None and request.overrides else None
        group = overrides.apply(group) if overrides else group
        name = config_name or group.deployment_config or DEFAULT_SERVER_CONFIG
        configs = {**self.config.deployment_configs, **self.registry.deployment_configs()}  # file + API-made
        config = config_for_group(name, group.platform, configs)
        async with self.queue.lock:
            if rollback_of is None:
                duplicate = await self._duplicate(group, revision)
                if duplicate is not None:
                    return await self.get(duplicate)
            source = "rollback" if rollback_of else "manual"
            request = request or DeployRequest(group.application, group.environment, actor=actor, source=source)
            admission = await self.release.admit(group, revision, request)
            if admission.refused:
                raise DeploymentRefused(admission.reason or "refused", **admission.details)
            deployment_id = new_deployment_id()
            appspec = await self.sources.appspec_for(group, revision)
            if stages is None:
                targets = await self.blueprint.resolve_targets(group, appspec)
                stages = await self.blueprint.stages_for(group, config, targets)
            spec = {
                **self.blueprint.agent_spec(deployment_id, group, revision, appspec),
                "ignore_alarms": ignore_alarms,
                "overrides": overrides.to_json() if overrides else {},
            }
            state = {"stages": stages_to_json(stages), "spec": spec}
            now = self.clock.now()
            await self.store.create_deployment(
                {
                    "id": deployment_id,
                    "application": group.application,
                    "environment": group.environment,
                    "group_name": group.name,
                    "status": str(admission.status),
                    "revision_sha256": revision.sha256,
                    "config_name": config.name,
                    "deployment_type": str(group.deployment_type),
                    "created_by": ROLLBACK_CREATOR if rollback_of else actor,
                    "created_at": now,
                    "description": description,
                    "rollback_of": rollback_of,
                    "request": {
                        "actor": actor,
                        "config": config_name,
                        "source": request.source,
                        "from": request.promoted_from,
                    },
                    "state": state,
                },
                log={
                    "kind": "deployment.requested",
                    "at": now,
                    "actor": actor,
                    "data": {"group": group.name, "revision": revision.sha256, "rollback_of": rollback_of},
                },
            )
            if rollback_of is not None:
                await self.store.update_deployment(rollback_of, rolled_back_by=deployment_id)
            await self._start_next(group.name, prefer=deployment_id if rollback_of else None)
        if deployment_id not in self._runners:
            # It waits (for approval, or in the queue): no runner reports it, so tell the notifiers it exists.
            await self.changed(deployment_id, group=group.name)
        return await self.get(deployment_id)

    async def _duplicate(self, group: DeploymentGroup, revision: Revision) -> str | None:
        waiting = ["Queued", "WaitingApproval", *_ACTIVE]
        for row in await self.store.list_deployments(group_name=group.name, status=waiting):
            if row["revision_sha256"] == revision.sha256 and row["created_by"] != ROLLBACK_CREATOR:
                return str(row["id"])
        return None

    async def _start_next(self, group_name: str, *, prefer: str | None = None, tell_owner: bool = True) -> None:
        """Drive a free group's work: resume the deployment a previous owner left in flight, else start the oldest
        queued one (a rollback jumps the queue). Taking the group's lease first; when another replica holds it, that
        one is told instead, unless ``tell_owner`` is False: the work was heard of through the store (the owner
        heard it too, and telling again would echo between this replica and the store while the owner is busy) or
        found by the lease round (whoever took the lease meanwhile reads the group's work as its tenure starts).
        A group left with nothing to do is let go."""
        if self.queue.in_flight(group_name) is not None:
            return
        held = self.ownership.lease(group_name) is not None
        # Only a server that stopped, or an owner that died, leaves a wind-up owed: looked for when a tenure starts.
        in_flight, queued, owed = await self._work_of(group_name, owed=not held)
        if not in_flight and not queued and not owed:
            if self.store.shared:  # another replica may take the group at once (one server keeps what it took)
                await self.ownership.release(group_name)
            return
        lease = await self.ownership.acquire(group_name)
        if lease is None:  # another replica drives the group: it starts this (or whoever takes the lease next)
            if tell_owner:
                await self.store.notify(GROUP_WORK, [group_name])
            return
        if not held:
            # A new tenure: read again. The previous owner could write until this take (its writes are fenced by
            # the lease), so what was read before it may be stale: a resume from an older step would not expect
            # the results of the events dispatched since, and a queued deployment may have been run meanwhile.
            in_flight, queued, owed = await self._work_of(group_name, owed=True)
            if not in_flight and not queued and not owed:
                await self.ownership.release(group_name)
                return
        # Its owner died (or a previous server stopped): resume it where it stopped. One that ended but whose end's
        # wind-up was cut short comes first (it still holds the group), then the one in flight.
        left = owed[0] if owed else in_flight[0] if in_flight else None
        if left is not None:
            kind = "deployment.winding_up" if owed else "deployment.resumed"
            await self._take_up(left, lease, kind, lease_generation=lease.generation)
            return
        chosen = next((r for r in queued if r["id"] == prefer), None) or next(
            (r for r in queued if r["created_by"] == ROLLBACK_CREATOR), queued[0]
        )
        now = self.clock.now()
        store = self.ownership.fenced(self.store, lease)
        if not await store.update_deployment(chosen["id"], status="Created", started_at=now, if_status=["Queued"]):
            await self._start_next(group_name)  # cancelled (by any replica) since it was read: the next one, if any
            return
        # As read, but started: the update changed nothing else, and it was still Queued, so no one else had.
        self._launch({**chosen, "status": "Created", "started_at": now}, resume=False, lease=lease)

    async def _work_of(self, group_name: str, *, owed: bool) -> tuple[list[Row], list[Mapping[str, Any]], list[Row]]:
        """The group's deployment in flight (if any; oldest first), the queued ones that may start now, and (when
        ``owed``) the ended ones whose wind-up is still owed."""
        rows = await self.store.list_deployments(
            group_name=group_name, status=["Queued", *_ACTIVE], limit=None, newest_first=False
        )
        in_flight = [r for r in rows if r["status"] != "Queued"]
        waiting = [r for r in rows if r["status"] == "Queued"]
        queued = [] if in_flight else await self.release.startable(group_name, waiting)  # a lock holds the queue
        return in_flight, queued, await self.store.owing_wind_up(group_name) if owed else []

    def _launch(self, row: Mapping[str, Any], *, resume: bool, lease: Lease) -> None:
        state = row["state"]
        group = self._group_of(row)
        if group is not None and state["spec"].get("overrides"):
            group = GroupOverrides.from_json(state["spec"]["overrides"]).apply(group)
        stages = stages_from_json(state["stages"])
        machine_state = state_from_json(state["machine"]) if resume and state.get("machine") else None
        spec = dict(state["spec"])
        is_rollback = row["created_by"] == ROLLBACK_CREATOR
        if is_rollback:
            spec["creator"] = ROLLBACK_CREATOR
        machine = DeploymentMachine(
            stages,
            MachineOptions(
                auto_rollback=group.auto_rollback if group else MachineOptions().auto_rollback,
                ignore_application_stop_failures=bool(spec.get("ignore_application_stop_failures")),
                is_rollback=is_rollback,
                platform=group.platform if group else Platform.SERVER,
            ),
            machine_state,
        )
        driver = self.aws.driver(group.platform) if group else None
        executor = driver.executor(row["id"], group, spec) if driver and group else self.fleet
        fleet = self.ownership.fenced(self.fleet, lease)
        runner = DeploymentRunner(
            row["id"],
            machine,
            store=self.ownership.fenced(self.store, lease),
            executor=self.ownership.fenced(executor, lease),
            router=driver.router(row["id"], group, spec) if driver and group else self.routers.get(row["group_name"]),
            group=row["group_name"],
            spec=spec,
            clock=self.clock,
            on_change=functools.partial(self.changed, group=row["group_name"]),
            on_rollback=self._on_rollback,
            on_finish=self._on_finish,
            on_event_finished=self._event_finished,
            timers=state.get("timers") if resume else None,
            # A rollback is never gated or stopped by alarms: the alarm that caused it may well still be firing.
            alarms=self.alarm_factory(group, installed_targets(stages))
            if group and self.alarm_factory and not is_rollback
            else None,
            alarm_config=group.alarms if group else None,
            roles=blue_green_roles(stages),
            fleet=None if driver and group else fleet,
        )
        self.queue.occupy(row["group_name"], row["id"])
        self._leases[row["id"]] = lease
        self._runners[row["id"]] = runner
        self._tasks[row["id"]] = asyncio.ensure_future(self._run(runner, row, resume=resume))

    def _event_finished(self, event: str, status: str, seconds: float) -> None:
        for listener in self.event_listeners:
            try:
                listener.event_finished(event, status, seconds)
            except Exception:  # a broken listener must never break a deployment
                log.exception("event listener %r failed", listener)

    async def _run(self, runner: DeploymentRunner, row: Mapping[str, Any], *, resume: bool) -> None:
        try:
            await runner.run(resume=resume, row=row)
        except asyncio.CancelledError:
            raise
        except LeaseLost as lost:
            await self._step_down(lost.group, f"a write of deployment {runner.deployment_id} was refused: {lost}")
        except Exception as exc:
            log.exception("deployment %s crashed in the runner", runner.deployment_id)
            message = f"deploybot hit an internal error ({_crash_site(exc)}); see the server log"
            try:  # failed as any failure is: its hosts, its traffic, its rollback and its end taken care of
                if not runner.ended and await runner.fail_internally(message):
                    return
            except LeaseLost as lost:
                await self._step_down(lost.group, f"deployment {runner.deployment_id} crashed after it: {lost}")
                return
            except Exception:
                log.exception("deployment %s: its runner could not fail it", runner.deployment_id)
            if await self._wind_up_again(runner.deployment_id) or await self._ended_before(runner.deployment_id):
                return
            lease = self._leases.get(runner.deployment_id)
            store = self.ownership.fenced(self.store, lease) if lease is not None else self.store
            try:  # only while this replica still drives it: a crash after losing the group must not fail it
                await store.update_deployment(
                    runner.deployment_id,
                    status="Failed",
                    ended_at=self.clock.now(),
                    error_code="INTERNAL_ERROR",
                    error_message=message,
                )
            except LeaseLost as lost:
                await self._step_down(lost.group, f"deployment {runner.deployment_id} crashed after it: {lost}")
                return
            await self._on_finish(runner.deployment_id)

    async def _wind_up_again(self, deployment_id: str) -> bool:
        """A crash cut the deployment's end short (its final status and what the end owes are stored): wind it up
        again in a fresh runner, from what is stored, as a restart would; once per deployment and server. False when
        nothing is owed, the group has moved on, or this was tried already."""
        lease = self._leases.get(deployment_id)
        if deployment_id in self._wound_up_again or lease is None:
            return False
        row = await self.store.get_deployment(deployment_id)
        if row is None or row.get("wind_up") is None or self.queue.in_flight(row["group_name"]) != deployment_id:
            return False
        self._wound_up_again.add(deployment_id)
        await self._take_up(row, lease, "deployment.winding_up", after="a crash of its runner")
        return True

    async def _ended_before(self, deployment_id: str) -> bool:
        """The crash came after the deployment's end was stored and logged (its final status, nothing owed): its
        outcome stands, and only letting its group go on may be left undone, which is done now. False otherwise."""
        row = await self.store.get_deployment(deployment_id)
        if row is None or row["status"] not in FINAL_STATUSES or row.get("wind_up") is not None:
            return False
        log.warning("deployment %s had ended (%s) before the crash; its outcome stands", deployment_id, row["status"])
        self._forget_runner(deployment_id)
        try:
            await self._let_group_go_on(row)
        finally:
            self._tasks.pop(deployment_id, None)
        return True

    async def _take_up(self, row: Mapping[str, Any], lease: Lease, kind: str, **why: Any) -> None:
        """Drive a stored deployment again from what is stored (``kind``: ``deployment.resumed`` or, for one whose
        end is owed, ``deployment.winding_up``), logged first with ``why``."""
        data = {"status": row["status"], "replica": self.replica_id, **why}
        store = self.ownership.fenced(self.store, lease)
        await store.append_log(kind, at=self.clock.now(), actor="deploybot", deployment_id=row["id"], data=data)
        self._launch(row, resume=True, lease=lease)

    def _group_of(self, row: Mapping[str, Any]) -> DeploymentGroup | None:
        try:
            return self.config.group(row["application"], row["environment"])
        except EngineError:
            return None

    async def _on_finish(self, deployment_id: str) -> None:
        """Log the end, tell the driver and notifiers, start the group's next deployment. Its task stays in
        ``_tasks`` until this is done, so ``close`` ends it before closing the store instead of pulling the store
        from under it."""
        lease = self._forget_runner(deployment_id)
        try:
            await self._finish(deployment_id, lease)
        finally:
            self._tasks.pop(deployment_id, None)

    def _forget_runner(self, deployment_id: str) -> Lease | None:
        """The deployment's runner is done with (ended, or stepped down from): forget it and what it was given; the
        lease it wrote under."""
        self._runners.pop(deployment_id, None)
        self._delivered.pop(deployment_id, None)
        return self._leases.pop(deployment_id, None)

    async def _finish(self, deployment_id: str, lease: Lease | None) -> None:
        row = await self.store.get_deployment(deployment_id)
        if row is None:
            return
        store = self.ownership.fenced(self.store, lease) if lease is not None else self.store
        group = self._group_of(row)
        driver = self.aws.driver(group.platform) if group else None
        if driver is not None and group is not None:
            self.hooks.cancel(deployment_id)
            await driver.finished(deployment_id, group, row["state"]["spec"], row["status"])
        # The end is logged by the write that says nothing is owed any more: a server that stops before it
        # winds the deployment up again when it starts (``_start_next``), then logs it once.
        finished = {"status": row["status"], "error_code": row.get("error_code")}
        await store.wound_up(
            deployment_id,
            log={"kind": "deployment.finished", "at": self.clock.now(), "actor": "deploybot", "data": finished},
        )
        await self._let_group_go_on(row)

    async def _let_group_go_on(self, row: Mapping[str, Any]) -> None:
        """After a deployment's end is stored: free its group, tell its watchers, start the group's next one. Each
        step may be done twice (after a crash among them, ``_ended_before``)."""
        self.queue.vacate(row["group_name"], row["id"])
        await self.changed(row["id"], group=row["group_name"])
        # Under the queue's lock, as every start: a start heard meanwhile (GROUP_WORK) that read the group before
        # this one launched the next deployment would otherwise resume it beside the runner already driving it.
        await self.queue.start_held(row["group_name"])

    async def _on_rollback(self, deployment_id: str, command: StartRollback) -> None:
        row = await self.store.get_deployment(deployment_id)
        group = self._group_of(row) if row else None
        if row is not None and group is not None:
            await self.rollbacks.automatic(row, group, command)

    async def _on_command_result(self, command: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        runner = self._runners.get(command["deployment_id"])
        if runner is None:
            return  # the deployment ended, or another replica drives it; the result is kept in host_commands
        command_id = command.get("id")
        if command_id is not None:  # heard in-process and read back from the store: the runner gets it once
            delivered = self._delivered.setdefault(command["deployment_id"], set())
            if command_id in delivered:
                return
            delivered.add(command_id)
        await runner.record_result(command["host"], LifecycleEvent(command["event"]), result)

    async def _read_stored_results(self, deployment_id: str) -> None:
        """Give the runner the results stored for its commands that it has not had (recorded by another replica,
        or while this one was not listening). Calls arriving while one reads make it read once more."""
        if deployment_id in self._reading_results:
            self._reading_results[deployment_id] = True
            return
        self._reading_results[deployment_id] = False
        try:
            while True:
                runner = self._runners.get(deployment_id)
                if runner is None:
                    return
                delivered = self._delivered.get(deployment_id, set())
                for command in await self.store.finished_commands(deployment_id):
                    if command["id"] not in delivered and not runner.has_outcome(command["host"], command["event"]):
                        await self._on_command_result(command, command.get("result") or {})
                if not self._reading_results[deployment_id]:
                    return
                self._reading_results[deployment_id] = False
        finally:
            self._reading_results.pop(deployment_id, None)

    # -- replicas --------------------------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Every third of the lease time: renew, step down from lost groups, take over abandoned ones; and at the
        moment another replica's lease on a group with work runs out, so a dead owner is replaced within the lease
        time, not a round later."""
        interval = self.ownership.interval
        next_renewal = self.clock.monotonic() + interval
        free_in: float | None = None
        while True:
            wait = next_renewal - self.clock.monotonic()
            if free_in is not None:
                wait = min(wait, free_in + _AFTER_EXPIRY)
            await self.clock.sleep(max(wait, 0.0))
            try:
                if self.clock.monotonic() >= next_renewal:
                    next_renewal = self.clock.monotonic() + interval
                    for group, why in (await self.ownership.renew()).items():
                        await self._step_down(group, why)
                free_in = await self._pick_up()
            except Exception:  # the next round tries again (the store may be back by then)
                log.exception("the lease round of %s failed", self.replica_id)
                free_in = None

    async def _pick_up(self) -> float | None:
        """Take over the groups with work and no live owner; read the results stored for this replica's runners.
        Seconds until the next lease of another replica on a group with work runs out (None: there is none)."""
        next_free: float | None = None
        for row in await self.store.groups_to_take_over(now=self.clock.now()):
            if self.ownership.lease(row["group_name"]) is not None:
                continue  # ours: driven here
            if row["free_in"] > 0 and row["owner"] != self.replica_id:  # ours in the store only: take it anew
                next_free = row["free_in"] if next_free is None else min(next_free, row["free_in"])
                continue
            async with self.queue.lock:
                await self._start_next(row["group_name"], tell_owner=False)
        for deployment_id in list(self._runners):
            await self._read_stored_results(deployment_id)
        return next_free

    async def _step_down(self, group: str, why: str) -> None:
        """This replica lost ``group``: cancel its runner there, with no side effect (nothing stopped, nothing rolled
        back, nothing written: the new owner resumes the stored state)."""
        self.ownership.forget(group)
        for deployment_id, runner in list(self._runners.items()):
            if runner.group != group:
                continue
            log.warning(
                "%s steps down from deployment group %s: %s; deployment %s is left to the replica that holds the "
                "lease now",
                self.replica_id,
                group,
                why,
                deployment_id,
            )
            self._forget_runner(deployment_id)
            task = self._tasks.pop(deployment_id, None)
            self.queue.vacate(group, deployment_id)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _heard_group_work(self, group: str) -> None:
        """Another replica queued work for ``group``: start it if this one owns the group (or may take it)."""

        async def start() -> None:
            async with self.queue.lock:
                await self._start_next(group, tell_owner=False)
            log.debug("%s looked at deployment group %s, heard to have work", self.replica_id, group)

        self.queue.spawn(start())

    def _heard_results(self, deployment_id: str) -> None:
        if deployment_id in self._runners:
            self.queue.spawn(self._read_stored_results(deployment_id))

    def _heard_anything(self) -> None:
        """A listening connection came back: what was said meanwhile is lost, so look once."""

        async def pick_up() -> None:
            await self._pick_up()

        self.queue.spawn(pick_up())

    # -- control ---------------------------------------------------------------------------------------------

    async def stop(self, deployment_id: str, *, rollback: bool | None = None, actor: str = "cli") -> dict[str, Any]:
        row = await self._row(deployment_id)
        await self.store.append_log(
            "deployment.stop_requested",
            at=self.clock.now(),
            actor=actor,
            deployment_id=deployment_id,
            data={"rollback": rollback},
        )
        while row["status"] in ("Queued", "WaitingApproval"):  # statuses only move on: this ends
            if await self.store.update_deployment(
                deployment_id,
                status="Stopped",
                ended_at=self.clock.now(),
                error_code="MANUAL_STOP",
                error_message=f"cancelled by {actor} while "
                + ("queued" if row["status"] == "Queued" else "waiting for approval"),
                if_status=[row["status"]],
            ):
                await self.changed(deployment_id, group=row["group_name"])
                return await self.get(deployment_id)
            row = await self._row(deployment_id)  # it moved on since it was read (approved, started): again
        runner = self._runners.get(deployment_id)
        if runner is None and self.store.shared and row["status"] in _ACTIVE:
            return await self._stop_elsewhere(deployment_id, rollback=rollback, actor=actor)
        if runner is None:
            raise InvalidTransition(row["status"], "StopRequested")
        runner.post(StopRequested(rollback=rollback, actor=actor))
        await asyncio.wait_for(runner.finished.wait(), timeout=30)
        return await self.get(deployment_id)

    async def control(self, deployment_id: str, action: str, *, actor: str = "cli") -> dict[str, Any]:
        event_type = _CONTROL_EVENTS.get(action)
        if event_type is None:
            raise DeploymentRefused(f"unknown action {action!r}; use one of {', '.join(_CONTROL_EVENTS)}")
        row = await self._row(deployment_id)
        runner = self._runners.get(deployment_id)
        elsewhere = runner is None and self.store.shared and row["status"] in _ACTIVE
        if runner is None and not elsewhere:
            raise InvalidTransition(row["status"], event_type.__name__)
        await self.store.append_log(
            f"deployment.{action}", at=self.clock.now(), actor=actor, deployment_id=deployment_id
        )
        if runner is not None:
            runner.post(event_type())
        else:  # another replica drives it
            await self._ask_owner(deployment_id, action, actor=actor)
        return await self.get(deployment_id)

    async def put_hook_status(
        self, execution_id: str, status: str, *, deployment_id: str | None = None, actor: str = "api"
    ) -> dict[str, Any]:
        """A Lambda/ECS hook function reports its result (PutLifecycleEventHookExecutionStatus). The status is
        stored, so it counts even when the deployment has not resumed yet; the same status again is answered alike
        and logged as a repeat (it moves nothing), a different one is refused (LifecycleHookNotFound)."""
        execution, reported = await self.hooks.resolve(execution_id, status, deployment_id=deployment_id)
        await self.store.append_log(
            "hook.status" if reported else "hook.status_repeated",
            at=self.clock.now(),
            actor=actor,
            deployment_id=execution.deployment_id,
            data={
                "execution_id": execution_id,
                "status": status,
                "event": execution.event,
                "function": execution.function,
            },
        )
        return {"lifecycleEventHookExecutionId": execution_id, **execution.describe(), "status": status}

    async def rollback(self, application: str, environment: str, *, actor: str = "cli") -> dict[str, Any]:
        """Manual rollback: stop a running deployment with rollback, or redeploy the previous good revision."""
        group = self.config.group(application, environment)
        running = self.queue.in_flight(group.name)
        runner = self._runners.get(running) if running is not None else None
        if runner is None or runner.ended:
            # None, or one that has ended and is being wound up (its end's commands, or _finish: logged, its group
            # let go): nothing to stop. The rollback redeploys the revision before, and starts once the group is free.
            running = None
        if running is None and self.store.shared:  # driven by another replica, maybe
            active = await self.store.list_deployments(group_name=group.name, status=list(_ACTIVE), limit=1)
            running = active[0]["id"] if active else None
        if running is not None:
            return await self.stop(running, rollback=True, actor=actor)
        return await self.rollbacks.manual(group, actor=actor)

    async def _ask_owner(self, deployment_id: str, action: str, **details: Any) -> None:
        """Ask the replica driving the deployment to act on it (``DEPLOYMENT_CONTROL``)."""
        payload = json.dumps({"deployment": deployment_id, "action": action, **details})
        await self.store.notify(DEPLOYMENT_CONTROL, [payload])

    async def _stop_elsewhere(self, deployment_id: str, *, rollback: bool | None, actor: str) -> dict[str, Any]:
        """Stop a deployment another replica drives: ask it, again every couple of seconds (a notice may be lost, or
        the group may be changing hands), until the deployment has ended or 30 s have passed; then its document."""
        deadline = self.clock.monotonic() + _STOP_WAIT
        while self.clock.monotonic() < deadline:
            await self._ask_owner(deployment_id, "stop", rollback=rollback, actor=actor)
            asked = self.clock.monotonic()
            while self.clock.monotonic() - asked < _STOP_ASK_AGAIN:
                row = await self._row(deployment_id)
                if row["status"] in FINAL_STATUSES:
                    return await self.get(deployment_id)
                await self.clock.sleep(_STOP_POLL)
        return await self.get(deployment_id)

    def _heard_control(self, payload: str) -> None:
        """Another replica was asked to stop or control a deployment this one drives."""
        try:
            asked = json.loads(payload)
            runner = self._runners.get(str(asked["deployment"]))
            action, actor = str(asked["action"]), str(asked.get("actor") or "deploybot")
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed control notice: %r", payload)
            return
        if runner is None:
            return
        if action == "stop":
            rollback = asked.get("rollback")
            runner.post(StopRequested(rollback=rollback if isinstance(rollback, bool) else None, actor=actor))
        elif (event_type := _CONTROL_EVENTS.get(action)) is not None:
            runner.post(event_type())

    # -- reading ---------------------------------------------------------------------------------------------

    async def _row(self, deployment_id: str) -> dict[str, Any]:
        row = await self.store.get_deployment(deployment_id)
        if row is None:
            raise DeploymentNotFound(deployment_id)
        return row

    async def get(self, deployment_id: str) -> dict[str, Any]:
        view = await self.store.get_deployment_view(deployment_id)  # one read: each costs a trip to the store
        if view is None:
            raise DeploymentNotFound(deployment_id)
        row, events, revision = view
        position = None
        if row["status"] == "Queued":
            queued = await self.store.list_deployments(
                group_name=row["group_name"], status="Queued", newest_first=False
            )
            position = next((i + 1 for i, r in enumerate(queued) if r["id"] == deployment_id), None)
        document = deployment_json(
            row,
            events,
            revision=revision,
            version=self._versions.get(deployment_id, 0),
            queue_position=position,
        )
        return await self.release.decorate(row, document)

    async def history(self, application: str, environment: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        app = self.config.application(application)
        env = app.environment(environment) if environment else None
        rows = await self.store.list_deployments(application=app.name, environment=env, limit=limit)
        return [await self.get(r["id"]) for r in rows]

    async def event_log(self, deployment_id: str) -> list[dict[str, Any]]:
        await self._row(deployment_id)
        return [
            {k: entry[k] for k in ("id", "at", "actor", "kind", "data")}
            for entry in await self.store.read_log(deployment_id=deployment_id)
        ]

    async def watch(self, deployment_id: str, *, after: int = 0, timeout: float = 25.0) -> dict[str, Any]:
        await self._row(deployment_id)
        if self._versions.get(deployment_id, 0) <= after and deployment_id in self._runners:
            changed = self._changed.setdefault(deployment_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return await self.get(deployment_id)

    async def plan(self, request: DeployRequest) -> dict[str, Any]:
        """The dry run: what a deployment of this group would do, from config alone (changes nothing)."""
        group = self.config.group(request.application, request.environment)
        configs = {**self.config.deployment_configs, **self.registry.deployment_configs()}
        document = await dry_run(
            group,
            request.config_name,
            configs=configs,
            file_configs=self.config.deployment_configs,
            blueprint=self.blueprint,
        )
        return await self.release.plan(group, request, document)

    async def hosts(self) -> list[dict[str, Any]]:
        return await self.inventory.hosts()

    def applications(self) -> list[dict[str, Any]]:
        return self.inventory.applications()

    async def changed(self, deployment_id: str, *, group: str) -> None:
        """Something about the deployment changed: wake its watchers and tell the notifiers that follow ``group``, its
        group (a deployment no notifier follows is not read). What the runner says has changed, when one drives it,
        lets progress be merged; without one (queued, ended) every change is delivered."""
        self._versions[deployment_id] = self._versions.get(deployment_id, 0) + 1
        event = self._changed.pop(deployment_id, None)
        if event is not None:
            event.set()
        runner = self._runners.get(deployment_id)
        milestones = runner.milestones() if runner is not None else None
        await self._notifications.changed(deployment_id, milestones, group=group)

    # -- restart ---------------------------------------------------------------------------------------------

    async def restore_traffic(self) -> None:
        """Put blue/green traffic back on each group's live side (a fresh balancer starts with none), except
        where an unfinished deployment will restore its own weights when it resumes."""
        unfinished = {r["group_name"] for r in await self.store.unfinished_deployments()}
        for group in self.config.groups():
            router = self.routers.get(group.name)
            blue_green = group.platform is Platform.SERVER and group.deployment_type is DeploymentType.BLUE_GREEN
            if router is None or not blue_green or group.name in unfinished:
                continue
            live, idle = await self.blueprint.sides(group)
            try:
                await router.prepare(group.name, live, idle)
                await router.set_weight(group.name, 0, wait=False)
            except EngineError as exc:
                log.error("could not route %s to its live side %s: %s", group.name, ", ".join(live), exc)

    async def resume_unfinished(self) -> None:
        """Pick up what a previous server left: ended deployments whose wind-up it did not finish are wound up,
        running ones resume, queued ones wait their turn (per group, where this replica gets the lease:
        ``_start_next``)."""
        rows = [*await self.store.owing_wind_up(), *await self.store.unfinished_deployments()]
        for group_name in dict.fromkeys(r["group_name"] for r in sorted(rows, key=lambda r: r["created_at"])):
            await self.queue.start_held(group_name)


def _crash_site(exc: BaseException) -> str:
    """``KeyError at engine/runtime/runner.py:412``: the exception's type and the innermost line of the engine's code
    it came through. Enough to match a report to the server log's traceback; nothing of the exception's message,
    which may quote data that is not the reader's to see."""
    ours = [frame for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename).is_relative_to(_ENGINE)]
    if not ours:
        return type(exc).__name__
    where = Path(ours[-1].filename).relative_to(_ENGINE.parent).as_posix()
    return f"{type(exc).__name__} at {where}:{ours[-1].lineno}"


_ENGINE = Path(__file__).resolve().parents[1]
"""The engine package's directory: a frame in a file under it is the engine's own."""
