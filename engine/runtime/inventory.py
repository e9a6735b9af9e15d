"""What is configured and how its hosts' agents are doing: the answers of ``deploybot hosts`` and the
applications listing.

Hosts come from the config file and, when the CodeDeploy API registered on-premises instances, from the registry
(``source`` says which); a deregistered instance is no longer listed.

An agent is *offline* once it has not been heard from for ``server.agent_offline_after_seconds`` on the engine
Clock (its last heartbeat in the agents table, or a poll this server saw). ``AgentHealth`` watches for that and
tells ``on_change`` once per silence and once when the agent is back: each transition is recorded as an intent
(source ``agent-health``, key ``agent-health:<host>:<offline|online>:<last seen before the silence>``, scope the
host), so a restart neither repeats an announcement nor forgets a host that is still silent. After a restart each
agent is given that long again before a silence is announced: the server, not the agent, may have been away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engine.core.config.model import EngineConfig
from engine.core.intents import IntentState
from engine.core.triggers import TriggerEvent, agent_offline
from engine.ports import Clock, HostFleet, Store
from engine.runtime.blueprint import Blueprint
from engine.runtime.registry import Registry

log = logging.getLogger(__name__)

AGENT_HEALTH_SOURCE = "agent-health"


class Inventory:
    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        fleet: HostFleet,
        clock: Clock,
        blueprint: Blueprint,
        registry: Registry,
    ) -> None:
        self.config = config
        self.store = store
        self.fleet = fleet
        self.clock = clock
        self.blueprint = blueprint
        self.registry = registry

    async def hosts(self) -> list[dict[str, Any]]:
        """Every configured or registered host with its agent's state: online while heard from within the
        heartbeat limit."""
        now = self.clock.now()
        running = {c["host"]: c for c in await self.store.list_commands(status="InProgress", payload=False)}
        known: list[tuple[str, dict[str, str], bool, str]] = [
            (host.name, dict(host.tags), host.local, "config") for host in self.config.hosts.values()
        ]
        known += [(i.name, dict(i.tags), False, "api") for i in self.registry.instances() if i.registered]
        agents = {str(a["name"]): a for a in await self.store.list_agents()}  # one read, not one per host
        out = []
        for name, tags, local, source in known:
            agent = agents.get(name) or {}
            seen = self.fleet.last_seen(name) or agent.get("last_seen")
            online = seen is not None and not agent_offline(seen, now, self.config.server.agent_offline_after_seconds)
            command = running.get(name)
            out.append(
                {
                    "name": name,
                    "tags": tags,
                    "local": local,
                    "source": source,
                    "agent": "online" if online else ("offline" if seen else "never seen"),
                    "last_seen": seen,
                    "version": agent.get("version"),
                    "running": {"deployment_id": command["deployment_id"], "event": command["event"]}
                    if command
                    else None,
                }
            )
        return out

    def known_hosts(self) -> list[str]:
        """Every configured host and every registered instance."""
        names = list(self.config.hosts)
        names += [i.name for i in self.registry.instances() if i.registered and i.name not in self.config.hosts]
        return names

    def applications(self) -> list[dict[str, Any]]:
        return [
            {
                "name": app.name,
                "platform": str(app.platform),
                "environments": [
                    {
                        "name": env,
                        "group": app.groups[env].name,
                        "deployment_type": str(app.groups[env].deployment_type),
                        "deployment_config": app.groups[env].deployment_config,
                        "targets": list(self.blueprint.target_names(app.groups[env])),
                    }
                    for env in app.environments
                ],
            }
            for app in self.config.applications.values()
        ]


class AgentHealth:
    """Announces agents that go silent, and come back (see the module docstring)."""

    def __init__(
        self,
        inventory: Inventory,
        on_change: Callable[[str, TriggerEvent, float], Awaitable[None]],
        *,
        interval: float | None = None,
    ) -> None:
        self.inventory = inventory
        self.on_change = on_change
        offline_after = inventory.config.server.agent_offline_after_seconds
        self.interval = interval if interval is not None else max(1.0, min(offline_after / 4, 15.0))
        self._silent: dict[str, float] | None = None  # host -> last seen before its silence (announced)
        self._watching_since = 0.0  # when this server's first check ran
        self._task: asyncio.Task[None] | None = None

    async def _load(self) -> dict[str, float]:
        silent: dict[str, float] = {}
        for row in await self.inventory.store.list_intents(source=AGENT_HEALTH_SOURCE):
            host = str(row["scope"])
            if row["kind"] == "offline":
                silent[host] = float(row["payload"]["last_seen"])
            else:
                silent.pop(host, None)
        return silent

    async def check(self) -> list[tuple[str, TriggerEvent]]:
        """One look at every host: the transitions found (each told to ``on_change`` and recorded)."""
        inventory = self.inventory
        if self._silent is None:
            self._silent = await self._load()
            self._watching_since = inventory.clock.now()
        offline_after = inventory.config.server.agent_offline_after_seconds
        now = inventory.clock.now()
        changes: list[tuple[str, TriggerEvent]] = []
        stored = {str(a["name"]): a.get("last_seen") for a in await inventory.store.list_agents()}  # one read
        for host in inventory.known_hosts():
            seen = inventory.fleet.last_seen(host) or stored.get(host)
            silent_since = self._silent.get(host)
            # A server that was itself down gives every agent ``offline_after`` to be heard from again first.
            heard = None if seen is None else max(seen, self._watching_since)
            if agent_offline(heard, now, offline_after) and silent_since is None:
                assert seen is not None
                event, since, kind = TriggerEvent.INSTANCE_AGENT_OFFLINE, seen, "offline"
            elif seen is not None and silent_since is not None and not agent_offline(seen, now, offline_after):
                event, since, kind = TriggerEvent.INSTANCE_AGENT_ONLINE, silent_since, "online"
            else:
                continue
            await self.on_change(host, event, since)  # idempotent: first, so a crash here repeats nothing
            await inventory.store.add_intent(
                f"agent-health:{host}:{kind}:{since:.3f}",
                source=AGENT_HEALTH_SOURCE,
                kind=kind,
                scope=host,
                payload={"host": host, "last_seen": since, "seen_at": now},
                at=now,
                state=str(IntentState.DONE),
            )
            if kind == "offline":
                self._silent[host] = since
            else:
                self._silent.pop(host, None)
            changes.append((host, event))
        return changes

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the store failed this round; the next one looks again
                log.exception("agent health check failed")
            await self.inventory.clock.sleep(self.interval)
