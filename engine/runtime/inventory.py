"""What is configured and how its hosts' agents are doing: the answers of ``deploybot hosts`` and the
applications listing.

Hosts come from the config file and, when the CodeDeploy API registered on-premises instances, from the registry
(``source`` says which); a deregistered instance is no longer listed.
"""

from __future__ import annotations

from typing import Any

from engine.core.config.model import EngineConfig
from engine.ports import Clock, HostFleet, Store
from engine.runtime.blueprint import Blueprint
from engine.runtime.registry import Registry


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
        running = {c["host"]: c for c in await self.store.list_commands(status="InProgress")}
        known: list[tuple[str, dict[str, str], bool, str]] = [
            (host.name, dict(host.tags), host.local, "config") for host in self.config.hosts.values()
        ]
        known += [(i.name, dict(i.tags), False, "api") for i in self.registry.instances() if i.registered]
        out = []
        for name, tags, local, source in known:
            agent = await self.store.get_agent(name) or {}
            seen = self.fleet.last_seen(name) or agent.get("last_seen")
            online = seen is not None and now - seen < self.config.server.heartbeat_timeout
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
