"""CloudWatch alarm checks against moto in server mode, through the AlarmSet that build_alarms makes for a group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from botocore.config import Config

from engine.adapters.alarms import AlarmSet
from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.cloudwatch import CloudWatchAlarms, cloudwatch_checks
from engine.adapters.clock import SystemClock
from engine.adapters.haproxy.stack import build_alarms
from engine.core.config.model import AlarmConfiguration, AwsAccount, DeploymentGroup
from engine.core.errors import AdapterError
from engine.core.model import DeploymentType, Platform
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401


def group(*alarms: dict[str, Any]) -> DeploymentGroup:
    return DeploymentGroup(
        name="api-prod",
        application="api",
        environment="prod",
        platform=Platform.SERVER,
        deployment_type=DeploymentType.IN_PLACE,
        deployment_config="CodeDeployDefault.OneAtATime",
        traffic_config=None,
        alarms=AlarmConfiguration(enabled=True, alarms=tuple(alarms)),
    )


def cloudwatch(name: str) -> dict[str, Any]:
    return {"name": name, "type": "cloudwatch"}


async def put_alarms(clients: AwsClients, *names: str) -> None:
    cw = await clients.get("cloudwatch")
    for name in names:
        await cw.put_metric_alarm(
            AlarmName=name,
            MetricName="HTTPCode_Target_5XX_Count",
            Namespace="AWS/ApplicationELB",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=10,
            ComparisonOperator="GreaterThanThreshold",
        )


def count_describe_alarms(client: Any) -> list[str]:
    """botocore's own event hooks (not a patch): one entry per DescribeAlarms sent."""
    calls: list[str] = []
    client.meta.events.register("before-call.cloudwatch.DescribeAlarms", lambda **_: calls.append("call"))
    return calls


def alarm_set(clients: AwsClients | None, *alarms: dict[str, Any]) -> tuple[AlarmSet, Sequence[dict[str, Any]]]:
    built = build_alarms(group(*alarms), ["web-1"], clock=SystemClock(), aws=clients)
    assert built is not None
    return built, alarms


async def test_an_alarm_in_alarm_fires_in_one_call_for_all(aws: AwsClients) -> None:  # noqa: F811
    await put_alarms(aws, "api-5xx", "api-latency", "api-errors")
    cw = await aws.get("cloudwatch")
    calls = count_describe_alarms(cw)
    alarms, configured = alarm_set(aws, *(cloudwatch(n) for n in ("api-5xx", "api-latency", "api-errors")))

    assert await alarms.firing(configured) == ()  # moto: a new alarm starts OK
    await cw.set_alarm_state(AlarmName="api-5xx", StateValue="ALARM", StateReason="5xx above 10")
    assert await alarms.firing(configured) == ("api-5xx",)
    assert alarms.details["api-5xx"] == ("cloudwatch:api-5xx in ALARM: 5xx above 10",)
    assert len(calls) == 2, "one DescribeAlarms per poll, whatever the number of alarms"

    await cw.set_alarm_state(AlarmName="api-5xx", StateValue="OK", StateReason="back")
    await cw.set_alarm_state(AlarmName="api-latency", StateValue="INSUFFICIENT_DATA", StateReason="no data")
    assert await alarms.firing(configured) == ()  # only ALARM fires


async def test_an_unknown_alarm_name_cannot_be_read(aws: AwsClients) -> None:  # noqa: F811
    await put_alarms(aws, "api-5xx")
    alarms, configured = alarm_set(aws, cloudwatch("api-5xx"), cloudwatch("api-typo"))
    with pytest.raises(AdapterError, match="api-typo: cloudwatch: no alarm named 'api-typo'"):
        await alarms.firing(configured)

    # A firing alarm still wins over one that cannot be read (AlarmSet's rule).
    await (await aws.get("cloudwatch")).set_alarm_state(AlarmName="api-5xx", StateValue="ALARM", StateReason="x")
    assert await alarms.firing(configured) == ("api-5xx",)


async def test_a_failed_call_is_an_adapter_error(aws_env: None) -> None:  # noqa: F811
    clients = AwsClients(
        AwsAccount("broken", region=REGION, endpoint_url="http://127.0.0.1:9"),
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    try:
        checks = cloudwatch_checks(clients, ["api-5xx"])
        with pytest.raises(AdapterError, match=r"^cloudwatch: "):
            await checks["api-5xx"].firing()
    finally:
        await clients.close()


async def test_without_aws_clients_cloudwatch_alarms_are_unreadable() -> None:
    alarms, configured = alarm_set(None, cloudwatch("api-5xx"), {"name": "home", "type": "http", "url": "http://x"})
    assert set(alarms.checks) == {"home"}
    with pytest.raises(AdapterError, match="api-5xx: no such alarm"):
        await alarms.firing(configured[:1])


def test_a_poller_knows_only_its_alarms(aws: AwsClients) -> None:  # noqa: F811
    poller = CloudWatchAlarms(aws, ["a", "b", "a"])
    assert poller.names == ("a", "b")
    with pytest.raises(ValueError, match="'c' is not one"):
        poller.check("c")
    assert cloudwatch_checks(aws, []) == {}
