"""End to end on the AWS platforms: a real ``deploybot serve`` process whose `aws` account points at moto in server
mode, driven through its API and CLI, with what moto holds read back while the deployment runs.

Covers issue 8's list: a Lambda linear deployment stepping the alias weights in order and a CloudWatch alarm set to
ALARM reverting it; a hook that never calls back failing at its timeout; hooks answered through the CLI and the API;
an ECS canary moving listener weights and deleting the old task set.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.aws.accounts import AwsClients
from tests.aws_fixtures import (
    EcsSetup,
    LambdaSetup,
    alias_now,
    create_ecs_service,
    create_hook_function,
    create_lambda_function,
    lambda_appspec,
    listener_weights_now,
    task_sets_now,
)
from tests.e2e_support import DeploybotServer
from tests.moto_support import aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

FAST = 0.02  # minutes between traffic steps: 1.2 s


def lambda_config(endpoint: str, *, alarms: bool = False, hook_timeout_minutes: float = 0.5) -> str:
    alarm_block = (
        "        alarms: {enabled: true, poll_seconds: 0.2, alarms: [api-errors]}\n"
        "        auto_rollback: {enabled: true, events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]}\n"
        if alarms
        else ""
    )
    return (
        "server: {data_dir: var, revision_roots: [..]}\n"  # the test writes its revisions beside the server dir
        f"aws:\n  default: {{region: us-east-1, endpoint_url: '{endpoint}'}}\n"
        "deployment_configs:\n"
        "  Linear25Fast:\n"
        "    compute_platform: lambda\n"
        f"    traffic_routing: {{type: TimeBasedLinear, percentage: 25, interval_minutes: {FAST}}}\n"
        "applications:\n"
        "  api:\n"
        "    platform: lambda\n"
        "    environments: [prod]\n"
        "    deployment_groups:\n"
        "      prod:\n"
        "        deployment_config: Linear25Fast\n"
        f"        hook_timeout_minutes: {hook_timeout_minutes}\n" + alarm_block
    )


@pytest.fixture
async def server_for(tmp_path: Path, aws_env: None) -> AsyncIterator[Callable[[str], Awaitable[DeploybotServer]]]:  # noqa: F811
    servers: list[DeploybotServer] = []

    async def start(config_text: str) -> DeploybotServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = DeploybotServer(workdir, config_text)
        servers.append(server)
        await asyncio.to_thread(server.start)
        return server

    yield start
    for server in servers:
        await asyncio.to_thread(server.cleanup)


class Sampler:
    """Reads a value from moto every 50 ms while a deployment runs, keeping each distinct value in order."""

    def __init__(self, read: Callable[[], Awaitable[Any]]) -> None:
        self.read = read
        self.seen: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            value = await self.read()
            if not self.seen or self.seen[-1] != value:
                self.seen.append(value)
            await asyncio.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._task = asyncio.ensure_future(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def alias_reader(aws: AwsClients, setup: LambdaSetup) -> Callable[[], Awaitable[tuple[str, float]]]:  # noqa: F811
    async def read() -> tuple[str, float]:
        version, weights = await alias_now(aws, setup)
        return version, round(weights.get(setup.target_version, 0.0), 2)

    return read


async def wait_for_hook(server: DeploybotServer, deployment_id: str, event: str) -> dict[str, Any]:
    for _ in range(400):
        status, body = await asyncio.to_thread(
            server.api, "GET", f"/api/v1/lifecycle-hooks?deployment_id={deployment_id}"
        )
        assert status == 200, body
        waiting = [e for e in body["executions"] if e["event"] == event]
        if waiting:
            return dict(waiting[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event} hook execution of {deployment_id} appeared")


def cli(server: DeploybotServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEPLOYBOT_TOKEN": (server.data_dir / "api-token").read_text().strip()}
    argv = [sys.executable, "-m", "bot", *args, "--server", server.url]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


# -- Lambda ---------------------------------------------------------------------------------------------------


async def test_lambda_linear_steps_the_alias_in_order_with_hooks_answered_by_cli_and_api(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
    server_for: Callable[[str], Awaitable[DeploybotServer]],
) -> None:
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "api-pre")
    await create_hook_function(aws, "api-post")
    server = await server_for(lambda_config(moto_reset))
    spec = lambda_appspec(tmp_path, setup, {"BeforeAllowTraffic": "api-pre", "AfterAllowTraffic": "api-post"})
    with Sampler(alias_reader(aws, setup)) as sampler:
        deployment = await asyncio.to_thread(server.deploy, "api", "prod", spec)
        before = await wait_for_hook(server, deployment["id"], "BeforeAllowTraffic")
        listed = await asyncio.to_thread(cli, server, "hooks", "--deployment", deployment["id"])
        assert before["execution_id"] in listed.stdout and "api-pre" in listed.stdout, listed
        assert sampler.seen == [("1", 0.0)]  # nothing moves before BeforeAllowTraffic succeeds
        answered = await asyncio.to_thread(cli, server, "hook-status", before["execution_id"], "Succeeded")
        assert answered.returncode == 0, answered.stderr
        after = await wait_for_hook(server, deployment["id"], "AfterAllowTraffic")
        status, body = await asyncio.to_thread(
            server.api, "PUT", f"/api/v1/lifecycle-hooks/{after['execution_id']}", {"status": "Succeeded"}
        )
        assert status == 200, body
        final = await asyncio.to_thread(server.wait_final, deployment["id"])
        await asyncio.sleep(0.1)
    assert final["status"] == "Succeeded", final
    assert sampler.seen == [("1", 0.0), ("1", 0.25), ("1", 0.5), ("1", 0.75), ("2", 0.0)]
    target = final["targets"][0]
    assert target["name"] == "api:live"
    assert {e["name"]: e["status"] for e in target["events"]} == {
        "BeforeAllowTraffic": "Succeeded",
        "AfterAllowTraffic": "Succeeded",
    }
    # A late second answer is refused (the execution is no longer waiting).
    status, body = await asyncio.to_thread(
        server.api, "PUT", f"/api/v1/lifecycle-hooks/{after['execution_id']}", {"status": "Failed"}
    )
    assert status == 404, body


async def test_a_cloudwatch_alarm_in_alarm_reverts_the_alias_mid_shift(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
    server_for: Callable[[str], Awaitable[DeploybotServer]],
) -> None:
    setup = await create_lambda_function(aws)
    cloudwatch = await aws.get("cloudwatch")
    await cloudwatch.put_metric_alarm(
        AlarmName="api-errors",
        MetricName="Errors",
        Namespace="AWS/Lambda",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    server = await server_for(lambda_config(moto_reset, alarms=True))
    with Sampler(alias_reader(aws, setup)) as sampler:
        deployment = await asyncio.to_thread(server.deploy, "api", "prod", lambda_appspec(tmp_path, setup))
        for _ in range(200):
            if ("1", 0.25) in sampler.seen:
                break
            await asyncio.sleep(0.05)
        await cloudwatch.set_alarm_state(AlarmName="api-errors", StateValue="ALARM", StateReason="test")
        final = await asyncio.to_thread(server.wait_final, deployment["id"])
        await asyncio.sleep(0.2)
    assert final["status"] in ("Stopped", "Failed"), final
    assert "api-errors" in (final.get("error", {}) or {}).get("message", str(final)), final
    assert sampler.seen[:2] == [("1", 0.0), ("1", 0.25)]
    assert sampler.seen[-1] == ("1", 0.0), sampler.seen  # back on CurrentVersion, no weights
    assert ("2", 0.0) not in sampler.seen
    status, log = await asyncio.to_thread(server.api, "GET", f"/api/v1/deployments/{deployment['id']}/log")
    assert status == 200
    assert "rollback.rerouted" in [entry["kind"] for entry in log], log


async def test_a_hook_that_never_calls_back_fails_at_its_timeout_and_nothing_moves(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
    server_for: Callable[[str], Awaitable[DeploybotServer]],
) -> None:
    setup = await create_lambda_function(aws)
    await create_hook_function(aws, "api-silent")
    server = await server_for(lambda_config(moto_reset, hook_timeout_minutes=0.03))  # 1.8 s
    spec = lambda_appspec(tmp_path, setup, {"BeforeAllowTraffic": "api-silent"})
    deployment = await asyncio.to_thread(server.deploy, "api", "prod", spec)
    final = await asyncio.to_thread(server.wait_final, deployment["id"])
    assert final["status"] == "Failed", final
    failed = next(e for e in final["targets"][0]["events"] if e["name"] == "BeforeAllowTraffic")
    assert failed["status"] == "Failed"
    assert "api-silent" in failed["message"], failed
    assert await alias_now(aws, setup) == ("1", {})


# -- ECS ------------------------------------------------------------------------------------------------------


def ecs_config(endpoint: str, setup: EcsSetup) -> str:
    return (
        "server: {data_dir: var, revision_roots: [..]}\n"  # the test writes its revisions beside the server dir
        f"aws:\n  default: {{region: us-east-1, endpoint_url: '{endpoint}'}}\n"
        "deployment_configs:\n"
        "  Canary10Fast:\n"
        "    compute_platform: ecs\n"
        f"    traffic_routing: {{type: TimeBasedCanary, percentage: 10, interval_minutes: {FAST}}}\n"
        "applications:\n"
        "  shop:\n"
        "    platform: ecs\n"
        "    environments: [prod]\n"
        "    deployment_groups:\n"
        "      prod:\n"
        "        deployment_config: Canary10Fast\n"
        f"        cluster: {setup.cluster}\n"
        f"        service: {setup.service}\n"
        "        load_balancer:\n"
        "          type: elbv2\n"
        f"          listener_arn: {setup.listener_arn}\n"
        f"          test_listener_arn: {setup.test_listener_arn}\n"
        f"          target_groups: [{setup.target_groups[0]}, {setup.target_groups[1]}]\n"
    )


def ecs_appspec(tmp_path: Path, setup: EcsSetup) -> Path:
    path = tmp_path / "appspec-ecs.yml"
    path.write_text(
        "version: 0.0\n"
        "Resources:\n"
        "  - TargetService:\n"
        "      Type: AWS::ECS::Service\n"
        "      Properties:\n"
        f'        TaskDefinition: "{setup.family}:2"\n'
        "        LoadBalancerInfo:\n"
        f'          ContainerName: "{setup.container_name}"\n'
        f"          ContainerPort: {setup.container_port}\n"
    )
    return path


async def test_ecs_canary_moves_listener_weights_and_deletes_the_original_task_set(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
    server_for: Callable[[str], Awaitable[DeploybotServer]],
) -> None:
    setup = await create_ecs_service(aws)
    blue, green = setup.target_groups
    server = await server_for(ecs_config(moto_reset, setup))

    async def weights() -> tuple[int, int]:
        now = await listener_weights_now(aws, setup.listener_arn)
        return now.get(blue, 0), now.get(green, 0)

    with Sampler(weights) as sampler:
        deployment = await asyncio.to_thread(server.deploy, "shop", "prod", ecs_appspec(tmp_path, setup))
        final = await asyncio.to_thread(server.wait_final, deployment["id"])
        await asyncio.sleep(0.2)
    assert final["status"] == "Succeeded", final
    assert sampler.seen == [(100, 0), (90, 10), (0, 100)]
    test_weights = await listener_weights_now(aws, setup.test_listener_arn)
    assert test_weights.get(green, 0) == 100, test_weights
    remaining = await task_sets_now(aws, setup)
    assert [(t["externalId"], t["status"]) for t in remaining] == [(deployment["id"], "PRIMARY")], remaining
    assert remaining[0]["taskDefinition"].endswith(f"{setup.family}:2")
    assert final["targets"][0]["name"] == setup.target


async def test_a_manual_rollback_shifts_the_alias_back_to_the_version_it_served_before(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
    server_for: Callable[[str], Awaitable[DeploybotServer]],
) -> None:
    setup = await create_lambda_function(aws)
    server = await server_for(lambda_config(moto_reset))
    # Setup only: promoted at its first step rather than shifted through the whole linear schedule.
    deployment = await asyncio.to_thread(server.deploy_promoted, "api", "prod", lambda_appspec(tmp_path, setup))
    assert deployment["status"] == "Succeeded", deployment
    assert await alias_now(aws, setup) == ("2", {})

    async def reversed_alias() -> tuple[str, float]:
        version, weights = await alias_now(aws, setup)
        return version, round(weights.get(setup.current_version, 0.0), 2)  # the weight now goes to version 1

    with Sampler(reversed_alias) as sampler:
        status, rollback = await asyncio.to_thread(
            server.api, "POST", "/api/v1/applications/api/environments/prod/rollback", {}
        )
        assert status in (200, 201), rollback
        final = await asyncio.to_thread(server.wait_final, rollback["id"])
        await asyncio.sleep(0.1)
    assert final["status"] == "Succeeded", final
    assert final["rollback"]["of"] == deployment["id"], final
    # The reversed AppSpec shifts from 2 back to 1 through the group's linear configuration.
    assert sampler.seen == [("2", 0.0), ("2", 0.25), ("2", 0.5), ("2", 0.75), ("1", 0.0)]
