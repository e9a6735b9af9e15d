"""The ECS platform: a replacement task set behind the idle target group, then listener weights moved to it.

The service uses the EXTERNAL deployment controller, so deploybot does CodeDeploy's part with task-set calls:
Install creates the replacement task set (``externalId`` = the deployment id) on the target group that takes no
production traffic, AllowTestTraffic points the test listener at it, the TrafficStage moves the production
listener's forward weights, and ``finished`` deletes whichever task set lost. Nothing is kept locally: the task set's
``externalId`` and its ``loadBalancers`` say which side is the replacement, so a restarted server (or a new router
object) finds the same answer in AWS.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsClients, aws_error
from engine.adapters.aws.lambda_hooks import (
    DEFAULT_HOOK_TIMEOUT,
    AwsDriver,
    BackgroundExecutor,
    LambdaHookInvoker,
    account_name,
    hook_result,
)
from engine.core.config.model import DeploymentGroup
from engine.core.errors import AdapterError
from engine.core.lifecycle import ECS_HOOKABLE
from engine.core.model import LifecycleEvent, ScriptErrorCode
from engine.ports import Clock

log = logging.getLogger(__name__)

MAX_LISTENER_WEIGHT = 999  # ELBv2's limit per target group (moto accepts more)


class EcsService:
    """One deployment's view of its ECS service and load balancer, read from AWS on every call."""

    def __init__(self, clients: AwsClients, deployment_id: str, config: Mapping[str, Any]) -> None:
        self.clients = clients
        self.deployment_id = deployment_id
        self.cluster = str(config["cluster"])
        self.service = str(config["service"])
        self.listener_arn = str(config["listener_arn"])
        self.test_listener_arn = str(config["test_listener_arn"]) if config.get("test_listener_arn") else None
        self.target_groups = tuple(str(arn) for arn in config["target_groups"])
        if len(self.target_groups) != 2:
            raise AdapterError("ecs", f"an ECS group needs exactly two target groups, not {len(self.target_groups)}")

    async def call(self, api: str, operation: str, /, **params: Any) -> dict[str, Any]:
        """One AWS call (``api`` is "ecs" or "elbv2"); failures become AdapterError with the AWS code."""
        client = await self.clients.get(api)
        try:
            response: dict[str, Any] = await getattr(client, operation)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(api, exc) from exc
        return response

    # -- task sets ---------------------------------------------------------------------------------------------

    async def task_sets(self) -> list[dict[str, Any]]:
        response = await self.call("ecs", "describe_task_sets", cluster=self.cluster, service=self.service)
        return list(response.get("taskSets", []))

    async def replacements(self) -> list[dict[str, Any]]:
        """This deployment's task sets (more than one only after moto's failed-create trap)."""
        return [ts for ts in await self.task_sets() if ts.get("externalId") == self.deployment_id]

    async def replacement(self) -> dict[str, Any] | None:
        found = await self.replacements()
        return found[0] if found else None

    async def originals(self) -> list[dict[str, Any]]:
        return [ts for ts in await self.task_sets() if ts.get("externalId") != self.deployment_id]

    async def delete_task_set(self, task_set: Mapping[str, Any]) -> None:
        await self.call(
            "ecs", "delete_task_set", cluster=self.cluster, service=self.service, taskSet=task_set["taskSetArn"]
        )
        log.info("deleted task set %s (%s)", task_set["taskSetArn"], task_set.get("externalId"))

    async def make_primary(self, task_set: Mapping[str, Any]) -> None:
        if task_set.get("status") == "PRIMARY":
            return
        await self.call(
            "ecs",
            "update_service_primary_task_set",
            cluster=self.cluster,
            service=self.service,
            primaryTaskSet=task_set["taskSetArn"],
        )

    # -- target groups and listeners ---------------------------------------------------------------------------

    def other(self, target_group: str) -> str:
        if target_group not in self.target_groups:
            raise AdapterError("ecs", f"target group {target_group} is not one of the group's {self.target_groups}")
        return self.target_groups[1 - self.target_groups.index(target_group)]

    async def weights(self, listener_arn: str) -> dict[str, int]:
        """Target group → weight of the listener's default forward action (a plain forward counts as 100)."""
        response = await self.call("elbv2", "describe_listeners", ListenerArns=[listener_arn])
        weights: dict[str, int] = {}
        for action in response["Listeners"][0].get("DefaultActions", []):
            if action.get("Type") != "forward":
                continue
            groups = action.get("ForwardConfig", {}).get("TargetGroups")
            if groups:
                weights.update({g["TargetGroupArn"]: int(g.get("Weight", 1)) for g in groups})
            elif action.get("TargetGroupArn"):
                weights[action["TargetGroupArn"]] = 100
        return weights

    async def forward(self, listener_arn: str, weights: Mapping[str, int]) -> None:
        """Replace the listener's default action with a weighted forward (checked here: moto accepts 1000)."""
        for arn, weight in weights.items():
            if not 0 <= weight <= MAX_LISTENER_WEIGHT:
                raise AdapterError("elbv2", f"weight {weight} for {arn} is outside 0..{MAX_LISTENER_WEIGHT}")
        if not any(weights.values()):
            raise AdapterError("elbv2", "a forward action needs at least one target group with weight")
        action = {
            "Type": "forward",
            "ForwardConfig": {
                "TargetGroups": [{"TargetGroupArn": arn, "Weight": weight} for arn, weight in weights.items()],
                "TargetGroupStickinessConfig": {"Enabled": False},
            },
        }
        await self.call("elbv2", "modify_listener", ListenerArn=listener_arn, DefaultActions=[action])
        log.info("listener %s forwards %s", listener_arn, dict(weights))

    async def idle_target_group(self) -> str:
        """The target group with no production weight (the one with less, if both have some)."""
        weights = await self.weights(self.listener_arn)
        first, second = self.target_groups
        if weights.get(first, 0) == weights.get(second, 0):
            raise AdapterError(
                "ecs",
                f"both target groups carry weight {weights.get(first, 0)} on the production listener, so neither "
                "can take the replacement; finish or roll back the earlier deployment first",
            )
        return first if weights.get(first, 0) < weights.get(second, 0) else second

    async def replacement_target_group(self) -> str | None:
        """The replacement task set's target group: where its ``loadBalancers`` send it."""
        task_set = await self.replacement()
        balancers = task_set.get("loadBalancers", []) if task_set else []
        return str(balancers[0]["targetGroupArn"]) if balancers else None


def client_token(deployment_id: str) -> str:
    """CreateTaskSet's idempotency token (up to 36 printable ASCII characters): a retried call creates nothing."""
    if len(deployment_id) <= 36 and all(33 <= ord(c) <= 126 for c in deployment_id):
        return deployment_id
    return hashlib.sha256(deployment_id.encode()).hexdigest()[:36]


class EcsDriver(AwsDriver):
    """``PlatformDriver`` for ECS services with the EXTERNAL deployment controller."""

    def ecs_service(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> EcsService:
        return EcsService(self.accounts.clients(account_name(group, spec)), deployment_id, spec["ecs"])

    def executor(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> BackgroundExecutor:
        ecs = self.ecs_service(deployment_id, group, spec)
        invoker = LambdaHookInvoker(ecs.clients, self.hooks, self.clock)

        async def run_event(
            deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]
        ) -> dict[str, Any]:
            started = self.clock.now()
            if event in ECS_HOOKABLE:
                return await invoker.run_appspec_hooks(deployment_id, target, event, spec)
            if event is LifecycleEvent.INSTALL:
                message = await install(ecs, spec["appspec"])
                timeout = float(spec.get("hook_timeout_seconds") or DEFAULT_HOOK_TIMEOUT)
                message += "; " + await wait_until_steady(ecs, self.clock, timeout=timeout)
            elif event is LifecycleEvent.ALLOW_TEST_TRAFFIC:
                message = await allow_test_traffic(ecs)
            else:
                message = f"{event} is not an event an ECS deployment runs"
                return hook_result("Failed", started, self.clock.now(), message, ScriptErrorCode.UNKNOWN_ERROR)
            return hook_result("Succeeded", started, self.clock.now(), message)

        return BackgroundExecutor(run_event, self.on_result, self.hooks)

    def router(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> EcsListenerRouter:
        return EcsListenerRouter(self.ecs_service(deployment_id, group, spec))

    async def finished(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any], status: str) -> None:
        """Succeeded: delete the original task sets (the termination wait was a stage before this). Anything else:
        production and test traffic back on the original target group, the replacement task set deleted."""
        try:
            ecs = self.ecs_service(deployment_id, group, spec)
            if status == "Succeeded":
                await keep_replacement(ecs)
            else:
                await keep_original(ecs)
        except Exception:
            log.exception("deployment %s (%s): cleaning up the ECS service failed", deployment_id, status)


async def install(ecs: EcsService, appspec: Mapping[str, Any]) -> str:
    """Create the replacement task set, or reuse the one this deployment already made (a resume, or a create
    call that failed after adding it — moto does that, and botocore's retries would multiply it)."""
    existing = await ecs.replacements()
    if existing:
        await _drop_duplicates(ecs, existing, keep=existing[0]["taskSetArn"])
        return f"task set {existing[0]['taskSetArn']} of this deployment already exists; reused"
    target_group = await ecs.idle_target_group()
    params: dict[str, Any] = {
        "cluster": ecs.cluster,
        "service": ecs.service,
        "taskDefinition": appspec["task_definition"],
        "externalId": ecs.deployment_id,
        "loadBalancers": [
            {
                "targetGroupArn": target_group,
                "containerName": appspec["container_name"],
                "containerPort": int(appspec["container_port"]),
            }
        ],
        "scale": {"value": 100, "unit": "PERCENT"},
        "clientToken": client_token(ecs.deployment_id),
    }
    if appspec.get("capacity_provider_strategy"):
        params["capacityProviderStrategy"] = list(appspec["capacity_provider_strategy"])
    else:
        params["launchType"] = "FARGATE"
    if appspec.get("network_configuration"):
        params["networkConfiguration"] = appspec["network_configuration"]
    if appspec.get("platform_version"):
        params["platformVersion"] = appspec["platform_version"]
    try:
        created = (await ecs.call("ecs", "create_task_set", **params))["taskSet"]
    except AdapterError:
        leftovers = await ecs.replacements()
        if leftovers:
            await _drop_duplicates(ecs, leftovers, keep=leftovers[0]["taskSetArn"])
        raise
    await _drop_duplicates(ecs, await ecs.replacements(), keep=created["taskSetArn"])
    return f"created task set {created['taskSetArn']} ({appspec['task_definition']}) behind {target_group}"


STEADY_POLL_SECONDS = 5.0


async def wait_until_steady(ecs: EcsService, clock: Clock, *, timeout: float) -> str:
    """Install ends when the replacement task set's tasks run (``stabilityStatus`` STEADY_STATE), as CodeDeploy's
    does: test traffic must never reach a task set that is still starting. Raises AdapterError at ``timeout``."""
    deadline = clock.monotonic() + timeout
    while True:
        task_set = await ecs.replacement()
        if task_set is None:
            raise AdapterError("ecs", f"the task set of deployment {ecs.deployment_id} disappeared while starting")
        counts = f"{task_set.get('runningCount', '?')}/{task_set.get('computedDesiredCount', '?')} tasks running"
        if task_set.get("stabilityStatus") == "STEADY_STATE":
            return f"steady ({counts})"
        if clock.monotonic() >= deadline:
            raise AdapterError("ecs", f"task set {task_set['taskSetArn']} not steady after {timeout:.0f} s: {counts}")
        await clock.sleep(min(STEADY_POLL_SECONDS, max(deadline - clock.monotonic(), 0.01)))


async def _drop_duplicates(ecs: EcsService, task_sets: Sequence[Mapping[str, Any]], *, keep: str) -> None:
    for task_set in task_sets:
        if task_set["taskSetArn"] != keep:
            log.warning("deployment %s: deleting duplicate task set %s", ecs.deployment_id, task_set["taskSetArn"])
            await ecs.delete_task_set(task_set)


async def allow_test_traffic(ecs: EcsService) -> str:
    if ecs.test_listener_arn is None:
        return "no test listener configured"
    replacement = await ecs.replacement_target_group()
    if replacement is None:
        raise AdapterError("ecs", f"deployment {ecs.deployment_id} has no replacement task set (Install did not run)")
    await ecs.forward(ecs.test_listener_arn, {ecs.other(replacement): 0, replacement: 100})
    return f"test listener forwards to {replacement}"


async def keep_replacement(ecs: EcsService) -> None:
    """After success: the replacement is primary and takes all production traffic, so the originals can go."""
    replacement = await ecs.replacement()
    if replacement is None:
        log.error("deployment %s succeeded without a task set; nothing deleted", ecs.deployment_id)
        return
    target_group = str(replacement["loadBalancers"][0]["targetGroupArn"])
    weights = await ecs.weights(ecs.listener_arn)
    if weights.get(target_group, 0) == 0 or any(w for arn, w in weights.items() if arn != target_group):
        log.error(
            "deployment %s: traffic is not all on the replacement (%s); originals kept", ecs.deployment_id, weights
        )
        return
    await ecs.make_primary(replacement)
    for task_set in await ecs.originals():
        await ecs.delete_task_set(task_set)


async def keep_original(ecs: EcsService) -> None:
    """After failure or a stop: traffic back first (it matters most), then the replacement removed. Each step is
    tried even when an earlier one failed."""
    replacement = await ecs.replacement_target_group() or await ecs.idle_target_group()
    original = ecs.other(replacement)
    steps: list[tuple[str, Awaitable[None]]] = [
        (f"put listener {listener} back on {original}", ecs.forward(listener, {original: 100, replacement: 0}))
        for listener in (ecs.listener_arn, ecs.test_listener_arn)
        if listener is not None
    ]
    steps.append(("make the original task set primary again", _original_primary(ecs)))
    steps.append(("delete the replacement task set", _delete_replacements(ecs)))
    for what, step in steps:
        try:
            await step
        except Exception as exc:  # finished() must not raise, and the next step is still worth doing
            log.error("deployment %s: could not %s: %s", ecs.deployment_id, what, exc)


async def _original_primary(ecs: EcsService) -> None:
    originals = await ecs.originals()
    if originals and not any(ts.get("status") == "PRIMARY" for ts in originals):
        await ecs.make_primary(originals[0])


async def _delete_replacements(ecs: EcsService) -> None:
    for task_set in await ecs.replacements():
        await ecs.delete_task_set(task_set)


class EcsListenerRouter:
    """Moves the production listener's weight between the original and the replacement target group."""

    def __init__(self, ecs: EcsService) -> None:
        self.ecs = ecs

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        """Nothing to name: the replacement is the task set whose ``externalId`` is the deployment id."""

    async def block(self, group: str, target: str) -> None:
        """ECS has no per-host traffic step: the listener weights are the whole traffic story."""

    async def allow(self, group: str, target: str) -> None:
        """See ``block``."""

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        """``wait`` is not needed: ECS registers a task set's tasks in its target group only once they are
        healthy, so weight on the replacement target group reaches healthy tasks only."""
        if not 0 <= percent <= 100:
            raise AdapterError("ecs", f"traffic percent must be from 0 to 100, not {percent}")
        replacement = await self.ecs.replacement()
        if replacement is None:
            if percent == 0:
                return  # nothing of this deployment exists to take traffic away from
            raise AdapterError("ecs", f"deployment {self.ecs.deployment_id} has no replacement task set to shift to")
        target_group = str(replacement["loadBalancers"][0]["targetGroupArn"])
        original = self.ecs.other(target_group)
        await self.ecs.forward(self.ecs.listener_arn, {original: 100 - percent, target_group: percent})
        if percent == 100:
            await self.ecs.make_primary(replacement)
        elif percent == 0 and replacement.get("status") == "PRIMARY":
            await _original_primary(self.ecs)

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        target_group = await self.ecs.replacement_target_group()
        if target_group is None:
            return None
        weights = await self.ecs.weights(self.ecs.listener_arn)
        return weights.get(target_group, 0) == percent and weights.get(self.ecs.other(target_group), 0) == 100 - percent
