"""Which lifecycle events run on one target, in what order, and whose scripts they run (pure; reference §4).

The order depends on the platform, the deployment type, the target's role in a blue/green deployment,
whether the group has a load balancer and whether this is a blue/green rollback. ``Start`` and ``End`` are not
events here.

Script source (§4.5): on a host, ``ApplicationStop`` and the block-traffic hooks run *before* the new revision
is downloaded, so they run the scripts of the revision already there: the last one whose **Install** succeeded
(not the last successful deployment). A blue/green rollback runs the block-traffic hooks of the most recent
install (the replacement hosts' new revision) and the allow-traffic hooks of the last successful install (the
original hosts'). All of this applies only while the current deployment has no archive on the host; the agent
decides that.
"""

from __future__ import annotations

import enum

from engine.core.model import DeploymentType, LifecycleEvent, Platform

_E = LifecycleEvent


class FleetRole(enum.StrEnum):
    """A target's part in a deployment: updated in place, or one side of a blue/green pair."""

    IN_PLACE = "in_place"
    REPLACEMENT = "replacement"
    ORIGINAL = "original"


class ScriptSource(enum.StrEnum):
    """Whose revision's AppSpec and scripts a hook event runs (the agent's deployment-root mapping)."""

    CURRENT = "current"
    LAST_SUCCESSFUL = "last_successful"
    MOST_RECENT = "most_recent"


BLOCK_TRAFFIC_EVENTS = (_E.BEFORE_BLOCK_TRAFFIC, _E.BLOCK_TRAFFIC, _E.AFTER_BLOCK_TRAFFIC)
ALLOW_TRAFFIC_EVENTS = (_E.BEFORE_ALLOW_TRAFFIC, _E.ALLOW_TRAFFIC, _E.AFTER_ALLOW_TRAFFIC)
SERVER_INSTALL_EVENTS = (
    _E.APPLICATION_STOP,
    _E.DOWNLOAD_BUNDLE,
    _E.BEFORE_INSTALL,
    _E.INSTALL,
    _E.AFTER_INSTALL,
    _E.APPLICATION_START,
    _E.VALIDATE_SERVICE,
)
LAMBDA_EVENTS = ALLOW_TRAFFIC_EVENTS
ECS_EVENTS = (
    _E.BEFORE_INSTALL,
    _E.INSTALL,
    _E.AFTER_INSTALL,
    _E.ALLOW_TEST_TRAFFIC,
    _E.AFTER_ALLOW_TEST_TRAFFIC,
    *ALLOW_TRAFFIC_EVENTS,
)

TRAFFIC_EVENTS = frozenset({_E.BLOCK_TRAFFIC, _E.ALLOW_TRAFFIC})
"""Done by the server's TrafficRouter, never sent to an agent."""

SERVER_HOOKABLE = frozenset(
    {
        _E.APPLICATION_STOP,
        _E.BEFORE_INSTALL,
        _E.AFTER_INSTALL,
        _E.APPLICATION_START,
        _E.VALIDATE_SERVICE,
        _E.BEFORE_BLOCK_TRAFFIC,
        _E.AFTER_BLOCK_TRAFFIC,
        _E.BEFORE_ALLOW_TRAFFIC,
        _E.AFTER_ALLOW_TRAFFIC,
    }
)
SERVER_RESERVED = frozenset({_E.DOWNLOAD_BUNDLE, _E.INSTALL, _E.BLOCK_TRAFFIC, _E.ALLOW_TRAFFIC})
"""Server events that exist but cannot run scripts."""
LAMBDA_HOOKABLE = frozenset({_E.BEFORE_ALLOW_TRAFFIC, _E.AFTER_ALLOW_TRAFFIC})
ECS_HOOKABLE = frozenset(
    {
        _E.BEFORE_INSTALL,
        _E.AFTER_INSTALL,
        _E.AFTER_ALLOW_TEST_TRAFFIC,
        _E.BEFORE_ALLOW_TRAFFIC,
        _E.AFTER_ALLOW_TRAFFIC,
    }
)

_HOOKABLE = {Platform.SERVER: SERVER_HOOKABLE, Platform.LAMBDA: LAMBDA_HOOKABLE, Platform.ECS: ECS_HOOKABLE}

# Hooks that run before the new revision is on the host, so they use an earlier install's scripts (§4.5).
_PRE_DOWNLOAD_SOURCES = {
    _E.APPLICATION_STOP: ScriptSource.LAST_SUCCESSFUL,
    _E.BEFORE_BLOCK_TRAFFIC: ScriptSource.LAST_SUCCESSFUL,
    _E.AFTER_BLOCK_TRAFFIC: ScriptSource.LAST_SUCCESSFUL,
}
_BLUE_GREEN_ROLLBACK_SOURCES = {
    _E.APPLICATION_STOP: ScriptSource.LAST_SUCCESSFUL,
    _E.BEFORE_BLOCK_TRAFFIC: ScriptSource.MOST_RECENT,
    _E.AFTER_BLOCK_TRAFFIC: ScriptSource.MOST_RECENT,
    _E.BEFORE_ALLOW_TRAFFIC: ScriptSource.LAST_SUCCESSFUL,
    _E.AFTER_ALLOW_TRAFFIC: ScriptSource.LAST_SUCCESSFUL,
}


def hookable_events(platform: Platform) -> frozenset[LifecycleEvent]:
    """Events an AppSpec of ``platform`` may attach scripts or functions to."""
    return _HOOKABLE[platform]


def event_order(
    platform: Platform,
    deployment_type: DeploymentType,
    *,
    role: FleetRole = FleetRole.IN_PLACE,
    with_load_balancer: bool = False,
    rollback: bool = False,
) -> tuple[LifecycleEvent, ...]:
    """The events that run on ONE target, in order (§4.1 to §4.4).

    Lambda and ECS ignore ``role``, ``with_load_balancer`` and ``rollback`` (their rollback is the same shift
    back). An in-place rollback is an ordinary in-place deployment. Server blue/green always routes traffic,
    so ``with_load_balancer`` does not matter there. A role that does not fit the deployment type raises
    ValueError (a programming error, not a user's).
    """
    if platform is Platform.LAMBDA:
        return LAMBDA_EVENTS
    if platform is Platform.ECS:
        return ECS_EVENTS
    if deployment_type is DeploymentType.IN_PLACE:
        if role is not FleetRole.IN_PLACE:
            raise ValueError(f"an in-place deployment has no {role} fleet")
        if not with_load_balancer:
            return SERVER_INSTALL_EVENTS
        return (*BLOCK_TRAFFIC_EVENTS, *SERVER_INSTALL_EVENTS, *ALLOW_TRAFFIC_EVENTS)
    match role, rollback:
        case FleetRole.REPLACEMENT, False:
            return (*SERVER_INSTALL_EVENTS, *ALLOW_TRAFFIC_EVENTS)
        case FleetRole.ORIGINAL, False:
            return BLOCK_TRAFFIC_EVENTS
        case FleetRole.ORIGINAL, True:
            return ALLOW_TRAFFIC_EVENTS
        case FleetRole.REPLACEMENT, True:
            return BLOCK_TRAFFIC_EVENTS
    raise ValueError(f"a blue/green deployment needs a replacement or original role, not {role}")


def script_source(event: LifecycleEvent, *, blue_green_rollback: bool = False) -> ScriptSource:
    """Whose scripts ``event`` runs when the current deployment has no archive on the host yet (§4.5).

    ``blue_green_rollback``: the deployment's creator is ``codeDeployRollback`` and its type BLUE_GREEN.
    """
    table = _BLUE_GREEN_ROLLBACK_SOURCES if blue_green_rollback else _PRE_DOWNLOAD_SOURCES
    return table.get(event, ScriptSource.CURRENT)
