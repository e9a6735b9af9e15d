"""CreateDeploymentGroup's request → a DeploymentGroup (engine/core/api_groups.py): what each member becomes, and
each refusal naming the member at fault."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.api_groups import GroupDefinitionInvalid, build_group, group_definition, updated_definition
from engine.core.configs import DeploymentConfig, MinimumHealthyHosts, MinimumHealthyHostsType
from engine.core.errors import UnknownDeploymentConfig
from engine.core.model import AutoRollback, AutoRollbackEvent, DeploymentType, Platform
from engine.core.triggers import TargetKind, TriggerEvent

ROLE = {"serviceRoleArn": "arn:aws:iam::123456789012:role/codedeploy"}
TOPIC = "arn:aws:sns:us-east-1:123456789012:deploys"
TWO = DeploymentConfig("TwoAtATime", Platform.SERVER, MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 2))


def server(definition: dict[str, Any], name: str = "edge-staging") -> Any:
    return build_group("edge", Platform.SERVER, name, {**ROLE, **definition}, {"TwoAtATime": TWO})


def tag(key: str, value: str) -> dict[str, str]:
    return {"Key": key, "Value": value, "Type": "KEY_AND_VALUE"}


def test_a_minimal_server_group_deploys_in_place_with_the_platform_default() -> None:
    group = server({})
    assert (group.name, group.application, group.environment) == ("edge-staging", "edge", "edge-staging")
    assert (group.platform, group.deployment_type) == (Platform.SERVER, DeploymentType.IN_PLACE)
    assert (group.deployment_config, group.traffic_config) == ("CodeDeployDefault.OneAtATime", None)
    assert (group.hosts, dict(group.target_tags), dict(group.extra)) == ((), {}, {})


@pytest.mark.parametrize(
    ("definition", "target_tags", "ec2_tags"),
    [
        ({"onPremisesInstanceTagFilters": [tag("env", "staging")]}, {"env": "staging"}, {}),
        ({"onPremisesInstanceTagFilters": [{"Key": "env", "Value": "staging"}]}, {"env": "staging"}, {}),
        (
            {"onPremisesTagSet": {"onPremisesTagSetList": [[tag("env", "staging")], [tag("rack", "r7")]]}},
            {"env": "staging", "rack": "r7"},
            {},
        ),
        ({"ec2TagFilters": [tag("role", "web")]}, {}, {"role": "web"}),
        ({"ec2TagSet": {"ec2TagSetList": [[tag("role", "web")], [tag("az", "a")]]}}, {}, {"role": "web", "az": "a"}),
    ],
)
def test_tag_selectors(definition: dict[str, Any], target_tags: dict[str, str], ec2_tags: dict[str, str]) -> None:
    group = server(definition)
    assert dict(group.target_tags) == target_tags
    assert dict(group.extra.get("ec2_tags") or {}) == ec2_tags


def test_every_member_deploybot_runs_becomes_the_group() -> None:
    group = server(
        {
            "deploymentConfigName": "TwoAtATime",
            "autoRollbackConfiguration": {
                "enabled": True,
                "events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"],
            },
            "alarmConfiguration": {"enabled": True, "ignorePollAlarmFailure": True, "alarms": [{"name": "5xx"}]},
            "triggerConfigurations": [
                {"triggerName": "ops", "triggerTargetArn": TOPIC, "triggerEvents": ["DeploymentFailure"]}
            ],
            "blueGreenDeploymentConfiguration": {
                "terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE", "terminationWaitTimeInMinutes": 5}
            },
        }
    )
    assert group.deployment_config == "TwoAtATime"
    assert group.auto_rollback == AutoRollback(
        True, frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE, AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM})
    )
    assert (group.alarms.enabled, group.alarms.ignore_poll_alarm_failure, group.alarms.names) == (True, True, ("5xx",))
    (trigger,) = group.triggers
    assert (trigger.name, trigger.events) == ("ops", frozenset({TriggerEvent.DEPLOYMENT_FAILURE}))
    assert (trigger.target.kind, trigger.target.address) == (TargetKind.SNS, TOPIC)
    assert (group.blue_green.terminate_action, group.blue_green.termination_wait_minutes) == ("TERMINATE", 5)


def test_a_lambda_group_is_blue_green_and_shifts_by_its_configuration() -> None:
    group = build_group("fn", Platform.LAMBDA, "fn-live", ROLE, {})
    assert (group.deployment_type, group.deployment_config) == (
        DeploymentType.BLUE_GREEN,
        "CodeDeployDefault.LambdaAllAtOnce",
    )
    assert group.traffic_config == group.deployment_config


@pytest.mark.parametrize(
    ("definition", "member", "limit"),
    [
        ({"onPremisesInstanceTagFilters": [tag("env", "a"), tag("env", "b")]}, "onPremisesInstanceTagFilters", False),
        ({"onPremisesInstanceTagFilters": [{"Key": "env", "Type": "KEY_ONLY"}]}, "onPremisesInstanceTagFilters", False),
        (
            {"onPremisesTagSet": {"onPremisesTagSetList": [[tag("a", "1"), tag("b", "2")]]}},
            "onPremisesTagSet.onPremisesTagSetList",
            False,
        ),
        (
            {"onPremisesTagSet": {"onPremisesTagSetList": [[tag(k, "1")] for k in "abcd"]}},
            "onPremisesTagSet",
            True,
        ),
        (
            {
                "onPremisesInstanceTagFilters": [tag("a", "1")],
                "onPremisesTagSet": {"onPremisesTagSetList": [[tag("b", "2")]]},
            },
            "onPremisesTagSet",
            False,
        ),
        ({"onPremisesInstanceTagFilters": [tag("a", "1")], "ec2TagFilters": [tag("b", "2")]}, "ec2TagFilters", False),
        ({"autoScalingGroups": ["web-asg"]}, "autoScalingGroups", False),
        (
            {"deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"}},
            "deploymentStyle",
            False,
        ),
        ({"deploymentStyle": {"deploymentType": "SIDEWAYS"}}, "deploymentStyle", False),
        ({"deploymentConfigName": "CodeDeployDefault.LambdaAllAtOnce"}, "deploymentConfigName", False),
        ({"serviceRoleArn": "codedeploy-role"}, "serviceRoleArn", False),
        ({"alarmConfiguration": {"enabled": True, "alarms": []}}, "alarmConfiguration", False),
        ({"alarmConfiguration": {"alarms": [{"name": f"a{i}"} for i in range(11)]}}, "alarmConfiguration", True),
        ({"autoRollbackConfiguration": {"enabled": True, "events": ["WHENEVER"]}}, "autoRollbackConfiguration", False),
        (
            {
                "triggerConfigurations": [
                    {"triggerName": "t", "triggerTargetArn": "https://x", "triggerEvents": ["DeploymentStart"]}
                ]
            },
            "triggerConfigurations",
            False,
        ),
        (
            {
                "triggerConfigurations": [
                    {"triggerName": "t", "triggerTargetArn": TOPIC, "triggerEvents": ["InstanceAgentOffline"]}
                ]
            },
            "triggerConfigurations",
            False,
        ),
        (
            {
                "triggerConfigurations": [
                    {"triggerName": f"t{i}", "triggerTargetArn": TOPIC, "triggerEvents": ["DeploymentStart"]}
                    for i in range(11)
                ]
            },
            "triggerConfigurations",
            True,
        ),
        (
            {"blueGreenDeploymentConfiguration": {"deploymentReadyOption": {"actionOnTimeout": "MAYBE"}}},
            "blueGreenDeploymentConfiguration",
            False,
        ),
        ({"loadBalancerInfo": {"targetGroupInfoList": [{"arn": "x"}]}}, "loadBalancerInfo", False),
        ({"outdatedInstancesStrategy": "SOMETIMES"}, "outdatedInstancesStrategy", False),
        ({"ecsServices": [{"serviceName": "s", "clusterName": "c"}]}, "ecsServices", False),
    ],
)
def test_refusals_name_the_member(definition: dict[str, Any], member: str, limit: bool) -> None:
    with pytest.raises(GroupDefinitionInvalid) as info:
        server(definition)
    assert (info.value.member, info.value.limit) == (member, limit)
    assert info.value.reason


@pytest.mark.parametrize(
    ("platform", "definition", "member"),
    [
        (Platform.LAMBDA, {"onPremisesInstanceTagFilters": [tag("a", "1")]}, "onPremisesInstanceTagFilters"),
        (Platform.LAMBDA, {"deploymentStyle": {"deploymentType": "IN_PLACE"}}, "deploymentStyle"),
        (Platform.ECS, {}, "ecsServices"),
    ],
)
def test_refusals_by_platform(platform: Platform, definition: dict[str, Any], member: str) -> None:
    with pytest.raises(GroupDefinitionInvalid) as info:
        build_group("app", platform, "app-live", {**ROLE, **definition}, {})
    assert info.value.member == member


def test_a_bad_group_name_and_an_unknown_configuration() -> None:
    with pytest.raises(GroupDefinitionInvalid) as info:
        server({}, name="no spaces")
    assert info.value.member == "deploymentGroupName"
    with pytest.raises(UnknownDeploymentConfig):
        server({"deploymentConfigName": "ThreeAtATime"})


def test_the_definition_keeps_the_models_members_and_an_update_replaces_those_it_names() -> None:
    request = {"applicationName": "edge", "deploymentGroupName": "g", "tags": [], **ROLE, "ec2TagFilters": None}
    assert group_definition(request) == ROLE
    current = {**ROLE, "onPremisesInstanceTagFilters": [tag("env", "a")], "deploymentConfigName": "TwoAtATime"}
    update = {"currentDeploymentGroupName": "g", "onPremisesInstanceTagFilters": [tag("env", "b")]}
    assert updated_definition(current, update) == {**current, "onPremisesInstanceTagFilters": [tag("env", "b")]}
