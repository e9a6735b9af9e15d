"""Rollbacks: a new deployment of the last good revision, linked both ways to the one it rolls back.

A server blue/green deployment that did not succeed has been rerouted by the machine before this runs — whether it
failed before, during or after its shift — as long as its original fleet still serves the good revision
(``StartRollback.rerouted``); the rollback deployment then only runs the allow/block-traffic hooks (reference §4.2):
nothing is reinstalled, least of all on hosts that are serving.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.errors import DeploymentRefused, EngineError
from engine.core.events import StartRollback
from engine.core.model import ROLLBACK_CREATOR, Platform, Revision
from engine.core.snapshot import stages_from_json
from engine.core.stages import Stage, blue_green_rollback_stages
from engine.ports import Clock, DeploymentStore, RevisionArchive
from engine.runtime.blueprint import blue_green_roles
from engine.runtime.registry import Registry

_NEWEST_FOR_ROLLBACK = 20  # how many of a group's newest deployments are searched for a rollback of one just ended


class CreateDeployment(Protocol):
    """How the Deployer creates (and queues) a deployment: the one path every deployment takes."""

    async def __call__(
        self,
        group: DeploymentGroup,
        revision: Revision,
        config_name: str | None,
        actor: str,
        description: str,
        *,
        rollback_of: str | None = None,
        stages: tuple[Stage, ...] | None = None,
    ) -> dict[str, Any]: ...


class Rollbacks:
    def __init__(
        self,
        config: EngineConfig,
        store: DeploymentStore,
        clock: Clock,
        revisions: RevisionArchive,
        registry: Registry,
        *,
        create: CreateDeployment,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.revisions = revisions
        self.registry = registry
        self.create = create

    async def automatic(self, row: Mapping[str, Any], group: DeploymentGroup, command: StartRollback) -> None:
        """The machine decided to roll back: queue a deployment of the last good revision, first in line. Once: a
        deployment's end done again after a restart finds the rollback it queued before and does nothing."""
        if await self._rolled_back(row):
            return
        deployment_id = row["id"]
        await self.store.append_log(
            "rollback.triggered",
            at=self.clock.now(),
            actor="deploybot",
            deployment_id=deployment_id,
            data={"trigger": str(command.trigger), "rerouted": command.rerouted},
        )
        copied_fleet = bool(((row.get("state") or {}).get("spec") or {}).get("green_fleet"))
        if group.platform is not Platform.SERVER or copied_fleet:
            # Lambda and ECS: the alias or listener is already back on the original version (the machine rerouted
            # before this) and the driver removes the replacement task set when the deployment ends: nothing to
            # redeploy. A group that copies its Auto Scaling group likewise: the original instances never changed,
            # the listener is back on them, and the runner deletes the copy with its instances.
            what = (
                "alias back on CurrentVersion"
                if group.platform is Platform.LAMBDA
                else "listener back on the original Auto Scaling group"
                if copied_fleet
                else "listener back on the original"
            )
            await self.store.append_log(
                "rollback.rerouted",
                at=self.clock.now(),
                actor="deploybot",
                deployment_id=deployment_id,
                data={"reason": f"{group.platform}: {what}" if command.rerouted else "no traffic had moved"},
            )
            return
        good = await self.last_good_revision(group.name, exclude=row["revision_sha256"])
        if good is None:
            await self.store.append_log(
                "rollback.skipped",
                at=self.clock.now(),
                actor="deploybot",
                deployment_id=deployment_id,
                data={"reason": "no earlier successful revision to roll back to"},
            )
            return
        # The failing deployment still holds the group, so the rollback is queued; it is first in line when the
        # group frees up, and the link is in place before anyone watching sees the failure. When traffic was
        # already rerouted (blue/green), the rollback only runs the allow/block-traffic hooks: nothing is redeployed.
        roles = blue_green_roles(stages_from_json(row["state"]["stages"])) if command.rerouted else None
        await self.create(
            group,
            good,
            None,
            ROLLBACK_CREATOR,
            f"rollback of {deployment_id}" + (" (traffic rerouted to the original fleet)" if roles else ""),
            rollback_of=deployment_id,
            stages=blue_green_rollback_stages(*roles) if roles else None,
        )

    async def _rolled_back(self, row: Mapping[str, Any]) -> bool:
        """Whether the deployment's rollback exists already. The link is written just after the rollback is
        created, so one made just before the server stopped may not be linked yet: the group's newest deployments
        tell."""
        if row.get("rolled_back_by"):
            return True
        newest = await self.store.list_deployments(group_name=row["group_name"], limit=_NEWEST_FOR_ROLLBACK)
        return any(r.get("rollback_of") == row["id"] and r["created_by"] == ROLLBACK_CREATOR for r in newest)

    async def last_good_revision(self, group_name: str, *, exclude: str | None = None) -> Revision | None:
        """The newest revision that succeeded in the group (other than ``exclude``) whose bundle is still stored."""
        for row in await self.store.list_deployments(group_name=group_name, status="Succeeded", limit=50):
            if row["revision_sha256"] != exclude:
                with contextlib.suppress(EngineError):
                    return await self.revisions.get(row["revision_sha256"])
        return None

    async def manual(self, group: DeploymentGroup, *, actor: str) -> dict[str, Any]:
        """Redeploy the revision before the current one (a running deployment is stopped with rollback instead,
        by the Deployer)."""
        succeeded = await self.store.list_deployments(group_name=group.name, status="Succeeded", limit=1)
        latest = await self.store.list_deployments(group_name=group.name, limit=1)
        if not latest:
            raise DeploymentRefused(f"nothing has been deployed to {group.name} yet")
        current = succeeded[0]["revision_sha256"] if succeeded else None
        if group.platform is Platform.LAMBDA and succeeded:
            return await self._reverse_lambda(group, succeeded[0], actor=actor)
        good = await self.last_good_revision(group.name, exclude=current)
        if good is None:
            raise DeploymentRefused(f"{group.name} has no earlier successful revision to roll back to")
        await self.store.append_log(
            "rollback.requested", at=self.clock.now(), actor=actor, deployment_id=latest[0]["id"]
        )
        return await self.create(group, good, None, actor, f"manual rollback by {actor}", rollback_of=latest[0]["id"])

    async def _reverse_lambda(self, group: DeploymentGroup, latest: dict[str, Any], *, actor: str) -> dict[str, Any]:
        """A Lambda alias rolls back by shifting from the version it now serves to the one it served before: the
        latest successful AppSpec with CurrentVersion and TargetVersion swapped (hooks kept, so they check it too)."""
        appspec = dict(latest["state"]["spec"].get("appspec") or {})
        if not appspec:
            raise DeploymentRefused(f"{group.name}: the last deployment has no AppSpec to reverse")
        hooks = [{event: fn} for event, functions in (appspec.get("hooks") or {}).items() for fn in functions]
        document = {
            "version": 0.0,
            "Resources": [
                {
                    str(appspec["function_name"]): {
                        "Type": "AWS::Lambda::Function",
                        "Properties": {
                            "Name": appspec["function_name"],
                            "Alias": appspec["alias"],
                            "CurrentVersion": str(appspec["target_version"]),
                            "TargetVersion": str(appspec["current_version"]),
                        },
                    }
                }
            ],
            **({"Hooks": hooks} if hooks else {}),
        }
        revision = await self.registry.store_inline_appspec(json.dumps(document), Platform.LAMBDA)
        await self.store.append_log("rollback.requested", at=self.clock.now(), actor=actor, deployment_id=latest["id"])
        return await self.create(group, revision, None, actor, f"manual rollback by {actor}", rollback_of=latest["id"])
