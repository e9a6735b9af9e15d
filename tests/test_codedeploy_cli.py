"""The AWS CLI (awscli, a test dependency) against a running deploybot: ``aws deploy ... --endpoint-url``, run as a
real subprocess with credentials in its environment, exactly as a CI job would. The server is configured for the
CLI's region (DEPLOYBOT_AWS_REGION=eu-west-1), as a deployment outside us-east-1 would be."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_codedeploy import Served, call, serving

REGION = "eu-west-1"


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("DEPLOYBOT_AWS_REGION", REGION)
    async with serving(tmp_path) as running:
        yield running


async def aws(
    served: Served, home: Path, *args: str, secret: str = "s3cret", region: str = REGION
) -> tuple[int, Any, str]:
    """``aws deploy ARGS`` with JSON output: (exit code, parsed stdout or None, stderr)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "AKIDEPLOYBOT",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": str(home / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "awscli",
        "deploy",
        *args,
        "--endpoint-url",
        served.url,
        "--output",
        "json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    text = out.decode()
    return process.returncode or 0, json.loads(text) if text.strip() else None, err.decode()


async def test_aws_deploy_creates_and_reads_a_deployment(served: Served, tmp_path: Path) -> None:
    sha = (await served.deployer.store_revision(tmp_path / "rev-b", source="rev-b"))["sha256"]
    code, created, err = await aws(
        served,
        tmp_path,
        "create-deployment",
        "--application-name",
        "app",
        "--deployment-group-name",
        "app-staging",
        "--s3-location",
        f"bucket=deploybot,key=sha256:{sha},bundleType=tgz",
        "--description",
        "from the AWS CLI",
    )
    assert code == 0, err
    deployment_id = created["deploymentId"]
    waiter = served.client(region=REGION).get_waiter("deployment_successful")
    await call(waiter.wait, deploymentId=deployment_id, WaiterConfig={"Delay": 1, "MaxAttempts": 15})

    code, got, err = await aws(served, tmp_path, "get-deployment", "--deployment-id", deployment_id)
    assert code == 0, err
    info = got["deploymentInfo"]
    assert (info["deploymentId"], info["status"], info["description"]) == (
        deployment_id,
        "Succeeded",
        "from the AWS CLI",
    )
    assert info["revision"]["s3Location"]["key"] == f"sha256:{sha}"
    assert info["deploymentOverview"]["Succeeded"] == 2


async def test_aws_cli_errors_and_refusals(served: Served, tmp_path: Path) -> None:
    code, _, err = await aws(served, tmp_path, "get-deployment", "--deployment-id", "d-AAAAAAAAA")
    assert code != 0 and "DeploymentDoesNotExistException" in err
    code, _, err = await aws(served, tmp_path, "list-applications", secret="wrong")
    assert code != 0 and "InvalidSignatureException" in err
    code, _, err = await aws(served, tmp_path, "list-applications", region="us-east-1")
    assert code != 0 and "InvalidSignatureException" in err
    assert "region us-east-1 does not match this server's eu-west-1" in err
