"""The narrow interfaces the runner and service use to reach the world (pure: Protocols only).

Each real component gets one adapter in engine/adapters/ implementing one of these; tests use fakes at this seam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from engine.core.model import LifecycleEvent


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

        With ``wait``, only once the servers that are to take traffic pass the balancer's own health check."""

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        """True/False when the router can tell; None when it cannot verify (a distinct answer)."""

    async def block(self, group: str, target: str) -> None:
        """Stop new traffic to ``target`` and wait for its in-flight requests (BlockTraffic)."""

    async def allow(self, group: str, target: str) -> None:
        """Send traffic to ``target`` again once the balancer's own health check sees it up (AllowTraffic)."""


class AlarmSource(Protocol):
    async def firing(self, alarms: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        """Names of the given alarms that are firing now; raises AdapterError when it cannot tell."""


class Notifier(Protocol):
    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        """Told after persisted transitions (Slack thread, GitHub status, metrics); must not raise. Status, stage,
        traffic and per-host outcomes come at once; mere per-host event progress may be merged into the latest
        document within 50 ms (engine/runtime/notifications.py)."""
