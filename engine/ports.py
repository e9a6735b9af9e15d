"""The narrow interfaces the runtime and release layers use to reach the world (Protocols only, no behaviour).

Each real component gets one adapter in engine/adapters/ (or engine/store/) implementing one of these; the
composition root (bot/assembly.py) picks the implementations and hands them to the Deployer, and tests use fakes
at this seam. Nothing in engine/runtime/ or engine/release/ names a concrete store or adapter.

    store        DeploymentStore, CommandQueue, ReleaseRecords, RegistryRecords, ApplicationRecords, TokenRecords,
                 IntentRecords, HookExecutionRecords, BundleRecords, AgentTokenRecords, ReplicaRecords, LeaseRecords
                 (together: Store)
    hosts        HostExecutor (run lifecycle events), HostFleet (the agents behind it)
    traffic      TrafficRouter (set_weight / verify_weight), GreenFleet (a provisioned replacement), AlarmSource
    platforms    PlatformDriver (Lambda, ECS), PlatformRuntime (the AWS side as a whole), RevisionArchive
    people       Notifier
    time         Clock
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from engine.core.agent_protocol import CommandBody, HeartbeatBody, ResultBody
from engine.core.config.model import DeploymentGroup
from engine.core.leases import Lease
from engine.core.model import LifecycleEvent, Platform, Revision
from engine.core.requests import DeployRequest

Row = dict[str, Any]
"""A stored row: column name -> value, JSON columns decoded."""


class DeploymentView(NamedTuple):
    """What a deployment's document is made of, read together (``DeploymentStore.get_deployment_view``)."""

    deployment: Row
    target_events: list[Row]
    revision: Row | None


OnResult = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[None]]
"""Where executors deliver a lifecycle event's outcome: command {"deployment_id", "host", "event"} and result
{"status": "Succeeded"|"Failed", "error_code", "message", "log_tail", "started_at", "ended_at"}."""


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock epoch seconds (recorded in the store and shown to people)."""

    def monotonic(self) -> float:
        """Seconds for measuring intervals."""

    async def sleep(self, seconds: float) -> None: ...


class HostExecutor(Protocol):
    """Runs lifecycle events on targets; results come back later through the service (not as a return value)."""

    async def dispatch(
        self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]
    ) -> None: ...

    async def cancel(self, deployment_id: str) -> None:
        """Drop the deployment's commands that no target has picked up yet."""


class TrafficRouter(Protocol):
    """Moves traffic for one deployment group (argo-rollouts' TrafficRoutingReconciler, narrowed)."""

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        """Name the two fleets of a blue/green deployment before any ``set_weight``."""

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        """Send ``percent`` of the group's traffic to the replacement fleet, the rest to the original.

        With ``wait``, only once the balancer has seen the servers that are to take traffic healthy since this call
        (a check newer than their restart): weights follow health, never lead it."""

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        """True/False when the router can tell; None when it cannot verify (a distinct answer)."""

    async def block(self, group: str, target: str) -> None:
        """Stop new traffic to ``target`` and wait for its in-flight requests (BlockTraffic)."""

    async def allow(self, group: str, target: str) -> None:
        """Send traffic to ``target`` again once the balancer's own health check sees it up (AllowTraffic)."""


@runtime_checkable
class GreenFleet(TrafficRouter, Protocol):
    """A blue/green group's router that also provisions the replacement fleet each deployment (CodeDeploy's
    ``COPY_AUTO_SCALING_GROUP``): it copies the group's current fleet, and after the deployment retires the
    original (success) or discards the copy (anything else). Fleets are named by the caller; every call is
    idempotent, so a resumed deployment asks again."""

    async def provision(self, group: str, source: str, copy: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Copy fleet ``source`` as ``copy`` (an existing ``copy`` is reused) and wait until its instances run:
        (the original's instance ids, the copy's). Raises AdapterError when it cannot."""

    async def retire(self, group: str, name: str, *, terminate: bool) -> None:
        """The deployment succeeded: ``terminate`` fleet ``name`` with its instances, or keep it running."""

    async def discard(self, group: str, name: str) -> None:
        """The deployment did not succeed: delete the copy ``name`` with its instances (nothing when gone)."""


class AlarmSource(Protocol):
    async def firing(self, alarms: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        """Names of the given alarms that are firing now; raises AdapterError when it cannot tell."""


class Notifier(Protocol):
    def follows(self, group: str) -> bool:
        """Whether the deployments of the group named ``group`` concern this notifier at all. Asked before a
        document is read: a deployment none of the notifiers follows costs no read (a 1,000-host document is
        ~10 ms of the server's CPU)."""

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        """Told after persisted transitions (Slack thread, GitHub status); must not raise. Status, stage, traffic
        and per-host outcomes come at once; mere per-host event progress may be merged into a later document (50 ms
        later, or more for a deployment whose document is dear to read: engine/runtime/notifications.py)."""


class EventListener(Protocol):
    def event_finished(self, event: str, status: str, seconds: float) -> None:
        """A lifecycle event's result was recorded, once per host and event: ``status`` Succeeded or Failed after
        ``seconds``. Told as it is recorded, without reading the deployment's document (whose size grows with its
        hosts): what a duration histogram needs. Must not raise."""


# -- platforms ----------------------------------------------------------------------------------------------------


class PlatformDriver(Protocol):
    """A compute platform that is not our own agents (Lambda, ECS): it acts on AWS resources named by the
    deployment's own AppSpec, so it makes an executor and a router for that one deployment."""

    def target_name(self, group: DeploymentGroup, appspec: Mapping[str, Any]) -> str:
        """The one target of a deployment: ``function:alias`` (Lambda) or ``cluster:service`` (ECS)."""

    def executor(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> HostExecutor:
        """Runs the deployment's lifecycle events; results go to the driver's OnResult."""

    def router(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> TrafficRouter:
        """Shifts the deployment's traffic (alias weights, listener weights); ``set_weight(group, 0)`` reroutes."""

    async def finished(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any], status: str) -> None:
        """The deployment ended with ``status``: release what is no longer needed. Must not raise."""


class HookExecution(Protocol):
    execution_id: str
    deployment_id: str
    event: str
    function: str

    def describe(self) -> dict[str, Any]: ...


class HookCallbacks(Protocol):
    """Lambda/ECS hook executions waiting for their status callback (PutLifecycleEventHookExecutionStatus).

    They are stored, so a status is taken by whichever server runs when it arrives, and a status already taken
    is final."""

    async def resolve(
        self, execution_id: str, status: str, *, deployment_id: str | None = None
    ) -> tuple[HookExecution, bool]:
        """Take a status callback: the execution, and whether this call reported its status (False: the same
        status again, already taken, which changes nothing). Raises LifecycleHookNotFound when no such execution
        waits (a different status for one already reported is a LifecycleHookNotFound that says so), and
        InvalidLifecycleHookStatus."""

    async def find(self, execution_id: str) -> dict[str, Any] | None:
        """An execution by id, waiting or not (``pending``'s shape plus ``status``); None when there is none."""

    def cancel(self, deployment_id: str) -> None:
        """The deployment ended: its executions stop waiting (their stop is recorded by whoever waits on them)."""

    def pending(self, deployment_id: str | None = None) -> list[dict[str, Any]]:
        """The executions still waiting for their callback (what an operator may unblock)."""


class PlatformRuntime(Protocol):
    """What the Deployer needs from AWS: platform drivers, hook callbacks, EC2 instances by tag, S3 revisions."""

    @property
    def hooks(self) -> HookCallbacks: ...

    def driver(self, platform: Platform) -> PlatformDriver | None:
        """The driver of a Lambda or ECS group; None for server groups (agents)."""

    async def ec2_instances(self, group: DeploymentGroup) -> tuple[str, ...]: ...

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

    async def fetch_s3_url(
        self, url: str, *, account: str = "default", platform: Platform = Platform.SERVER
    ) -> Revision:
        """``fetch_s3_revision`` of an ``s3://bucket/key[?versionId=..&etag=..&bundleType=..]`` URL; raises
        ValueError when the URL is not one."""

    async def close(self) -> None: ...


class RevisionArchive(Protocol):
    """Where revision bundles are kept, once per sha256 (engine/runtime/revisions.py)."""

    @property
    def directory(self) -> Path: ...

    def path(self, sha256: str) -> Path: ...

    async def add(
        self,
        source: str | Path,
        *,
        label: str | None = None,
        git_repo: Path | None = None,
        platform: Platform = Platform.SERVER,
        commit: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> Revision: ...

    async def get(self, sha256: str) -> Revision: ...

    async def fetch(self, sha256: str) -> bool:
        """Make sure the bundle is in this server's directory (a replica brings it from the database); False when
        it is stored nowhere."""


# -- hosts --------------------------------------------------------------------------------------------------------


class AgentFleet(Protocol):
    """The agents as the doors see them: the agent protocol's routes act for the host a token names, and the API
    and the CodeDeploy API issue and revoke those tokens."""

    def authenticate(self, token: str) -> str | None: ...

    def token_for(self, host: str) -> str:
        """The host's agent token, made on first use."""

    def revoke_token(self, host: str) -> bool: ...

    def has_token(self, host: str) -> bool:
        """Whether the host holds an agent token (which is never shown again once issued)."""

    async def issue_token(self, host: str, *, rotate: bool = False) -> str:
        """``token_for`` (after ``revoke_token`` when ``rotate``), stored before it returns: with replicas, every one
        accepts the token once this returns."""

    async def withdraw_token(self, host: str) -> bool:
        """``revoke_token``, stored before it returns."""

    async def next_command(self, host: str, *, wait: float, runs: bool = False) -> CommandBody | None:
        """Long poll; ``runs``: the agent runs a host's consecutive events back to back (the command says which)."""

    async def report_result(self, host: str, command_id: int, result: ResultBody, *, then: int | None = None) -> bool:
        """Record a result; True when ``then`` (the next command of its run) was claimed for the agent: go on."""

    async def heartbeat(self, host: str, info: HeartbeatBody) -> None: ...

    async def release(self, host: str, command_id: int) -> None: ...

    def bundle_path(self, sha256: str) -> Path | None: ...

    async def bundle_for(self, host: str, sha256: str) -> Path | None:
        """The bundle, when one of ``host``'s commands uses that revision; None otherwise (not another host's)."""


class HostFleet(HostExecutor, AgentFleet, Protocol):
    """The agents of the server platform (engine/adapters/fleet.py): the runtime dispatches to them and watches
    their heartbeats; the doors serve their protocol (AgentFleet)."""

    def last_seen(self, host: str) -> float | None: ...

    async def dispatch_runs(
        self,
        deployment_id: str,
        runs: Sequence[tuple[str, Sequence[LifecycleEvent]]],
        spec: Mapping[str, Any],
        *,
        step: StepWrite | None = None,
    ) -> None:
        """Queue each target's run of consecutive events (the first is the one asked for now), in one transaction
        that writes ``step`` first (written alone when nothing is queued); resume-safe as ``dispatch``."""

    def queued_ahead(self, deployment_id: str, target: str, event: LifecycleEvent) -> bool:
        """Whether ``event`` was queued for ``target`` with an earlier event's run (its dispatch queues nothing)."""

    def start_monitor(self, interval: float = 1.0) -> None:
        """Start failing the commands of hosts whose agents stopped sending heartbeats."""

    async def stop_monitor(self) -> None: ...


# -- the store ----------------------------------------------------------------------------------------------------


class DeploymentStore(Protocol):
    """Deployments, their targets' events, revisions and the append-only audit log."""

    async def close(self) -> None: ...

    async def put_revision(
        self,
        sha256: str,
        *,
        source: str,
        commit: str | None,
        size: int,
        created_at: float,
        appspec: Mapping[str, Any] | None = None,
        platform: str = "server",
        location: Mapping[str, Any] | None = None,
    ) -> bool: ...
    async def get_revision(self, sha256: str) -> Row | None: ...
    async def create_deployment(self, record: Mapping[str, Any], *, log: Mapping[str, Any] | None = None) -> None: ...
    async def get_deployment(self, deployment_id: str) -> Row | None: ...
    async def update_deployment(
        self, deployment_id: str, *, if_status: Sequence[str] | None = None, **fields: Any
    ) -> bool: ...
    async def list_deployments(
        self,
        *,
        application: str | None = None,
        environment: str | None = None,
        group_name: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[Row]: ...
    async def unfinished_deployments(self) -> list[Row]: ...
    async def owing_wind_up(self, group_name: str | None = None) -> list[Row]:
        """Ended deployments whose wind-up was cut short (their ``wind_up`` is still set), oldest first."""

    async def wound_up(self, deployment_id: str, *, log: Mapping[str, Any]) -> None:
        """Clear the deployment's ``wind_up`` and append ``log``, the entry of its end, in one transaction."""

    async def save_progress(
        self, deployment_id: str, rows: Sequence[Mapping[str, Any]], **deployment: Any
    ) -> bool | None: ...
    async def list_target_events(self, deployment_id: str) -> list[Row]: ...
    async def get_deployment_view(self, deployment_id: str) -> DeploymentView | None:
        """The deployment, its targets' events and its revision in one read; None when there is no such
        deployment."""

    async def append_log(
        self,
        kind: str,
        *,
        at: float,
        actor: str,
        deployment_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int: ...
    async def append_logs(self, entries: Iterable[Mapping[str, Any]]) -> list[int]: ...
    async def read_log(
        self, *, deployment_id: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Row]: ...
    async def get_agent(self, name: str) -> Row | None: ...
    async def list_agents(self) -> list[Row]: ...


QueuedRun = tuple[str, str, Sequence[str], Mapping[str, Any] | None]
"""(host, deployment_id, events, payload): a host's consecutive events, queued together (a *run*)."""


class StepWrite(NamedTuple):
    """A deployment's step as ``save_progress`` writes it (its target rows, then ``update_deployment(**fields)``),
    handed to ``enqueue_command_runs`` to be written in the transaction that queues the commands it decided on: the
    step is stored before its commands can reach an agent, in one trip instead of two."""

    deployment_id: str
    rows: Sequence[Mapping[str, Any]]
    fields: Mapping[str, Any]


CommandReport = tuple[int, str, str, Mapping[str, Any] | None, int | None]
"""(command_id, host, status, result, then): an agent's report, and the command it would run next (or None)."""
FinishedReport = tuple[dict[str, Any] | None, bool, bool]
"""(the command without payload or None, whether the report finished it, whether its ``then`` was claimed)."""
AgentBeat = tuple[str, float, Mapping[str, str] | None, str | None, str | None]
"""(host, last_seen, tags, version, state): an agent's heartbeat as stored (``upsert_agent``'s fields)."""


class CommandQueue(Protocol):
    """Per-host command queues of the agent protocol, and what the agents last said of themselves."""

    async def enqueue_command_once(
        self, host: str, deployment_id: str, event: str, payload: Mapping[str, Any] | None, *, at: float
    ) -> Row | None: ...
    async def enqueue_command_runs(
        self,
        runs: Sequence[QueuedRun],
        *,
        at: float,
        hand_to: Mapping[str, bool] | None = None,
        step: StepWrite | None = None,
    ) -> tuple[list[Row | None], dict[str, Row]]:
        """Queue many runs in one transaction, ``step`` written first in it; claim the oldest command of each
        ``hand_to`` host that got one."""

    async def claim_next_command(self, host: str, *, at: float, with_run: bool = False) -> Row | None: ...
    async def release_command(self, command_id: int) -> bool: ...
    async def complete_command(
        self, command_id: int, status: str, result: Mapping[str, Any] | None, *, at: float, host: str | None = None
    ) -> bool: ...
    async def finish_command(
        self, command_id: int, host: str, status: str, result: Mapping[str, Any] | None, *, at: float
    ) -> tuple[Row | None, bool]: ...
    async def finish_commands(
        self, reports: Sequence[CommandReport], *, at: float, heads: Mapping[int, Row] | None = None
    ) -> list[FinishedReport]:
        """Many agents' reports in one transaction; a failure cancels the rest of its run."""

    async def open_commands(self, status: str) -> list[Row]:
        """The commands in ``status``, oldest first, as ``id`` and ``host`` alone (the heartbeat monitor's read)."""

    async def get_command(self, command_id: int) -> Row | None: ...

    async def list_commands(
        self,
        *,
        host: str | None = None,
        deployment_id: str | None = None,
        status: str | Sequence[str] | None = None,
        payload: bool = True,
    ) -> list[Row]:
        """Oldest first; ``payload=False`` leaves out the spec and the result (a monitor that reads every open
        command each second need not decode a thousand deployment specs)."""

    async def finished_commands(self, deployment_id: str) -> list[Row]:
        """The deployment's commands with a result, oldest first, without payload."""

    async def cancel_commands(self, deployment_id: str, *, at: float) -> int: ...
    async def host_uses_revision(self, host: str, sha256: str) -> bool:
        """Whether ``host`` has (or had) a command of a deployment of revision ``sha256``."""

    async def upsert_agent(
        self,
        name: str,
        *,
        last_seen: float,
        tags: Mapping[str, str] | None = None,
        version: str | None = None,
        state: str | None = None,
    ) -> None: ...
    async def record_heartbeats(self, beats: Sequence[AgentBeat]) -> list[Row]:
        """Several ``upsert_agent`` in one transaction; the InProgress commands of their hosts, without payload."""

    async def get_agent(self, name: str) -> Row | None: ...
    async def get_agents(self, names: Sequence[str]) -> list[Row]:
        """The rows of those of ``names`` that have one, in one trip to the store (by name)."""

    @property
    def shared(self) -> bool:
        """Whether other servers may share this database (PostgreSQL): leases are renewed and taken over, signals
        sent, agents heard by another replica."""

    async def listen(
        self,
        channel: str,
        callback: Callable[[str], None],
        *,
        reopened: Callable[[], None] | None = None,
        own: bool = True,
    ) -> None:
        """Hear what other replicas ``notify`` on ``channel`` (engine/core/leases.py's channels); ``reopened`` after
        a dropped connection came back (look once for what was missed); ``own=False``: not what this store notified
        itself (its caller has acted on that already). Nothing on an unshared store."""


class ReleaseRecords(Protocol):
    """Environment locks, approvals (append only) and the deliveries of webhooks already taken."""

    async def put_lock(
        self,
        application: str,
        environment: str,
        *,
        owner: str,
        created_at: float,
        reason: str | None = None,
        expires_at: float | None = None,
    ) -> None: ...
    async def get_lock(self, application: str, environment: str) -> Row | None: ...
    async def delete_lock(self, application: str, environment: str, *, created_at: float | None = None) -> bool: ...
    async def list_locks(self) -> list[Row]: ...
    async def add_approval(
        self,
        deployment_id: str,
        *,
        application: str,
        environment: str,
        revision_sha256: str,
        actor: str,
        decision: str,
        created_at: float,
        expires_at: float | None = None,
        reason: str | None = None,
    ) -> int: ...
    async def list_approvals(
        self,
        *,
        application: str | None = None,
        environment: str | None = None,
        revision_sha256: str | None = None,
        deployment_id: str | None = None,
    ) -> list[Row]: ...
    async def record_delivery(self, delivery_id: str, source: str, at: float) -> bool: ...


class RegistryRecords(Protocol):
    """What the CodeDeploy API registers: revisions, on-premises instances, deployment configurations."""

    async def list_api_configs(self) -> list[Row]: ...
    async def insert_api_config(
        self, name: str, compute_platform: str, definition: Mapping[str, Any], *, at: float
    ) -> None: ...
    async def delete_api_config(self, name: str) -> None: ...
    async def unfinished_deployments_using(self, config_name: str) -> list[str]: ...
    async def list_onprem_instances(self) -> list[Row]: ...
    async def register_onprem_instance(
        self, name: str, *, iam_arn: str | None, tags: Mapping[str, str], at: float
    ) -> Row: ...
    async def deregister_onprem_instance(self, name: str, *, at: float) -> Row | None: ...
    async def set_onprem_tags(self, name: str, tags: Mapping[str, str]) -> Row | None: ...
    async def list_registered_revisions(self) -> list[Row]: ...
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
    ) -> Row: ...


class ApplicationRecords(Protocol):
    """Applications and deployment groups made through the CodeDeploy API, and the tags of API-made resources
    (engine/store/application_records.py)."""

    async def list_api_applications(self) -> list[Row]: ...
    async def insert_api_application(
        self, app_id: str, name: str, compute_platform: str, *, tags: Mapping[str, str], at: float
    ) -> Row: ...
    async def rename_api_application(self, app_id: str, name: str) -> Row | None: ...
    async def set_api_application_tags(self, app_id: str, tags: Mapping[str, str]) -> Row | None: ...
    async def delete_api_application(self, app_id: str) -> None: ...
    async def list_api_groups(self) -> list[Row]: ...
    async def insert_api_group(
        self, name: str, application_id: str, definition: Mapping[str, Any], *, tags: Mapping[str, str], at: float
    ) -> Row: ...
    async def update_api_group(self, name: str, *, new_name: str, definition: Mapping[str, Any]) -> Row | None: ...
    async def set_api_group_tags(self, name: str, tags: Mapping[str, str]) -> Row | None: ...
    async def delete_api_group(self, name: str) -> None: ...
    async def set_api_config_tags(self, name: str, tags: Mapping[str, str]) -> Row | None: ...
    async def unfinished_deployments_in(self, application: str, environments: Sequence[str]) -> list[str]: ...


class TokenRecords(Protocol):
    """Per-user API tokens, kept by the sha256 of the token (never the token): engine/runtime/tokens.py's rows."""

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
        """False when a token with this hash exists already (revoked or not): nothing is added then."""

    async def api_token_by_hash(self, token_sha256: str) -> Row | None: ...
    async def get_api_token(self, token_id: str) -> Row | None: ...
    async def list_api_tokens(self, *, user: str | None = None) -> list[Row]: ...
    async def revoke_api_token(self, token_id: str, *, at: float) -> Row | None:
        """The row after revoking it (a first revocation stays); None when there is no such token."""

    async def touch_api_token(self, token_id: str, *, at: float) -> None: ...


class IntentRecords(Protocol):
    """What the doors were asked, by key (engine/core/intents.py; engine/store/intent_records.py)."""

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
    ) -> tuple[Row, bool]:
        """The row under ``key`` and whether this call added it (False: a retry or replay of one already taken)."""

    async def get_intent(self, key: str) -> Row | None: ...
    async def move_intent(
        self,
        key: str,
        state: str,
        *,
        at: float,
        only_from: Collection[str] | None = None,
        outcome: Mapping[str, Any] | None = ...,
        not_before: float | None = ...,
        attempt: bool = False,
    ) -> Row | None:
        """The row after the move; None when nothing changed (no such key, or not in ``only_from``)."""

    async def list_intents(
        self,
        *,
        source: str | None = None,
        kind: str | None = None,
        scope: str | None = None,
        states: Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[Row]: ...


class HookExecutionRecords(Protocol):
    """Lambda/ECS hook executions, one per (deployment, target, event, function), by execution id
    (engine/store/hook_records.py; the states are engine/adapters/aws/hook_executions.py's)."""

    async def add_hook_execution(
        self,
        execution_id: str,
        *,
        deployment_id: str,
        target: str,
        event: str,
        function: str,
        state: str,
        at: float,
    ) -> tuple[Row, bool]:
        """The hook's execution and whether this call added it (False: one was stored before; that row, untouched)."""

    async def get_hook_execution(self, execution_id: str) -> Row | None: ...
    async def move_hook_execution(
        self,
        execution_id: str,
        state: str,
        *,
        at: float,
        only_from: Collection[str],
        status: str | None = None,
        detail: str | None = None,
    ) -> Row | None:
        """The row after the move; None when nothing changed (no such execution, or not in ``only_from``)."""

    async def list_hook_executions(
        self, *, deployment_id: str | None = None, states: Collection[str] | None = None, running_only: bool = False
    ) -> list[Row]:
        """Oldest first; ``running_only`` leaves out the executions of deployments that have ended."""


class BundleRecords(Protocol):
    """Revision bundles in the database, for replicas that lack one in their own data directory
    (engine/store/bundle_records.py; used on PostgreSQL only, by engine/runtime/revisions.py)."""

    async def put_bundle(
        self, sha256: str, size: int, chunks: Callable[[], Iterator[bytes]], *, created_at: float
    ) -> bool:
        """Store the bytes ``chunks()`` yields (called again should a retry need them); True when this call did."""

    async def get_bundle(self, sha256: str) -> Row | None: ...
    async def bundle_chunk(self, sha256: str, seq: int) -> bytes | None: ...


class AgentTokenRecords(Protocol):
    """Agents' tokens in the database, shared by the replicas (engine/store/agent_token_records.py)."""

    async def put_agent_token(
        self, host: str, *, token: str, token_sha256: str, at: float, replace: bool = False
    ) -> Row:
        """The host's row after the call: the given token if it had none (or ``replace``), else the one it holds."""

    async def delete_agent_token(self, host: str) -> bool: ...
    async def agent_token_of(self, host: str) -> Row | None: ...
    async def agent_token_by_hash(self, token_sha256: str) -> Row | None: ...
    async def list_agent_tokens(self) -> list[Row]: ...


class ReplicaRecords(Protocol):
    """The servers on one database and what they say of it (engine/store/replica_records.py)."""

    @property
    def backend(self) -> str:
        """The database kind: "sqlite" or "postgresql"."""

    async def applied_migrations(self) -> list[str]: ...
    async def register_replica(self, replica_id: str, *, url: str, version: str, at: float) -> None: ...
    async def touch_replica(self, replica_id: str, *, at: float) -> bool: ...
    async def list_replicas(self) -> list[Row]: ...
    async def forget_replica(self, replica_id: str) -> bool: ...
    async def forget_replicas_seen_before(self, at: float) -> int: ...


class LeaseRecords(Protocol):
    """Deployment groups' leases and the fencing of their owners' writes (engine/store/lease_records.py; the rules
    in engine/core/leases.py), and the signals replicas send each other through the store."""

    async def acquire_lease(self, group: str, owner: str, *, seconds: float, now: float) -> Lease | None: ...
    async def renew_lease(self, lease: Lease, *, seconds: float, now: float) -> Lease | None: ...
    async def release_lease(self, lease: Lease) -> bool: ...
    async def list_leases(self, *, now: float | None = None) -> list[Row]:
        """Every group's lease: group_name, owner, generation, expires_at (the store's clock), held."""

    async def groups_to_take_over(self, *, now: float) -> list[Row]:
        """Groups with a deployment queued or in flight, or owing its wind-up: group_name, owner (of the lease, or
        None), free_in (seconds until the lease runs out by the store's clock; 0 or less: free now)."""

    def fencing(self, lease: Lease) -> AbstractContextManager[None]:
        """Every store write made inside is refused (``LeaseLost``) unless ``lease`` still holds."""

    async def notify(self, channel: str, payloads: Collection[str]) -> None: ...


class Store(
    LeaseRecords,
    DeploymentStore,
    CommandQueue,
    ReleaseRecords,
    RegistryRecords,
    ApplicationRecords,
    TokenRecords,
    IntentRecords,
    HookExecutionRecords,
    BundleRecords,
    AgentTokenRecords,
    ReplicaRecords,
    Protocol,
):
    """All of deploybot's state: engine/store/sqlite.py (the embedded default) or engine/store/postgres.py."""


# -- the runtime's own seams, for the release layer ---------------------------------------------------------------


class DeploymentQueue(Protocol):
    """One deployment in flight per group (engine/runtime/queue.py), as the release flow uses it: decide under
    the one lock, start what a lock or an approval held back, and run lock-expiry timers in the background."""

    @property
    def lock(self) -> asyncio.Lock: ...

    async def start_next(self, group_name: str) -> None:
        """Start the group's next deployment if it is free; the caller holds ``lock``."""

    async def start_held(self, group_name: str) -> None:
        """``start_next`` under ``lock``."""

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in the background until it ends or the queue closes."""


class Deployments(Protocol):
    """The Deployer as the release flow needs it: start a request, read a document, signal a change."""

    async def start(self, request: DeployRequest) -> dict[str, Any]: ...

    async def get(self, deployment_id: str) -> dict[str, Any]: ...

    async def changed(self, deployment_id: str, *, group: str) -> None:
        """Wake the deployment's watchers and tell the notifiers (Slack thread, GitHub status) that follow ``group``,
        the deployment's group."""
