"""The shape of a new deployment of a group: its stages, blue/green sides and the spec agents receive.

Everything here is decided from the config and the group's history when a deployment is created; the result is
stored with the deployment, so a config edited later never changes a deployment under way.

A blue/green group with ``green_fleet_provisioning: copy_auto_scaling_group`` is the exception: its fleets exist
only once the deployment runs. Its stages are stored with each fleet named by what it will be (``copy of web-asg``
and ``web-asg``, as a plan shows them), and ``spec["green_fleet"]`` holds what the runner needs to name them when
the deployment starts (``auto_scaling_group``: the configured group; ``terminate``: the terminate action). The
runner adds ``source`` (the Auto Scaling group copied: the copy made by the group's newest successful deployment,
else the configured one, ``current_auto_scaling_group``) and ``copy`` (``CodeDeploy_<group>_<deployment id>``,
``green_fleet_name``) before it makes the copy, so a restart or a failure finds it; the ``copy`` of the newest
successful deployment is the group's Auto Scaling group from then on. Once the original is retired or the copy
discarded, ``settled`` is set; a deployment that ended unsettled (the server died in between) is settled by the
group's next deployment before it copies anything (``unsettled_green_fleets``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.configs import TrafficStep, traffic_config_for_hosts, traffic_steps
from engine.core.errors import DeploymentRefused
from engine.core.model import DeploymentType, Platform, Revision
from engine.core.serverless import serverless_target
from engine.core.stages import ALL_AT_ONCE, Stage, StageOptions, TargetStage, TrafficStage, deployment_stages
from engine.ports import DeploymentStore

# Extra ways a server group finds its hosts: instances registered through the CodeDeploy API (matched by the
# group's tag selector) and EC2 instances found by tag when a deployment is created.
RegisteredHosts = Callable[[Mapping[str, str]], tuple[str, ...]]
Ec2Lookup = Callable[[DeploymentGroup], Awaitable[tuple[str, ...]]]

DEFAULT_HOOK_TIMEOUT_MINUTES = 60.0  # CodeDeploy's limit for a Lambda/ECS hook to report its status


class Blueprint:
    def __init__(
        self,
        config: EngineConfig,
        store: DeploymentStore,
        *,
        registered_hosts: RegisteredHosts | None = None,
        ec2_lookup: Ec2Lookup | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.registered_hosts = registered_hosts
        self.ec2_lookup = ec2_lookup

    def target_names(self, group: DeploymentGroup) -> tuple[str, ...]:
        """The group's targets as far as they are known without asking anyone: declared hosts, registered
        instances matching its tags, the Lambda alias or ECS service it names."""
        if group.platform is Platform.ECS:
            return (serverless_target(group, {}),)
        if group.platform is Platform.LAMBDA:
            named = group.extra.get("function_name"), group.extra.get("alias")
            return (f"{named[0]}:{named[1]}",) if all(named) else ()
        names = [host.name for host in self.config.targets(group)]
        if group.target_tags and self.registered_hosts is not None:
            names += [name for name in self.registered_hosts(group.target_tags) if name not in names]
        return tuple(names)

    async def resolve_targets(self, group: DeploymentGroup, appspec: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The targets of a new deployment; raises DeploymentRefused when there are none."""
        if _copies_fleet(group):
            return ()  # the Auto Scaling group's copy, made when the deployment starts
        if group.platform is Platform.LAMBDA:
            assert appspec is not None
            return (serverless_target(group, appspec),)
        names = list(self.target_names(group))
        ec2_tags = group.extra.get("ec2_tags")
        if ec2_tags and self.ec2_lookup is not None:
            names += [name for name in await self.ec2_lookup(group) if name not in names]
        if not names:
            selector = ec2_tags if isinstance(ec2_tags, Mapping) and ec2_tags else group.target_tags
            shown = ", ".join(f"{k}={v}" for k, v in selector.items()) or "nothing"
            raise DeploymentRefused(f"{group.name} has no targets: no host or instance has the tags {shown}")
        return tuple(names)

    async def stages_for(
        self, group: DeploymentGroup, config: Any, targets: tuple[str, ...] | None = None
    ) -> tuple[Stage, ...]:
        """The stages of a new deployment; blue/green installs on the pool's idle side and shifts to it."""
        options = self.stage_options(group, config)
        if _copies_fleet(group):
            # Named by the runner once the copy's instances run; until then (and in a plan) by what they will be.
            source = await current_auto_scaling_group(self.store, group.name, str(group.blue_green.auto_scaling_group))
            return deployment_stages(options, (provisioned_placeholder(source),), (source,))
        if group.platform is Platform.SERVER and group.deployment_type is DeploymentType.BLUE_GREEN:
            live, idle = await self.sides(group)
            return deployment_stages(options, idle, live)
        return deployment_stages(options, targets if targets is not None else self.target_names(group))

    async def sides(self, group: DeploymentGroup) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(live, idle) halves of a blue/green group's pool: live is where the last successful deployment put
        traffic; before any, the first half of the pool."""
        pool = self.target_names(group)
        half = (len(pool) + 1) // 2
        live: tuple[str, ...] = pool[:half]
        for row in await self.store.list_deployments(group_name=group.name, status="Succeeded", limit=1):
            stages = row["state"].get("stages", [])
            installed = next((s["targets"] for s in stages if s["kind"] == "targets"), None)
            if installed and (set(installed) <= set(pool) or _copies_fleet(group)):
                live = tuple(installed)  # a provisioned fleet: the instances of the copy that succeeded last
        return live, tuple(t for t in pool if t not in live)

    def stage_options(self, group: DeploymentGroup, config: Any) -> StageOptions:
        steps: tuple[TrafficStep, ...] = (TrafficStep(100, 0),)
        if group.traffic_config:
            steps = traffic_steps(
                traffic_config_for_hosts(group.traffic_config, self.config.deployment_configs).traffic_routing
            )
        elif config.traffic_routing is not None:
            steps = traffic_steps(config.traffic_routing)
        health = config.minimum_healthy_hosts or ALL_AT_ONCE
        lb = group.load_balancer
        options = group.blue_green
        ready = None
        if options.ready_action == "STOP_DEPLOYMENT":
            ready = options.ready_wait_minutes * 60.0
        return StageOptions(
            platform=group.platform,
            deployment_type=group.deployment_type,
            health=health,
            traffic_steps=steps,
            with_load_balancer=lb is not None and lb.type != "none",
            ready_wait_seconds=ready,
            termination_wait_seconds=options.termination_wait_minutes * 60.0,
            stop_original=options.terminate_action == "TERMINATE",
            watch_seconds=group.watch_minutes * 60.0,
            provisioned_fleet=_copies_fleet(group),
        )

    def agent_spec(
        self,
        deployment_id: str,
        group: DeploymentGroup,
        revision: Revision,
        appspec: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What every target of the deployment is told (agents; Lambda/ECS drivers get the AppSpec and AWS bits)."""
        spec = self._common_spec(deployment_id, group, revision)
        if _copies_fleet(group):
            spec["green_fleet"] = {
                "auto_scaling_group": group.blue_green.auto_scaling_group,
                "terminate": group.blue_green.terminate_action == "TERMINATE",
            }
        if group.platform is Platform.SERVER:
            return spec
        spec["appspec"] = dict(appspec or {})
        spec["aws_account"] = str(group.extra.get("aws_account", "default"))
        minutes = group.extra.get("hook_timeout_minutes", DEFAULT_HOOK_TIMEOUT_MINUTES)
        spec["hook_timeout_seconds"] = float(minutes) * 60  # type: ignore[arg-type]
        if group.platform is Platform.ECS:
            lb = group.load_balancer.extra if group.load_balancer else {}
            spec["ecs"] = {
                "cluster": group.extra.get("cluster"),
                "service": group.extra.get("service"),
                "listener_arn": lb.get("listener_arn"),
                "test_listener_arn": lb.get("test_listener_arn"),
                "target_groups": list(lb.get("target_groups") or []),  # type: ignore[call-overload]
            }
        return spec

    def _common_spec(self, deployment_id: str, group: DeploymentGroup, revision: Revision) -> dict[str, Any]:
        return {
            "deployment_id": deployment_id,
            "application_name": group.application,
            "deployment_group_name": group.name,
            "deployment_group_id": group.group_id(),
            "deployment_type": str(group.deployment_type),
            "creator": "user",
            "revision": {
                "sha256": revision.sha256,
                "url": f"/agent/v1/bundles/{revision.sha256}",
                "size": revision.size,
                "commit": revision.commit,
                "location": getattr(revision, "location", None),
            },
            "file_exists_behavior": group.file_exists_behavior,
            "ignore_application_stop_failures": group.ignore_application_stop_failures,
            "appspec_filename": "appspec.yml",
        }

    # -- the queue -------------------------------------------------------------------------------------------


def _copies_fleet(group: DeploymentGroup) -> bool:
    return (
        group.platform is Platform.SERVER
        and group.deployment_type is DeploymentType.BLUE_GREEN
        and group.blue_green.copies_auto_scaling_group
    )


def provisioned_placeholder(source: str) -> str:
    """What a stored deployment and a plan call the green fleet before it exists (never a host's name: spaces)."""
    return f"copy of {source}"


def green_fleet_name(group_name: str, deployment_id: str) -> str:
    """The Auto Scaling group a deployment's green fleet is copied into, named as CodeDeploy names it."""
    return f"CodeDeploy_{group_name}_{deployment_id}"


async def current_auto_scaling_group(store: DeploymentStore, group_name: str, configured: str) -> str:
    """The Auto Scaling group a new deployment of ``group_name`` copies: the copy its newest successful deployment
    made (traffic is there; a failed one discarded its copy), else ``configured``."""
    for row in await store.list_deployments(group_name=group_name, status="Succeeded", limit=50):
        made = ((row.get("state") or {}).get("spec") or {}).get("green_fleet") or {}
        if made.get("copy"):
            return str(made["copy"])
    return configured


async def unsettled_green_fleets(store: DeploymentStore, group_name: str) -> list[dict[str, Any]]:
    """The group's ended deployments whose copy was never settled (the server died between storing the outcome and
    retiring the original or discarding the copy), newest first: rows whose ``state.spec.green_fleet`` has a
    ``copy`` and no ``settled``."""
    ended = await store.list_deployments(group_name=group_name, status=["Succeeded", "Failed", "Stopped"], limit=20)
    return [
        row
        for row in ended
        if (made := ((row.get("state") or {}).get("spec") or {}).get("green_fleet") or {}).get("copy")
        and not made.get("settled")
    ]


def settled_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A stored deployment ``state`` whose green fleet is marked settled (retired or discarded)."""
    spec = dict(state.get("spec") or {})
    spec["green_fleet"] = {**(spec.get("green_fleet") or {}), "settled": True}
    return {**state, "spec": spec}


def installed_targets(stages: tuple[Stage, ...]) -> tuple[str, ...]:
    """The targets that receive the new revision (the first target stage): the ones whose health alarms watch."""
    return next((s.targets for s in stages if isinstance(s, TargetStage)), ())


def blue_green_roles(stages: tuple[Stage, ...]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(original, replacement) of a server blue/green deployment, read off its stages; None for anything else."""
    if not any(isinstance(s, TrafficStage) for s in stages):
        return None
    original = next((s.targets for s in stages if isinstance(s, TargetStage) and s.name == "block-original"), ())
    return original, installed_targets(stages)
