"""Every CodeDeploy operation deploybot answers, gathered from the operation groups into one table.

Names are CodeDeploy's: an application is an application, a deployment group is matched by its group name (or, as a
convenience, its environment), timestamps are epoch seconds. How revisions are named is in locations.py; without
``revision``, CreateDeployment deploys the application's default revision, like ``deploybot deploy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from bot.codedeploy.access import Access, denial
from bot.codedeploy.application_ops import ApplicationOperations
from bot.codedeploy.base import Operation, OperationsBase, operation_method
from bot.codedeploy.deployment_ops import DeploymentOperations
from bot.codedeploy.onprem_ops import OnPremOperations
from bot.codedeploy.resource_ops import ResourceOperations
from bot.codedeploy.revision_ops import RevisionOperations
from bot.codedeploy.target_ops import TargetOperations
from engine import Action, Decision, may


class CodeDeployOperations(
    ApplicationOperations,
    ResourceOperations,
    DeploymentOperations,
    TargetOperations,
    RevisionOperations,
    OnPremOperations,
):
    """``table``: operation name → ``async (body, actor) -> response``; failures raise ApiError/EngineError.
    ``access``: operation name → what the caller needs (see ``authorize``)."""

    @classmethod
    def access_table(cls) -> dict[str, Access]:
        """Every operation answered → what its caller needs, gathered from the operation groups' ``OPERATIONS``."""
        access: dict[str, Access] = {}
        for group in cls.__mro__:
            if issubclass(group, OperationsBase):
                access.update(group.__dict__.get("OPERATIONS", {}))
        return access

    @cached_property
    def access(self) -> dict[str, Access]:
        return self.access_table()

    @cached_property
    def table(self) -> dict[str, Operation]:
        return {name: getattr(self, operation_method(name)) for name in self.access}

    async def authorize(self, operation: str, body: Mapping[str, Any], user: str) -> Decision | None:
        """Ask the policy whether ``user`` may call ``operation`` with this request: None for a read (any identified
        user may), else the allowing Decision; raises AccessDenied with the refusing one. A request naming what does
        not exist raises the operation's own error (ApplicationDoesNotExist, DeploymentDoesNotExist, ...)."""
        access = self.access[operation]
        if access.action is None:
            return None
        action = access.action
        if access.rollback_flag is not None and body.get(access.rollback_flag) is True:
            action = Action.ROLLBACK
        decision = may(self.deployer.config, user, action, await self.group_asked(access, body))
        if not decision.allowed:
            raise denial(operation, decision)
        return decision
