"""deploybot's engine: CodeDeploy's model (applications, groups, configurations, revisions, deployments, targets).

This module is the public surface ``bot/`` may use: the values, errors and pure functions the doors and the CLI
work with, and the DeploymentService Protocol (engine/service.py) they are typed against. Keep the export list
sorted (a test checks it). Only the composition root (bot/app.py, bot/assembly.py, bot/cli/server_cmd.py, and
bot/cli/push_cmd.py, which uploads to S3 itself) reaches the runtime, the store and the adapters.

Names load on first use (PEP 562 ``__getattr__``): ``from engine import FINAL_STATUSES`` imports engine/core/model.py
and not the whole engine, so ``deploybot --help`` and the agent start fast. The imports under ``TYPE_CHECKING`` are
the surface type checkers and tests/test_architecture.py read; ``_SOURCES`` says where each name lives at run time
(tests/test_cli_startup.py checks the two agree).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.bundles import build_bundle, safe_extract
    from engine.core.agent_protocol import BASIC_ENV, CommandBody, HeartbeatBody, ResultBody
    from engine.core.appspec import AppSpec, ServerAppSpec, normalized, parse_appspec
    from engine.core.config.groups import NAME as NAME_PATTERN
    from engine.core.config.model import (
        AlarmConfiguration,
        Application,
        AwsAccount,
        DeploymentGroup,
        EngineConfig,
        Host,
        User,
    )
    from engine.core.config.parse import load_config, parse_config
    from engine.core.configs import (
        BUILTIN_CONFIGS,
        BUILTIN_PREFIX,
        DeploymentConfig,
        MinimumHealthyHosts,
        MinimumHealthyHostsType,
        TrafficRouting,
        TrafficRoutingType,
        close_config_names,
        default_config_name,
        resolve_config,
        traffic_span_minutes,
        validate_custom_config,
    )
    from engine.core.configs import MAX_NAME_LENGTH as MAX_CONFIG_NAME_LENGTH
    from engine.core.configs import describe as describe_config
    from engine.core.errors import (
        AdapterError,
        ApplicationNotFound,
        AppSpecInvalid,
        BundleError,
        ConfigError,
        DeploymentNotFound,
        DeploymentRefused,
        EngineError,
        EnvironmentNotFound,
        InvalidLifecycleHookStatus,
        InvalidTransition,
        LifecycleHookNotFound,
        NotFound,
        Problem,
        RevisionNotFound,
        UnknownDeploymentConfig,
    )
    from engine.core.intents import OPEN_INTENT_STATES, IntentState
    from engine.core.model import (
        FINAL_STATUSES,
        ROLLBACK_CREATOR,
        AutoRollback,
        AutoRollbackEvent,
        DeploymentStatus,
        DeploymentType,
        EventStatus,
        LifecycleEvent,
        Platform,
        Revision,
        ScriptErrorCode,
    )
    from engine.core.overrides import FILE_EXISTS_BEHAVIORS, GroupOverrides
    from engine.core.policy import BOOTSTRAP_ADMIN, VERBS, Action, Decision, is_production, may
    from engine.core.registrations import (
        ConfiguredHostReadOnly,
        DeploymentConfigExists,
        DeploymentConfigInUse,
        DeploymentConfigReadOnly,
        IamArnAlreadyRegistered,
        InstanceAlreadyRegistered,
        InstanceNotRegistered,
        InvalidDeploymentConfig,
        OnPremInstance,
        RegisteredRevision,
        TooManyTags,
    )
    from engine.core.revision_paths import names_server_path, path_within
    from engine.core.simulate import simulate
    from engine.core.stages import StageOptions, deployment_stages
    from engine.ports import AgentFleet, HookCallbacks, RevisionArchive
    from engine.processes import ProcessIdentity
    from engine.runtime.tokens import ApiToken, TokenCheck, TokenRefusal
    from engine.service import (
        ApiTokenService,
        DeploymentRecords,
        DeploymentService,
        DeployRequest,
        Registrations,
        ReleaseService,
    )

# public name -> "module" (same name there) or "module:name"
_SOURCES: dict[str, str] = {
    "Action": "engine.core.policy",
    "AdapterError": "engine.core.errors",
    "AgentFleet": "engine.ports",
    "AlarmConfiguration": "engine.core.config.model",
    "ApiToken": "engine.runtime.tokens",
    "ApiTokenService": "engine.service",
    "AppSpec": "engine.core.appspec",
    "AppSpecInvalid": "engine.core.errors",
    "Application": "engine.core.config.model",
    "ApplicationNotFound": "engine.core.errors",
    "AutoRollback": "engine.core.model",
    "AutoRollbackEvent": "engine.core.model",
    "AwsAccount": "engine.core.config.model",
    "BASIC_ENV": "engine.core.agent_protocol",
    "BOOTSTRAP_ADMIN": "engine.core.policy",
    "BUILTIN_CONFIGS": "engine.core.configs",
    "BUILTIN_PREFIX": "engine.core.configs",
    "BundleError": "engine.core.errors",
    "CommandBody": "engine.core.agent_protocol",
    "ConfigError": "engine.core.errors",
    "ConfiguredHostReadOnly": "engine.core.registrations",
    "Decision": "engine.core.policy",
    "DeployRequest": "engine.service",
    "DeploymentConfig": "engine.core.configs",
    "DeploymentConfigExists": "engine.core.registrations",
    "DeploymentConfigInUse": "engine.core.registrations",
    "DeploymentConfigReadOnly": "engine.core.registrations",
    "DeploymentGroup": "engine.core.config.model",
    "DeploymentNotFound": "engine.core.errors",
    "DeploymentRecords": "engine.service",
    "DeploymentRefused": "engine.core.errors",
    "DeploymentService": "engine.service",
    "DeploymentStatus": "engine.core.model",
    "DeploymentType": "engine.core.model",
    "EngineConfig": "engine.core.config.model",
    "EngineError": "engine.core.errors",
    "EnvironmentNotFound": "engine.core.errors",
    "EventStatus": "engine.core.model",
    "FILE_EXISTS_BEHAVIORS": "engine.core.overrides",
    "FINAL_STATUSES": "engine.core.model",
    "GroupOverrides": "engine.core.overrides",
    "HeartbeatBody": "engine.core.agent_protocol",
    "HookCallbacks": "engine.ports",
    "Host": "engine.core.config.model",
    "IamArnAlreadyRegistered": "engine.core.registrations",
    "InstanceAlreadyRegistered": "engine.core.registrations",
    "InstanceNotRegistered": "engine.core.registrations",
    "IntentState": "engine.core.intents",
    "InvalidDeploymentConfig": "engine.core.registrations",
    "InvalidLifecycleHookStatus": "engine.core.errors",
    "InvalidTransition": "engine.core.errors",
    "LifecycleEvent": "engine.core.model",
    "LifecycleHookNotFound": "engine.core.errors",
    "MAX_CONFIG_NAME_LENGTH": "engine.core.configs:MAX_NAME_LENGTH",
    "MinimumHealthyHosts": "engine.core.configs",
    "MinimumHealthyHostsType": "engine.core.configs",
    "NAME_PATTERN": "engine.core.config.groups:NAME",
    "NotFound": "engine.core.errors",
    "OPEN_INTENT_STATES": "engine.core.intents",
    "OnPremInstance": "engine.core.registrations",
    "Platform": "engine.core.model",
    "Problem": "engine.core.errors",
    "ProcessIdentity": "engine.processes",
    "ROLLBACK_CREATOR": "engine.core.model",
    "RegisteredRevision": "engine.core.registrations",
    "Registrations": "engine.service",
    "ReleaseService": "engine.service",
    "ResultBody": "engine.core.agent_protocol",
    "Revision": "engine.core.model",
    "RevisionArchive": "engine.ports",
    "RevisionNotFound": "engine.core.errors",
    "ScriptErrorCode": "engine.core.model",
    "ServerAppSpec": "engine.core.appspec",
    "StageOptions": "engine.core.stages",
    "TokenCheck": "engine.runtime.tokens",
    "TokenRefusal": "engine.runtime.tokens",
    "TooManyTags": "engine.core.registrations",
    "TrafficRouting": "engine.core.configs",
    "TrafficRoutingType": "engine.core.configs",
    "UnknownDeploymentConfig": "engine.core.errors",
    "User": "engine.core.config.model",
    "VERBS": "engine.core.policy",
    "build_bundle": "engine.bundles",
    "close_config_names": "engine.core.configs",
    "default_config_name": "engine.core.configs",
    "deployment_stages": "engine.core.stages",
    "describe_config": "engine.core.configs:describe",
    "is_production": "engine.core.policy",
    "load_config": "engine.core.config.parse",
    "may": "engine.core.policy",
    "names_server_path": "engine.core.revision_paths",
    "normalized": "engine.core.appspec",
    "parse_appspec": "engine.core.appspec",
    "parse_config": "engine.core.config.parse",
    "path_within": "engine.core.revision_paths",
    "resolve_config": "engine.core.configs",
    "safe_extract": "engine.bundles",
    "simulate": "engine.core.simulate",
    "traffic_span_minutes": "engine.core.configs",
    "validate_custom_config": "engine.core.configs",
}

__all__ = [  # noqa: RUF022 - plain sorted(), which the test checks
    "Action",
    "AdapterError",
    "AgentFleet",
    "AlarmConfiguration",
    "ApiToken",
    "ApiTokenService",
    "AppSpec",
    "AppSpecInvalid",
    "Application",
    "ApplicationNotFound",
    "AutoRollback",
    "AutoRollbackEvent",
    "AwsAccount",
    "BASIC_ENV",
    "BOOTSTRAP_ADMIN",
    "BUILTIN_CONFIGS",
    "BUILTIN_PREFIX",
    "BundleError",
    "CommandBody",
    "ConfigError",
    "ConfiguredHostReadOnly",
    "Decision",
    "DeployRequest",
    "DeploymentConfig",
    "DeploymentConfigExists",
    "DeploymentConfigInUse",
    "DeploymentConfigReadOnly",
    "DeploymentGroup",
    "DeploymentNotFound",
    "DeploymentRecords",
    "DeploymentRefused",
    "DeploymentService",
    "DeploymentStatus",
    "DeploymentType",
    "EngineConfig",
    "EngineError",
    "EnvironmentNotFound",
    "EventStatus",
    "FILE_EXISTS_BEHAVIORS",
    "FINAL_STATUSES",
    "GroupOverrides",
    "HeartbeatBody",
    "HookCallbacks",
    "Host",
    "IamArnAlreadyRegistered",
    "InstanceAlreadyRegistered",
    "InstanceNotRegistered",
    "IntentState",
    "InvalidDeploymentConfig",
    "InvalidLifecycleHookStatus",
    "InvalidTransition",
    "LifecycleEvent",
    "LifecycleHookNotFound",
    "MAX_CONFIG_NAME_LENGTH",
    "MinimumHealthyHosts",
    "MinimumHealthyHostsType",
    "NAME_PATTERN",
    "NotFound",
    "OPEN_INTENT_STATES",
    "OnPremInstance",
    "Platform",
    "Problem",
    "ProcessIdentity",
    "ROLLBACK_CREATOR",
    "RegisteredRevision",
    "Registrations",
    "ReleaseService",
    "ResultBody",
    "Revision",
    "RevisionArchive",
    "RevisionNotFound",
    "ScriptErrorCode",
    "ServerAppSpec",
    "StageOptions",
    "TokenCheck",
    "TokenRefusal",
    "TooManyTags",
    "TrafficRouting",
    "TrafficRoutingType",
    "UnknownDeploymentConfig",
    "User",
    "VERBS",
    "build_bundle",
    "close_config_names",
    "default_config_name",
    "deployment_stages",
    "describe_config",
    "is_production",
    "load_config",
    "may",
    "names_server_path",
    "normalized",
    "parse_appspec",
    "parse_config",
    "path_within",
    "resolve_config",
    "safe_extract",
    "simulate",
    "traffic_span_minutes",
    "validate_custom_config",
]

if not TYPE_CHECKING:  # type checkers see the imports above; at run time a name loads its module when first used

    def __getattr__(name: str) -> Any:
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module 'engine' has no attribute {name!r}")
        module_name, _, attribute = source.partition(":")
        value = getattr(importlib.import_module(module_name), attribute or name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
