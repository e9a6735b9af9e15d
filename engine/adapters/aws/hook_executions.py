"""Lifecycle hook executions that wait for a status callback (Lambda and ECS hooks), kept in the store.

A Lambda or ECS hook is a function deploybot invokes with ``{"DeploymentId", "LifecycleEventHookExecutionId"}``;
the function reports back through ``PutLifecycleEventHookExecutionStatus`` (or ``PUT /api/v1/lifecycle-hooks/ID``).
Invocation and callback are separate requests, possibly minutes apart, and the server may restart in between. So
each execution is a stored row (engine/store/hook_records.py, through the ``HookExecutionRecords`` port), one per
(deployment, target, event, function), written *before* the function is invoked:

- at most one invocation per hook, across restarts: ``start`` says "invoke" only to the call that stored the row.
  A resumed deployment re-dispatches its event, finds the stored execution and waits for the SAME execution id. A
  server killed between storing and the invoke's answer leaves ``invoking``: that one is waited on too, never
  invoked again (it may not have run; then it times out).
- a status is taken by whichever server runs when it arrives, before or after the deployment has resumed: it is
  stored, and the waiter (now or after the resume) finds it.
- a status is final: the same status again is accepted and changes nothing (``resolve`` says it was a repeat); a
  different one is refused with ``HookStatusConflict``.
- the hook's timeout counts from the execution's start, across a restart (wall clock between processes, the
  Clock's monotonic sleep within one).

States (``hook_executions.state``)::

    invoking ──invoke accepted──► waiting ──status──► reported (status: Succeeded | Failed)
       │  └──────────────────────────┴──no status by the deadline──► timed_out
       │  └──────────────────────────┴──deployment stopped──────────► stopped
       └──invoke refused──► not_invoked (detail)

The executions still open in this process are also kept in memory: ``pending`` is read synchronously by the doors
(to find the deployment a callback is about), and ``resolve`` wakes the waiter's future. Closing the server ends
the waits without recording anything, so the next server takes them up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import InvalidLifecycleHookStatus, LifecycleHookNotFound, NotFound
from engine.ports import Clock, HookExecutionRecords

CALLBACK_STATUSES = ("Succeeded", "Failed")

STOPPED = "Stopped"
"""What ``wait`` answers for an execution whose deployment was stopped (or whose server is closing)."""

INVOKING, WAITING, REPORTED = "invoking", "waiting", "reported"
NOT_INVOKED, TIMED_OUT, STOPPED_STATE = "not_invoked", "timed_out", "stopped"
OPEN_STATES = (INVOKING, WAITING)
"""The states in which an execution takes a status callback."""


class HookStatusConflict(LifecycleHookNotFound):
    """A status for an execution that already reported a different one: a hook's status is final. (A
    LifecycleHookNotFound — no execution waits for a status — that says which status it already has.)"""

    def __init__(self, execution_id: str, deployment_id: str | None, *, reported: str, refused: str) -> None:
        self.execution_id = execution_id
        self.deployment_id = deployment_id
        self.reported = reported
        self.refused = refused
        NotFound.__init__(
            self,
            f"lifecycle hook execution {execution_id!r} already reported {reported}; {refused} is refused "
            "(a hook's status is final)",
        )


@dataclass(slots=True)
class HookExecution:
    execution_id: str
    deployment_id: str
    target: str
    event: str
    function: str
    started_at: float
    state: str
    result: asyncio.Future[str] = field(repr=False)
    """Set once the outcome is known in this process: the reported status, or STOPPED."""
    status: str | None = None
    detail: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> HookExecution:
        execution = cls(
            str(row["execution_id"]),
            str(row["deployment_id"]),
            str(row["target"]),
            str(row["event"]),
            str(row["function"]),
            float(row["started_at"]),
            str(row["state"]),
            asyncio.get_running_loop().create_future(),
        )
        execution.update(row)
        return execution

    def update(self, row: Mapping[str, Any]) -> None:
        """Take the stored state; a reported status also settles ``result``."""
        self.state, self.status, self.detail = str(row["state"]), row.get("status"), row.get("detail")
        if self.state == REPORTED and self.status and not self.result.done():
            self.result.set_result(self.status)

    def describe(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "deployment_id": self.deployment_id,
            "target": self.target,
            "event": self.event,
            "function": self.function,
            "started_at": self.started_at,
            "state": self.state,
        }


class HookExecutions:
    """The hook executions of this server: stored through ``records``, the open ones also held in memory."""

    def __init__(self, records: HookExecutionRecords, clock: Clock) -> None:
        self._records = records
        self._clock = clock
        self._open: dict[str, HookExecution] = {}
        self._stopped: set[str] = set()  # ended with their deployment here; a late status finds nothing
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def load(self) -> None:
        """Take up the executions an earlier server left open (those of deployments that have not ended), so the
        doors see them pending before the deployments resume."""
        for row in await self._records.list_hook_executions(states=OPEN_STATES, running_only=True):
            if row["execution_id"] not in self._open:
                self._open[row["execution_id"]] = HookExecution.from_row(row)

    async def start(
        self, deployment_id: str, target: str, event: str, function: str, *, at: float
    ) -> tuple[HookExecution, bool]:
        """The hook's execution, stored before its function is invoked (a fast function may call back at once),
        and whether to invoke the function now: True only for the call that stored it. A hook started before,
        in this process or by an earlier server, comes back as it was stored (perhaps already ended)."""
        row, added = await self._records.add_hook_execution(
            str(uuid.uuid4()),
            deployment_id=deployment_id,
            target=target,
            event=event,
            function=function,
            state=INVOKING,
            at=at,
        )
        execution = self._open.get(row["execution_id"]) or HookExecution.from_row(row)
        execution.update(row)
        if execution.state in OPEN_STATES and execution.execution_id not in self._stopped:
            self._open[execution.execution_id] = execution
        return execution, added

    async def invoked(self, execution: HookExecution) -> None:
        """The function took the invocation: the execution waits for its status."""
        if self._closed:
            return
        moved = await self._records.move_hook_execution(
            execution.execution_id, WAITING, at=self._clock.now(), only_from=(INVOKING,)
        )
        if moved is not None:  # else a status came first, and the execution is already past waiting
            execution.update(moved)

    async def not_invoked(self, execution: HookExecution, detail: str) -> None:
        """The invocation was refused: the execution ends without a status (unless one came all the same)."""
        await self._end(execution, NOT_INVOKED, detail=detail)

    async def wait(self, execution: HookExecution, timeout: float) -> str | None:
        """The reported status ("Succeeded" or "Failed"), STOPPED (the deployment was stopped: ``cancel``, or this
        server is closing), or None when no status came within ``timeout`` seconds of the execution's start. A
        status that lands together with the deadline wins."""
        open_here = not execution.result.done() and execution.state in OPEN_STATES
        # A status may have been stored since ``start`` read the row, before this waiter was there to wake.
        if open_here and (row := await self._records.get_hook_execution(execution.execution_id)) is not None:
            execution.update(row)
        if not execution.result.done() and execution.state in OPEN_STATES:
            elapsed = max(0.0, self._clock.now() - execution.started_at)
            await self._until_done(execution.result, timeout - elapsed)
        if self._closed:
            return STOPPED  # nothing recorded: the next server waits on
        if execution.state in OPEN_STATES:
            await self._end(execution, STOPPED_STATE if execution.result.done() else TIMED_OUT)
        return self._answer(execution)

    async def resolve(
        self, execution_id: str, status: str, *, deployment_id: str | None = None
    ) -> tuple[HookExecution, bool]:
        """Take a status callback: the execution, and whether this call reported its status (False: the same
        status again, which changes nothing). Raises InvalidLifecycleHookStatus, HookStatusConflict (a different
        status for one already reported) or LifecycleHookNotFound (unknown, of another deployment, timed out,
        stopped, or never invoked)."""
        if status not in CALLBACK_STATUSES:
            raise InvalidLifecycleHookStatus(status)
        row = await self._records.get_hook_execution(execution_id)
        if row is None or execution_id in self._stopped:
            raise LifecycleHookNotFound(execution_id, deployment_id)
        if deployment_id is not None and deployment_id != row["deployment_id"]:
            raise LifecycleHookNotFound(execution_id, deployment_id)
        if row["state"] in OPEN_STATES:
            moved = await self._records.move_hook_execution(
                execution_id, REPORTED, at=self._clock.now(), only_from=OPEN_STATES, status=status
            )
            if moved is not None:
                return self._settled(moved), True
            row = await self._records.get_hook_execution(execution_id)  # another status or the deadline came first
            assert row is not None  # executions are never deleted
        if row["state"] == REPORTED:
            if row["status"] == status:
                return self._settled(row), False
            raise HookStatusConflict(execution_id, deployment_id, reported=str(row["status"]), refused=status)
        raise LifecycleHookNotFound(execution_id, deployment_id)

    async def find(self, execution_id: str) -> dict[str, Any] | None:
        """An execution by id, open or ended, as ``describe`` gives it (with its ``status`` once reported): what a
        door needs to place a callback that no longer waits, e.g. a repeat."""
        row = await self._records.get_hook_execution(execution_id)
        if row is None:
            return None
        return {**HookExecution.from_row(row).describe(), "status": row.get("status")}

    def cancel(self, deployment_id: str) -> None:
        """A stopped deployment's hooks stop waiting: ``wait`` returns STOPPED and records the stop (late
        callbacks then get LifecycleHookNotFound)."""
        for execution in list(self._open.values()):
            if execution.deployment_id == deployment_id:
                self._stopped.add(execution.execution_id)
                del self._open[execution.execution_id]
                if not execution.result.done():
                    execution.result.set_result(STOPPED)

    def pending(self, deployment_id: str | None = None) -> list[dict[str, Any]]:
        """The executions still waiting for their status (what an operator may unblock), oldest first."""
        return [
            e.describe()
            for e in sorted(self._open.values(), key=lambda e: (e.started_at, e.execution_id))
            if deployment_id is None or e.deployment_id == deployment_id
        ]

    def close(self) -> None:
        """The server is closing: every wait ends (``wait`` returns STOPPED) and nothing more is recorded, so the
        executions stay open in the store for the next server."""
        self._closed = True
        for execution in self._open.values():
            if not execution.result.done():
                execution.result.set_result(STOPPED)

    # -- inside

    async def _until_done(self, future: asyncio.Future[str], seconds: float) -> None:
        """Until ``future`` is done or ``seconds`` have passed on the Clock (the future is never cancelled)."""
        if seconds <= 0:
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait((future, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()

    async def _end(self, execution: HookExecution, state: str, *, detail: str | None = None) -> None:
        """Record an ending without a status; when a status was stored first, take that instead."""
        if self._closed:
            return
        moved = await self._records.move_hook_execution(
            execution.execution_id, state, at=self._clock.now(), only_from=OPEN_STATES, detail=detail
        )
        row = moved or await self._records.get_hook_execution(execution.execution_id)
        if row is not None:
            self._settled(row, execution)

    def _settled(self, row: Mapping[str, Any], execution: HookExecution | None = None) -> HookExecution:
        """The in-memory execution brought up to ``row``, no longer open once the row has ended."""
        execution = self._open.get(str(row["execution_id"])) or execution or HookExecution.from_row(row)
        execution.update(row)
        if execution.state not in OPEN_STATES:
            self._open.pop(execution.execution_id, None)
        return execution

    @staticmethod
    def _answer(execution: HookExecution) -> str | None:
        if execution.state == REPORTED:
            return execution.status
        if execution.state == STOPPED_STATE:
            return STOPPED
        if execution.state == NOT_INVOKED:
            return "Failed"
        return None  # timed out
