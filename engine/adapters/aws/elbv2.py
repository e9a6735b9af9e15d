"""ELBv2 target groups as the ``TrafficRouter`` of server groups whose ``load_balancer.type`` is ``elbv2`` (aioboto3).

In place, a group has one target group: BlockTraffic deregisters the host and waits out the deregistration delay
(or until ``describe_target_health`` says the target is ``unused``: nothing left to drain); AllowTraffic registers it
and waits until the balancer's own health check calls it ``healthy``.

Blue/green, a group has two target groups, ``load_balancer.extra["target_groups"] = [blue, green]``, behind the
production listener ``extra["listener_arn"]``, whose default forward action carries one weight per target group.
Which target group is the *original* side is not fixed: it is wherever the original hosts are already registered
(so a resumed deployment finds its sides again), else the target group the listener now weights more, else the
first. The two pools therefore swap roles from one deployment to the next, as the hosts do.

Host → target (the rule users configure against):
  1. a declared host with the tag ``instance_id`` → that EC2 instance (target type ``instance``);
  2. a target name that is itself an instance id (``i-…``, hosts found by ``ec2_tags``) → that instance;
  3. otherwise the host name must be an IP address (target type ``ip``).
  The host's ``port``, when set, is the target's port; without it the target group's port applies.

moto stores weights and registrations but sends no traffic, reports every registered target ``healthy`` and accepts
weights AWS refuses (components.md §4), so weights are validated here, before any call.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from engine.adapters.aws.accounts import AwsAccounts, AwsClients
from engine.adapters.clock import SystemClock
from engine.core.config.model import EngineConfig, Host
from engine.core.errors import AdapterError
from engine.core.model import Platform
from engine.ports import Clock, TrafficRouter

COMPONENT = "elbv2"
MAX_WEIGHT = 999  # AWS's limit per target group in a weighted forward action
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
_GONE_STATES = frozenset({"unused"})


@dataclass(frozen=True, slots=True)
class ElbGroup:
    """One deployment group's ELBv2 resources: one target group in place, (blue, green) plus the listener."""

    name: str
    target_groups: tuple[str, ...]
    listener_arn: str | None = None
    deregistration_delay: float = 5.0

    @property
    def blue_green(self) -> bool:
        return len(self.target_groups) == 2 and bool(self.listener_arn)


@dataclass(frozen=True, slots=True)
class _Sides:
    original_tg: str
    replacement_tg: str
    original: tuple[str, ...]
    replacement: tuple[str, ...]

    def target_group_of(self, target: str) -> str | None:
        if target in self.original:
            return self.original_tg
        return self.replacement_tg if target in self.replacement else None


def target_description(name: str, host: Host | None = None) -> dict[str, Any]:
    """The ``{"Id", "Port"?}`` ELBv2 knows target ``name`` by (rule in the module docstring)."""
    instance_id = host.tags.get("instance_id") if host is not None else None
    if instance_id:
        target: dict[str, Any] = {"Id": instance_id}
    elif _INSTANCE_ID.match(name):
        target = {"Id": name}
    else:
        try:
            target = {"Id": str(ipaddress.ip_address(name))}
        except ValueError:
            raise AdapterError(
                COMPONENT,
                f"host {name!r} has no instance_id tag and is not an IP address, so it cannot be an ELB target",
            ) from None
    if host is not None and host.port is not None:
        target["Port"] = host.port
    return target


def listener_weights(percent: int) -> tuple[int, int]:
    """(original, replacement) weights of the forward action that send ``percent`` % to the replacement (pure)."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise AdapterError(COMPONENT, f"traffic percent must be a whole number 0-100, got {percent!r}")
    return 100 - percent, percent


def check_weights(weights: Mapping[str, int]) -> None:
    """AWS's rules for a weighted forward, checked here because moto accepts anything (components.md §4)."""
    for arn, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise AdapterError(COMPONENT, f"weight {weight!r} for {arn} is outside 0-{MAX_WEIGHT}")
    if sum(weights.values()) != 100:
        raise AdapterError(COMPONENT, f"weights {dict(weights)} do not add up to 100")


def forward_weights(actions: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Weight per target group of a listener's forward action (a plain forward is weight 1 on its one group)."""
    for action in actions:
        if action.get("Type") != "forward":
            continue
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups")
        if groups:
            return {g["TargetGroupArn"]: int(g.get("Weight", 1)) for g in groups}
        if action.get("TargetGroupArn"):
            return {action["TargetGroupArn"]: 1}
    return {}


class ElbRouter:
    """TrafficRouter over one group's ELBv2 target groups (and its listener, blue/green)."""

    def __init__(
        self,
        clients: AwsClients,
        group: ElbGroup,
        *,
        hosts: Mapping[str, Host] | None = None,
        clock: Clock | None = None,
        allow_timeout: float = 300.0,
        poll_interval: float = 2.0,
    ) -> None:
        self.clients = clients
        self.group = group
        self.hosts = dict(hosts or {})
        self.clock: Clock = clock or SystemClock()
        self.allow_timeout = allow_timeout
        self.poll_interval = poll_interval
        self._sides: _Sides | None = None

    # -- plumbing --------------------------------------------------------------------------------------------

    def _check_group(self, group: str) -> None:
        if group != self.group.name:
            raise AdapterError(COMPONENT, f"this router drives group {self.group.name!r}, not {group!r}")

    def _targets(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return [target_description(name, self.hosts.get(name)) for name in names]

    async def _register(self, target_group: str, names: Sequence[str]) -> None:
        if names:
            await self.clients.call(
                COMPONENT, "register_targets", TargetGroupArn=target_group, Targets=self._targets(names)
            )

    async def _deregister(self, target_group: str, names: Sequence[str]) -> None:
        if names:
            await self.clients.call(
                COMPONENT, "deregister_targets", TargetGroupArn=target_group, Targets=self._targets(names)
            )

    async def _health(self, target_group: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``TargetHealth`` of each target as the balancer sees it (``unused`` when not registered), in one call."""
        targets = self._targets(names)
        try:
            answer = await self.clients.call(
                COMPONENT, "describe_target_health", TargetGroupArn=target_group, Targets=targets
            )
        except AdapterError as exc:
            if "InvalidTarget" not in exc.detail:
                raise
            # e.g. a terminated instance: nothing is routed to it
            return {
                name: {"State": "unused", "Reason": "Target.InvalidState", "Description": exc.detail} for name in names
            }
        by_id = {
            d.get("Target", {}).get("Id"): d.get("TargetHealth", {}) for d in answer.get("TargetHealthDescriptions", [])
        }
        missing = {"State": "unused", "Reason": "Target.NotRegistered"}
        return {name: by_id.get(target["Id"], missing) for name, target in zip(names, targets, strict=True)}

    async def _registered(self, target_group: str) -> set[str]:
        answer = await self.clients.call(COMPONENT, "describe_target_health", TargetGroupArn=target_group)
        return {d["Target"]["Id"] for d in answer.get("TargetHealthDescriptions", [])}

    async def _listener(self) -> dict[str, Any]:
        answer = await self.clients.call(COMPONENT, "describe_listeners", ListenerArns=[self.group.listener_arn])
        listeners = answer.get("Listeners") or []
        if not listeners:
            raise AdapterError(COMPONENT, f"listener {self.group.listener_arn} not found")
        listener: dict[str, Any] = listeners[0]
        return listener

    async def until_healthy(self, target_group: str, names: Sequence[str]) -> None:
        """Wait until every target of ``names`` is ``healthy`` in ``target_group``; AdapterError after allow_timeout
        naming each one's state, reason and description."""
        deadline = self.clock.monotonic() + self.allow_timeout
        pending = list(names)
        while True:
            states = await self._health(target_group, pending)
            pending = [name for name, health in states.items() if health.get("State") != "healthy"]
            if not pending:
                return
            if self.clock.monotonic() >= deadline:
                detail = "; ".join(f"{name}: {_described(states[name])}" for name in pending)
                raise AdapterError(COMPONENT, f"not healthy in {target_group} after {self.allow_timeout:g}s: {detail}")
            await self.clock.sleep(self.poll_interval)

    # -- blue/green ------------------------------------------------------------------------------------------

    def _blue_green(self) -> tuple[str, str]:
        if not self.group.blue_green:
            raise AdapterError(
                COMPONENT, f"group {self.group.name!r} has no two target groups and listener for blue/green"
            )
        blue, green = self.group.target_groups
        return blue, green

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        """Decide which target group each side uses, then register each side's hosts in its own (only there)."""
        self._check_group(group)
        blue, green = self._blue_green()
        original, replacement = tuple(original), tuple(replacement)
        names = (*original, *replacement)
        target_id = {n: t["Id"] for n, t in zip(names, self._targets(names), strict=True)}  # fails before changes
        registered = {blue: await self._registered(blue), green: await self._registered(green)}

        def found(side: Sequence[str], target_group: str) -> int:
            return sum(target_id[n] in registered[target_group] for n in side)

        straight = found(original, blue) + found(replacement, green)
        swapped = found(original, green) + found(replacement, blue)
        if straight == swapped:  # nothing tells yet: the side the listener favours now is the original
            weights = forward_weights((await self._listener()).get("DefaultActions", []))
            straight, swapped = 0, int(weights.get(green, 0) > weights.get(blue, 0))
        original_tg, replacement_tg = (green, blue) if swapped > straight else (blue, green)
        self._sides = _Sides(original_tg, replacement_tg, original, replacement)
        for side, mine, other in ((original, original_tg, replacement_tg), (replacement, replacement_tg, original_tg)):
            await self._register(mine, side)
            await self._deregister(other, [n for n in side if target_id[n] in registered[other]])

    def _sides_of(self) -> _Sides:
        if self._sides is None:
            raise AdapterError(COMPONENT, f"group {self.group.name!r}: no original/replacement sides prepared")
        return self._sides

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        """Weight the listener's forward ``100 - percent`` : ``percent`` (original : replacement).

        The side(s) about to take traffic are registered again first (a rollback brings back an original fleet
        that BlockTraffic deregistered); with ``wait``, the replacement must be ``healthy`` before it gets any.
        """
        original_weight, replacement_weight = listener_weights(percent)
        self._check_group(group)
        self._blue_green()
        sides = self._sides_of()
        weights = {sides.original_tg: original_weight, sides.replacement_tg: replacement_weight}
        check_weights(weights)
        if replacement_weight:
            await self._register(sides.replacement_tg, sides.replacement)
        if original_weight:
            await self._register(sides.original_tg, sides.original)
        if wait and replacement_weight:
            await self.until_healthy(sides.replacement_tg, sides.replacement)
        listener = await self._listener()
        actions = _with_weights(listener.get("DefaultActions", []), weights)
        await self.clients.call(
            COMPONENT, "modify_listener", ListenerArn=self.group.listener_arn, DefaultActions=actions
        )

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        """Does the listener send exactly ``percent`` % to the replacement (its weights are whole percentages, so
        the percentage reported after a True is the read-back one)? None: can't tell."""
        if group != self.group.name or self._sides is None or not self.group.blue_green:
            return None
        try:
            weights = forward_weights((await self._listener()).get("DefaultActions", []))
        except AdapterError:
            return None
        original = weights.get(self._sides.original_tg, 0)
        replacement = weights.get(self._sides.replacement_tg, 0)
        if original + replacement == 0:
            return False
        return Fraction(100 * replacement, original + replacement) == percent

    # -- in-place --------------------------------------------------------------------------------------------

    def _target_groups_of(self, target: str) -> tuple[str, ...]:
        if not self.group.blue_green:
            return self.group.target_groups[:1]
        chosen = self._sides.target_group_of(target) if self._sides is not None else None
        return (chosen,) if chosen else self.group.target_groups

    async def block(self, group: str, target: str) -> None:
        """Deregister ``target``, then wait until it is ``unused`` (drained) or the deregistration delay is over."""
        self._check_group(group)
        target_groups = self._target_groups_of(target)
        for target_group in target_groups:
            try:
                await self._deregister(target_group, [target])
            except AdapterError as exc:  # not registered (any more): a re-issued BlockTraffic after a restart
                if "InvalidTarget" not in exc.detail:
                    raise
        deadline = self.clock.monotonic() + self.group.deregistration_delay
        for target_group in target_groups:
            while (await self._health(target_group, [target]))[target].get("State") not in _GONE_STATES:
                if self.clock.monotonic() >= deadline:
                    break
                await self.clock.sleep(min(self.poll_interval, max(deadline - self.clock.monotonic(), 0)))

    async def allow(self, group: str, target: str) -> None:
        """Register ``target`` and wait until the balancer's health check calls it ``healthy``."""
        self._check_group(group)
        target_groups = self._target_groups_of(target)
        if len(target_groups) != 1:
            raise AdapterError(COMPONENT, f"{target} is on neither side of {self.group.name}'s blue/green pools")
        await self._register(target_groups[0], [target])
        await self.until_healthy(target_groups[0], [target])


def _with_weights(actions: Sequence[Mapping[str, Any]], weights: Mapping[str, int]) -> list[dict[str, Any]]:
    """The listener's default actions with its forward action replaced by a weighted one (others kept)."""
    result: list[dict[str, Any]] = []
    replaced = False
    for action in actions:
        if action.get("Type") != "forward" or replaced:
            result.append(dict(action))
            continue
        stickiness = (action.get("ForwardConfig") or {}).get("TargetGroupStickinessConfig") or {"Enabled": False}
        forward: dict[str, Any] = {"Type": "forward", "ForwardConfig": _forward_config(weights, stickiness)}
        if "Order" in action:
            forward["Order"] = action["Order"]
        result.append(forward)
        replaced = True
    if not replaced:
        result.append({"Type": "forward", "ForwardConfig": _forward_config(weights, {"Enabled": False})})
    return result


def _forward_config(weights: Mapping[str, int], stickiness: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "TargetGroups": [{"TargetGroupArn": arn, "Weight": weight} for arn, weight in weights.items()],
        "TargetGroupStickinessConfig": dict(stickiness),
    }


def _described(health: Mapping[str, Any]) -> str:
    parts = [str(health.get("State", "unknown"))]
    parts += [str(health[key]) for key in ("Reason", "Description") if health.get(key)]
    return " ".join(parts)


def build_elb_routers(
    config: EngineConfig, accounts: AwsAccounts, *, clock: Clock | None = None
) -> dict[str, TrafficRouter]:
    """One ``ElbRouter`` per server group whose load balancer is ``elbv2``, keyed by group name."""
    routers: dict[str, TrafficRouter] = {}
    for group in config.groups():
        lb = group.load_balancer
        if group.platform is not Platform.SERVER or lb is None or lb.type != "elbv2":
            continue
        raw_groups = lb.extra.get("target_groups") or ()
        target_groups = tuple(str(arn) for arn in raw_groups) if isinstance(raw_groups, list | tuple) else ()
        listener = lb.extra.get("listener_arn")
        elb_group = ElbGroup(group.name, target_groups, str(listener) if listener else None, lb.deregistration_delay)
        clients = accounts.clients(str(group.extra.get("aws_account", "default")))
        routers[group.name] = ElbRouter(clients, elb_group, hosts=config.hosts, clock=clock)
    return routers
