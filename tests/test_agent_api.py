"""The agent protocol routes over real HTTP on 127.0.0.1, backed by FakeFleet (contracts: "Agent protocol"); bundle
downloads by the real Fleet and store, which know whose deployments use a revision."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import HANG_GUARD, FakeClock, eventually
from fake_deployer import FakeDeployer, FakeFleet

from bot.agent_api import MAX_LOG_TAIL_BYTES, SmallBundles, create_agent_app
from bot.app import create_app
from bot.settings import Settings
from engine.adapters.fleet import Fleet
from engine.core.agent_protocol import ResultBody
from engine.core.model import LifecycleEvent
from engine.store.sqlite import SqliteStore

WEB1 = {"Authorization": "Bearer token-web-1"}
WEB2 = {"Authorization": "Bearer token-web-2"}


@dataclass
class Agents:
    client: TestClient[web.Request, web.Application]
    fleet: FakeFleet
    bundle_dir: Path


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Agents]:
    bundle_dir = tmp_path / "bundles"
    bundle_dir.mkdir()
    fleet = FakeFleet(bundle_dir=bundle_dir)
    settings = Settings.from_env({}, data_dir=tmp_path)
    app = create_app(settings, deployer=FakeDeployer(fleet=fleet))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Agents(client, fleet, bundle_dir)


def _command(ident: int) -> dict[str, Any]:
    return {"id": ident, "deployment_id": "d-1", "event": "BeforeInstall", "spec": {"deployment_id": "d-1"}}


def _result(**changes: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "status": "Succeeded",
        "error_code": 0,
        "message": "",
        "log_tail": "ok\n",
        "started_at": now,
        "ended_at": now,
        **changes,
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/agent/v1/commands/next?wait=0"),
        ("POST", "/agent/v1/commands/1/result"),
        ("POST", "/agent/v1/heartbeat"),
        ("GET", "/agent/v1/bundles/" + "a" * 64),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer token-web-9"}], ids=["none", "unknown"])
async def test_unknown_agent_tokens_get_401(agents: Agents, method: str, path: str, headers: dict[str, str]) -> None:
    async with agents.client.request(method, path, headers=headers, json={}) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "Unauthorized"
    assert agents.fleet.heartbeats == [] and agents.fleet.results == []


async def test_next_command_returns_a_queued_command_for_this_host_only(agents: Agents) -> None:
    agents.fleet.enqueue("web-1", _command(7))
    async with agents.client.get("/agent/v1/commands/next?wait=0.05", headers=WEB2) as response:
        assert response.status == 204
    async with agents.client.get("/agent/v1/commands/next?wait=5", headers=WEB1) as response:
        assert response.status == 200
        assert (await response.json()) == {"command": _command(7)}


async def test_long_poll_wakes_when_a_command_arrives(agents: Agents) -> None:
    # A poll that the command did not wake answers only after its 60 s, long after the hang guard.
    poll = asyncio.create_task(agents.client.get("/agent/v1/commands/next?wait=60", headers=WEB1))
    await eventually(lambda: agents.fleet.waits == [60.0], "the poll waiting in the fleet")
    assert not poll.done()
    agents.fleet.enqueue("web-1", _command(3))
    response = await asyncio.wait_for(poll, HANG_GUARD)
    assert response.status == 200
    assert (await response.json())["command"]["id"] == 3
    response.release()


@pytest.mark.parametrize(("query", "wait"), [("wait=600", 60.0), ("wait=-5", 0.0), ("", 25.0), ("wait=0.2", 0.2)])
async def test_poll_wait_is_clamped(agents: Agents, query: str, wait: float) -> None:
    agents.fleet.enqueue("web-1", _command(1))  # answered at once, whatever the wait
    async with agents.client.get(f"/agent/v1/commands/next?{query}", headers=WEB1) as response:
        assert response.status == 200
    assert agents.fleet.waits == [wait]


async def test_result_is_recorded_and_repeats_are_accepted(agents: Agents) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    for _ in range(2):
        async with agents.client.post("/agent/v1/commands/5/result", json=_result(), headers=WEB1) as response:
            assert response.status == 200
            assert (await response.json()) == {"ok": True}
    assert [(host, ident, r["status"]) for host, ident, r in agents.fleet.results] == [("web-1", 5, "Succeeded")]


async def test_a_result_asking_for_next_is_answered_with_the_next_command(agents: Agents) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    agents.fleet.enqueue("web-1", _command(6))
    agents.fleet.queues["web-1"].get_nowait()  # 5 is claimed
    async with agents.client.post("/agent/v1/commands/5/result?next=0.2", json=_result(), headers=WEB1) as response:
        assert response.status == 200
        assert (await response.json()) == {"ok": True, "command": _command(6)}
    async with agents.client.post("/agent/v1/commands/6/result?next=0.05", json=_result(), headers=WEB1) as response:
        assert (await response.json()) == {"ok": True}  # nothing queued within the wait
    assert [ident for _, ident, _ in agents.fleet.results] == [5, 6]
    assert agents.fleet.waits == [0.2, 0.05]


async def test_a_result_without_next_never_hands_over_a_command(agents: Agents) -> None:
    """An older agent does not look for a command in the answer: it must stay queued for its next poll."""
    agents.fleet.enqueue("web-1", _command(5))
    agents.fleet.enqueue("web-1", _command(6))
    agents.fleet.queues["web-1"].get_nowait()
    async with agents.client.post("/agent/v1/commands/5/result", json=_result(), headers=WEB1) as response:
        assert (await response.json()) == {"ok": True}
    assert agents.fleet.waits == [] and agents.fleet.queues["web-1"].qsize() == 1


@pytest.mark.parametrize(("query", "wait"), [("next=600", 1.0), ("next=-1", 0.0), ("next=", 0.0)])
async def test_next_wait_is_clamped(agents: Agents, query: str, wait: float) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    async with agents.client.post(f"/agent/v1/commands/5/result?{query}", json=_result(), headers=WEB1) as response:
        assert response.status == 200
    assert agents.fleet.waits == [wait]


async def test_a_bad_next_is_a_400_and_the_result_is_not_recorded(agents: Agents) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    async with agents.client.post("/agent/v1/commands/5/result?next=soon", json=_result(), headers=WEB1) as r:
        assert r.status == 400
    assert agents.fleet.results == []


async def test_reporting_another_hosts_command_is_a_404(agents: Agents) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    async with agents.client.post("/agent/v1/commands/5/result", json=_result(), headers=WEB2) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "NotFound"
    assert agents.fleet.results == []


@pytest.mark.parametrize(
    "changes",
    [{"status": "Done"}, {"error_code": 9}, {"error_code": "1"}, {"log_tail": 5}, {"ended_at": "soon"}],
)
async def test_malformed_results_are_a_400(agents: Agents, changes: dict[str, Any]) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    async with agents.client.post("/agent/v1/commands/5/result", json=_result(**changes), headers=WEB1) as r:
        assert r.status == 400
        assert (await r.json())["usage"].startswith("POST /agent/v1/commands/{id}/result")
    assert agents.fleet.results == []


async def test_long_log_tails_keep_their_last_4096_bytes(agents: Agents) -> None:
    agents.fleet.enqueue("web-1", _command(5))
    tail = "x" * 10_000 + "the error is here"
    async with agents.client.post("/agent/v1/commands/5/result", json=_result(log_tail=tail), headers=WEB1) as r:
        assert r.status == 200
    kept = agents.fleet.results[0][2]["log_tail"]
    assert len(kept.encode()) == MAX_LOG_TAIL_BYTES
    assert kept.endswith("the error is here")


async def test_heartbeat_and_progress(agents: Agents) -> None:
    beat = {"tags": {"env": "staging"}, "version": "0.1.0", "running_command": None}
    async with agents.client.post("/agent/v1/heartbeat", json=beat, headers=WEB2) as response:
        assert response.status == 200
    assert agents.fleet.heartbeats == [("web-2", beat)]
    async with agents.client.post("/agent/v1/heartbeat", json={"tags": ["x"]}, headers=WEB2) as response:
        assert response.status == 400
    async with agents.client.post("/agent/v1/commands/1/progress", json={"log_tail": "…"}, headers=WEB2) as r:
        assert r.status == 202


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tags": ["x"]}, "'tags' must be an object of strings"),
        ({"version": {}}, "'version' must be a string"),
        ({"running_command": "7"}, "'running_command' must be a command id or null"),
        ({"running_command": True}, "'running_command' must be a command id or null"),
    ],
)
async def test_malformed_heartbeats_are_a_400_and_not_recorded(
    agents: Agents, body: dict[str, Any], words: str
) -> None:
    async with agents.client.post("/agent/v1/heartbeat", json=body, headers=WEB2) as response:
        assert response.status == 400
        assert words in (await response.json())["message"]
    assert agents.fleet.heartbeats == []


@dataclass(frozen=True, slots=True)
class BundleFleet:
    """A real Fleet on a real SQLite store, and the directory of its stored bundles."""

    store: SqliteStore
    fleet: Fleet
    bundles: Path

    async def store_bundle(self, name: str, data: bytes) -> str:
        """``data`` stored as the bundle of a new deployment ``d-NAME``; its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        (self.bundles / f"{sha256}.tar.gz").write_bytes(data)
        row = {"application": "hello", "environment": "staging", "group_name": "hello-staging", "status": "Created"}
        await self.store.create_deployment({"id": f"d-{name}", "revision_sha256": sha256, "created_at": 1.0, **row})
        return sha256

    def client(self) -> TestClient[web.Request, web.Application]:
        app = web.Application()
        app.add_subapp("/agent/v1", create_agent_app(self.fleet))
        return TestClient(TestServer(app, host="127.0.0.1"))


@pytest.fixture
async def bundle_fleet(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[BundleFleet]:
    store = await SqliteStore.open(tmp_path / "deploybot.db")

    async def on_result(command: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        pass

    bundles = tmp_path / "revisions"
    bundles.mkdir()
    fleet = Fleet(store, data_dir=tmp_path, clock=fake_clock, bundle_dir=bundles, on_result=on_result)
    try:
        yield BundleFleet(store, fleet, bundles)
    finally:
        await store.close()


async def test_an_agent_downloads_only_the_bundles_of_its_own_hosts_deployments(bundle_fleet: BundleFleet) -> None:
    fleet = bundle_fleet.fleet
    sha = {}
    for name, host in (("one", "web-1"), ("two", "web-2")):
        sha[name] = await bundle_fleet.store_bundle(name, bytes(range(256)) * 1000 + name.encode())
        spec: dict[str, Any] = {"deployment_id": f"d-{name}"}
        if name == "two":  # named in the command: the fleet knows without asking the store (both ways are checked)
            spec["revision"] = {"sha256": sha[name], "url": f"/agent/v1/bundles/{sha[name]}"}
        await fleet.dispatch(f"d-{name}", host, LifecycleEvent.DOWNLOAD_BUNDLE, spec)
    headers = {host: {"Authorization": f"Bearer {fleet.token_for(host)}"} for host in ("web-1", "web-2", "web-3")}
    async with bundle_fleet.client() as client:

        async def download(sha256: str, host: str) -> tuple[int, Any]:
            async with client.get(f"/agent/v1/bundles/{sha256}", headers=headers[host]) as response:
                if response.status != 200:
                    return response.status, await response.json()
                assert response.headers["Content-Type"] == "application/gzip"
                assert "Content-Encoding" not in response.headers
                return 200, hashlib.sha256(await response.read()).hexdigest()

        assert await download(sha["one"], "web-1") == (200, sha["one"])
        assert await download(sha["two"], "web-2") == (200, sha["two"])
        other, missing = await download(sha["two"], "web-1"), await download("0" * 64, "web-1")
        assert other[0] == missing[0] == 404  # another host's bundle looks like one that does not exist
        assert other[1]["error"] == missing[1]["error"] == "RevisionNotFound"
        assert (await download(sha["one"], "web-3"))[0] == 404  # a host with no command at all
        command = await fleet.next_command("web-1", wait=0)
        assert command is not None
        done = ResultBody(status="Succeeded", error_code=0, message="", log_tail="", started_at=1.0, ended_at=2.0)
        await fleet.report_result("web-1", command["id"], done)
        assert await download(sha["one"], "web-1") == (200, sha["one"])  # a host that had the command
        async with client.get("/agent/v1/bundles/not-a-sha", headers=headers["web-1"]) as response:
            assert response.status == 404


async def test_a_small_bundle_is_served_from_memory_after_its_first_download_and_a_large_one_from_its_file(
    bundle_fleet: BundleFleet,
) -> None:
    """A stored bundle never changes (it is named by its sha256), so the hosts of a deployment get a small one from
    memory. Rewriting the files under the server shows which answer came from where."""
    fleet = bundle_fleet.fleet
    contents = {"small": b"s" * 1000, "large": b"L" * (SmallBundles().max_bundle + 1)}
    sha = {}
    for name, data in contents.items():
        sha[name] = await bundle_fleet.store_bundle(name, data)
        revision = {"sha256": sha[name], "url": f"/agent/v1/bundles/{sha[name]}"}
        await fleet.dispatch(
            f"d-{name}", "web-1", LifecycleEvent.DOWNLOAD_BUNDLE, {"deployment_id": f"d-{name}", "revision": revision}
        )
    headers = {"Authorization": f"Bearer {fleet.token_for('web-1')}"}
    async with bundle_fleet.client() as client:

        async def download(name: str) -> bytes:
            async with client.get(f"/agent/v1/bundles/{sha[name]}", headers=headers) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/gzip"
                assert response.headers["X-Deploybot-Sha256"] == sha[name]
                return await response.read()

        assert [await download("small"), await download("large")] == [contents["small"], contents["large"]]
        for name in contents:
            (bundle_fleet.bundles / f"{sha[name]}.tar.gz").write_bytes(b"rewritten")
        assert await download("small") == contents["small"]  # from memory
        assert await download("large") == b"rewritten"  # from the file, as every time
        async with client.get(f"/agent/v1/bundles/{sha['small']}") as refused:
            assert refused.status == 401  # held or not, the token is asked for first


async def test_the_small_bundles_held_are_bounded_the_least_recently_served_going_first(tmp_path: Path) -> None:
    held = SmallBundles(max_bundle=10, max_total=25)
    files = {name: tmp_path / name for name in ("a", "b", "c", "big")}
    for name, path in files.items():
        path.write_bytes(name.encode() * (11 if name == "big" else 10 // len(name)))
    assert await held.read(files["a"]) == b"a" * 10
    assert await held.read(files["b"]) == b"b" * 10
    assert await held.read(files["a"]) == b"a" * 10  # served again: now the most recent
    assert await held.read(files["c"]) == b"c" * 10  # 30 bytes > 25: "b" goes
    assert await held.read(files["big"]) is None
    for path in files.values():
        path.write_bytes(b"new")
    assert [await held.read(files[name]) for name in ("a", "b", "c")] == [b"a" * 10, b"new", b"c" * 10]
    assert await held.read(files["big"]) is None  # known too large: not read again (it would fit now)


async def test_server_shutdown_ends_idle_long_polls_at_once(agents: Agents) -> None:
    # A poll that the shutdown did not end answers only after its 60 s, long after the hang guard.
    poll = asyncio.create_task(agents.client.get("/agent/v1/commands/next?wait=60", headers=WEB1))
    await eventually(lambda: agents.fleet.waits == [60.0], "the poll waiting in the fleet")
    await agents.client.app.shutdown()  # what AppRunner.cleanup() runs before waiting for handlers
    response = await asyncio.wait_for(poll, HANG_GUARD)
    assert response.status == 204
    response.release()
