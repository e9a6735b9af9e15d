"""Lifecycle hooks of the Lambda and ECS platforms: invoke a function, wait for its status callback.

CodeDeploy runs a Lambda/ECS hook by invoking the named function asynchronously with ``{"DeploymentId",
"LifecycleEventHookExecutionId"}``; the function tests what it wants and reports back with
``PutLifecycleEventHookExecutionStatus`` (ours: ``PUT /api/v1/lifecycle-hooks/{execution_id}``). Invocation and
callback are separate requests, so the wait is parked in ``HookExecutions`` and may last up to an hour: that is why
the platforms' executors run every event as a background task (``BackgroundExecutor``) and report through the
shared ``OnResult`` callback, exactly as an agent's result comes back for a host.

Each execution is stored before its function is invoked (engine/adapters/aws/hook_executions.py), so a hook is
invoked at most once per deployment even across a restart: the resumed event waits for the stored execution id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsAccounts, AwsClients, aws_error, plain_words
from engine.adapters.aws.hook_executions import NOT_INVOKED, STOPPED, HookExecutions
from engine.core.config.model import DeploymentGroup
from engine.core.errors import AdapterError, EngineError
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.core.serverless import serverless_target
from engine.ports import Clock, OnResult

log = logging.getLogger(__name__)

# STOPPED (from hook_executions) is also a result status that is never reported: the deployment was stopped while
# the event ran (the machine has already marked the event Unknown, and a late "Failed" would overwrite that), or the
# server is closing (the next one takes the hook up).

CANCEL_GRACE_SECONDS = 60.0
"""How long ``cancel`` waits for in-flight AWS calls (an ECS task set being created) so that the driver's
``finished`` sees the final state of AWS instead of racing a call that is still on its way."""

DEFAULT_HOOK_TIMEOUT = 3600.0
"""Seconds a hook function has to call back when the spec gives no ``hook_timeout_seconds`` (CodeDeploy's hour)."""

MAX_MESSAGE = 500

RunEvent = Callable[[str, str, LifecycleEvent, Mapping[str, Any]], Awaitable[dict[str, Any]]]
"""Does one lifecycle event: (deployment_id, target, event, spec) → result dict (see ``LambdaHookInvoker.run``)."""


def account_name(group: DeploymentGroup, spec: Mapping[str, Any]) -> str:
    """The AWS account a deployment acts in: the spec's, else the group's ``aws_account``, else "default"."""
    return str(spec.get("aws_account") or group.extra.get("aws_account") or "default")


def hook_result(status: str, started_at: float, ended_at: float, message: str, error_code: int = 0) -> dict[str, Any]:
    """A result in the shape ``OnResult`` and ``DeploymentRunner.record_result`` expect."""
    return {
        "status": status,
        "error_code": int(error_code),
        "message": message,
        "log_tail": "",
        "started_at": started_at,
        "ended_at": ended_at,
    }


class LambdaHookInvoker:
    """Runs the hook functions of one lifecycle event, in order, stopping at the first that does not succeed."""

    def __init__(self, clients: AwsClients, hooks: HookExecutions, clock: Clock) -> None:
        self.clients = clients
        self.hooks = hooks
        self.clock = clock

    async def run(
        self, deployment_id: str, target: str, event: str, functions: Sequence[str], timeout: float
    ) -> dict[str, Any]:
        """The event's result: Succeeded (all functions reported Succeeded, or there are none), Failed with
        SCRIPT_FAILED (a function reported Failed, or could not be invoked) or SCRIPT_TIMED_OUT (no callback within
        ``timeout`` seconds), or ``STOPPED`` (the deployment was stopped: ``hooks.cancel``)."""
        started = self.clock.now()
        done: list[str] = []
        for function in functions:
            execution, fresh = await self.hooks.start(deployment_id, target, str(event), function, at=self.clock.now())
            named = f"{event} hook {function} (execution {execution.execution_id})"
            if fresh:
                try:
                    await self._invoke(function, deployment_id, execution.execution_id)
                except AdapterError as exc:
                    if self.hooks.closed:  # the server is closing, which is why the call failed: nothing to record
                        return hook_result(STOPPED, started, self.clock.now(), f"{named}: the server closed")
                    await self.hooks.not_invoked(execution, exc.detail)
                    message = f"{named} could not be invoked: {exc.detail}"
                    return hook_result("Failed", started, self.clock.now(), message, ScriptErrorCode.SCRIPT_FAILED)
                await self.hooks.invoked(execution)
            elif execution.state == NOT_INVOKED:
                message = f"{named} could not be invoked: {execution.detail}"
                return hook_result("Failed", started, self.clock.now(), message, ScriptErrorCode.SCRIPT_FAILED)
            else:  # started before (a resumed deployment): at most one invocation, so wait for the same execution
                log.info(
                    "%s for deployment %s was started before (%s): not invoked again",
                    named,
                    deployment_id,
                    execution.state,
                )
            status = await self.hooks.wait(execution, timeout)
            if status is None:
                message = f"{named} did not report a status within {timeout:g} seconds"
                return hook_result("Failed", started, self.clock.now(), message, ScriptErrorCode.SCRIPT_TIMED_OUT)
            if status == STOPPED:
                return hook_result(STOPPED, started, self.clock.now(), f"{named} was stopped with the deployment")
            if status != "Succeeded":
                message = f"{named} reported {status}"
                return hook_result("Failed", started, self.clock.now(), message, ScriptErrorCode.SCRIPT_FAILED)
            done.append(f"{function} (execution {execution.execution_id})")
        message = f"{event} hooks succeeded: {', '.join(done)}" if done else f"no hook functions for {event}"
        return hook_result("Succeeded", started, self.clock.now(), message)

    async def run_appspec_hooks(
        self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``run`` with the functions the deployment's AppSpec names for ``event`` and the spec's hook timeout."""
        functions = list(spec["appspec"].get("hooks", {}).get(str(event), ()))
        timeout = float(spec.get("hook_timeout_seconds") or DEFAULT_HOOK_TIMEOUT)
        return await self.run(deployment_id, target, str(event), functions, timeout)

    async def _invoke(self, function: str, deployment_id: str, execution_id: str) -> None:
        """An asynchronous ("Event") invocation: AWS queues it and answers 202 at once."""
        payload = {"DeploymentId": deployment_id, "LifecycleEventHookExecutionId": execution_id}
        client = await self.clients.get("lambda")
        try:
            response = await client.invoke(
                FunctionName=function, InvocationType="Event", Payload=json.dumps(payload).encode()
            )
            with contextlib.suppress(Exception):  # release the connection; an Event invocation has no body
                await response["Payload"].read()
        except (ClientError, BotoCoreError) as exc:
            raise aws_error("lambda", exc) from exc
        if response.get("FunctionError"):
            raise AdapterError("lambda", f"invoke of {function} returned FunctionError {response['FunctionError']}")
        log.info("invoked hook %s for deployment %s (execution %s)", function, deployment_id, execution_id)


class AwsDriver:
    """What the Lambda and ECS drivers share: the accounts, the hook executions, the clock, the result callback,
    and how their one target is named."""

    def __init__(self, accounts: AwsAccounts, hooks: HookExecutions, clock: Clock, on_result: OnResult) -> None:
        self.accounts = accounts
        self.hooks = hooks
        self.clock = clock
        self.on_result = on_result

    def target_name(self, group: DeploymentGroup, appspec: Mapping[str, Any]) -> str:
        return serverless_target(group, appspec)


class BackgroundExecutor:
    """A ``HostExecutor`` whose events run as background tasks and report through ``OnResult``.

    ``dispatch`` returns at once (a hook may wait an hour for its callback). Dispatching an event that is already
    running is a no-op, so the runner's re-dispatch on resume never doubles the work in one process."""

    def __init__(self, run_event: RunEvent, on_result: OnResult, hooks: HookExecutions) -> None:
        self._run_event = run_event
        self._on_result = on_result
        self._hooks = hooks
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()

    async def dispatch(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        key = (deployment_id, target, str(event))
        running = self._tasks.get(key)
        if running is not None and not running.done():
            log.info("deployment %s: %s on %s is already running", deployment_id, event, target)
            return
        self._cancelled.discard(deployment_id)
        task = asyncio.create_task(self._run(deployment_id, target, event, dict(spec)))
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    async def cancel(self, deployment_id: str) -> None:
        """Stop the deployment's hook waits and let in-flight AWS calls land (nothing is reported afterwards)."""
        self._cancelled.add(deployment_id)
        self._hooks.cancel(deployment_id)
        tasks = [task for (owner, _, _), task in self._tasks.items() if owner == deployment_id]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=CANCEL_GRACE_SECONDS)
        for task in late:
            task.cancel()

    def _forget(self, key: tuple[str, str, str], task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def _run(self, deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]) -> None:
        try:
            result = await self._run_event(deployment_id, target, event, spec)
        except EngineError as exc:
            result = _failed(f"{event} failed: {exc}")
        except Exception as exc:  # a bug must fail the event, never leave the deployment waiting forever
            if not self._hooks.closed:
                log.exception("deployment %s: %s on %s crashed", deployment_id, event, target)
            result = _failed(f"{event} failed: {type(exc).__name__}: {exc}")
        if self._hooks.closed:  # the server closed under the event (its store, its clients): the next one resumes it
            log.info("deployment %s: %s on %s left to the next server: %s", deployment_id, event, target, result)
            return
        if result["status"] == STOPPED or deployment_id in self._cancelled:
            log.info("deployment %s: %s on %s ended after the stop: %s", deployment_id, event, target, result)
            return
        command = {"deployment_id": deployment_id, "host": target, "event": str(event)}
        try:
            await self._on_result(command, result)
        except Exception:
            log.exception("deployment %s: could not report %s on %s", deployment_id, event, target)


def _failed(message: str) -> dict[str, Any]:
    """An event that raised instead of returning a result (the runner stamps the time). An endpoint's HTML error
    page (a proxy, or moto's 500) is cut down to its words so the event's message stays readable."""
    text = plain_words(message, MAX_MESSAGE)
    return {"status": "Failed", "error_code": int(ScriptErrorCode.UNKNOWN_ERROR), "message": text, "log_tail": ""}
