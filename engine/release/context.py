"""What the release flow's read side (views, plan) asks of the flow: its parts and its rule lookups.

A Protocol, so ``views`` and ``plan`` depend on this narrow surface and ``flow`` depends on them, not the other
way round (the flow satisfies it).
"""

from __future__ import annotations

from typing import Protocol

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.ports import Clock, Deployments, RevisionArchive, Store
from engine.release.rules import ApprovalPolicy, ApprovalState, Lock


class ReleaseContext(Protocol):
    config: EngineConfig
    store: Store
    clock: Clock
    revisions: RevisionArchive
    deployments: Deployments

    def is_admin(self, actor: str) -> bool: ...
    def approval_policy(self, group: DeploymentGroup) -> ApprovalPolicy: ...
    def group_named(self, name: str) -> DeploymentGroup | None: ...
    async def all_locks(self) -> list[Lock]: ...
    async def blocking(self, group: DeploymentGroup, *, watch_expiry: bool = True) -> Lock | None: ...
    async def approval_state(
        self, group: DeploymentGroup, revision: str, requester: str, now: float
    ) -> ApprovalState: ...
    async def eta(self, group_name: str, position: int) -> float | None: ...
