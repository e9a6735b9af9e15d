"""An S3 revision end to end: ``deploybot push`` bundles and uploads a directory to moto's S3 and registers it;
``deploybot deploy --revision s3://…`` (the line push prints) deploys it to real local agents, whose hooks see the
object's BUNDLE_* variables; a revision whose object was replaced after it was pushed is refused."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from engine.adapters.aws.accounts import AwsClients
from tests.e2e_support import DeploybotServer, free_port, write_revision
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401


def config_text(endpoint: str) -> str:
    return (
        "server: {data_dir: var}\n"
        f"aws:\n  default: {{region: {REGION}, endpoint_url: '{endpoint}'}}\n"
        "hosts:\n"
        f"  - {{name: s3-1, local: true, port: {free_port()}}}\n"
        f"  - {{name: s3-2, local: true, port: {free_port()}}}\n"
        "applications:\n"
        "  hello:\n"
        "    platform: server\n"
        "    environments: [staging]\n"
        "    deployment_groups:\n"
        "      staging:\n"
        "        deployment_config: CodeDeployDefault.AllAtOnce\n"
        "        targets: {hosts: [s3-1, s3-2]}\n"
    )


def cli(server: DeploybotServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEPLOYBOT_TOKEN": (server.data_dir / "api-token").read_text().strip()}
    argv = [sys.executable, "-m", "bot", *args, "--server", server.url]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False, cwd=server.workdir)


async def test_pushed_revision_deploys_from_s3_and_hooks_see_the_object(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    s3 = await aws.get("s3")
    await s3.create_bucket(Bucket="artifacts")
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = DeploybotServer(workdir, config_text(moto_reset))
    revision = write_revision(
        tmp_path,
        "v1",
        {"AfterInstall": 'echo "bucket=$BUNDLE_BUCKET key=$BUNDLE_KEY etag=$BUNDLE_ETAG"'},
    )
    try:
        await asyncio.to_thread(server.start)
        pushed = await asyncio.to_thread(
            cli,
            server,
            "push",
            "hello",
            "--source",
            str(revision),
            "--to",
            "s3://artifacts/releases",
            "--config",
            str(server.config),
        )
        assert pushed.returncode == 0, pushed.stderr
        match = re.search(r"--revision '?(s3://[^'\s]+)'?", pushed.stdout)
        assert match, pushed.stdout
        url = match.group(1)
        key = url.removeprefix("s3://artifacts/").split("?")[0]
        assert key.startswith("releases/hello-") and key.endswith(".tar.gz"), key
        head = await s3.head_object(Bucket="artifacts", Key=key)
        etag = head["ETag"].strip('"')

        deployed = await asyncio.to_thread(
            cli, server, "deploy", "hello", "--to", "staging", "--revision", url, "--wait"
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        status, history = await asyncio.to_thread(server.api, "GET", "/api/v1/deployments?application=hello")
        assert status == 200
        final = history["deployments"][0]
        assert final["status"] == "Succeeded", final
        for target in final["targets"]:
            after_install = next(e for e in target["events"] if e["name"] == "AfterInstall")
            assert f"bucket=artifacts key={key} etag={etag}" in after_install["log_tail"], after_install

        # The object is replaced after it was pushed: the pinned ETag no longer matches and nothing is deployed.
        await s3.put_object(Bucket="artifacts", Key=key, Body=b"not the pushed bundle")
        again = await asyncio.to_thread(cli, server, "deploy", "hello", "--to", "staging", "--revision", url, "--wait")
        assert again.returncode != 0
        assert "etag" in (again.stdout + again.stderr).lower(), again.stdout + again.stderr
        status, history = await asyncio.to_thread(server.api, "GET", "/api/v1/deployments?application=hello")
        assert len(history["deployments"]) == 1
    finally:
        await asyncio.to_thread(server.cleanup)
