"""Lifecycle event order per platform / type / role / load balancer / rollback, and whose scripts each hook runs."""

from __future__ import annotations

import itertools

import pytest

from engine.core.lifecycle import (
    ECS_HOOKABLE,
    LAMBDA_HOOKABLE,
    SERVER_HOOKABLE,
    SERVER_RESERVED,
    TRAFFIC_EVENTS,
    FleetRole,
    ScriptSource,
    event_order,
    hookable_events,
    script_source,
)
from engine.core.model import DeploymentType, LifecycleEvent, Platform

IN_PLACE, BLUE_GREEN = DeploymentType.IN_PLACE, DeploymentType.BLUE_GREEN


def _events(text: str) -> tuple[LifecycleEvent, ...]:
    return tuple(LifecycleEvent(name) for name in text.split())


BLOCK = "BeforeBlockTraffic BlockTraffic AfterBlockTraffic"
ALLOW = "BeforeAllowTraffic AllowTraffic AfterAllowTraffic"
INSTALL = "ApplicationStop DownloadBundle BeforeInstall Install AfterInstall ApplicationStart ValidateService"
ECS = f"BeforeInstall Install AfterInstall AllowTestTraffic AfterAllowTestTraffic {ALLOW}"


# (platform, type, role, with_load_balancer, rollback) -> events
ORDERS = {
    (Platform.SERVER, IN_PLACE, FleetRole.IN_PLACE, False, False): INSTALL,
    (Platform.SERVER, IN_PLACE, FleetRole.IN_PLACE, True, False): f"{BLOCK} {INSTALL} {ALLOW}",
    (Platform.SERVER, IN_PLACE, FleetRole.IN_PLACE, False, True): INSTALL,
    (Platform.SERVER, IN_PLACE, FleetRole.IN_PLACE, True, True): f"{BLOCK} {INSTALL} {ALLOW}",
    **{(Platform.SERVER, BLUE_GREEN, FleetRole.REPLACEMENT, lb, False): f"{INSTALL} {ALLOW}" for lb in (False, True)},
    **{(Platform.SERVER, BLUE_GREEN, FleetRole.ORIGINAL, lb, False): BLOCK for lb in (False, True)},
    **{(Platform.SERVER, BLUE_GREEN, FleetRole.ORIGINAL, lb, True): ALLOW for lb in (False, True)},
    **{(Platform.SERVER, BLUE_GREEN, FleetRole.REPLACEMENT, lb, True): BLOCK for lb in (False, True)},
    **{
        (Platform.LAMBDA, t, r, lb, rb): ALLOW
        for t, r, lb, rb in itertools.product(DeploymentType, FleetRole, (False, True), (False, True))
    },
    **{
        (Platform.ECS, t, r, lb, rb): ECS
        for t, r, lb, rb in itertools.product(DeploymentType, FleetRole, (False, True), (False, True))
    },
}


@pytest.mark.parametrize(("platform", "kind", "role", "lb", "rollback"), list(ORDERS))
def test_event_order(platform: Platform, kind: DeploymentType, role: FleetRole, lb: bool, rollback: bool) -> None:
    got = event_order(platform, kind, role=role, with_load_balancer=lb, rollback=rollback)
    assert got == _events(ORDERS[platform, kind, role, lb, rollback])


def test_defaults_are_in_place_without_load_balancer() -> None:
    assert event_order(Platform.SERVER, IN_PLACE) == _events(INSTALL)


def test_first_deployment_without_lb_runs_the_agent_tests_hooks() -> None:
    """The agent's integration test: ApplicationStop is a noop on a first deployment, the rest run in order."""
    hookable = [e for e in event_order(Platform.SERVER, IN_PLACE) if e in SERVER_HOOKABLE]
    assert hookable[1:] == list(_events("BeforeInstall AfterInstall ApplicationStart ValidateService"))


@pytest.mark.parametrize(
    ("kind", "role"),
    [
        (IN_PLACE, FleetRole.REPLACEMENT),
        (IN_PLACE, FleetRole.ORIGINAL),
        (BLUE_GREEN, FleetRole.IN_PLACE),
    ],
)
def test_role_that_does_not_fit_the_type_is_a_programming_error(kind: DeploymentType, role: FleetRole) -> None:
    with pytest.raises(ValueError, match=str(role)):
        event_order(Platform.SERVER, kind, role=role)


def test_every_order_has_no_duplicates() -> None:
    for key in ORDERS:
        platform, kind, role, lb, rollback = key
        events = event_order(platform, kind, role=role, with_load_balancer=lb, rollback=rollback)
        assert len(set(events)) == len(events), key


def test_hookable_sets() -> None:
    server = "ApplicationStop BeforeInstall AfterInstall ApplicationStart ValidateService"
    expected = {
        "server": _events(f"{server} BeforeBlockTraffic AfterBlockTraffic BeforeAllowTraffic AfterAllowTraffic"),
        "reserved": _events("DownloadBundle Install BlockTraffic AllowTraffic"),
        "lambda": _events("BeforeAllowTraffic AfterAllowTraffic"),
        "ecs": _events("BeforeInstall AfterInstall AfterAllowTestTraffic BeforeAllowTraffic AfterAllowTraffic"),
        "traffic": _events("BlockTraffic AllowTraffic"),
    }
    got = {
        "server": SERVER_HOOKABLE,
        "reserved": SERVER_RESERVED,
        "lambda": LAMBDA_HOOKABLE,
        "ecs": ECS_HOOKABLE,
        "traffic": TRAFFIC_EVENTS,
    }
    assert got == {key: frozenset(events) for key, events in expected.items()}
    assert not SERVER_HOOKABLE & SERVER_RESERVED
    assert set(_events(f"{BLOCK} {INSTALL} {ALLOW}")) == SERVER_HOOKABLE | SERVER_RESERVED
    assert {p: hookable_events(p) for p in Platform} == {
        Platform.SERVER: SERVER_HOOKABLE,
        Platform.LAMBDA: LAMBDA_HOOKABLE,
        Platform.ECS: ECS_HOOKABLE,
    }


CURRENT, LAST, RECENT = ScriptSource.CURRENT, ScriptSource.LAST_SUCCESSFUL, ScriptSource.MOST_RECENT
# event -> (normal deployment, blue/green rollback)
SOURCES = {
    "ApplicationStop": (LAST, LAST),
    "DownloadBundle": (CURRENT, CURRENT),
    "BeforeInstall": (CURRENT, CURRENT),
    "Install": (CURRENT, CURRENT),
    "AfterInstall": (CURRENT, CURRENT),
    "ApplicationStart": (CURRENT, CURRENT),
    "ValidateService": (CURRENT, CURRENT),
    "BeforeBlockTraffic": (LAST, RECENT),
    "BlockTraffic": (CURRENT, CURRENT),
    "AfterBlockTraffic": (LAST, RECENT),
    "BeforeAllowTraffic": (CURRENT, LAST),
    "AllowTraffic": (CURRENT, CURRENT),
    "AfterAllowTraffic": (CURRENT, LAST),
    "AllowTestTraffic": (CURRENT, CURRENT),
    "AfterAllowTestTraffic": (CURRENT, CURRENT),
}


def test_sources_cover_every_event() -> None:
    assert set(SOURCES) == {e.value for e in LifecycleEvent}


@pytest.mark.parametrize("event", list(SOURCES))
def test_script_source(event: str) -> None:
    normal, bg_rollback = SOURCES[event]
    assert script_source(LifecycleEvent(event)) is normal
    assert script_source(LifecycleEvent(event), blue_green_rollback=False) is normal
    assert script_source(LifecycleEvent(event), blue_green_rollback=True) is bg_rollback
