"""An EC2 fleet behind an ELBv2 target group, end to end: the group's hosts are found by EC2 tags (moto holds the
instances), each runs a real agent named by its instance id (one is not in the config: it joins with a token from
the API, as an autoscaled instance would), and an in-place OneAtATime deployment takes
each host out of the target group (BlockTraffic) and puts it back (AllowTraffic) one at a time — as
``describe_target_health`` shows while it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.adapters.aws.accounts import AwsClients
from tests.e2e_support import DeploybotServer, free_port, write_revision
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401


async def create_fleet(aws: AwsClients) -> tuple[list[str], str]:  # noqa: F811
    """Three running instances tagged app=web (and one other), and an instance target group."""
    ec2 = await aws.get("ec2")
    elbv2 = await aws.get("elbv2")
    vpc = (await ec2.create_vpc(CidrBlock="10.1.0.0/16"))["Vpc"]["VpcId"]
    subnet = (await ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24"))["Subnet"]["SubnetId"]

    async def run(tags: dict[str, str]) -> list[str]:
        reply = await ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
        return [i["InstanceId"] for i in reply["Instances"]]

    web = [*await run({"app": "web"}), *await run({"app": "web"}), *await run({"app": "web"})]
    await run({"app": "batch"})
    group = await elbv2.create_target_group(
        Name="web", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance", HealthCheckPath="/health"
    )
    return sorted(web), group["TargetGroups"][0]["TargetGroupArn"]


def config_text(endpoint: str, instances: list[str], target_group: str) -> str:
    """The first instances are declared as local hosts; the last one is not in the file at all (it joins with an
    agent token from the API, as an autoscaled instance would)."""
    hosts = "".join(f"  - {{name: {name}, local: true, port: {free_port()}}}\n" for name in instances[:-1])
    return (
        "server: {data_dir: var}\n"
        f"aws:\n  default: {{region: {REGION}, endpoint_url: '{endpoint}'}}\n"
        "hosts:\n" + hosts + "applications:\n"
        "  web:\n"
        "    platform: server\n"
        "    environments: [production]\n"
        "    deployment_groups:\n"
        "      production:\n"
        "        deployment_config: CodeDeployDefault.OneAtATime\n"
        "        targets: {ec2_tags: {app: web}}\n"
        "        load_balancer:\n"
        "          type: elbv2\n"
        f"          target_groups: [{target_group}]\n"
        "          deregistration_delay: 0.5\n"
    )


async def test_ec2_hosts_by_tag_leave_and_rejoin_the_target_group_one_at_a_time(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    instances, target_group = await create_fleet(aws)
    elbv2 = await aws.get("elbv2")
    await elbv2.register_targets(TargetGroupArn=target_group, Targets=[{"Id": i} for i in instances])
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = DeploybotServer(workdir, config_text(moto_reset, instances, target_group))
    revision = write_revision(tmp_path, "v1", {"ApplicationStart": "sleep 0.3"})
    registered: list[tuple[str, ...]] = []

    async def sample() -> None:
        while True:
            health = await elbv2.describe_target_health(TargetGroupArn=target_group)
            now = tuple(sorted(d["Target"]["Id"] for d in health["TargetHealthDescriptions"]))
            if not registered or registered[-1] != now:
                registered.append(now)
            await asyncio.sleep(0.03)

    sampler = asyncio.ensure_future(sample())
    try:
        await asyncio.to_thread(server.start)
        status, issued = await asyncio.to_thread(server.api, "POST", "/api/v1/agent-tokens", {"name": instances[-1]})
        assert status == 201 and issued["token"].startswith("dbt_"), issued
        server.run_agent(instances[-1])
        deployment = await asyncio.to_thread(server.deploy, "web", "production", revision)
        final = await asyncio.to_thread(server.wait_final, deployment["id"], 90)
        await asyncio.sleep(0.2)
    finally:
        sampler.cancel()
        await asyncio.to_thread(server.cleanup)
    assert final["status"] == "Succeeded", final
    assert sorted(t["name"] for t in final["targets"]) == instances  # the app=batch instance is not a target
    events = [e["name"] for e in final["targets"][0]["events"]]
    assert events[:3] == ["BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic"]
    assert events[-3:] == ["BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
    # Every host was out of the target group at some point, never two at once, and all are back at the end.
    assert registered[0] == tuple(instances) and registered[-1] == tuple(instances), registered
    missing = [set(instances) - set(now) for now in registered]
    assert all(len(gone) <= 1 for gone in missing), registered
    assert {host for gone in missing for host in gone} == set(instances), registered
