"""Application revisions through the CodeDeploy API with boto3's real client: registering, listing (sorted,
filtered, paged), getting; and deployments from every kind of location — a stored bundle, a GitHub commit (the fake
GitHub API), an S3 object (moto), an inline Lambda AppSpec."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from fake_github import FakeGitHub
from test_codedeploy import Served, call, serving
from test_service import APPSPEC, CONFIG

from bot.codedeploy import CODEDEPLOY
from tests.moto_support import REGION, aws_env, moto_endpoint, moto_reset  # noqa: F401

LAMBDA_APP = """  fn:
    platform: lambda
    environments: [live]
    deployment_groups:
      live: {deployment_config: CodeDeployDefault.LambdaAllAtOnce}
"""
LAMBDA_APPSPEC = """version: 0.0
Resources:
  - fn:
      Type: AWS::Lambda::Function
      Properties: {Name: fn, Alias: live, CurrentVersion: "1", TargetVersion: "2"}
"""
SHA = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"


def s3(bucket: str, key: str, **extra: str) -> dict[str, Any]:
    return {"revisionType": "S3", "s3Location": {"bucket": bucket, "key": key, **extra}}


def github(commit: str = SHA) -> dict[str, Any]:
    return {"revisionType": "GitHub", "gitHubLocation": {"repository": "acme/app", "commitId": commit}}


def stored(sha256: str) -> dict[str, Any]:
    return s3("deploybot", f"sha256:{sha256}", bundleType="tgz")


async def wait_success(served: Served, deployment_id: str) -> dict[str, Any]:
    client = served.client()
    waiter = client.get_waiter("deployment_successful")
    await call(waiter.wait, deploymentId=deployment_id, WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    return dict((await call(client.get_deployment, deploymentId=deployment_id))["deploymentInfo"])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path, config=CONFIG % {"heartbeat": 60} + LAMBDA_APP) as running:
        yield running


async def test_registered_revisions_are_listed_sorted_filtered_and_paged(served: Served, tmp_path: Path) -> None:
    client = served.client()
    sha = (await served.deployer.store_revision(tmp_path / "rev-b", source="rev-b"))["sha256"]
    locations = [
        s3("releases", "app/v1.tgz", bundleType="tgz"),
        s3("releases", "app/v2.tgz", bundleType="tgz", eTag="abc"),
        s3("misc", "app/x.zip", bundleType="zip"),
        github(),
        stored(sha),
    ]
    for n, location in enumerate(locations):
        await call(client.register_application_revision, applicationName="app", revision=location, description=f"#{n}")
    created = await call(
        client.create_deployment, applicationName="app", deploymentGroupName="app-staging", revision=stored(sha)
    )
    info = await wait_success(served, created["deploymentId"])
    assert info["revision"] == stored(sha)

    async def listed(**kwargs: Any) -> list[dict[str, Any]]:
        return list((await call(client.list_application_revisions, applicationName="app", **kwargs))["revisions"])

    assert await listed() == locations  # registerTime, ascending
    assert await listed(sortBy="registerTime", sortOrder="descending") == locations[::-1]
    assert await listed(s3Bucket="releases", s3KeyPrefix="app/v1") == [locations[0]]
    assert await listed(deployed="include") == [stored(sha)]
    assert await listed(deployed="exclude") == locations[:4]
    assert (await listed(sortBy="lastUsedTime"))[0] == stored(sha)  # never-deployed ones come last

    got = await call(client.get_application_revision, applicationName="app", revision=stored(sha))
    generic = got["revisionInfo"]
    assert (generic["description"], generic["deploymentGroups"]) == ("#4", ["app-staging"])
    assert generic["registerTime"] <= generic["firstUsedTime"] == generic["lastUsedTime"]
    batch = await call(
        client.batch_get_application_revisions,
        applicationName="app",
        revisions=[github(), s3("nowhere", "k"), locations[0]],
    )
    assert [r["revisionLocation"] for r in batch["revisions"]] == [github(), locations[0]]
    assert batch["errorMessage"].startswith("1 of the revisions")

    served.app[CODEDEPLOY].operations.page_size = 2
    paginator = client.get_paginator("list_application_revisions")
    pages = await call(lambda: list(paginator.paginate(applicationName="app")))
    assert [len(p["revisions"]) for p in pages] == [2, 2, 1]


@pytest.mark.parametrize(
    ("operation", "kwargs", "code"),
    [
        ("list_application_revisions", {"applicationName": "app", "sortBy": "size"}, "InvalidSortByException"),
        ("list_application_revisions", {"applicationName": "app", "sortOrder": "up"}, "InvalidSortOrderException"),
        (
            "list_application_revisions",
            {"applicationName": "app", "deployed": "maybe"},
            "InvalidDeployedStateFilterException",
        ),
        (
            "list_application_revisions",
            {"applicationName": "app", "s3KeyPrefix": "app/"},
            "BucketNameFilterRequiredException",
        ),
        (
            "register_application_revision",
            {"applicationName": "app", "revision": stored("0" * 64)},
            "RevisionDoesNotExistException",
        ),
        (
            "register_application_revision",
            {"applicationName": "nope", "revision": github()},
            "ApplicationDoesNotExistException",
        ),
        (
            "register_application_revision",
            {
                "applicationName": "app",
                "revision": {"revisionType": "AppSpecContent", "appSpecContent": {"content": "x"}},
            },
            "InvalidRevisionException",  # a Server application
        ),
        (
            "register_application_revision",
            {"applicationName": "app", "revision": {"revisionType": "S3", "s3Location": {"bucket": "b"}}},
            "InvalidRevisionException",
        ),
        ("get_application_revision", {"applicationName": "app", "revision": github()}, "RevisionDoesNotExistException"),
        ("batch_get_application_revisions", {"applicationName": "app", "revisions": []}, "RevisionRequiredException"),
        (
            "create_deployment",
            {"applicationName": "app", "deploymentGroupName": "app-staging", "revision": github()},
            "InvalidGitHubAccountTokenException",  # no GitHub credentials on this server
        ),
    ],
)
async def test_revision_errors_are_modeled(served: Served, operation: str, kwargs: dict, code: str) -> None:
    with pytest.raises(ClientError) as info:
        await call(getattr(served.client(), operation), **kwargs)
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["Error"]["Message"]


async def test_an_inline_lambda_appspec_is_stored_as_a_bundle(served: Served) -> None:
    client = served.client()
    digest = hashlib.sha256(LAMBDA_APPSPEC.encode()).hexdigest()
    location = {"revisionType": "AppSpecContent", "appSpecContent": {"content": LAMBDA_APPSPEC}}
    await call(client.register_application_revision, applicationName="fn", revision=location)
    got = await call(client.get_application_revision, applicationName="fn", revision=location)
    assert got["revision"]["appSpecContent"] == {"content": LAMBDA_APPSPEC, "sha256": digest}
    registered = served.deployer.registry.revision("fn", got["revision"])
    assert registered is not None and registered.sha256 is not None
    row = await served.deployer.store.get_revision(registered.sha256)
    assert row["platform"] == "lambda" and row["appspec"]["function_name"] == "fn"
    wrong = {"revisionType": "String", "string": {"content": LAMBDA_APPSPEC, "sha256": "0" * 64}}
    with pytest.raises(client.exceptions.InvalidRevisionException):
        await call(client.register_application_revision, applicationName="fn", revision=wrong)
    invalid = {"revisionType": "AppSpecContent", "appSpecContent": {"content": "version: 0.0\nResources: []\n"}}
    with pytest.raises(client.exceptions.InvalidRevisionException) as info:
        await call(client.register_application_revision, applicationName="fn", revision=invalid)
    assert "appspec.yml" in info.value.response["Error"]["Message"]


async def test_a_github_commit_is_downloaded_once_and_deployed(tmp_path: Path) -> None:
    fake = FakeGitHub(commits={SHA: {"appspec.yml": APPSPEC, "VERSION": "from-github"}})
    await fake.start()
    try:
        async with serving(tmp_path, github_token="ghp_test", github_api_url=fake.url) as served:
            client = served.client()
            first = await call(
                client.create_deployment, applicationName="app", deploymentGroupName="app-staging", revision=github()
            )
            info = await wait_success(served, first["deploymentId"])
            assert info["revision"] == github()
            doc = await served.deployer.get(first["deploymentId"])
            assert (doc["revision"]["commit"], doc["revision"]["source"]) == (SHA, f"github:acme/app@{SHA[:12]}")
            second = await call(
                client.create_deployment, applicationName="app", deploymentGroupName="production", revision=github()
            )
            await wait_success(served, second["deploymentId"])
            got = await call(client.get_application_revision, applicationName="app", revision=github())
            assert sorted(got["revisionInfo"]["deploymentGroups"]) == ["app-production", "app-staging"]
    finally:
        await fake.close()
    [download] = fake.called("GET", f"/repos/acme/app/tarball/{SHA}")  # the pinned commit was fetched once
    assert download.authorization == "token ghp_test"


def _tarball(tree: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(tree.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


async def test_an_s3_object_is_fetched_and_deployed(tmp_path: Path, moto_reset: str, aws_env: None) -> None:  # noqa: F811
    config = f"aws:\n  default: {{region: {REGION}, endpoint_url: '{moto_reset}'}}\n" + CONFIG % {"heartbeat": 60}
    async with serving(tmp_path, config=config) as served:
        s3_client = boto3.client("s3", endpoint_url=moto_reset, region_name=REGION)
        s3_client.create_bucket(Bucket="releases")
        put = s3_client.put_object(Bucket="releases", Key="app/v2.tgz", Body=_tarball(tmp_path / "rev-b"))
        client = served.client()
        location = s3("releases", "app/v2.tgz", bundleType="tgz", eTag=put["ETag"].strip('"'))
        created = await call(
            client.create_deployment, applicationName="app", deploymentGroupName="app-staging", revision=location
        )
        info = await wait_success(served, created["deploymentId"])
        assert info["revision"] == location
        doc = await served.deployer.get(created["deploymentId"])
        assert doc["revision"]["source"] == "s3://releases/app/v2.tgz"
        with pytest.raises(client.exceptions.RevisionDoesNotExistException):
            await call(
                client.create_deployment,
                applicationName="app",
                deploymentGroupName="app-production",
                revision=s3("releases", "app/missing.tgz"),
            )
        with pytest.raises(client.exceptions.InvalidRevisionException) as info:
            await call(
                client.create_deployment,
                applicationName="app",
                deploymentGroupName="app-production",
                revision=s3("releases", "app/v2.tgz", eTag="not-the-etag"),
            )
        assert "ETag" in info.value.response["Error"]["Message"]
