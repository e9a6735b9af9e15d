"""EC2 Auto Scaling as the green fleet of a server blue/green group (``green_fleet_provisioning:
copy_auto_scaling_group``, CodeDeploy's ``COPY_AUTO_SCALING_GROUP``), through aioboto3.

Each deployment copies the group's current Auto Scaling group into ``CodeDeploy_<group>_<deployment id>``: the same
launch template, launch configuration or mixed-instances policy, the same minimum, maximum and desired size,
subnets (or zones), health check, cooldown, termination policies and tags. Not its load balancers or target groups:
the ELBv2 router registers the copy's instances in the replacement side's target group itself, as CodeDeploy does,
so the copy never takes traffic before its hooks have run. The copy is ready when as many instances as it desires
are ``InService``; their instance ids are the agents' host names.

After a successful deployment the original group is deleted with its instances (``ForceDelete``; TERMINATE) or
left running (KEEP_ALIVE); after anything else the copy is deleted the same way. Every call is idempotent: a copy
that exists already is waited for, not made again, and deleting a group that is gone is done.

``AutoScalingGreenFleet`` is also the group's ``TrafficRouter``: it hands every traffic call to the group's ELBv2
router, so the runner finds both in the one object the composition root gives it for the group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.adapters.aws.accounts import AwsClients
from engine.core.errors import AdapterError
from engine.ports import Clock, TrafficRouter

COMPONENT = "autoscaling"
IN_SERVICE = "InService"
COPIED_OF_TAG = "deploybot:copied-from"  # on the copy: the Auto Scaling group it was copied from
# What a copy takes over as it is (the size, template and placement are handled by ``copy_request``).
_COPIED_SETTINGS = (
    "HealthCheckType",
    "HealthCheckGracePeriod",
    "DefaultCooldown",
    "TerminationPolicies",
    "NewInstancesProtectedFromScaleIn",
    "CapacityRebalance",
    "MaxInstanceLifetime",
    "PlacementGroup",
    "ServiceLinkedRoleARN",
)


def copy_request(source: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``CreateAutoScalingGroup`` parameters of a copy of ``source`` (as DescribeAutoScalingGroups gives it)
    called ``name`` (pure). Load balancers and target groups are left out on purpose (module docstring)."""
    request: dict[str, Any] = {
        "AutoScalingGroupName": name,
        "MinSize": source["MinSize"],
        "MaxSize": source["MaxSize"],
        "DesiredCapacity": source.get("DesiredCapacity", source["MinSize"]),
    }
    if source.get("MixedInstancesPolicy"):
        request["MixedInstancesPolicy"] = source["MixedInstancesPolicy"]
    elif source.get("LaunchTemplate"):
        template = source["LaunchTemplate"]
        request["LaunchTemplate"] = {
            key: template[key] for key in ("LaunchTemplateId", "LaunchTemplateName", "Version") if template.get(key)
        }
        if "LaunchTemplateId" in request["LaunchTemplate"]:  # one of id and name, never both
            request["LaunchTemplate"].pop("LaunchTemplateName", None)
    elif source.get("LaunchConfigurationName"):
        request["LaunchConfigurationName"] = source["LaunchConfigurationName"]
    else:
        raise AdapterError(
            COMPONENT,
            f"Auto Scaling group {source.get('AutoScalingGroupName')!r} has no launch template, launch configuration "
            "or mixed instances policy to copy",
        )
    if source.get("VPCZoneIdentifier"):
        request["VPCZoneIdentifier"] = source["VPCZoneIdentifier"]
    elif source.get("AvailabilityZones"):
        request["AvailabilityZones"] = list(source["AvailabilityZones"])
    request.update({key: source[key] for key in _COPIED_SETTINGS if source.get(key) not in (None, "", [])})
    tags = [
        {"Key": tag["Key"], "Value": tag.get("Value", ""), "PropagateAtLaunch": bool(tag.get("PropagateAtLaunch"))}
        for tag in source.get("Tags", [])
        if not str(tag["Key"]).startswith("aws:") and tag["Key"] != COPIED_OF_TAG
    ]
    tags.append({"Key": COPIED_OF_TAG, "Value": str(source["AutoScalingGroupName"]), "PropagateAtLaunch": False})
    request["Tags"] = [{**tag, "ResourceId": name, "ResourceType": "auto-scaling-group"} for tag in tags]
    return request


def in_service(group: Mapping[str, Any]) -> tuple[str, ...]:
    """Ids of the group's instances that are ``InService``, sorted (pure)."""
    return tuple(sorted(i["InstanceId"] for i in group.get("Instances", []) if i.get("LifecycleState") == IN_SERVICE))


class AutoScalingGreenFleet:
    """``GreenFleet`` over EC2 Auto Scaling, and the group's ``TrafficRouter`` through its ELBv2 router."""

    def __init__(
        self,
        clients: AwsClients,
        router: TrafficRouter,
        *,
        clock: Clock,
        ready_timeout: float = 900.0,
        poll_interval: float = 5.0,
    ) -> None:
        self.clients = clients
        self.router = router
        self.clock = clock
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval

    # -- plumbing --------------------------------------------------------------------------------------------

    async def describe(self, name: str) -> dict[str, Any] | None:
        """The Auto Scaling group ``name`` as AWS describes it, or None when there is none (or it is being
        deleted)."""
        answer = await self.clients.call(COMPONENT, "describe_auto_scaling_groups", AutoScalingGroupNames=[name])
        for group in answer.get("AutoScalingGroups", []):
            if group.get("AutoScalingGroupName") == name and not group.get("Status"):
                return dict(group)
        return None

    async def _existing(self, name: str) -> dict[str, Any]:
        found = await self.describe(name)
        if found is None:
            raise AdapterError(COMPONENT, f"Auto Scaling group {name!r} not found")
        return found

    # -- GreenFleet ------------------------------------------------------------------------------------------

    async def provision(self, group: str, source: str, copy: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Copy ``source`` as ``copy`` (unless it exists) and wait until the copy has as many instances
        ``InService`` as it desires; AdapterError after ``ready_timeout`` naming what it has."""
        original = await self._existing(source)
        made = await self.describe(copy)
        if made is None:
            await self.clients.call(COMPONENT, "create_auto_scaling_group", **copy_request(original, copy))
        deadline = self.clock.monotonic() + self.ready_timeout
        while True:
            made = await self._existing(copy)
            ready = in_service(made)
            if len(ready) >= int(made.get("DesiredCapacity", 0)):
                return in_service(original), ready
            if self.clock.monotonic() >= deadline:
                states = ", ".join(f"{i['InstanceId']} {i.get('LifecycleState')}" for i in made.get("Instances", []))
                raise AdapterError(
                    COMPONENT,
                    f"{copy}: {len(ready)} of {made.get('DesiredCapacity')} instances InService after "
                    f"{self.ready_timeout:g} s ({states or 'no instances'})",
                )
            await self.clock.sleep(self.poll_interval)

    async def retire(self, group: str, name: str, *, terminate: bool) -> None:
        """TERMINATE: delete ``name`` and its instances; KEEP_ALIVE: leave it as it is."""
        if terminate:
            await self._delete(name)

    async def discard(self, group: str, name: str) -> None:
        await self._delete(name)

    async def _delete(self, name: str) -> None:
        try:
            await self.clients.call(COMPONENT, "delete_auto_scaling_group", AutoScalingGroupName=name, ForceDelete=True)
        except AdapterError as exc:
            if await self.describe(name) is not None:  # gone already (a second settle, or deleted by hand): done
                raise exc from None

    # -- TrafficRouter, by the group's ELBv2 router ----------------------------------------------------------

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        await self.router.prepare(group, original, replacement)

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        await self.router.set_weight(group, percent, wait=wait)

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        return await self.router.verify_weight(group, percent)

    async def block(self, group: str, target: str) -> None:
        await self.router.block(group, target)

    async def allow(self, group: str, target: str) -> None:
        await self.router.allow(group, target)
