"""SigV4 checked strictly on ``POST /codedeploy``: the credential scope must be this service's and this server's
region (DEPLOYBOT_AWS_REGION), and SignedHeaders must cover host, x-amz-date and x-amz-target.

Every request goes through the real door: the whole app (test_codedeploy's ``serving``) on 127.0.0.1, signed by
botocore — boto3's own ``codedeploy`` client, or botocore's SigV4Auth on a request sent with aiohttp when the test
needs a signature boto3 would never make (another service, a header left out of SignedHeaders).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from test_codedeploy import KEYS, Served, call, serving
from test_service import open_deployer

from bot.app import create_app
from bot.settings import Settings

LIST_APPLICATIONS = "CodeDeploy_20141006.ListApplications"
REGION_VARIABLE = "DEPLOYBOT_AWS_REGION"


class OmittingSigV4Auth(SigV4Auth):
    """botocore's signer with one header left out of SignedHeaders (still sent, so the signature itself is right)."""

    def __init__(self, credentials: Credentials, service: str, region: str, omit: str) -> None:
        super().__init__(credentials, service, region)
        self.omit = omit

    def headers_to_sign(self, request: AWSRequest) -> Any:
        headers = super().headers_to_sign(request)
        del headers[self.omit]
        return headers


def sign(url: str, signer: SigV4Auth, body: bytes = b"{}") -> dict[str, str]:
    """The headers of a ListApplications call signed by ``signer`` (as boto3 would send them)."""
    request = AWSRequest(
        method="POST",
        url=url,
        headers={"X-Amz-Target": LIST_APPLICATIONS, "Content-Type": "application/x-amz-json-1.1"},
        data=body,
    )
    signer.add_auth(request)
    return dict(request.headers.items())


async def send(url: str, headers: dict[str, str], body: bytes = b"{}") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        return response.status, json.loads(await response.read())


def credentials() -> Credentials:
    return Credentials("AKIDEPLOYBOT", "s3cret")


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    """The app with DEPLOYBOT_AWS_REGION unset: the default region, us-east-1."""
    monkeypatch.delenv(REGION_VARIABLE, raising=False)
    async with serving(tmp_path) as running:
        yield running


async def test_the_boto3_client_still_works(served: Served) -> None:
    assert (await call(served.client().list_applications))["applications"] == ["app"]
    # The hand-signed path the refusals below use is accepted when the signature is a proper one.
    status, body = await send(served.url, sign(served.url, SigV4Auth(credentials(), "codedeploy", "us-east-1")))
    assert (status, body["applications"]) == (200, ["app"])


async def test_a_signature_for_another_service_is_refused(served: Served) -> None:
    status, body = await send(served.url, sign(served.url, SigV4Auth(credentials(), "s3", "us-east-1")))
    assert status == 400
    assert body == {
        "__type": "InvalidSignatureException",
        "message": "credential scope names service s3; this endpoint is codedeploy",
    }


@pytest.mark.parametrize("omitted", ["x-amz-target", "host", "x-amz-date"])
async def test_signed_headers_must_cover_host_date_and_target(served: Served, omitted: str) -> None:
    """Sent but not signed: x-amz-target unsigned would let anyone replay a signed read as another operation."""
    signer = OmittingSigV4Auth(credentials(), "codedeploy", "us-east-1", omit=omitted)
    headers = sign(served.url, signer)
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert omitted not in signed and {"host", "x-amz-date", "x-amz-target"} - {omitted} <= set(signed)
    status, body = await send(served.url, headers)
    assert status == 400
    assert body == {"__type": "IncompleteSignatureException", "message": f"SignedHeaders must include {omitted}"}


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (
            ("/aws4_request", "/aws4_other"),
            "IncompleteSignatureException",
            "the credential scope ends with 'aws4_other'; it must end with aws4_request",
        ),
        (("/us-east-1/", "//"), "IncompleteSignatureException", "Authorization needs Credential="),  # no region
    ],
)
async def test_a_malformed_credential_scope_is_refused(
    served: Served, tamper: tuple[str, str], error: str, message: str
) -> None:
    headers = sign(served.url, SigV4Auth(credentials(), "codedeploy", "us-east-1"))
    headers["Authorization"] = headers["Authorization"].replace(*tamper)
    status, body = await send(served.url, headers)
    assert (status, body["__type"]) == (400, error)
    assert body["message"].startswith(message)


async def test_a_scope_date_other_than_x_amz_date_is_refused(served: Served) -> None:
    headers = sign(served.url, SigV4Auth(credentials(), "codedeploy", "us-east-1"))
    day = headers["X-Amz-Date"][:8]
    other = (datetime.datetime.strptime(day, "%Y%m%d") - datetime.timedelta(days=1)).strftime("%Y%m%d")
    headers["Authorization"] = headers["Authorization"].replace(f"/{day}/", f"/{other}/")
    status, body = await send(served.url, headers)
    assert (status, body["__type"]) == (400, "InvalidSignatureException")
    assert body["message"] == f"credential scope date {other} is not the day of X-Amz-Date {headers['X-Amz-Date']}"


async def test_another_region_is_refused_by_default(served: Served) -> None:
    """DEPLOYBOT_AWS_REGION unset means us-east-1, and the refusal says so."""
    with pytest.raises(ClientError) as info:
        await call(served.client(region="eu-west-1").list_applications)
    error = info.value.response["Error"]
    assert error["Code"] == "InvalidSignatureException"
    assert error["Message"].startswith("region eu-west-1 does not match this server's us-east-1")
    assert REGION_VARIABLE in error["Message"]


async def test_the_region_is_told_only_to_a_key_holder(served: Served) -> None:
    """The region is checked once the signature is proven: a wrong secret learns nothing about it."""
    with pytest.raises(ClientError) as info:
        await call(served.client(secret="wrong", region="eu-west-1").list_applications)
    error = info.value.response["Error"]
    assert error["Code"] == "InvalidSignatureException"
    assert "us-east-1" not in error["Message"] and "region" not in error["Message"]


async def test_the_configured_region_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REGION_VARIABLE, "ap-southeast-2")
    async with serving(tmp_path) as served:
        assert (await call(served.client(region="ap-southeast-2").list_applications))["applications"] == ["app"]
        with pytest.raises(ClientError) as info:
            await call(served.client(region="us-east-1").list_applications)
    error = info.value.response["Error"]
    assert error["Code"] == "InvalidSignatureException"
    assert error["Message"].startswith("region us-east-1 does not match this server's ap-southeast-2")


async def test_star_accepts_any_region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REGION_VARIABLE, "*")
    async with serving(tmp_path) as served:
        for region in ("us-east-1", "eu-west-1", "ap-southeast-2", "local"):
            assert (await call(served.client(region=region).list_applications))["applications"] == ["app"], region
        # Any region, but still only this service.
        status, body = await send(served.url, sign(served.url, SigV4Auth(credentials(), "s3", "eu-west-1")))
    assert (status, body["__type"]) == (400, "InvalidSignatureException")


@pytest.mark.parametrize("value", ["us east 1", "eu-west-1,us-east-1", "-bad-"])
async def test_a_malformed_region_stops_the_server_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REGION_VARIABLE, value)
    deployer = await open_deployer(tmp_path)
    try:
        with pytest.raises(ValueError, match=f"{REGION_VARIABLE} '{value}' is not a region name"):
            create_app(Settings(data_dir=tmp_path / "var", aws_keys=KEYS), deployer=deployer)
    finally:
        await deployer.close()
