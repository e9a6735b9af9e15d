"""The AppSpec parser's entry point (pure): compose the YAML with positions, pick the platform's sections, and the
normalized JSON form ``deploybot appspec validate --json`` prints.

The value types and the shared reader live in ``model``; each platform's sections in ``server`` and ``serverless``.
"""

from __future__ import annotations

import copy

from yaml.nodes import ScalarNode

from engine.core.appspec.model import (
    FAILED,
    AppSpec,
    AppSpecReader,
    LambdaAppSpec,
    Permission,
    ServerAppSpec,
    yaml_message,
)
from engine.core.appspec.server import parse_server
from engine.core.appspec.serverless import parse_ecs, parse_lambda
from engine.core.errors import AppSpecInvalid, Problem
from engine.core.model import Platform

_EMPTY_SERVER = (
    f"{FAILED} the application specification file was empty. Make sure your AppSpec file defines at minimum "
    "the 'version' and 'os' properties."
)
_EMPTY_RESOURCES = "The AppSpec file is empty. Make sure it defines at minimum 'version: 0.0' and 'Resources'."


def parse_appspec(text: str, *, platform: Platform = Platform.SERVER, filename: str = "appspec.yml") -> AppSpec:
    """Parse and validate an AppSpec file; raise ``AppSpecInvalid`` with every problem, sorted by position."""
    reader = AppSpecReader(filename)
    root = reader.compose(text, yaml_message, json_tabs=True)
    platform = Platform(platform)
    spec: AppSpec | None = None
    if not reader.problems:
        if root is None or (isinstance(root, ScalarNode) and reader.value(root) is None):
            reader.report_at(1, 1, _EMPTY_SERVER if platform is Platform.SERVER else _EMPTY_RESOURCES)
        elif platform is Platform.SERVER:
            spec = parse_server(reader, root)
        elif platform is Platform.LAMBDA:
            spec = parse_lambda(reader, root)
        else:
            spec = parse_ecs(reader, root)
    if reader.problems or spec is None:
        raise AppSpecInvalid(capped(reader.sorted_problems()))
    return spec


MAX_PROBLEMS = 50
"""The most problems one validation returns; the rest are counted in one last "and N more" problem, so a file of
300,000 bad keys cannot produce a 100 MB answer."""


def capped(problems: list[Problem], limit: int = MAX_PROBLEMS) -> list[Problem]:
    """The first ``limit`` problems and, when there are more, one more at the first omitted position counting them."""
    if len(problems) <= limit:
        return problems
    rest = problems[limit]
    more = len(problems) - limit
    message = f"and {more} more problem{'s' if more > 1 else ''} (only the first {limit} are listed)"
    return [*problems[:limit], Problem(rest.file, rest.line, rest.column, message)]


# ---------------------------------------------------------------------------------------------------- normalized


def normalized(spec: AppSpec) -> dict[str, object]:
    """The ``spec`` object of ``deploybot appspec validate --json`` (DESIGN §3.1): plain JSON values."""
    if isinstance(spec, ServerAppSpec):
        return {
            "version": 0.0,
            "os": spec.os,
            "files": [{"source": f.source, "destination": f.destination} for f in spec.files],
            "permissions": [_permission_dict(p) for p in spec.permissions],
            "file_exists_behavior": spec.file_exists_behavior,
            "hooks": {
                str(event): [{"location": s.location, "timeout": s.timeout, "runas": s.runas} for s in scripts]
                for event, scripts in spec.hooks.items()
            },
        }
    hooks = {str(event): list(functions) for event, functions in spec.hooks.items()}
    if isinstance(spec, LambdaAppSpec):
        return {
            "version": 0.0,
            "function_name": spec.function_name,
            "alias": spec.alias,
            "current_version": spec.current_version,
            "target_version": spec.target_version,
            "hooks": hooks,
        }
    return {
        "version": 0.0,
        "task_definition": spec.task_definition,
        "container_name": spec.container_name,
        "container_port": spec.container_port,
        "platform_version": spec.platform_version,
        "network_configuration": copy.deepcopy(dict(spec.network_configuration or {})) or None,
        "capacity_provider_strategy": [dict(item) for item in spec.capacity_provider_strategy],
        "hooks": hooks,
    }


def _permission_dict(permission: Permission) -> dict[str, object]:
    context = permission.context
    return {
        "object": permission.object,
        "pattern": permission.pattern,
        "except": list(permission.except_),
        "type": sorted(permission.types),
        "owner": permission.owner,
        "group": permission.group,
        "mode": permission.mode,
        "acls": list(permission.acls),
        "context": {"name": context.name, "type": context.type, "range": context.range} if context else None,
    }
