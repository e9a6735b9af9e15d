"""The AWS reroutes, measured against moto in server mode on localhost: how long a rollback takes to put traffic
back when traffic lives in a Lambda alias or an ELBv2 listener (ECS and EC2 blue/green use the same listener call).

Real AWS adds its API latency (tens of milliseconds per call); what this shows is deploybot's own share.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
import urllib.request
import zipfile
from typing import Any

from moto.server import ThreadedMotoServer

from bench.figures import Figure, median, percentile
from bench.settings import Settings
from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.elbv2 import ElbGroup, ElbRouter
from engine.adapters.aws.lambda_ import LambdaAliasRouter
from engine.core.config.model import AwsAccount, Host

RUNS = 20
REROUTE_TARGET_MS = 1000.0  # "blue/green rollback is a traffic reroute in under a second"


def _package(version: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", f"def handler(e, c):\n    return {version}\n")
    return buffer.getvalue()


async def _lambda_router(clients: AwsClients) -> LambdaAliasRouter:
    iam = await clients.get("iam")
    role = await iam.create_role(
        RoleName="bench",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )
    functions = await clients.get("lambda")
    await functions.create_function(
        FunctionName="bench",
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="handler.handler",
        Code={"ZipFile": _package(1)},
    )
    await functions.publish_version(FunctionName="bench")
    await functions.update_function_code(FunctionName="bench", ZipFile=_package(2))  # same code: no new version
    await functions.publish_version(FunctionName="bench")
    await functions.create_alias(FunctionName="bench", Name="live", FunctionVersion="1")
    appspec = {"function_name": "bench", "alias": "live", "current_version": "1", "target_version": "2"}
    return LambdaAliasRouter(clients, appspec)


async def _elb_router(clients: AwsClients) -> ElbRouter:
    ec2 = await clients.get("ec2")
    elbv2 = await clients.get("elbv2")
    vpc = (await ec2.create_vpc(CidrBlock="10.9.0.0/16"))["Vpc"]["VpcId"]
    subnets = [
        (await ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"us-east-1{z}"))["Subnet"][
            "SubnetId"
        ]
        for i, z in ((1, "a"), (2, "b"))
    ]
    alb = (await elbv2.create_load_balancer(Name="bench", Subnets=subnets, Type="application"))["LoadBalancers"][0]
    groups = []
    for name in ("bench-blue", "bench-green"):
        created = await elbv2.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip")
        groups.append(created["TargetGroups"][0]["TargetGroupArn"])
    listener = await elbv2.create_listener(
        LoadBalancerArn=alb["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": groups[0]}],
    )
    hosts = {name: Host(name, port=8080) for name in ("10.9.1.10", "10.9.1.11", "10.9.2.10", "10.9.2.11")}
    router = ElbRouter(
        clients, ElbGroup("bench", tuple(groups), listener["Listeners"][0]["ListenerArn"], 0.0), hosts=hosts
    )
    await router.prepare("bench", ["10.9.1.10", "10.9.1.11"], ["10.9.2.10", "10.9.2.11"])
    return router


async def _time_reroutes(router: Any, group: str, percent: int) -> list[float]:
    """Each run moves ``percent`` to the replacement (untimed), then times the reroute back to 0."""
    timings = []
    for _ in range(RUNS):
        await router.set_weight(group, percent, wait=False)
        started = time.perf_counter()
        await router.set_weight(group, 0, wait=False)
        timings.append((time.perf_counter() - started) * 1000)
        assert await router.verify_weight(group, 0) is not False
    return timings


async def _measure(endpoint: str) -> tuple[list[float], list[float]]:
    clients = AwsClients(AwsAccount("bench", region="us-east-1", endpoint_url=endpoint))
    try:
        alias = await _lambda_router(clients)
        await alias.set_weight("bench", 10)  # the first shift checks alias and versions; not part of a reroute
        lambda_ms = await _time_reroutes(alias, "bench", 30)
        listener_ms = await _time_reroutes(await _elb_router(clients), "bench", 20)
    finally:
        await clients.close()
    return lambda_ms, listener_ms


def aws_reroute(settings: Settings) -> list[Figure]:
    console = settings.console
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        request = urllib.request.Request(
            f"{endpoint}/moto-api/config",
            data=json.dumps({"lambda": {"use_docker": False}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        lambda_ms, listener_ms = asyncio.run(_measure(endpoint))
    finally:
        server.stop()
    console.print(f"  {RUNS} reroutes each; Lambda max {max(lambda_ms):.1f} ms, ELBv2 max {max(listener_ms):.1f} ms")
    note = f"moto on localhost, {RUNS} runs"
    return [
        Figure("Lambda alias reroute (30 % → 0), median", median(lambda_ms), "ms", None, note),
        Figure("Lambda alias reroute, p90", percentile(lambda_ms, 90), "ms", REROUTE_TARGET_MS, note),
        Figure("ELBv2 listener reroute (20 % → 0), median", median(listener_ms), "ms", None, note),
        Figure("ELBv2 listener reroute, p90", percentile(listener_ms, 90), "ms", REROUTE_TARGET_MS, note),
    ]
