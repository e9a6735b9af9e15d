"""``Idempotency-Key`` on /api/v1 over real HTTP, backed by the real Deployer and its SQLite store: a repeat gets the
first answer and nothing runs twice; deliberate repeats (new keys) all act; the CLI's client sends a key and re-sends
it when the connection drops."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_service import ScriptedFleet, make_revision, never_fails

from bot.api import create_api_app
from bot.assembly import assemble_deployer
from bot.client import IDEMPOTENCY_HEADER, ApiClient, TokenLookup
from bot.idempotency import REPLAYED_HEADER, Handler
from engine.core.config.parse import parse_config
from engine.runtime.deployer import Deployer

CONFIG = """
server: {data_dir: var, admins: [root]}
hosts:
  - {name: s1}
applications:
  app:
    revision: rev-a
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1]}}
"""


@dataclass
class Door:
    deployer: Deployer
    data_dir: Path
    tokens: dict[str, str]

    async def serve(self, extra: dict[str, Handler] | None = None) -> TestClient[Any, Any]:
        """A fresh /api/v1 app (a new server life) on the same Deployer and store; ``extra`` POST routes behind the
        same middlewares."""
        api = create_api_app(self.deployer, tokens=frozenset(), upload_dir=self.data_dir / "uploads")
        for path, handler in (extra or {}).items():
            api.router.add_post(path, handler)
        root = web.Application()
        root.add_subapp("/api/v1", api)
        return TestClient(TestServer(root, host="127.0.0.1", port=0))

    async def token(self, user: str) -> str:
        if user not in self.tokens:
            self.tokens[user] = (await self.deployer.tokens.create(user, name="test"))[1]
        return self.tokens[user]


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    make_revision(tmp_path, "rev-a", "1")
    config = parse_config(CONFIG, filename="api.yml", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    agents = ScriptedFleet(deployer, ["s1"], never_fails)
    try:
        yield Door(deployer, tmp_path / "var", {})
    finally:
        await agents.close()
        await deployer.close()


async def call(
    client: TestClient[Any, Any], door: Door, method: str, path: str, *, key: str | None, user: str = "alice", **kw: Any
) -> tuple[int, dict[str, Any], bool]:
    headers = {**kw.pop("headers", {}), "Authorization": f"Bearer {await door.token(user)}"}
    if key is not None:
        headers[IDEMPOTENCY_HEADER] = key
    async with client.request(method, "/api/v1" + path, headers=headers, **kw) as response:
        return response.status, await response.json(), response.headers.get(REPLAYED_HEADER) == "true"


async def test_a_repeated_deploy_gets_the_first_answer_and_starts_nothing(door: Door) -> None:
    async with await door.serve() as client:
        body = {"application": "app", "environment": "staging"}
        first = await call(client, door, "POST", "/deployments", key="k-1", json=body)
        again = await call(client, door, "POST", "/deployments", key="k-1", json=body)
    assert first[0] == 201 and not first[2]
    assert again == (201, first[1], True)
    assert len(await door.deployer.store.list_deployments(application="app")) == 1
    intent = await door.deployer.store.get_intent("api:alice:k-1")
    assert intent is not None and (intent["state"], intent["actor"]) == ("done", "alice")


async def test_the_same_key_for_another_request_is_refused_and_names_the_first(door: Door) -> None:
    async with await door.serve() as client:
        await call(client, door, "POST", "/locks", key="k", json={"application": "app", "environment": "staging"})
        status, body, _ = await call(
            client,
            door,
            "POST",
            "/locks",
            key="k",
            json={"application": "app", "environment": "staging", "reason": "x"},
        )
    assert (status, body["error"], body["first_request"]) == (422, "IdempotencyKeyReused", "POST /api/v1/locks")


async def test_keys_belong_to_their_user(door: Door) -> None:
    async with await door.serve() as client:
        lock = {"application": "app", "environment": "staging"}
        await call(client, door, "POST", "/locks", key="shared", json=lock)
        status, body, replayed = await call(
            client, door, "DELETE", "/locks?application=app&environment=staging", key="shared", user="root"
        )
    assert (status, replayed) == (200, False) and body["released"] is True


async def test_deliberate_repeats_with_new_keys_all_act(door: Door) -> None:
    async with await door.serve() as client:
        lock = {"application": "app", "environment": "staging"}
        assert (await call(client, door, "POST", "/locks", key="1", json=lock))[0] == 201
        assert (await call(client, door, "DELETE", "/locks?application=app&environment=staging", key="2"))[1][
            "released"
        ] is True
        assert (await call(client, door, "POST", "/locks", key="3", json=lock))[0] == 201
        _, locks, _ = await call(client, door, "GET", "/locks", key=None)
    assert [(x["application"], x["environment"]) for x in locks["locks"]] == [("app", "staging")]


async def test_a_refusal_is_kept_and_replayed_even_after_the_cause_is_gone(door: Door) -> None:
    """The answer of a key is final below 500: a repeat tells the same story, it does not ask again."""
    async with await door.serve() as client:
        lock = {"application": "app", "environment": "staging"}
        await call(client, door, "POST", "/locks", key="lock", json=lock)
        body = {"application": "app", "environment": "staging"}
        refused = await call(client, door, "POST", "/deployments", key="deploy", json=body)
        await call(client, door, "DELETE", "/locks?application=app&environment=staging", key="unlock")
        again = await call(client, door, "POST", "/deployments", key="deploy", json=body)
        fresh = await call(client, door, "POST", "/deployments", key="deploy-2", json=body)
    assert refused[0] == 409 and again == (409, refused[1], True)
    assert fresh[0] == 201


async def test_a_repeat_while_the_first_runs_is_409_and_a_restart_lets_it_run_again(door: Door) -> None:
    release, entered, runs = asyncio.Event(), asyncio.Event(), []

    async def slow(request: web.Request) -> web.Response:
        runs.append(request.headers[IDEMPOTENCY_HEADER])
        entered.set()
        await release.wait()
        return web.json_response({"ran": len(runs)})

    async with await door.serve({"/slow": slow}) as client:
        first = asyncio.ensure_future(call(client, door, "POST", "/slow", key="s", json={}))
        await entered.wait()
        status, body, _ = await call(client, door, "POST", "/slow", key="s", json={})
        assert (status, body["error"]) == (409, "RequestInProgress")
        first.cancel()  # the client gives up; the server keeps "running" until this life ends
        with pytest.raises(asyncio.CancelledError):
            await first
    release.set()
    async with await door.serve({"/slow": slow}) as client:  # a new server life on the same store
        status, body, replayed = await call(client, door, "POST", "/slow", key="s", json={})
    assert (status, body, replayed) == (200, {"ran": 2}, False) and runs == ["s", "s"]


async def test_a_request_left_running_by_a_killed_server_runs_again_in_the_next(door: Door) -> None:
    """kill -9 leaves the intent "running" under the dead server's name: the next server's repeat runs it."""
    runs: list[str] = []

    async def once(request: web.Request) -> web.Response:
        runs.append("ran")
        return web.json_response({"ran": len(runs)})

    asked = b"POST /api/v1/once\0{}"  # what bot.idempotency fingerprints: method, path, JSON body
    payload = {"method": "POST", "path": "/api/v1/once", "fingerprint": hashlib.sha256(asked).hexdigest()}
    await door.deployer.store.add_intent(
        "api:alice:k", source="api", kind="request", payload={**payload, "server": "dead"}, at=1.0, state="running"
    )
    async with await door.serve({"/once": once}) as client:
        status, body, replayed = await call(
            client, door, "POST", "/once", key="k", data=b"{}", headers={"Content-Type": "application/json"}
        )
        again = await call(
            client, door, "POST", "/once", key="k", data=b"{}", headers={"Content-Type": "application/json"}
        )
    assert (status, body, replayed) == (200, {"ran": 1}, False)
    assert again == (200, {"ran": 1}, True) and runs == ["ran"]


async def test_a_bad_key_is_a_400_with_usage(door: Door) -> None:
    async with await door.serve() as client:
        status, body, _ = await call(client, door, "POST", "/locks", key="two words", json={})
    assert (status, body["error"]) == (400, "BadIdempotencyKey") and "Idempotency-Key:" in body["usage"]


async def test_the_cli_client_sends_an_upload_again_whole_under_its_key_when_the_connection_drops(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(bytes(range(256)) * 2048)  # 512 KiB: sent in pieces
    seen: list[tuple[str, str, bytes]] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get(IDEMPOTENCY_HEADER, ""), request.content_type, await request.read()))
        if len(seen) == 1:
            assert request.transport is not None
            request.transport.close()  # read whole, never answered: the client cannot know whether it was stored
            return web.Response()
        return web.json_response({"sha256": "f" * 64}, status=201)

    app = web.Application(client_max_size=2 * 1024**2)
    app.router.add_post("/api/v1/revisions", flaky)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with ApiClient(str(server.make_url("")), token=TokenLookup("t", ())) as api:
            answer = await api.upload_revision(bundle, source="build/")
    finally:
        await server.close()
    assert answer == {"sha256": "f" * 64}
    assert len(seen) == 2 and seen[0][0] == seen[1][0] and len(seen[0][0]) == 32  # one key, sent twice
    assert seen[0][1:] == seen[1][1:] == ("application/gzip", bundle.read_bytes())  # the whole file both times


async def test_the_cli_client_sends_a_key_and_resends_it_when_the_connection_drops() -> None:
    seen: list[str] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get(IDEMPOTENCY_HEADER, ""))
        if len(seen) == 1:
            assert request.transport is not None
            request.transport.close()  # the answer never arrives: the client cannot know whether it ran
            return web.Response()
        return web.json_response({"application": "app", "environment": "staging", "released": True})

    app = web.Application()
    app.router.add_delete("/api/v1/locks", flaky)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with ApiClient(str(server.make_url("")), token=TokenLookup("t", ())) as api:
            answer = await api.unlock("app", "staging")
    finally:
        await server.close()
    assert answer["released"] is True
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 32
    assert json.dumps(answer)
