"""moto in server mode for the AWS tests: a real HTTP endpoint that aioboto3 reaches through ``endpoint_url``.

One server per test module (starting one costs ~1 s); ``moto_reset`` empties it between tests. Read
shared/reference/components.md §4 for what moto checks and what it does not: assert on what describe calls
return, and never patch aioboto3.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest
from moto.server import ThreadedMotoServer

from engine.adapters.aws.accounts import AwsClients
from engine.core.config.model import AwsAccount

REGION = "us-east-1"


def moto_api(endpoint: str, path: str, body: object | None = None) -> object:
    """POST (or GET without a body) to moto's own control API, e.g. ``/moto-api/reset``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(endpoint + path, data=data, method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


def configure_lambda_without_docker(endpoint: str) -> None:
    """moto's non-Docker Lambda backend: invoke echoes its payload. Must run BEFORE any function is created
    (switching backends drops the functions made earlier)."""
    moto_api(endpoint, "/moto-api/config", {"lambda": {"use_docker": False}})


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    configure_lambda_without_docker(endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def moto_reset(moto_endpoint: str) -> str:
    """An emptied moto (the non-Docker Lambda setting is applied again after the reset)."""
    moto_api(moto_endpoint, "/moto-api/reset", {})
    configure_lambda_without_docker(moto_endpoint)
    return moto_endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials in the environment (the standard chain finds them); nothing reaches real AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def aws(moto_reset: str, aws_env: None) -> AsyncIterator[AwsClients]:
    """Clients of a test account pointed at the (emptied) moto server."""
    clients = AwsClients(AwsAccount("default", region=REGION, endpoint_url=moto_reset))
    try:
        yield clients
    finally:
        await clients.close()
