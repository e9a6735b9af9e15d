"""Every CodeDeploy operation deploybot answers, gathered from the operation groups into one table.

Names are CodeDeploy's: an application is an application, a deployment group is matched by its group name (or, as a
convenience, its environment), timestamps are epoch seconds. How revisions are named is in locations.py; without
``revision``, CreateDeployment deploys the application's default revision, like ``deploybot deploy``.
"""

from __future__ import annotations

from functools import cached_property

from bot.codedeploy.application_ops import ApplicationOperations
from bot.codedeploy.base import Operation, OperationsBase, operation_method
from bot.codedeploy.deployment_ops import DeploymentOperations
from bot.codedeploy.onprem_ops import OnPremOperations
from bot.codedeploy.revision_ops import RevisionOperations
from bot.codedeploy.target_ops import TargetOperations


class CodeDeployOperations(
    ApplicationOperations, DeploymentOperations, TargetOperations, RevisionOperations, OnPremOperations
):
    """``table``: operation name → ``async (body, actor) -> response``; failures raise ApiError/EngineError."""

    @cached_property
    def table(self) -> dict[str, Operation]:
        table: dict[str, Operation] = {}
        for group in type(self).__mro__:
            if issubclass(group, OperationsBase):
                for name in group.__dict__.get("OPERATIONS", ()):
                    table[name] = getattr(self, operation_method(name))
        return table
