"""The one target of a Lambda or ECS deployment (pure): used by the blueprint and by the platform drivers alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.config.model import DeploymentGroup
from engine.core.model import Platform


def serverless_target(group: DeploymentGroup, appspec: Mapping[str, Any]) -> str:
    """The one target of a Lambda or ECS deployment: ``function:alias`` from the AppSpec, or ``cluster:service``
    from the group."""
    if group.platform is Platform.LAMBDA:
        return f"{appspec['function_name']}:{appspec['alias']}"
    return f"{group.extra.get('cluster', '')}:{group.extra.get('service', '')}"
