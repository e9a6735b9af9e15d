"""The Lambda platform: hooks around an alias whose routing weights move from CurrentVersion to TargetVersion.

A Lambda deployment changes nothing but one alias: ``UpdateAlias`` with ``FunctionVersion`` = CurrentVersion and
``AdditionalVersionWeights`` = {TargetVersion: p/100} while shifting, then ``FunctionVersion`` = TargetVersion with
no weights at 100 %. Rolling back is the same call with CurrentVersion and no weights, so a rollback never needs
anything this process remembers. BeforeAllowTraffic / AfterAllowTraffic run the AppSpec's hook functions
(``LambdaHookInvoker``); AllowTraffic is the runner's TrafficStage, i.e. ``LambdaAliasRouter.set_weight``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsClients, aws_error
from engine.adapters.aws.lambda_hooks import AwsDriver, BackgroundExecutor, LambdaHookInvoker, account_name, hook_result
from engine.core.config.model import DeploymentGroup
from engine.core.errors import AdapterError
from engine.core.lifecycle import LAMBDA_HOOKABLE
from engine.core.model import LifecycleEvent, ScriptErrorCode

log = logging.getLogger(__name__)


class LambdaDriver(AwsDriver):
    """``PlatformDriver`` for Lambda: one executor (hooks) and one router (the alias) per deployment."""

    def executor(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> BackgroundExecutor:
        invoker = LambdaHookInvoker(self.accounts.clients(account_name(group, spec)), self.hooks, self.clock)

        async def run_event(
            deployment_id: str, target: str, event: LifecycleEvent, spec: Mapping[str, Any]
        ) -> dict[str, Any]:
            if event not in LAMBDA_HOOKABLE:
                now = self.clock.now()
                message = f"{event} is not an event a Lambda deployment runs"
                return hook_result("Failed", now, now, message, ScriptErrorCode.UNKNOWN_ERROR)
            return await invoker.run_appspec_hooks(deployment_id, target, event, spec)

        return BackgroundExecutor(run_event, self.on_result, self.hooks)

    def router(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any]) -> LambdaAliasRouter:
        return LambdaAliasRouter(self.accounts.clients(account_name(group, spec)), spec["appspec"])

    async def finished(self, deployment_id: str, group: DeploymentGroup, spec: Mapping[str, Any], status: str) -> None:
        """A deployment that did not succeed never leaves the alias split between two versions: weights still on
        it (a failure with automatic rollback off) go back to CurrentVersion. A finished shift is left alone, and
        the old version stays published for the next rollback."""
        if status == "Succeeded":
            return
        router = self.router(deployment_id, group, spec)
        try:
            version, weights = await router.read_alias()
            if version == router.current and weights:
                await router.set_weight(group.name, 0)
                log.info(
                    "deployment %s ended %s: alias %s back on version %s", deployment_id, status, router.name, version
                )
        except (AdapterError, ClientError, BotoCoreError) as exc:
            log.error("deployment %s: could not check alias %s after it ended: %s", deployment_id, router.name, exc)


class LambdaAliasRouter:
    """Moves an alias's weight between the AppSpec's CurrentVersion and TargetVersion (``TrafficRouter``)."""

    def __init__(self, clients: AwsClients, appspec: Mapping[str, Any]) -> None:
        self.clients = clients
        self.function = str(appspec["function_name"])
        self.alias = str(appspec["alias"])
        self.current = str(appspec["current_version"])
        self.target = str(appspec["target_version"])
        self._checked = False

    @property
    def name(self) -> str:
        return f"{self.function}:{self.alias}"

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        """Nothing to name: both sides come from the AppSpec (CurrentVersion, TargetVersion)."""

    async def block(self, group: str, target: str) -> None:
        """Lambda has no per-host traffic: an alias version takes requests as soon as it is weighted."""

    async def allow(self, group: str, target: str) -> None:
        """See ``block``."""

    def routing(self, percent: int) -> tuple[str, dict[str, float]]:
        """The alias (FunctionVersion, AdditionalVersionWeights) for ``percent`` % on TargetVersion.

        Weights are checked here because moto accepts what AWS rejects (1.5, unknown versions)."""
        if not 0 <= percent <= 100:
            raise AdapterError("lambda", f"traffic percent must be from 0 to 100, not {percent}")
        if percent == 0:
            return self.current, {}
        if percent == 100:
            return self.target, {}
        weight = round(percent / 100, 4)
        if not 0 < weight < 1:
            raise AdapterError("lambda", f"alias weight must be between 0 and 1 exclusive, not {weight}")
        return self.current, {self.target: weight}

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        """``wait`` has no meaning here: Lambda has no health check between an alias update and its traffic."""
        version, weights = self.routing(percent)
        if percent > 0 and not self._checked:
            await self.check()
            self._checked = True
        client = await self.clients.get("lambda")
        try:
            await client.update_alias(
                FunctionName=self.function,
                Name=self.alias,
                FunctionVersion=version,
                RoutingConfig={"AdditionalVersionWeights": weights},
            )
        except (ClientError, BotoCoreError) as exc:
            raise aws_error("lambda", exc) from exc
        log.info("alias %s → version %s, weights %s", self.name, version, weights)

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        version, weights = self.routing(percent)
        actual_version, actual_weights = await self.read_alias()
        if actual_version != version or set(actual_weights) != set(weights):
            return False
        return all(math.isclose(actual_weights[v], w, abs_tol=1e-6) for v, w in weights.items())

    async def read_alias(self) -> tuple[str, dict[str, float]]:
        """(FunctionVersion, AdditionalVersionWeights) as AWS holds them now."""
        client = await self.clients.get("lambda")
        try:
            alias = await client.get_alias(FunctionName=self.function, Name=self.alias)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise AdapterError("lambda", f"alias {self.name} does not exist") from exc
            raise aws_error("lambda", exc) from exc
        except BotoCoreError as exc:
            raise aws_error("lambda", exc) from exc
        weights = alias.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
        return str(alias["FunctionVersion"]), {str(k): float(v) for k, v in weights.items()}

    async def check(self) -> None:
        """Before the first shift: the alias exists and is where this deployment expects it, and both versions
        exist. The alias may already be on TargetVersion only when this deployment put it there (a resume)."""
        version, weights = await self.read_alias()
        foreign = sorted(set(weights) - {self.target})
        if version == self.target and not weights:
            pass  # already shifted by this deployment before a restart
        elif version != self.current:
            raise AdapterError(
                "lambda",
                f"alias {self.name} points at version {version}, not at the AppSpec's CurrentVersion "
                f"{self.current}; deploy with CurrentVersion: {version} (or move the alias back first)",
            )
        elif foreign:
            raise AdapterError(
                "lambda",
                f"alias {self.name} already routes traffic to version {', '.join(foreign)}; another deployment "
                "may be shifting it",
            )
        for role, wanted in (("CurrentVersion", self.current), ("TargetVersion", self.target)):
            await self._version_exists(role, wanted)

    async def _version_exists(self, role: str, version: str) -> None:
        client = await self.clients.get("lambda")
        try:
            await client.get_function(FunctionName=self.function, Qualifier=version)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise AdapterError(
                    "lambda", f"version {version} of function {self.function} ({role} in the AppSpec) does not exist"
                ) from exc
            raise aws_error("lambda", exc) from exc
        except BotoCoreError as exc:
            raise aws_error("lambda", exc) from exc
