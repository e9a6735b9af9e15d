"""AppSpec files for the server, Lambda and ECS platforms (pure): parse and validate strictly, every problem with its
line:column, and the normalized form. ``model`` holds the value types and the shared reader, ``server`` and
``serverless`` each platform's sections, ``permissions`` the server's permissions section, ``parse`` the entry point.
"""

from engine.core.appspec.model import (
    AppSpec,
    EcsAppSpec,
    FileMapping,
    HookScript,
    LambdaAppSpec,
    Permission,
    SELinuxContext,
    ServerAppSpec,
)
from engine.core.appspec.parse import normalized, parse_appspec

__all__ = [
    "AppSpec",
    "EcsAppSpec",
    "FileMapping",
    "HookScript",
    "LambdaAppSpec",
    "Permission",
    "SELinuxContext",
    "ServerAppSpec",
    "normalized",
    "parse_appspec",
]
