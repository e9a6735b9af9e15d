"""Deployment groups made through the CodeDeploy API: CreateDeploymentGroup's request → a ``DeploymentGroup`` (pure).

A group's *definition* is the members of its CreateDeploymentGroup request that describe it (``DEFINITION_MEMBERS``),
kept as given: the store keeps it, the registry rebuilds the group from it at every start (``build_group``), and
GetDeploymentGroup echoes it, so a group created and then read back shows what was created. UpdateDeploymentGroup
replaces the members it names (``updated_definition``) and the whole definition is checked again.

What deploybot can run, and so what a definition may say (anything else is refused, naming the member):

- Server groups deploy in place, without traffic control, to on-premises instances registered through the API (and
  hosts of the config file) carrying *all* the tags of one selector, or to EC2 instances found by their tags. That
  selector is written as one ``KEY_AND_VALUE`` filter in ``onPremisesInstanceTagFilters`` (``ec2TagFilters``), or as
  a tag set of one such filter per list (``onPremisesTagSet``/``ec2TagSet``: every list must match, which is "all of
  these tags"). Several filters in one list mean "any of them" to CodeDeploy, which deploybot does not select by.
  Load-balanced and blue/green server groups need a router started with the server: declare them in the config file.
- Lambda groups are blue/green with traffic control (CodeDeploy's only style for Lambda) and have no instance tags.
- ECS groups are declared in the config file (their cluster, service and listeners).
- ``autoScalingGroups`` must be empty (deploybot does not target Auto Scaling groups: select their instances by
  ``ec2TagFilters``); ``serviceRoleArn``, ``loadBalancerInfo``, ``outdatedInstancesStrategy`` and
  ``terminationHookEnabled`` are kept and shown, and change nothing deploybot does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.config.groups import NAME as GROUP_NAME  # the config file's rule for names
from engine.core.config.model import AlarmConfiguration, BlueGreenOptions, DeploymentGroup
from engine.core.configs import DeploymentConfig, IncompatibleDeploymentConfig, config_for_group, default_config_name
from engine.core.errors import EngineError
from engine.core.model import AutoRollback, AutoRollbackEvent, DeploymentType, Platform
from engine.core.triggers import (
    AGENT_EVENTS,
    SNS_TOPIC_ARN,
    TRIGGER_NAME,
    TargetKind,
    Trigger,
    TriggerEvent,
    TriggerTarget,
)

MAX_ALARMS = 10
MAX_TRIGGERS = 10
MAX_TAG_SETS = 3
DEFINITION_MEMBERS = (
    "deploymentConfigName",
    "ec2TagFilters",
    "onPremisesInstanceTagFilters",
    "autoScalingGroups",
    "serviceRoleArn",
    "triggerConfigurations",
    "alarmConfiguration",
    "autoRollbackConfiguration",
    "outdatedInstancesStrategy",
    "deploymentStyle",
    "blueGreenDeploymentConfiguration",
    "loadBalancerInfo",
    "ec2TagSet",
    "ecsServices",
    "onPremisesTagSet",
    "terminationHookEnabled",
)
"""The CreateDeploymentGroup (and UpdateDeploymentGroup) members that make up a group's definition."""
_CODEDEPLOY_TRIGGER_EVENTS = frozenset(str(e) for e in TriggerEvent) - {str(e) for e in AGENT_EVENTS}
"""CodeDeploy's TriggerEventType (deploybot's agent-health events are the config file's to subscribe to)."""
_STYLES = {"IN_PLACE": DeploymentType.IN_PLACE, "BLUE_GREEN": DeploymentType.BLUE_GREEN}
_OPTIONS = ("WITH_TRAFFIC_CONTROL", "WITHOUT_TRAFFIC_CONTROL")
_READY_ACTIONS = ("CONTINUE_DEPLOYMENT", "STOP_DEPLOYMENT")
_TERMINATE_ACTIONS = ("TERMINATE", "KEEP_ALIVE")
_GREEN_FLEET = ("DISCOVER_EXISTING", "COPY_AUTO_SCALING_GROUP")
_OUTDATED = ("UPDATE", "IGNORE")
_MAX_WAIT_MINUTES = 2880


class GroupDefinitionInvalid(EngineError):
    """A definition deploybot cannot run: ``member`` is the request member at fault, ``reason`` why; ``limit`` is
    True when it holds more items than allowed (the API has its own error names for those)."""

    def __init__(self, member: str, reason: str, *, limit: bool = False) -> None:
        self.member, self.reason, self.limit = member, reason, limit
        super().__init__(f"{member}: {reason}")


def group_definition(request: Mapping[str, Any]) -> dict[str, Any]:
    """The definition members of a CreateDeploymentGroup/UpdateDeploymentGroup request (None means "not given")."""
    return {member: request[member] for member in DEFINITION_MEMBERS if request.get(member) is not None}


def updated_definition(current: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """UpdateDeploymentGroup: the members the request names replace the current ones; the rest stay."""
    return {**current, **group_definition(request)}


def build_group(
    application: str,
    platform: Platform,
    name: str,
    definition: Mapping[str, Any],
    configs: Mapping[str, DeploymentConfig],
) -> DeploymentGroup:
    """The group ``name`` of ``application`` (a ``platform`` application) that ``definition`` describes; its
    environment is its name. ``configs``: the custom configurations (the file's and the API's). Raises
    GroupDefinitionInvalid, or UnknownDeploymentConfig for a configuration that does not exist."""
    if not GROUP_NAME.match(name):
        raise GroupDefinitionInvalid("deploymentGroupName", f"{name!r}: use 1-63 letters, digits, '.', '_' or '-'")
    if platform is Platform.ECS:
        raise GroupDefinitionInvalid(
            "ecsServices", "ECS deployment groups are declared in the config file (cluster, service, listeners)"
        )
    if definition.get("ecsServices"):
        raise GroupDefinitionInvalid("ecsServices", f"a {platform} group has no ECS services")
    if definition.get("autoScalingGroups"):
        raise GroupDefinitionInvalid(
            "autoScalingGroups",
            "deploybot does not target Auto Scaling groups: select their instances by ec2TagFilters",
        )
    config_name = _string(definition, "deploymentConfigName") or default_config_name(platform)
    try:
        config_for_group(config_name, platform, configs)
    except IncompatibleDeploymentConfig:
        needs = "minimum healthy hosts" if platform is Platform.SERVER else f"{platform} traffic routing"
        raise GroupDefinitionInvalid(
            "deploymentConfigName", f"{config_name!r} cannot deploy a {platform} group: it has no {needs}"
        ) from None
    kind = _deployment_style(definition, platform)
    onprem = _selector(definition, "onPremisesInstanceTagFilters", "onPremisesTagSet", "onPremisesTagSetList")
    ec2 = _selector(definition, "ec2TagFilters", "ec2TagSet", "ec2TagSetList")
    if onprem and ec2:
        raise GroupDefinitionInvalid(
            "ec2TagFilters", "a group selects on-premises instances or EC2 instances, not both"
        )
    if platform is not Platform.SERVER and (onprem or ec2):
        member = "onPremisesInstanceTagFilters" if onprem else "ec2TagFilters"
        raise GroupDefinitionInvalid(member, f"a {platform} group has no instances to select")
    _check_role(definition)
    _check_load_balancer(definition)
    _check_choice(definition, "outdatedInstancesStrategy", _OUTDATED)
    if "terminationHookEnabled" in definition and not isinstance(definition["terminationHookEnabled"], bool):
        raise GroupDefinitionInvalid("terminationHookEnabled", "expected true or false")
    return DeploymentGroup(
        name=name,
        application=application,
        environment=name,
        platform=platform,
        deployment_type=kind,
        deployment_config=config_name,
        traffic_config=None if platform is Platform.SERVER else config_name,
        target_tags=onprem,
        alarms=_alarms(definition),
        auto_rollback=_auto_rollback(definition),
        blue_green=_blue_green(definition),
        triggers=_triggers(definition),
        extra={"ec2_tags": ec2} if ec2 else {},
    )


# -- the members, one by one ---------------------------------------------------------------------------------------


def _string(definition: Mapping[str, Any], member: str) -> str | None:
    value = definition.get(member)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise GroupDefinitionInvalid(member, "expected a non-empty string")
    return value


def _mapping(definition: Mapping[str, Any], member: str) -> Mapping[str, Any]:
    value = definition.get(member)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise GroupDefinitionInvalid(member, "expected a structure")
    return value


def _list(value: object, member: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise GroupDefinitionInvalid(member, "expected a list")
    return value


def _check_choice(definition: Mapping[str, Any], member: str, choices: tuple[str, ...]) -> None:
    value = definition.get(member)
    if value is not None and value not in choices:
        raise GroupDefinitionInvalid(member, f"{value!r} is not one of {', '.join(choices)}")


def _deployment_style(definition: Mapping[str, Any], platform: Platform) -> DeploymentType:
    style = _mapping(definition, "deploymentStyle")
    lambda_ = platform is Platform.LAMBDA
    kind = style.get("deploymentType", "BLUE_GREEN" if lambda_ else "IN_PLACE")
    option = style.get("deploymentOption", "WITH_TRAFFIC_CONTROL" if lambda_ else "WITHOUT_TRAFFIC_CONTROL")
    if kind not in _STYLES or option not in _OPTIONS:
        raise GroupDefinitionInvalid(
            "deploymentStyle", f"deploymentType IN_PLACE|BLUE_GREEN and deploymentOption {'|'.join(_OPTIONS)}"
        )
    if lambda_ and (kind, option) != ("BLUE_GREEN", "WITH_TRAFFIC_CONTROL"):
        raise GroupDefinitionInvalid("deploymentStyle", "a Lambda group is BLUE_GREEN WITH_TRAFFIC_CONTROL")
    if not lambda_ and (kind, option) != ("IN_PLACE", "WITHOUT_TRAFFIC_CONTROL"):
        raise GroupDefinitionInvalid(
            "deploymentStyle",
            "a Server group made through the API deploys IN_PLACE WITHOUT_TRAFFIC_CONTROL; declare load-balanced "
            "and blue/green groups in the config file, whose routers start with the server",
        )
    return _STYLES[kind]


def _selector(definition: Mapping[str, Any], filters_member: str, set_member: str, set_list: str) -> dict[str, str]:
    """The tags an instance must all carry, from ``filters_member`` (one filter) or ``set_member`` (lists of one
    filter each); see the module docstring."""
    filters = _list(definition.get(filters_member), filters_member)
    tag_set = _mapping(definition, set_member)
    lists = _list(tag_set.get(set_list), f"{set_member}.{set_list}")
    if filters and lists:
        raise GroupDefinitionInvalid(set_member, f"give {filters_member} or {set_member}, not both")
    if len(filters) > 1:
        raise GroupDefinitionInvalid(
            filters_member,
            f"several filters select instances carrying any of them; deploybot selects instances carrying all the "
            f"tags of one selector: give one filter, or {set_member} with one filter in each list",
        )
    if len(lists) > MAX_TAG_SETS:
        raise GroupDefinitionInvalid(set_member, f"at most {MAX_TAG_SETS} tag lists, got {len(lists)}", limit=True)
    selector: dict[str, str] = {}
    chosen = [(filters, filters_member)] if filters else []
    chosen += [(_list(one, f"{set_member}.{set_list}"), f"{set_member}.{set_list}") for one in lists]
    for group, member in chosen:
        if len(group) != 1:
            raise GroupDefinitionInvalid(member, "each tag list holds exactly one filter (every list must match)")
        key, value = _filter(group[0], member)
        if key in selector:
            raise GroupDefinitionInvalid(member, f"tag {key!r} is given twice")
        selector[key] = value
    return selector


def _filter(tag_filter: object, member: str) -> tuple[str, str]:
    if not isinstance(tag_filter, Mapping):
        raise GroupDefinitionInvalid(member, f"{tag_filter!r} is not a tag filter")
    key, value, kind = tag_filter.get("Key"), tag_filter.get("Value"), tag_filter.get("Type", "KEY_AND_VALUE")
    if kind != "KEY_AND_VALUE" or not isinstance(key, str) or not key or not isinstance(value, str):
        raise GroupDefinitionInvalid(
            member, f"{dict(tag_filter)!r}: deploybot selects by KEY_AND_VALUE filters with a Key and a Value"
        )
    return key, value


def _check_role(definition: Mapping[str, Any]) -> None:
    role = _string(definition, "serviceRoleArn")
    if role is not None and not role.startswith("arn:"):
        raise GroupDefinitionInvalid("serviceRoleArn", f"{role!r} is not an IAM role ARN")


def _check_load_balancer(definition: Mapping[str, Any]) -> None:
    info = _mapping(definition, "loadBalancerInfo")
    for member in ("elbInfoList", "targetGroupInfoList"):
        for item in _list(info.get(member), f"loadBalancerInfo.{member}"):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise GroupDefinitionInvalid("loadBalancerInfo", f"each of {member} needs a name")
    for pair in _list(info.get("targetGroupPairInfoList"), "loadBalancerInfo.targetGroupPairInfoList"):
        if not isinstance(pair, Mapping) or not isinstance(pair.get("targetGroups"), list):
            raise GroupDefinitionInvalid("loadBalancerInfo", "each of targetGroupPairInfoList needs targetGroups")


def _alarms(definition: Mapping[str, Any]) -> AlarmConfiguration:
    config = _mapping(definition, "alarmConfiguration")
    listed = _list(config.get("alarms"), "alarmConfiguration.alarms")
    if len(listed) > MAX_ALARMS:
        raise GroupDefinitionInvalid(
            "alarmConfiguration", f"at most {MAX_ALARMS} alarms, got {len(listed)}", limit=True
        )
    names: list[str] = []
    for alarm in listed:
        name = alarm.get("name") if isinstance(alarm, Mapping) else None
        if not isinstance(name, str) or not name:
            raise GroupDefinitionInvalid("alarmConfiguration", f"{alarm!r} is not an alarm with a name")
        if name in names:
            raise GroupDefinitionInvalid("alarmConfiguration", f"alarm {name!r} is listed twice")
        names.append(name)
    flags = {flag: config.get(flag, False) for flag in ("enabled", "ignorePollAlarmFailure")}
    if not all(isinstance(value, bool) for value in flags.values()):
        raise GroupDefinitionInvalid("alarmConfiguration", "enabled and ignorePollAlarmFailure are true or false")
    if flags["enabled"] and not names:
        raise GroupDefinitionInvalid("alarmConfiguration", "enabled alarms need at least one alarm")
    return AlarmConfiguration(
        enabled=flags["enabled"],
        ignore_poll_alarm_failure=flags["ignorePollAlarmFailure"],
        alarms=tuple({"name": name, "type": "cloudwatch"} for name in names),
    )


def _auto_rollback(definition: Mapping[str, Any]) -> AutoRollback:
    config = _mapping(definition, "autoRollbackConfiguration")
    enabled = config.get("enabled", False)
    events = _list(config.get("events"), "autoRollbackConfiguration.events")
    known = {str(e) for e in AutoRollbackEvent}
    if not isinstance(enabled, bool) or any(e not in known for e in events):
        raise GroupDefinitionInvalid(
            "autoRollbackConfiguration", f"enabled true|false and events among {', '.join(sorted(known))}"
        )
    if enabled and not events:
        raise GroupDefinitionInvalid("autoRollbackConfiguration", "automatic rollback needs at least one event")
    return AutoRollback(enabled, frozenset(AutoRollbackEvent(e) for e in events))


def _blue_green(definition: Mapping[str, Any]) -> BlueGreenOptions:
    config = _mapping(definition, "blueGreenDeploymentConfiguration")
    member = "blueGreenDeploymentConfiguration"
    ready = config.get("deploymentReadyOption") or {}
    terminate = config.get("terminateBlueInstancesOnDeploymentSuccess") or {}
    green = config.get("greenFleetProvisioningOption") or {}
    if not all(isinstance(part, Mapping) for part in (ready, terminate, green)):
        raise GroupDefinitionInvalid(member, "its options are structures")
    for part, key, choices in (
        (ready, "actionOnTimeout", _READY_ACTIONS),
        (terminate, "action", _TERMINATE_ACTIONS),
        (green, "action", _GREEN_FLEET),
    ):
        if part.get(key) is not None and part[key] not in choices:
            raise GroupDefinitionInvalid(member, f"{key} {part[key]!r} is not one of {', '.join(choices)}")
    waits = (ready.get("waitTimeInMinutes", 0), terminate.get("terminationWaitTimeInMinutes", 0))
    if not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= _MAX_WAIT_MINUTES for w in waits):
        raise GroupDefinitionInvalid(member, f"wait times are whole minutes from 0 to {_MAX_WAIT_MINUTES}")
    return BlueGreenOptions(
        ready_action=str(ready.get("actionOnTimeout") or "CONTINUE_DEPLOYMENT"),
        ready_wait_minutes=waits[0],
        terminate_action=str(terminate.get("action") or "KEEP_ALIVE"),
        termination_wait_minutes=waits[1],
    )


def _triggers(definition: Mapping[str, Any]) -> tuple[Trigger, ...]:
    listed = _list(definition.get("triggerConfigurations"), "triggerConfigurations")
    if len(listed) > MAX_TRIGGERS:
        raise GroupDefinitionInvalid(
            "triggerConfigurations", f"at most {MAX_TRIGGERS} triggers, got {len(listed)}", limit=True
        )
    triggers: list[Trigger] = []
    for config in listed:
        if not isinstance(config, Mapping):
            raise GroupDefinitionInvalid("triggerConfigurations", f"{config!r} is not a trigger")
        name, arn = config.get("triggerName"), config.get("triggerTargetArn")
        events = _list(config.get("triggerEvents"), "triggerConfigurations.triggerEvents")
        if not isinstance(name, str) or not TRIGGER_NAME.match(name):
            raise GroupDefinitionInvalid("triggerConfigurations", f"triggerName {name!r}: 1-100 letters, digits, ._-")
        if any(t.name == name for t in triggers):
            raise GroupDefinitionInvalid("triggerConfigurations", f"trigger {name!r} is listed twice")
        if not isinstance(arn, str) or not SNS_TOPIC_ARN.match(arn):
            raise GroupDefinitionInvalid("triggerConfigurations", f"{name}: triggerTargetArn {arn!r} is no SNS topic")
        if not events or any(e not in _CODEDEPLOY_TRIGGER_EVENTS for e in events):
            raise GroupDefinitionInvalid(
                "triggerConfigurations", f"{name}: triggerEvents among {', '.join(sorted(_CODEDEPLOY_TRIGGER_EVENTS))}"
            )
        triggers.append(Trigger(name, frozenset(TriggerEvent(e) for e in events), TriggerTarget(TargetKind.SNS, arn)))
    return tuple(triggers)
