"""The composition root: the one place that picks the store and the adapters and hands them to the Deployer.

``deploybot serve`` calls ``lock_data_dir`` first (one server per data directory), then ``assemble_deployer`` with
the routers and alarms it built from the config; tests call it with a fake clock. Nothing in engine/ chooses a
concrete store, fleet or AWS runtime for itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.adapters.agent_tokens import TOKEN_FILE, AgentTokens
from engine.adapters.aws.accounts import AwsAccounts
from engine.adapters.aws.runtime import AwsRuntime
from engine.adapters.clock import SystemClock
from engine.adapters.fleet import Fleet, gather_heartbeats
from engine.adapters.triggers.sns import SnsTriggerSender
from engine.adapters.triggers.webhook import WebhookTriggerSender
from engine.core.config.model import EngineConfig
from engine.ports import Clock, Store, TrafficRouter
from engine.runtime.deployer import AlarmFactory, Deployer
from engine.runtime.inventory import AgentHealth
from engine.runtime.queue import GroupQueue
from engine.runtime.replicas import ReplicaRegistry
from engine.runtime.results import CommandResults
from engine.runtime.revisions import RevisionStore
from engine.runtime.triggers import TriggerOutbox, TriggerSender
from engine.store.sqlite import SqliteStore

DATABASE_FILE = "deploybot.db"
"""The SQLite database in the data directory (when the config names no ``store``)."""


async def open_store(config: EngineConfig, data_dir: Path, *, init: bool = False) -> Store:
    """The store the config names: the PostgreSQL database of ``store.url``, its password (if any) from the
    environment variable ``store.password_env`` (else PGPASSWORD or ~/.pgpass, as PostgreSQL's own tools), or by
    default SQLite in ``data_dir``. ``init`` as ``SqliteStore.open``'s. Raises DatabaseUnusable / PostgresUnusable
    (EngineErrors: one line for the operator)."""
    if config.store is None:
        return await SqliteStore.open(data_dir / DATABASE_FILE, init=init)
    from engine.store.postgres import PostgresStore, PostgresUnusable, shown_url

    password = None
    if config.store.password_env is not None:
        password = os.environ.get(config.store.password_env)
        if password is None:
            reason = f"store.password_env names {config.store.password_env}, which is not set"
            raise PostgresUnusable(shown_url(config.store.url), reason, "set it in the server's environment")
    return await PostgresStore.open(config.store.url, password=password, init=init)


LOCK_FILE = "server.lock"
"""The file in the data directory that ``deploybot serve`` holds an exclusive flock on, holding its pid."""


class DataDirInUse(Exception):
    """Another process holds the data directory's lock; the message names it (by pid when it wrote one)."""


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory for this process, before anything opens its database, agents or HAProxy files.

    Two servers on one data directory would both dispatch from one SQLite file and replace each other's local
    agents. An exclusive ``flock`` on ``<data>/server.lock`` makes the second refuse to start; the kernel drops the
    lock when the holder dies, however (kill -9 included), so there is nothing stale to clean up. The holder writes
    its pid into the file so the refusal can name it. Returns the file descriptor: keep it open for the process's
    life (it is not inherited by child processes). Raises DataDirInUse, or OSError when the directory is unusable.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "a process that has not written its pid yet"
            raise DataDirInUse(
                f"the data directory {data_dir} is in use by another deploybot serve ({who}): stop it first, "
                "or give this one another server.data_dir"
            ) from None
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)  # a file made by hand or by another umask is tightened like the rest of the dir
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class ServedDeployer(Deployer):
    """The Deployer with the trigger outbox (a notifier when a group has triggers) and the agent-health watch,
    started after it opens and stopped before it closes (engine/runtime/triggers.py, engine/runtime/inventory.py)."""

    def __init__(
        self,
        *args: Any,
        trigger_senders: Mapping[str, TriggerSender],
        agent_tokens: AgentTokens,
        replica_url: str,
        shared: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # This server's row among the replicas on its database (/healthz, GET /api/v1/replicas), named as its leases.
        self.replica = ReplicaRegistry(
            self.store,
            self.clock,
            replica_id=self.replica_id,
            url=replica_url,
            version=_version(),
            leases=lambda: self.store.list_leases(now=self.clock.now()),
            shared=shared,
        )
        self.agent_tokens = agent_tokens
        self.trigger_senders = dict(trigger_senders)
        self.triggers = TriggerOutbox(
            self.config,
            self.store,
            self.clock,
            self.trigger_senders,
            fetch=self.get,
            target_names=self.blueprint.target_names,
        )
        # Always told: a group the CodeDeploy API creates later may have triggers (a group without returns at once).
        self.notifiers.append(self.triggers)
        self.agent_health = AgentHealth(self.inventory, self.triggers.agent_changed)

    async def open(self) -> None:
        await super().open()
        self.triggers.start()
        self.agent_health.start()
        await self.replica.start()

    async def close(self) -> None:
        await self.replica.close()
        await self.agent_tokens.close()
        await self.agent_health.close()
        await self.triggers.close()
        for sender in self.trigger_senders.values():
            with contextlib.suppress(Exception):
                await sender.close()  # type: ignore[attr-defined]
        await super().close()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("deploybot")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0+unknown"


def default_trigger_senders(config: EngineConfig, clock: Clock) -> dict[str, TriggerSender]:
    """SNS through the config's AWS accounts, signed webhooks, and Slack when ``SLACK_BOT_TOKEN`` is set."""
    senders: dict[str, TriggerSender] = {
        "sns": SnsTriggerSender(dict(config.aws_accounts)),
        "webhook": WebhookTriggerSender(clock.now),
    }
    from bot.settings import Settings

    settings = Settings.from_env(os.environ)
    if settings.slack_bot_token:
        from slack_sdk.web.async_client import AsyncWebClient

        from bot.slack.agent_health import SlackChannelSender

        client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, retry_handlers=[])
        senders["slack"] = SlackChannelSender(client)
    return senders


async def assemble_deployer(
    config: EngineConfig,
    *,
    data_dir: Path,
    clock: Clock | None = None,
    routers: Mapping[str, TrafficRouter] | None = None,
    alarm_factory: AlarmFactory | None = None,
    aws: AwsAccounts | None = None,
    trigger_senders: Mapping[str, TriggerSender] | None = None,
    replica_url: str | None = None,
    replica_id: str | None = None,
) -> ServedDeployer:
    """A Deployer over ``data_dir`` (revision bundles, agent tokens; the database unless ``config.store`` names a
    PostgreSQL one: ``open_store``), resumed where a previous server left off. ``aws``: one set of AWS clients
    shared with the routers and alarms (made from the config if None).
    ``trigger_senders``: by target kind; ``default_trigger_senders`` when None. ``replica_url``: where this server
    listens (its row among the replicas; default ``server.url``), ``replica_id``: its name there and on its leases
    (the Deployer makes one up when None).

    With ``store.url`` (replicas on PostgreSQL) revision bundles are also written to the database and fetched from it
    by a replica that lacks one, and the agent tokens live in the database; with SQLite they stay in ``data_dir``."""
    clock = clock or SystemClock()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await open_store(config, data_dir)
    agent_tokens: AgentTokens | None = None
    try:
        shared = config.store is not None  # replicas share the database: bundles and agent tokens go there too
        revisions = RevisionStore(store, data_dir / "revisions", clock, shared=store if shared else None)
        if shared:
            from engine.store.postgres import PostgresStore

            listen = store.listen if isinstance(store, PostgresStore) else None
            agent_tokens = AgentTokens.in_store(store, clock, listen=listen)
        else:
            agent_tokens = AgentTokens.in_file(data_dir / TOKEN_FILE)
        await agent_tokens.open(config.hosts)
        results = CommandResults()
        fleet = Fleet(
            store,
            data_dir=data_dir,
            clock=clock,
            bundle_dir=revisions.directory,
            on_result=results.deliver,
            heartbeat_timeout=config.server.heartbeat_timeout,
            tokens=agent_tokens,
            gather_beats=gather_heartbeats,
        )
        platforms = AwsRuntime(
            config, clock=clock, on_result=results.deliver, revisions=revisions, hook_records=store, accounts=aws
        )
        await platforms.open()
        routers = platforms.with_green_fleets(routers or {})  # blue/green groups that copy an Auto Scaling group
        deployer = ServedDeployer(
            config,
            store=store,
            fleet=fleet,
            platforms=platforms,
            revisions=revisions,
            results=results,
            clock=clock,
            queue=GroupQueue(),
            routers=routers,
            alarm_factory=alarm_factory,
            trigger_senders=default_trigger_senders(config, clock) if trigger_senders is None else trigger_senders,
            agent_tokens=agent_tokens,
            replica_url=replica_url or config.server.url,
            shared=shared,
            replica_id=replica_id,
        )
    except BaseException:
        if agent_tokens is not None:
            await agent_tokens.close()
        await store.close()
        raise
    try:
        await deployer.open()
    except BaseException:
        await deployer.close()
        raise
    return deployer
