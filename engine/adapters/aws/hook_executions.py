"""Lifecycle hook executions that wait for a status callback (Lambda and ECS hooks).

A Lambda or ECS hook is a function deploybot invokes with ``{"DeploymentId", "LifecycleEventHookExecutionId"}``;
the function reports back through ``PutLifecycleEventHookExecutionStatus`` (or ``PUT /api/v1/lifecycle-hooks/ID``).
Invocation and callback are separate requests, so the invoker parks a future here and the callback resolves it.
Executions live in memory only: after a restart the runner re-dispatches the event, which invokes the hook again
with a new execution id — the same at-least-once behaviour CodeDeploy documents for hooks.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import InvalidLifecycleHookStatus, LifecycleHookNotFound

CALLBACK_STATUSES = ("Succeeded", "Failed")


@dataclass(slots=True)
class HookExecution:
    execution_id: str
    deployment_id: str
    target: str
    event: str
    function: str
    started_at: float
    result: asyncio.Future[str] = field(repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "deployment_id": self.deployment_id,
            "target": self.target,
            "event": self.event,
            "function": self.function,
            "started_at": self.started_at,
        }


class HookExecutions:
    """The executions waiting for a callback, by id."""

    def __init__(self) -> None:
        self._waiting: dict[str, HookExecution] = {}

    def start(self, deployment_id: str, target: str, event: str, function: str, *, at: float) -> HookExecution:
        """Register a new execution before the function is invoked (a fast function may call back at once)."""
        execution = HookExecution(
            str(uuid.uuid4()), deployment_id, target, event, function, at, asyncio.get_running_loop().create_future()
        )
        self._waiting[execution.execution_id] = execution
        return execution

    async def wait(self, execution: HookExecution, timeout: float) -> str | None:
        """The reported status ("Succeeded", "Failed", or "Stopped" after ``cancel``), or None when no callback
        came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(execution.result), timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(execution.execution_id, None)

    def resolve(self, execution_id: str, status: str, *, deployment_id: str | None = None) -> HookExecution:
        """Deliver a callback; raises LifecycleHookNotFound / InvalidLifecycleHookStatus."""
        if status not in CALLBACK_STATUSES:
            raise InvalidLifecycleHookStatus(status)
        execution = self._waiting.get(execution_id)
        if execution is None or execution.result.done():
            raise LifecycleHookNotFound(execution_id, deployment_id)
        if deployment_id is not None and deployment_id != execution.deployment_id:
            raise LifecycleHookNotFound(execution_id, deployment_id)
        execution.result.set_result(status)
        return execution

    def cancel(self, deployment_id: str) -> None:
        """A stopped deployment's hooks stop waiting: ``wait`` returns "Stopped" (late callbacks then get
        LifecycleHookNotFound)."""
        for execution in list(self._waiting.values()):
            if execution.deployment_id == deployment_id and not execution.result.done():
                execution.result.set_result("Stopped")

    def pending(self, deployment_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e.describe()
            for e in self._waiting.values()
            if not e.result.done() and (deployment_id is None or e.deployment_id == deployment_id)
        ]
