"""The agent against a small fake server speaking the agent protocol on 127.0.0.1 (real HTTP, real agent loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import HANG_GUARD, FakeClock, eventually, group_noted

from engine.agent import Agent, AgentOptions, parse_assignments, read_token_file, run_agent
from engine.agent import client as agent_client
from engine.agent.hooks import HookGroup, HookRunner
from engine.agent.layout import KEPT_REVISIONS, AgentLayout, OngoingCommand
from engine.bundles import BuiltBundle, build_bundle
from engine.http11 import HttpClient

TOKEN = "agent-token-1"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FakeFleet:
    """The server side of the protocol, recording what the agent sent."""

    commands: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    result_attempts: dict[int, int] = field(default_factory=dict)
    refuse_results: int = 0
    refuse_polls: int = 0
    poll_times: list[float] = field(default_factory=list)  # read from ``clock`` as each poll arrives
    clock: Callable[[], float] = time.monotonic
    polled: asyncio.Condition = field(default_factory=asyncio.Condition)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    heartbeat_arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    bundles: dict[str, bytes] = field(default_factory=dict)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    result_arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    hand_over: dict[int, dict[str, Any]] = field(default_factory=dict)  # result id -> command in its answer
    result_queries: dict[int, dict[str, str]] = field(default_factory=dict)
    polls_before_result: dict[int, int] = field(default_factory=dict)
    token: str = TOKEN  # the one token accepted (a rotation changes it)
    observe: Callable[[int], object] | None = None  # called as each command's first result arrives
    observed: dict[int, object] = field(default_factory=dict)  # what it returned, by command id
    before_answer: Callable[[int], Awaitable[object]] | None = None  # awaited before a result is answered
    bundle_gets: int = 0
    bundle_answers: list[int] = field(default_factory=list)  # statuses the next bundle GETs get, before the bundle
    refused: int = 0  # requests answered 401
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/agent/v1/commands/next", self._next)
        app.router.add_post("/agent/v1/commands/{id}/result", self._result)
        app.router.add_post("/agent/v1/heartbeat", self._heartbeat)
        app.router.add_get("/agent/v1/bundles/{sha}", self._bundle)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            return web.json_response({"error": "unknown agent token"}, status=401)
        return await handler(request)

    async def _next(self, request: web.Request) -> web.Response:
        self.poll_times.append(self.clock())
        async with self.polled:
            self.polled.notify_all()
        if self.refuse_polls:
            self.refuse_polls -= 1
            return web.json_response({"error": "restarting"}, status=503)
        self.waiting.set()
        try:
            command = await asyncio.wait_for(self.commands.get(), float(request.query["wait"]))
        except TimeoutError:
            return web.Response(status=204)
        finally:
            self.waiting.clear()
        return web.json_response({"command": command})

    async def _result(self, request: web.Request) -> web.Response:
        command_id = int(request.match_info["id"])
        self.result_attempts[command_id] = self.result_attempts.get(command_id, 0) + 1
        if self.refuse_results:
            self.refuse_results -= 1
            return web.json_response({"error": "restarting"}, status=503)
        body = await request.json()
        body["received_at"] = time.time()
        if self.observe is not None and command_id not in self.observed:
            self.observed[command_id] = self.observe(command_id)
        self.results.setdefault(command_id, body)
        self.result_queries.setdefault(command_id, dict(request.query))
        self.polls_before_result.setdefault(command_id, len(self.poll_times))
        async with self.result_arrived:
            self.result_arrived.notify_all()
        if self.before_answer is not None:
            await self.before_answer(command_id)
        if command_id in self.hand_over and "next" in request.query:
            return web.json_response({"ok": True, "command": self.hand_over.pop(command_id)})
        return web.json_response({"ok": True})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(await request.json())
        async with self.heartbeat_arrived:
            self.heartbeat_arrived.notify_all()
        return web.json_response({"ok": True})

    async def _bundle(self, request: web.Request) -> web.Response:
        self.bundle_gets += 1
        if self.bundle_answers:
            return web.json_response({"error": "not now"}, status=self.bundle_answers.pop(0))
        data = self.bundles.get(request.match_info["sha"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/gzip")

    async def enqueue(self, command: dict[str, Any]) -> float:
        """Hand ``command`` to the waiting long poll; returns the epoch time it was enqueued."""
        await asyncio.wait_for(self.waiting.wait(), HANG_GUARD)
        now = time.time()
        await self.commands.put(command)
        return now

    async def result(self, command_id: int) -> dict[str, Any]:
        async with self.result_arrived:
            await asyncio.wait_for(self.result_arrived.wait_for(lambda: command_id in self.results), HANG_GUARD)
        return self.results[command_id]

    async def polls(self, count: int) -> None:
        """Until ``count`` polls have arrived in all."""
        async with self.polled:
            await asyncio.wait_for(self.polled.wait_for(lambda: len(self.poll_times) >= count), HANG_GUARD)

    async def heartbeat_naming(self, command_id: int) -> None:
        """Until a heartbeat names ``command_id`` as the command its agent is running."""

        def named() -> bool:
            return any(beat["running_command"] == command_id for beat in self.heartbeats)

        async with self.heartbeat_arrived:
            await asyncio.wait_for(self.heartbeat_arrived.wait_for(named), HANG_GUARD)


@pytest.fixture
async def fleet() -> AsyncIterator[FakeFleet]:
    fake = FakeFleet()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def options(fleet: FakeFleet, root: Path, **overrides: Any) -> AgentOptions:
    values: dict[str, Any] = {
        "server": fleet.url,
        "name": "web-1",
        "token": TOKEN,
        "root": root,
        "tags": {"role": "web"},
        "poll_wait": 5,
        "heartbeat_interval": 0.1,
    }
    return AgentOptions(**(values | overrides))


@contextlib.asynccontextmanager
async def running_agent(opts: AgentOptions) -> AsyncIterator[Agent]:
    http = HttpClient(opts.server)
    agent = Agent(opts, http, hook_runner=HookRunner(kill_grace=0.2, output_grace=0.5))
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await http.close()


def command(command_id: int, event: str, *, sha: str = "0" * 64, deployment: str = "d-1", **spec: Any) -> dict:
    return {
        "id": command_id,
        "deployment_id": deployment,
        "event": event,
        "spec": {
            "deployment_id": deployment,
            "application_name": "hello",
            "deployment_group_name": "hello-staging",
            "deployment_group_id": "hello-staging",
            "deployment_type": "IN_PLACE",
            "creator": "user",
            "revision": {"sha256": sha, "url": f"/agent/v1/bundles/{sha}", "size": 0, "commit": None},
            "file_exists_behavior": "DISALLOW",
            "ignore_application_stop_failures": False,
            "appspec_filename": "appspec.yml",
        }
        | spec,
    }


async def test_an_idle_agent_is_woken_by_the_command_not_by_its_poll_timeout(fleet: FakeFleet, tmp_path: Path) -> None:
    # How fast is `make bench`'s question; here: with an hour-long long poll, each command can only have reached the
    # agent because the server answered the waiting poll with it, and each took exactly one poll.
    async with running_agent(options(fleet, tmp_path / "agent", poll_wait=3600)):
        for command_id in range(1, 8):
            await fleet.enqueue(command(command_id, "ApplicationStop"))
            result = await fleet.result(command_id)
            assert result["status"] == "Succeeded" and result["error_code"] == 0
            assert result["message"].startswith("no scripts")
            assert fleet.polls_before_result[command_id] == command_id


async def test_download_install_and_hooks_end_to_end(fleet: FakeFleet, tmp_path: Path) -> None:
    revision = tmp_path / "revision"
    (revision / "scripts").mkdir(parents=True)
    (revision / "site").mkdir()
    (revision / "site" / "index.html").write_text("hello v1\n")
    (revision / "scripts" / "after.sh").write_text(
        '#!/bin/sh\necho "after install on $DEPLOYBOT_HOST in $DEPLOYBOT_PREFIX for $DEPLOYMENT_ID ($COLOR)"\n'
    )
    (revision / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: site\n    destination: /srv/www\n"
        "hooks:\n  AfterInstall:\n    - location: scripts/after.sh\n      timeout: 30\n"
    )
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    prefix = tmp_path / "prefix"
    root = tmp_path / "agent"
    async with running_agent(options(fleet, root, prefix=prefix, env={"COLOR": "blue"})):
        for command_id, event in enumerate(("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install"), 1):
            await fleet.enqueue(command(command_id, event, sha=built.sha256))
            result = await fleet.result(command_id)
            assert result["status"] == "Succeeded", (event, result)
        await fleet.enqueue(command(5, "AfterInstall", sha=built.sha256))
        after = await fleet.result(5)

        wrong = "f" * 64
        fleet.bundles[wrong] = built.path.read_bytes()
        await fleet.enqueue(command(6, "DownloadBundle", sha=wrong, deployment="d-2"))
        mismatch = await fleet.result(6)
        await fleet.enqueue(command(7, "BlockTraffic", sha=built.sha256))
        unsupported = await fleet.result(7)

    assert (prefix / "srv" / "www" / "index.html").read_text() == "hello v1\n"
    assert after["status"] == "Succeeded"
    deployment = AgentLayout(root).deployment_dir("hello-staging", "d-1")
    written = [deployment / "bundle.tar.gz", deployment / "deployment.json", deployment / "logs" / "scripts.log"]
    instructions = root / "deployment-instructions"
    written += [path for path in instructions.iterdir() if not path.is_symlink()]  # the cleanup record
    assert {str(path.relative_to(root)): oct(path.stat().st_mode & 0o777) for path in written} == {
        str(path.relative_to(root)): "0o600" for path in written
    }
    # The install records are links to the deployment's directory, whose name its group's directory lists anyway.
    links = {path.name: os.readlink(path) for path in instructions.iterdir() if path.is_symlink()}
    to_d1 = os.path.join("..", "deployments", "hello-staging", "d-1")
    assert links == {"hello-staging_last_successful_install": to_d1, "hello-staging_most_recent_install": to_d1}
    assert f"after install on web-1 in {prefix} for d-1 (blue)" in after["log_tail"]
    layout = AgentLayout(root)
    assert layout.last_successful_install("hello-staging") == layout.deployment_dir("hello-staging", "d-1")
    log_text = (layout.deployment_dir("hello-staging", "d-1") / "logs" / "scripts.log").read_text()
    assert "LifecycleEvent - AfterInstall" in log_text and "Script - scripts/after.sh" in log_text
    assert mismatch["status"] == "Failed" and mismatch["error_code"] == 5
    assert f"sha256 is {built.sha256} but the revision is {wrong}" in mismatch["message"]
    assert unsupported["error_code"] == 5 and unsupported["message"] == "Unsupported command type: BlockTraffic"


def _serve_empty_revision(fleet: FakeFleet, tmp_path: Path) -> BuiltBundle:
    """A revision with only an AppSpec, built as the server would and served by ``fleet``."""
    revision = tmp_path / "revision"
    revision.mkdir()
    (revision / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    return built


async def test_old_revisions_are_deleted_once_the_agent_waits_for_a_command(fleet: FakeFleet, tmp_path: Path) -> None:
    built = _serve_empty_revision(fleet, tmp_path)
    root = tmp_path / "agent"
    group = AgentLayout(root).group_dir("hello-staging")
    async with running_agent(options(fleet, root, tidy_after=0)):
        for command_id in range(1, KEPT_REVISIONS + 4):
            await fleet.enqueue(command(command_id, "DownloadBundle", sha=built.sha256, deployment=f"d-{command_id}"))
            assert (await fleet.result(command_id))["status"] == "Succeeded"
        await eventually(lambda: len(list(group.iterdir())) == KEPT_REVISIONS + 1, "the old revisions deleted")

    kept = {path.name for path in group.iterdir()}
    assert f"d-{KEPT_REVISIONS + 3}" in kept and len(kept) == KEPT_REVISIONS + 1  # the current one and five before


async def test_a_revision_the_host_still_holds_is_not_downloaded_again(fleet: FakeFleet, tmp_path: Path) -> None:
    built = _serve_empty_revision(fleet, tmp_path)
    root = tmp_path / "agent"
    layout = AgentLayout(root)
    async with running_agent(options(fleet, root)):
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256, deployment="d-1"))
        assert (await fleet.result(1))["message"].startswith("downloaded and extracted")
        await fleet.enqueue(command(2, "DownloadBundle", sha=built.sha256, deployment="d-2"))
        second = await fleet.result(2)
        assert second["status"] == "Succeeded" and second["message"].endswith("from its bundle already on this host")
        assert fleet.bundle_gets == 1
        assert (layout.archive_dir(layout.deployment_dir("hello-staging", "d-2")) / "appspec.yml").is_file()
        # A held copy that no longer matches the revision (edited on the host) is never used: it is downloaded.
        layout.bundle_path(layout.deployment_dir("hello-staging", "d-2")).write_bytes(b"not the revision")
        await fleet.enqueue(command(3, "DownloadBundle", sha=built.sha256, deployment="d-3"))
        third = await fleet.result(3)
        assert third["status"] == "Succeeded" and third["message"].startswith("downloaded and extracted")
        assert fleet.bundle_gets == 2
        assert (layout.archive_dir(layout.deployment_dir("hello-staging", "d-3")) / "appspec.yml").is_file()


@pytest.mark.parametrize(
    ("payload", "acls", "unpacked_on_loop", "installed_on_loop"),
    [
        (("random", 1_000), False, True, True),  # a small revision: no worker thread's round trip for either
        (("random", 300_000), False, False, False),  # over 256 KiB: heartbeats must keep their time meanwhile
        (("zeros", 2_000_000), False, False, False),  # a small bundle, but 2 MB once unpacked (its gzip trailer says)
        (("random", 1_000), True, True, False),  # permissions with acls run setfacl per path
    ],
    ids=["small", "big", "small-bundle-big-tar", "small-with-acls"],
)
async def test_a_small_revision_is_unpacked_and_installed_on_the_agents_loop_a_big_one_in_a_worker_thread(
    fleet: FakeFleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    payload: tuple[str, int],
    acls: bool,
    unpacked_on_loop: bool,
    installed_on_loop: bool,
) -> None:
    from engine import bundles
    from engine.agent import installer

    revision = tmp_path / "revision"
    revision.mkdir()
    kind, size = payload
    (revision / "payload.bin").write_bytes(os.urandom(size) if kind == "random" else bytes(size))
    permissions = "permissions:\n  - object: /srv/app/payload.bin\n    acls: ['u:nobody:r']\n" if acls else ""
    (revision / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: payload.bin\n    destination: /srv/app\n" + permissions
    )
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    threads: dict[str, int] = {}
    extract, install = bundles.safe_extract, installer.install

    def noted_extract(*args: Any, **kwargs: Any) -> None:
        threads["unpacked"] = threading.get_ident()
        extract(*args, **kwargs)

    def noted_install(*args: Any, **kwargs: Any) -> Any:
        threads["installed"] = threading.get_ident()
        return install(*args, **kwargs)

    monkeypatch.setattr(bundles, "safe_extract", noted_extract)
    monkeypatch.setattr(installer, "install", noted_install)
    async with running_agent(options(fleet, tmp_path / "agent", prefix=tmp_path / "prefix")):
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256))
        assert (await fleet.result(1))["status"] == "Succeeded"
        await fleet.enqueue(command(2, "Install", sha=built.sha256))
        installed = await fleet.result(2)
    assert installed["status"] == "Succeeded" or acls  # (setfacl may be missing: where it ran is the question)

    loop_thread = threading.get_ident()
    assert (threads["unpacked"] == loop_thread) is unpacked_on_loop
    assert (threads["installed"] == loop_thread) is installed_on_loop


def test_the_agent_reads_a_bundles_unpacked_size_from_its_gzip_trailer_or_a_plain_tars_size(tmp_path: Path) -> None:
    import gzip
    import tarfile

    from engine.agent.executor import _tar_bytes

    revision = tmp_path / "revision"
    revision.mkdir()
    (revision / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    (revision / "data").write_bytes(bytes(100_000))
    built = build_bundle(revision, tmp_path / "bundles")
    assert _tar_bytes(built.path) == len(gzip.decompress(built.path.read_bytes()))
    plain = tmp_path / "plain.tar"
    plain.write_bytes(gzip.decompress(built.path.read_bytes()))
    assert _tar_bytes(plain) == plain.stat().st_size
    other = tmp_path / "bundle.tar.bz2"
    with tarfile.open(other, "w:bz2") as archive:
        archive.add(revision / "appspec.yml", "appspec.yml")
    short = tmp_path / "short.gz"
    short.write_bytes(b"\x1f\x8b\x08")
    # Unknown: unpacked and installed in a worker thread.
    assert _tar_bytes(other) is None and _tar_bytes(short) is None and _tar_bytes(tmp_path / "missing") is None


async def test_old_revisions_go_only_while_the_agent_waits_and_the_next_command_waits_for_them(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No deletion beside a run (a command handed over with a result included): it takes the CPU from the hosts still
    busy with the deployment. Once the agent polls it starts, and a command that arrives meanwhile waits for it."""
    built = _serve_empty_revision(fleet, tmp_path)
    deleting, may_finish = threading.Event(), threading.Event()
    order: list[object] = []
    prune = AgentLayout.prune_revisions

    def held_prune(layout: AgentLayout, *args: Any, **kwargs: Any) -> list[Path]:
        order.append("deleting")
        deleting.set()
        assert may_finish.wait(HANG_GUARD)
        order.append("deleted")
        return prune(layout, *args, **kwargs)

    monkeypatch.setattr(AgentLayout, "prune_revisions", held_prune)
    fleet.observe = order.append
    fleet.hand_over[1] = command(2, "ApplicationStop", deployment="d-2")
    async with running_agent(options(fleet, tmp_path / "agent", tidy_after=0)):
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256, deployment="d-1"))
        assert (await fleet.result(2))["status"] == "Succeeded"
        await eventually(deleting.is_set, "the deletion started once the agent polled")
        assert order == [1, 2, "deleting"]  # not while the run (1, then 2 handed over with its answer) went on
        await fleet.enqueue(command(3, "ApplicationStop", deployment="d-3"))
        await fleet.heartbeat_naming(3)  # the agent has command 3 in hand: it waits for the deletion to end
        assert 3 not in fleet.results
        may_finish.set()
        assert (await fleet.result(3))["status"] == "Succeeded"
    assert order == [1, 2, "deleting", "deleted", 3]


async def test_a_command_handed_over_with_a_result_runs_without_a_poll(fleet: FakeFleet, tmp_path: Path) -> None:
    fleet.hand_over[1] = command(2, "ApplicationStop", deployment="d-2")
    async with running_agent(options(fleet, tmp_path / "agent")):
        await fleet.enqueue(command(1, "ApplicationStop"))
        assert (await fleet.result(2))["status"] == "Succeeded"
    assert "next" in fleet.result_queries[1] and "next" in fleet.result_queries[2]
    assert fleet.polls_before_result[2] == fleet.polls_before_result[1] == 1  # 2 came with 1's answer, not a poll


async def test_results_are_retried_until_the_server_accepts_them(fleet: FakeFleet, tmp_path: Path) -> None:
    fleet.refuse_results = 2
    async with running_agent(options(fleet, tmp_path / "agent")) as agent:
        await fleet.enqueue(command(11, "ApplicationStop"))
        result = await fleet.result(11)
        assert fleet.result_attempts[11] == 3
        assert result["status"] == "Succeeded"
        await fleet.enqueue(command(12, "ApplicationStop"))  # and the agent goes on polling afterwards
        assert (await fleet.result(12))["status"] == "Succeeded"
        assert agent.layout.ongoing() == []


def _two_file_bundle(tmp_path: Path) -> tuple[str, bytes]:
    revision = tmp_path / "revision"
    (revision / "site").mkdir(parents=True)
    (revision / "site" / "index.html").write_text("hello\n")
    (revision / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles:\n  - source: site\n    destination: /srv\n")
    built = build_bundle(revision, tmp_path / "bundles")
    return built.sha256, built.path.read_bytes()


@contextlib.asynccontextmanager
async def _downloading_on_a_fake_clock(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[int]
) -> AsyncIterator[FakeClock]:
    """An agent running DownloadBundle of a bundle the server answers with ``answers`` before serving it, its pauses
    on the clock yielded (its heartbeats sleep an hour on it too)."""
    clock = FakeClock()
    monkeypatch.setattr(agent_client, "asyncio", _AsyncioOnClock(clock))
    sha, data = _two_file_bundle(tmp_path)
    fleet.bundles[sha] = data
    fleet.bundle_answers = answers
    async with running_agent(options(fleet, tmp_path / "agent", heartbeat_interval=3600)):
        await fleet.enqueue(command(1, "DownloadBundle", sha=sha))
        yield clock


async def test_a_bundle_the_server_cannot_serve_for_the_moment_is_fetched_again_not_failed(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replicas behind a load balancer: while one fails over, the balancer answers 503 (no healthy server) or 502.
    # Results and polls are sent again; the bundle must be too, or the host fails for a moment's outage.
    async with _downloading_on_a_fake_clock(fleet, tmp_path, monkeypatch, [503, 502, 504, 429]) as clock:
        for waited in (1.0, 2.0, 4.0, 5.0):  # doubling, at most _MAX_DELAY (5 s) apart
            await clock.sleeping(2)  # the heartbeats' long sleep, and the bundle's next try
            assert sorted(clock.sleepers) == sorted([waited, 3600 - clock.monotonic()])
            await clock.advance(waited, settle=waited < 5)  # after the last, the agent reports: over HTTP
        result = await fleet.result(1)
    assert result["status"] == "Succeeded", result
    assert fleet.bundle_gets == 5


async def test_a_bundle_refused_for_good_fails_download_bundle_at_once(fleet: FakeFleet, tmp_path: Path) -> None:
    sha, _ = _two_file_bundle(tmp_path)  # not served: the server answers 404, as for a revision not this host's
    async with running_agent(options(fleet, tmp_path / "agent")):
        await fleet.enqueue(command(1, "DownloadBundle", sha=sha))
        result = await fleet.result(1)
    assert result["status"] == "Failed" and "HTTP 404" in result["message"], result
    assert fleet.bundle_gets == 1


async def test_a_bundle_the_server_never_serves_fails_download_bundle_after_a_minute_of_tries(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _downloading_on_a_fake_clock(fleet, tmp_path, monkeypatch, [503] * 100) as clock:
        for attempt in range(1, 15):  # each try after a pause; the last one's failure is reported over HTTP
            await clock.sleeping(2)
            await clock.advance(min(clock.sleepers), settle=attempt < 14)
        result = await fleet.result(1)
    assert result["status"] == "Failed" and "HTTP 503" in result["message"], result
    # 1 + 2 + 4 + 5 x 11 s = 62 s of waiting: the try after the minute is the last one.
    assert fleet.bundle_gets == 15 and clock.monotonic() == pytest.approx(62.0)


class _AsyncioOnClock:
    """``asyncio`` as engine.agent.client sees it, but sleeping on a FakeClock: the agent takes no Clock (yet)."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float, result: Any = None) -> Any:
        await self._clock.sleep(seconds)
        return result


async def test_polls_back_off_while_the_server_refuses(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(agent_client, "asyncio", _AsyncioOnClock(clock))
    fleet.clock = clock.monotonic
    fleet.refuse_polls = 2
    async with running_agent(options(fleet, tmp_path / "agent", heartbeat_interval=3600)):
        await clock.sleeping(2)  # the heartbeat task, and the poll loop after the first refusal
        assert fleet.poll_times == [0.0] and clock.sleepers == [0.5, 3600]
        await clock.advance(0.375)
        assert fleet.poll_times == [0.0]  # no poll before the delay is over
        await clock.advance(0.125)  # refused again: the delay doubles
        assert fleet.poll_times == [0.0, 0.5] and clock.sleepers == [1.0, 3599.5]
        await clock.advance(0.875)
        assert fleet.poll_times == [0.0, 0.5]
        await clock.advance(0.125, settle=False)  # this poll is answered: a long poll, waiting for a command
        await asyncio.wait_for(fleet.waiting.wait(), HANG_GUARD)
    assert fleet.poll_times == [0.0, 0.5, 1.5]


async def test_a_heartbeat_that_found_no_server_is_retried_soon_not_after_the_interval(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(agent_client, "asyncio", _AsyncioOnClock(clock))
    nothing_listens = f"http://127.0.0.1:{_closed_port()}"
    async with running_agent(options(fleet, tmp_path / "agent", server=nothing_listens, heartbeat_interval=3600)):
        await clock.sleeping(2)  # the poll loop and the heartbeats, both refused a connection
        assert clock.sleepers == [0.5, 0.5]
        await clock.advance(0.5)
        await clock.sleeping(2)
        assert clock.sleepers == [1.0, 1.0]  # both back off the same way, far below the 3600 s interval
    assert fleet.heartbeats == []


def _closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_commands_left_by_a_crashed_agent_are_failed_with_code_7(fleet: FakeFleet, tmp_path: Path) -> None:
    root = tmp_path / "agent"
    layout = AgentLayout(root)
    layout.mark_ongoing(OngoingCommand(42, "d-9", "AfterInstall", time.time() - 30))
    finished = {"status": "Succeeded", "error_code": 0, "message": "done", "log_tail": "", "started_at": 1.0}
    layout.mark_ongoing(OngoingCommand(43, "d-9", "ValidateService", 1.0), result=finished | {"ended_at": 2.0})
    async with running_agent(options(fleet, root)):
        crashed = await fleet.result(42)
        unreported = await fleet.result(43)
    assert crashed["status"] == "Failed" and crashed["error_code"] == 7
    assert crashed["message"] == "Failed: Failing in-progress lifecycle event after an agent restart."
    assert unreported["status"] == "Succeeded" and unreported["message"] == "done"  # its real result, not code 7
    assert layout.ongoing() == []


def test_ongoing_records_written_by_an_older_agent_are_reported_and_removed(tmp_path: Path) -> None:
    records = tmp_path / "ongoing-command"
    records.mkdir()
    old = {"command_id": 3, "deployment_id": "d-1", "event": "Install", "started_at": 7.0, "result": {"status": "x"}}
    (records / "3").write_text(json.dumps(old))  # one file, as agents before .result wrote
    (records / "4").write_text(json.dumps(old | {"command_id": 4, "result": None}))
    (records / "4.result").write_text('{"status": "Succ')  # killed while writing it
    (records / "5").write_text(json.dumps(old | {"command_id": 5, "event": "AfterInstall", "result": None}))
    (records / "5.result").write_text('{"status": "Succeeded", "message": "ok"}')
    layout = AgentLayout(tmp_path)
    found = {record.command_id: (record.event, record.result) for record in layout.ongoing()}
    assert found == {3: ("Install", {"status": "x"}), 4: ("Install", None), 5: ("AfterInstall", found[5][1])}
    assert found[5][1] == {"status": "Succeeded", "message": "ok"}
    for command_id in found:
        layout.clear_ongoing(command_id)
    assert layout.ongoing() == [] and list(records.iterdir()) == []


def test_a_journal_line_torn_mid_write_reads_as_what_it_could_not_finish(tmp_path: Path) -> None:
    layout = AgentLayout(tmp_path)
    layout.mark_ongoing(OngoingCommand(1, "d-1", "Install", 5.0))
    layout.mark_ongoing(OngoingCommand(1, "d-1", "Install", 5.0), result={"status": "Succeeded", "message": "ok"})
    layout.mark_ongoing(OngoingCommand(2, "d-1", "AfterInstall", 6.0))
    journal = tmp_path / "ongoing-command" / "journal"
    with journal.open("a") as torn:
        torn.write('2 result {"status": "Succ')  # killed while writing 2's result
    found = {record.command_id: (record.event, record.result) for record in AgentLayout(tmp_path).ongoing()}
    assert found == {1: ("Install", {"status": "Succeeded", "message": "ok"}), 2: ("AfterInstall", None)}

    restarted = AgentLayout(tmp_path)  # a new agent appends after the torn line, never glued to it
    assert [record.command_id for record in restarted.ongoing()] == [1, 2]
    restarted.mark_ongoing(OngoingCommand(3, "d-2", "ApplicationStop", 8.0))
    with journal.open("a") as torn:
        torn.write('3 result {"status": "Succeeded", "message": "stopped"}\n4 start {"deployment_id": "d-')
    found = {record.command_id: (record.event, record.result) for record in AgentLayout(tmp_path).ongoing()}
    assert found[3] == ("ApplicationStop", {"status": "Succeeded", "message": "stopped"})
    assert found[4] == ("", None)  # its start cut short still names the command: it is reported with code 7
    assert list(found) == [1, 2, 3, 4]
    for command_id in (1, 2, 3, 4):
        restarted.clear_ongoing(command_id)
    assert restarted.ongoing() == [] and journal.read_bytes() == b""


def test_a_scripts_process_group_is_a_journal_line_the_last_of_which_counts(tmp_path: Path) -> None:
    layout = AgentLayout(tmp_path)
    layout.mark_ongoing(OngoingCommand(1, "d-1", "AfterInstall", 5.0))
    layout.mark_group(1, HookGroup(1234, start_time=99))  # its first script
    layout.mark_group(1, None)  # ... exited
    layout.mark_ongoing(OngoingCommand(2, "d-1", "ApplicationStart", 6.0))
    layout.mark_group(2, HookGroup(2345, start_time=100))
    layout.mark_group(2, None)
    layout.mark_group(2, HookGroup(3456, start_time=101))  # its second script runs now
    groups = {record.command_id: record.group for record in AgentLayout(tmp_path).ongoing()}
    assert groups == {1: None, 2: HookGroup(3456, 101)}

    journal = tmp_path / "ongoing-command" / "journal"
    with journal.open("a") as torn:
        torn.write('2 group {"pgid": 4567, "start_time": 1')  # killed while noting a third script
    assert [record.group for record in AgentLayout(tmp_path).ongoing()] == [None, None]  # never a guessed group
    (tmp_path / "ongoing-command" / "2.group").write_text('{"pgid": 5678, "start_time": 102}')  # an older agent's
    restarted = AgentLayout(tmp_path)
    assert [record.group for record in restarted.ongoing()] == [None, HookGroup(5678, 102)]
    for command_id in (1, 2):
        restarted.clear_ongoing(command_id)
    assert restarted.ongoing() == [] and journal.read_bytes() == b""
    assert [path.name for path in journal.parent.iterdir()] == ["journal"]  # the older agent's file went with it


async def test_a_crash_record_torn_mid_write_is_reported_with_code_7(fleet: FakeFleet, tmp_path: Path) -> None:
    root = tmp_path / "agent"
    layout = AgentLayout(root)
    layout.mark_ongoing(OngoingCommand(7, "d-9", "AfterInstall", 1.0))
    finished = {"status": "Succeeded", "error_code": 0, "message": "done", "log_tail": "", "started_at": 1.0}
    layout.mark_ongoing(OngoingCommand(7, "d-9", "AfterInstall", 1.0), result=finished | {"ended_at": 2.0})
    layout.mark_ongoing(OngoingCommand(8, "d-9", "ApplicationStart", 3.0))
    with (root / "ongoing-command" / "journal").open("a") as torn:
        torn.write('8 result {"status": "Succeeded", "error_co')  # the agent was killed mid-write
    async with running_agent(options(fleet, root)) as agent:
        unreported, torn_result = await fleet.result(7), await fleet.result(8)
        await fleet.enqueue(command(9, "ApplicationStop"))  # and it goes on running commands afterwards
        assert (await fleet.result(9))["status"] == "Succeeded"
        await eventually(lambda: agent.running_command is None, "the agent is done with 9")
    assert unreported["status"] == "Succeeded" and unreported["message"] == "done"
    assert torn_result["status"] == "Failed" and torn_result["error_code"] == 7
    assert AgentLayout(root).ongoing() == []


async def test_crash_records_create_no_file_per_event(fleet: FakeFleet, tmp_path: Path) -> None:
    root = tmp_path / "agent"
    async with running_agent(options(fleet, root)) as agent:
        for command_id in range(1, 4):
            await fleet.enqueue(command(command_id, "ApplicationStop"))
            assert (await fleet.result(command_id))["status"] == "Succeeded"
        await eventually(lambda: agent.running_command is None, "the agent is done with 3")
    records = root / "ongoing-command"
    assert [path.name for path in records.iterdir()] == ["journal"] and (records / "journal").read_bytes() == b""


async def test_heartbeats_carry_tags_and_the_running_command(fleet: FakeFleet, tmp_path: Path) -> None:
    revision = tmp_path / "revision"
    (revision / "scripts").mkdir(parents=True)
    go = tmp_path / "go"
    (revision / "scripts" / "wait.sh").write_text(f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.01; done\n")
    (revision / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n  ApplicationStart:\n    - location: scripts/wait.sh\n"
    )
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    async with running_agent(options(fleet, tmp_path / "agent")):
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256))
        await fleet.result(1)
        await fleet.enqueue(command(2, "ApplicationStart", sha=built.sha256))
        await fleet.heartbeat_naming(2)  # the script runs until the test has seen that
        assert 2 not in fleet.results
        go.touch()
        assert (await fleet.result(2))["status"] == "Succeeded"
    assert all(beat["tags"] == {"role": "web"} and beat["version"] for beat in fleet.heartbeats)
    assert fleet.heartbeats[0]["running_command"] is None


async def test_stopping_mid_command_kills_the_script_and_reports_it(fleet: FakeFleet, tmp_path: Path) -> None:
    revision = tmp_path / "revision"
    (revision / "scripts").mkdir(parents=True)
    (revision / "scripts" / "hang.sh").write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nsleep 30\n")
    (revision / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n  ValidateService:\n    - location: scripts/hang.sh\n"
    )
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    root = tmp_path / "agent"
    async with running_agent(options(fleet, root)) as agent:
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256))
        await fleet.result(1)
        await fleet.enqueue(command(2, "ValidateService", sha=built.sha256))
        await eventually(lambda: agent.running_command == 2 and (tmp_path / "pid").exists(), "the script runs")
    result = await fleet.result(2)
    assert result["status"] == "Failed" and result["error_code"] == 7
    pid = int((tmp_path / "pid").read_text())
    # SIGKILL went to the script's group before the result was sent; the kernel ends it right after
    await eventually(lambda: _dead_or_zombie(pid), f"script {pid} is killed")
    assert AgentLayout(root).ongoing() == []


async def test_an_agent_restarted_after_kill_9_ends_the_orphaned_hook_before_reporting_code_7(
    fleet: FakeFleet, tmp_path: Path
) -> None:
    revision = tmp_path / "revision"
    (revision / "scripts").mkdir(parents=True)
    pids = {name: tmp_path / f"{name}.pid" for name in ("script", "child")}
    (revision / "scripts" / "hang.sh").write_text(
        f"#!/bin/sh\necho $$ > {pids['script']}\nsleep 60 &\necho $! > {pids['child']}\nwait\n"
    )
    (revision / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n  ValidateService:\n    - location: scripts/hang.sh\n"
    )
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    token_file = tmp_path / "agent.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    argv = [sys.executable, "-m", "bot", "agent", "--server", fleet.url, "--name", "web-1"]
    argv += ["--token-file", str(token_file), "--root", str(tmp_path / "agent")]
    log = (tmp_path / "agent.log").open("ab")
    started: list[subprocess.Popen[bytes]] = []

    def start_agent() -> subprocess.Popen[bytes]:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        started.append(agent)
        return agent

    def running(name: str) -> bool:
        return not _dead_or_zombie(int(pids[name].read_text()))

    try:
        first = start_agent()
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256))
        await fleet.result(1)
        await fleet.enqueue(command(2, "ValidateService", sha=built.sha256))
        await eventually(lambda: all(path.exists() and path.read_text() for path in pids.values()), "the hook runs")
        # Its journal line whole: a line cut short by the kill reads as none (layout.mark_group), and the orphan
        # would not be the restarted agent's to end.
        await eventually(lambda: group_noted(tmp_path / "agent", 2), "the agent noted its group")
        first.kill()  # kill -9: the agent cannot end its hook
        await asyncio.to_thread(first.wait, HANG_GUARD)
        assert running("script") and running("child")  # orphaned: its own session outlives the agent

        fleet.observe = lambda command_id: {name: running(name) for name in pids}
        start_agent()
        result = await fleet.result(2)
        assert result["status"] == "Failed" and result["error_code"] == 7
        assert fleet.observed[2] == {"script": False, "child": False}  # both gone before the result was sent
        assert "ended the hook script (process group" in (tmp_path / "agent.log").read_text()
    finally:
        for agent in started:
            agent.kill()
            await asyncio.to_thread(agent.wait, HANG_GUARD)
        log.close()
        for path in pids.values():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(path.read_text()), signal.SIGKILL)


async def test_a_recorded_hook_group_that_is_no_longer_the_script_is_never_signalled(
    fleet: FakeFleet, tmp_path: Path
) -> None:
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)  # was given the dead script's pid
    try:
        layout = AgentLayout(tmp_path / "agent")
        layout.mark_ongoing(OngoingCommand(42, "d-9", "AfterInstall", time.time() - 30))
        layout.mark_group(42, HookGroup(unrelated.pid, start_time=1))  # the script started right after boot
        assert [record.group for record in layout.ongoing()] == [HookGroup(unrelated.pid, 1)]
        async with running_agent(options(fleet, tmp_path / "agent")):
            crashed = await fleet.result(42)
            await fleet.heartbeat_naming(42)
        assert crashed["error_code"] == 7
        assert unrelated.poll() is None
        assert fleet.heartbeats[0]["running_command"] == 42  # named until its result is in, as a command run now
        records = tmp_path / "agent" / "ongoing-command"
        assert layout.ongoing() == [] and [path.name for path in records.iterdir()] == ["journal"]
    finally:
        unrelated.kill()
        unrelated.wait(HANG_GUARD)


def _dead_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


async def test_run_agent_returns_cleanly_on_sigterm(fleet: FakeFleet, tmp_path: Path) -> None:
    task = asyncio.create_task(run_agent(options(fleet, tmp_path / "agent")))
    await asyncio.wait_for(fleet.waiting.wait(), HANG_GUARD)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, HANG_GUARD)  # returns, does not raise
    assert task.done() and task.exception() is None

    polls = len(fleet.poll_times)
    task = asyncio.create_task(run_agent(options(fleet, tmp_path / "agent")))
    await fleet.polls(polls + 1)  # running, in its long poll
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # a plain cancellation stays a cancellation


async def test_hooks_get_the_basics_not_the_agents_environment(
    fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent on a real host may have been started with secrets in its environment: none reaches a hook.
    monkeypatch.setenv("DEPLOYBOT_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key")
    monkeypatch.setenv("LANG", "C.UTF-8")
    revision = tmp_path / "revision"
    (revision / "scripts").mkdir(parents=True)
    (revision / "scripts" / "env.sh").write_text("#!/bin/sh\nenv\n")
    (revision / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n  ValidateService:\n    - location: scripts/env.sh\n"
    )
    built = build_bundle(revision, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    env = {"COLOR": "blue", "DEPLOYBOT_AGENT_TOKEN": TOKEN}  # not even through --env
    async with running_agent(options(fleet, tmp_path / "agent", env=env)):
        await fleet.enqueue(command(1, "DownloadBundle", sha=built.sha256))
        await fleet.result(1)
        await fleet.enqueue(command(2, "ValidateService", sha=built.sha256))
        tail = (await fleet.result(2))["log_tail"]
    names = {line.partition("=")[0] for line in tail.splitlines()}
    assert {"PATH", "LANG", "COLOR", "LIFECYCLE_EVENT", "DEPLOYMENT_ID", "DEPLOYBOT_HOST"} <= names
    assert not names & {"DEPLOYBOT_AGENT_TOKEN", "AWS_SECRET_ACCESS_KEY"}
    assert TOKEN not in tail and "secret-key" not in tail


async def test_a_rotated_token_is_read_again_from_the_token_file_after_a_401(fleet: FakeFleet, tmp_path: Path) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    async with running_agent(options(fleet, tmp_path / "agent", token="", token_file=token_file)):
        await fleet.enqueue(command(1, "ApplicationStop"))
        assert (await fleet.result(1))["status"] == "Succeeded"
        fleet.token = "rotated-token"  # the server rotated it: the old one is refused from now on
        token_file.write_text("rotated-token\n")  # and the operator wrote the new one to the file
        # Whichever request meets the 401 first (heartbeat, result or poll), the agent reads the file again: only
        # that way can the result of command 2 get through.
        await fleet.enqueue(command(2, "ApplicationStop"))
        assert (await fleet.result(2))["status"] == "Succeeded"
    assert fleet.refused >= 1


def test_token_files_and_options_keep_the_token_to_themselves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"cannot read the agent token file {tmp_path / 'missing.token'}")):
        read_token_file(tmp_path / "missing.token")
    (tmp_path / "empty.token").write_text(" \n")
    with pytest.raises(ValueError, match=re.escape(f"the agent token file {tmp_path / 'empty.token'} is empty")):
        read_token_file(tmp_path / "empty.token")
    (tmp_path / "good.token").write_text("  dbt_abc\n")
    assert read_token_file(tmp_path / "good.token") == "dbt_abc"
    assert "dbt_abc" not in repr(AgentOptions(server="http://x", name="web-1", token="dbt_abc"))


def test_parse_assignments() -> None:
    assert parse_assignments(["role=web", "zone=a=b", "empty="]) == {"role": "web", "zone": "a=b", "empty": ""}
    with pytest.raises(ValueError, match="expected KEY=VALUE, got 'oops'"):
        parse_assignments(["oops"])


# --- the executor directly: which revision's scripts run, and failures that become results ----------------------


def write_revision(root: Path, version: str, *, appspec_extra: str = "") -> Path:
    (root / "scripts").mkdir(parents=True)
    for event in ("stop", "block"):
        (root / "scripts" / f"{event}.sh").write_text(f"#!/bin/sh\necho {event} {version}\nexit ${{FAIL:-0}}\n")
    (root / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n"
        "  ApplicationStop:\n    - location: scripts/stop.sh\n"
        "  BeforeBlockTraffic:\n    - location: scripts/block.sh\n" + appspec_extra
    )
    return root


async def test_pre_download_hooks_run_the_right_earlier_revision(tmp_path: Path) -> None:
    from engine.agent.executor import CommandExecutor
    from engine.core.agent_protocol import Command

    bundles = {
        version: build_bundle(write_revision(tmp_path / version, version), tmp_path / "bundles")
        for version in ("v1", "v2")
    }
    by_sha = {built.sha256: built for built in bundles.values()}

    async def fetch(url: str, dest: Path) -> str:
        sha = url.rsplit("/", 1)[1]
        dest.write_bytes(by_sha[sha].path.read_bytes())
        return sha

    executor = CommandExecutor(AgentLayout(tmp_path / "agent"), host="web-1", fetch=fetch)

    async def run(event: str, deployment: str, version: str, **spec: Any) -> Any:
        body = command(1, event, sha=bundles[version].sha256, deployment=deployment, **spec)
        return await executor.execute(Command.from_json(body))

    first_stop = await run("ApplicationStop", "d-1", "v1")
    assert first_stop.succeeded and first_stop.message.startswith("no scripts")  # first deployment: a no-op
    for event in ("DownloadBundle", "Install"):
        assert (await run(event, "d-1", "v1")).succeeded
    assert "stop v1" in (await run("ApplicationStop", "d-2", "v2")).log_tail  # the last successful install
    assert (await run("DownloadBundle", "d-2", "v2")).succeeded  # v2 becomes the most recent, not successful
    assert "stop v2" in (await run("ApplicationStop", "d-2", "v2")).log_tail  # its own archive exists now

    plain = await run("BeforeBlockTraffic", "d-3", "v1")
    rollback = await run("BeforeBlockTraffic", "d-4", "v1", creator="codeDeployRollback", deployment_type="BLUE_GREEN")
    assert "block v1" in plain.log_tail  # last successful install
    assert "block v2" in rollback.log_tail  # blue/green rollback: the most recent install

    executor.extra_env["FAIL"] = "3"
    failed = await run("ApplicationStop", "d-5", "v1")
    tolerated = await run("ApplicationStop", "d-6", "v1", ignore_application_stop_failures=True)
    assert failed.code == 4 and failed.message.endswith("failed with exit code 3")
    assert tolerated.code == 4  # reported as it is: the server's machine decides to go on
    assert (await run("BeforeInstall", "d-7", "v1")).code == 5  # a current-revision hook with no download


class _HeldLayout(AgentLayout):
    """An agent layout whose deployment directories are made only once ``made`` is set (or fail with ``error``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.made = threading.Event()
        self.error: OSError | None = None

    def ensure_deployment_dir(self, group_id: str, deployment_id: str, spec: object) -> Path:
        if not self.made.wait(HANG_GUARD):
            raise AssertionError("the deployment directory was never let be made")
        if self.error is not None:
            raise self.error
        return super().ensure_deployment_dir(group_id, deployment_id, spec)


async def test_an_application_stop_with_no_script_reports_while_the_deployment_directory_is_made(
    tmp_path: Path,
) -> None:
    # The directory is made in a worker thread from the deployment's first command: an ApplicationStop with nothing
    # to run answers at once (its result's round trip overlaps the making), the commands that use it wait for it.
    from engine.agent.executor import CommandExecutor
    from engine.core.agent_protocol import Command

    built = {v: build_bundle(write_revision(tmp_path / v, v), tmp_path / "bundles") for v in ("v1", "v2")}

    async def fetch(url: str, dest: Path) -> str:
        sha = url.rsplit("/", 1)[1]
        dest.write_bytes(next(b for b in built.values() if b.sha256 == sha).path.read_bytes())
        return sha

    layout = _HeldLayout(tmp_path / "agent")
    executor = CommandExecutor(layout, host="web-1", fetch=fetch)

    async def run(event: str, deployment: str, version: str) -> Any:
        body = command(1, event, sha=built[version].sha256, deployment=deployment)
        return await asyncio.wait_for(executor.execute(Command.from_json(body)), HANG_GUARD)

    stopped = await run("ApplicationStop", "d-1", "v1")  # the group's first deployment here: no script
    assert stopped.succeeded and stopped.message.startswith("no scripts")
    assert not layout.deployment_dir("hello-staging", "d-1").exists()  # still held: it did not wait for it
    downloading = asyncio.ensure_future(run("DownloadBundle", "d-1", "v1"))
    layout.made.set()
    assert (await downloading).succeeded  # it waited: its bundle is written in that directory
    assert (layout.deployment_dir("hello-staging", "d-1") / "deployment.json").is_file()
    assert (await run("Install", "d-1", "v1")).succeeded

    # A directory that cannot be made fails the first command that needs it; the next one tries again.
    layout.error = OSError(28, "No space left on device")
    assert (await run("AfterBlockTraffic", "d-2", "v2")).message == "no scripts"  # v1 hooks none: no wait
    with pytest.raises(OSError, match="No space left"):
        await run("DownloadBundle", "d-2", "v2")
    layout.error = None
    assert (await run("DownloadBundle", "d-2", "v2")).succeeded
    # With a script to run, ApplicationStop waits for the directory (its scripts' log is kept there): it fails when
    # the directory cannot be made, rather than run the script.
    layout.error = OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        await run("ApplicationStop", "d-3", "v2")
    layout.error = None
    assert "stop v1" in (await run("ApplicationStop", "d-4", "v2")).log_tail  # the last successful install's: v1
    assert "stop v1" in (layout.deployment_dir("hello-staging", "d-4") / "logs" / "scripts.log").read_text()
    assert not (layout.deployment_dir("hello-staging", "d-3") / "logs").exists()  # d-3's script never ran


async def test_invalid_appspec_and_install_conflicts_are_code_5(tmp_path: Path) -> None:
    from engine.agent.executor import CommandExecutor
    from engine.core.agent_protocol import Command

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "appspec.yml").write_text("version: '0.0'\nos: linux\n")
    clash = tmp_path / "clash"
    (clash / "site").mkdir(parents=True)
    (clash / "site" / "index.html").write_text("new\n")
    (clash / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles:\n  - source: site\n    destination: /www\n")
    prefix = tmp_path / "prefix"
    (prefix / "www").mkdir(parents=True)
    (prefix / "www" / "index.html").write_text("someone else's\n")
    built = {name: build_bundle(tmp_path / name, tmp_path / "bundles") for name in ("bad", "clash")}

    async def fetch(url: str, dest: Path) -> str:
        sha = url.rsplit("/", 1)[1]
        dest.write_bytes(next(b for b in built.values() if b.sha256 == sha).path.read_bytes())
        return sha

    executor = CommandExecutor(AgentLayout(tmp_path / "agent"), host="web-1", fetch=fetch, prefix=prefix)
    for name, deployment in (("bad", "d-1"), ("clash", "d-2")):
        downloaded = await executor.execute(
            Command.from_json(command(1, "DownloadBundle", sha=built[name].sha256, deployment=deployment))
        )
        assert downloaded.succeeded
    invalid = await executor.execute(Command.from_json(command(2, "BeforeInstall", sha=built["bad"].sha256)))
    clashing = await executor.execute(
        Command.from_json(command(3, "Install", sha=built["clash"].sha256, deployment="d-2"))
    )
    assert invalid.code == 5 and invalid.message.startswith("invalid AppSpec file:\nappspec.yml:1:")
    assert clashing.code == 5 and "a specified file already exists at this location" in clashing.message
    assert (prefix / "www" / "index.html").read_text() == "someone else's\n"
