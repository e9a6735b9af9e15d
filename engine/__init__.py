"""deploybot's engine: CodeDeploy's model (applications, groups, configurations, revisions, deployments, targets).

This module is the public surface ``bot/`` may use; keep the export list sorted (a test checks it). The composition
root (bot/app.py, bot/cli/server_cmd.py) alone also reaches the store and the adapters.
"""

from engine.core.appspec import AppSpec, normalized, parse_appspec
from engine.core.config.model import Application, DeploymentGroup, EngineConfig, Host
from engine.core.config.parse import load_config, parse_config
from engine.core.configs import BUILTIN_CONFIGS, DeploymentConfig, resolve_config
from engine.core.errors import (
    AdapterError,
    AppSpecInvalid,
    BundleError,
    ConfigError,
    DeploymentNotFound,
    DeploymentRefused,
    EngineError,
    InvalidTransition,
    NotFound,
    Problem,
    UnknownDeploymentConfig,
)
from engine.core.model import DeploymentStatus, DeploymentType, EventStatus, LifecycleEvent, Platform
from engine.runtime.deployer import Deployer, DeployRequest

__all__ = [  # noqa: RUF022 - plain sorted(), which the test checks
    "AdapterError",
    "AppSpec",
    "AppSpecInvalid",
    "Application",
    "BUILTIN_CONFIGS",
    "BundleError",
    "ConfigError",
    "DeployRequest",
    "Deployer",
    "DeploymentConfig",
    "DeploymentGroup",
    "DeploymentNotFound",
    "DeploymentRefused",
    "DeploymentStatus",
    "DeploymentType",
    "EngineConfig",
    "EngineError",
    "EventStatus",
    "Host",
    "InvalidTransition",
    "LifecycleEvent",
    "NotFound",
    "Platform",
    "Problem",
    "UnknownDeploymentConfig",
    "load_config",
    "normalized",
    "parse_appspec",
    "parse_config",
    "resolve_config",
]
