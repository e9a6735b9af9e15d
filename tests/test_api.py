"""The JSON API over real HTTP on 127.0.0.1 (aiohttp TestServer), backed by FakeDeployer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import eventually
from fake_deployer import FakeDeployer

from bot.api import create_api_app
from bot.app import create_app
from bot.http import error_body, error_status
from bot.settings import Settings
from engine.core.errors import (
    AdapterError,
    ConfigError,
    DeploymentNotFound,
    DeploymentRefused,
    EnvironmentNotFound,
    InvalidTransition,
    Problem,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    deployer: FakeDeployer
    settings: Settings

    async def call(self, method: str, path: str, *, status: int, **kwargs: Any) -> Any:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            body = await response.json() if response.status != 204 else None
            assert response.status == status, body
            return body

    async def deploy(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/api/v1/deployments", json={"application": "hello", "environment": "staging", **body}, status=201
        )
        return result


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=tmp_path)
    deployer = FakeDeployer()
    async with TestClient(TestServer(create_app(settings, deployer=deployer), host="127.0.0.1")) as client:
        yield Api(client, deployer, settings)
    await deployer.close()


async def test_healthz_needs_no_token(api: Api) -> None:
    async with api.client.get("/healthz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["ok"] is True
    assert body["version"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/applications"), ("POST", "/api/v1/deployments"), ("GET", "/api/v1/deployments/d-1")],
)
async def test_api_refuses_requests_without_the_token(
    api: Api, headers: dict[str, str], method: str, path: str
) -> None:
    async with api.client.request(method, path, headers=headers, json={}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="deploybot"')
        body = await response.json()
    assert body["error"] == "Unauthorized"
    assert body["reason"] == ("unknown token" if headers.get("Authorization") == "Bearer wrong" else "missing")
    assert api.deployer.calls == []


async def test_token_file_is_accepted_besides_the_env_token(tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text("from-file\n")
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=tmp_path)
    app = create_app(settings, deployer=FakeDeployer())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for token in ("from-file", TOKEN):
            async with client.get("/api/v1/applications", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200


async def test_upload_streams_the_bundle_to_the_deployer_and_cleans_up(api: Api) -> None:
    data = b"\x1f\x8b" + bytes(range(256)) * 4000
    body = await api.call(
        "POST", "/api/v1/revisions", data=data, headers={"X-Deploybot-Source": "dir:/src/hello"}, status=201
    )
    assert body["size"] == len(data)
    assert api.deployer.calls == [("store_revision", "dir:/src/hello", data)]
    assert list(api.settings.upload_dir.iterdir()) == []


async def test_upload_with_an_invalid_appspec_answers_422_with_located_problems(api: Api) -> None:
    body = await api.call("POST", "/api/v1/revisions", data=b"bad bundle", status=422)
    assert body["error"] == "AppSpecInvalid"
    assert body["problems"] == [
        {
            "file": "appspec.yml",
            "line": 3,
            "column": 5,
            "message": "unknown key 'hoks' (did you mean 'hooks'?)",
            "path": "",
        }
    ]
    assert list(api.settings.upload_dir.iterdir()) == []


async def test_upload_refuses_empty_and_oversized_bodies(tmp_path: Path) -> None:
    deployer = FakeDeployer()
    app = create_api_app(deployer, tokens=frozenset({TOKEN}), upload_dir=tmp_path, max_bundle_bytes=1000)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        async with client.post("/revisions", data=b"", headers=AUTH) as response:
            assert response.status == 400
            assert "usage" in await response.json()
        async with client.post("/revisions", data=b"x" * 5000, headers=AUTH) as response:
            assert response.status == 413
            assert (await response.json())["limit_bytes"] == 1000
    assert deployer.calls == []
    assert list(tmp_path.iterdir()) == []


async def test_start_passes_the_request_and_the_tokens_user_to_the_engine(api: Api) -> None:
    revision = "sha256:" + (await api.call("POST", "/api/v1/revisions", data=b"good", status=201))["sha256"]
    deployment = await api.deploy(revision=revision, config="CodeDeployDefault.AllAtOnce", description="hotfix")
    assert deployment["status"] == "Created"
    request = api.deployer.calls[-1][1]
    assert (request.application, request.environment, request.revision) == ("hello", "staging", revision)
    assert (request.config_name, request.description) == ("CodeDeployDefault.AllAtOnce", "hotfix")
    assert request.actor == "deploybot-admin"  # the bootstrap token's user
    alice = {"Authorization": f"Bearer {await api.deployer.token_for('alice')}"}
    body = {"application": "hello", "environment": "staging"}
    await api.call("POST", "/api/v1/deployments", json=body, headers={**alice, "X-Deploybot-Actor": "root"}, status=201)
    assert api.deployer.calls[-1][1].actor == "alice"  # a header cannot say who asks


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"environment": "staging"}', "'application' is required"),
        (b'{"application": "hello", "environment": 3}', "'environment' must be a non-empty string"),
        (b'{"application": "hello", "environment": "staging", "description": 5}', "'description'"),
    ],
)
async def test_start_with_a_bad_body_is_a_400_with_usage(api: Api, body: bytes, message: str) -> None:
    answer = await api.call("POST", "/api/v1/deployments", data=body, status=400)
    assert answer["error"] == "BadRequest"
    assert message in answer["message"]
    assert answer["usage"].startswith("POST /api/v1/deployments")


@pytest.mark.parametrize(
    ("method", "path", "json", "status", "error", "field"),
    [
        (
            "POST",
            "/api/v1/deployments",
            {"application": "nope", "environment": "x"},
            404,
            "ApplicationNotFound",
            ("application", "nope"),
        ),
        (
            "POST",
            "/api/v1/deployments",
            {"application": "hello", "environment": "qa"},
            404,
            "EnvironmentNotFound",
            ("known", ["staging", "production"]),
        ),
        (
            "POST",
            "/api/v1/deployments",
            {"application": "hello", "environment": "staging", "config": "Nope"},
            422,
            "UnknownDeploymentConfig",
            ("name", "Nope"),
        ),
        (
            "POST",
            "/api/v1/deployments",
            {"application": "api", "environment": "production"},
            409,
            "DeploymentRefused",
            ("details", {"holder": "alice"}),
        ),
        (
            "POST",
            "/api/v1/deployments",
            {"application": "hello", "environment": "staging", "revision": "sha256:ab"},
            404,
            "RevisionNotFound",
            ("sha256", "ab"),
        ),
        ("GET", "/api/v1/deployments/d-404", None, 404, "DeploymentNotFound", ("deployment_id", "d-404")),
        (
            "POST",
            "/api/v1/applications/hello/environments/staging/rollback",
            None,
            409,
            "DeploymentRefused",
            ("reason", "nothing has been deployed to hello-staging yet"),
        ),
    ],
)
async def test_engine_errors_become_status_and_json_with_their_data(
    api: Api, method: str, path: str, json: Any, status: int, error: str, field: tuple[str, Any]
) -> None:
    body = await api.call(method, path, json=json, status=status)
    assert body["error"] == error
    assert body["message"]
    assert body[field[0]] == field[1]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConfigError([Problem("deploybot.yml", 4, 2, "unknown key")]), 422),
        (InvalidTransition("Succeeded", "StopRequested"), 409),
        (DeploymentNotFound("d-1"), 404),
        (EnvironmentNotFound("hello", "qa"), 404),
        (DeploymentRefused("locked", holder="bob"), 409),
        (AdapterError("haproxy", "socket refused"), 400),
    ],
)
def test_error_status_and_body_follow_the_contract(exc: Any, status: int) -> None:
    assert error_status(exc) == status
    body = error_body(exc)
    assert body["error"] == type(exc).__name__
    assert body["message"] == str(exc)
    if isinstance(exc, ConfigError):
        assert body["problems"][0] == {
            "file": "deploybot.yml",
            "line": 4,
            "column": 2,
            "message": "unknown key",
            "path": "",
        }


async def test_get_and_list_deployments(api: Api) -> None:
    first = await api.deploy()
    second = await api.deploy(environment="production")
    assert (await api.call("GET", f"/api/v1/deployments/{first['id']}", status=200))["id"] == first["id"]
    listed = await api.call("GET", "/api/v1/deployments?application=hello&environment=staging&limit=5", status=200)
    assert [d["id"] for d in listed["deployments"]] == [first["id"]]
    assert api.deployer.calls[-1] == ("history", "hello", "staging", 5)
    everything = await api.call("GET", "/api/v1/deployments", status=200)
    assert [d["id"] for d in everything["deployments"]] == [second["id"], first["id"]]


@pytest.mark.parametrize(
    "query", ["limit=abc", "limit=0", "environment=staging", "limit=nan"], ids=["nan-text", "zero", "env-only", "nan"]
)
async def test_list_with_bad_query_is_a_400(api: Api, query: str) -> None:
    body = await api.call("GET", f"/api/v1/deployments?{query}", status=400)
    assert body["usage"].startswith("GET /api/v1/deployments")


async def test_watch_long_polls_until_the_version_moves(api: Api) -> None:
    deployment = await api.deploy()
    immediate = await api.call("GET", f"/api/v1/deployments/{deployment['id']}/watch?after=0", status=200)
    assert immediate["version"] == 1
    poll = asyncio.create_task(
        api.call("GET", f"/api/v1/deployments/{deployment['id']}/watch?after=1&wait=10", status=200)
    )
    await eventually(lambda: ("watch", deployment["id"], 1, 10.0) in api.deployer.calls, "the long poll to wait")
    assert not poll.done()
    api.deployer.advance(deployment["id"], status="InProgress")
    changed = await asyncio.wait_for(poll, 2)
    assert (changed["status"], changed["version"]) == ("InProgress", 2)


async def test_watch_wait_is_capped_at_60_seconds(api: Api) -> None:
    deployment = await api.deploy()
    api.deployer.advance(deployment["id"], status="Succeeded")
    await api.call("GET", f"/api/v1/deployments/{deployment['id']}/watch?after=9&wait=3600", status=200)
    assert api.deployer.calls[-1] == ("watch", deployment["id"], 9, 60.0)


async def test_stop_control_rollback_plan_and_applications(api: Api) -> None:
    deployment = await api.deploy()
    ident = deployment["id"]
    bob = {"Authorization": f"Bearer {await api.deployer.token_for('bob')}"}
    for action in ("pause", "resume", "continue", "promote"):
        await api.call("POST", f"/api/v1/deployments/{ident}/{action}", headers=bob, status=200)
        assert api.deployer.calls[-1] == ("control", ident, action, "bob")
    await api.call("POST", f"/api/v1/deployments/{ident}/explode", status=404)
    stopped = await api.call("POST", f"/api/v1/deployments/{ident}/stop", json={"rollback": True}, status=200)
    assert stopped["status"] == "Stopped"
    assert api.deployer.calls[-1] == ("stop", ident, True, "deploybot-admin")
    again = await api.call("POST", f"/api/v1/deployments/{ident}/stop", status=409)
    assert again["error"] == "InvalidTransition"
    bad = await api.call("POST", f"/api/v1/deployments/{ident}/stop", json={"rollback": "yes"}, status=400)
    assert "rollback" in bad["message"]
    rollback = await api.call("POST", "/api/v1/applications/hello/environments/staging/rollback", status=201)
    assert rollback["rollback"]["of"] == ident
    plan = await api.call("POST", "/api/v1/plan", json={"application": "hello", "environment": "staging"}, status=200)
    assert plan["plan"]["batches"] == [["web-1"], ["web-2"]]
    apps = await api.call("GET", "/api/v1/applications", status=200)
    assert [a["name"] for a in apps["applications"]] == ["hello", "api"]


async def test_unknown_routes_answer_json(api: Api) -> None:
    body = await api.call("GET", "/api/v1/nothing-here", status=404)
    assert body["error"] == "NotFound"
