"""What replicas on one PostgreSQL database share besides the deployments: revision bundles, agent tokens, the
replica registry and what ``/healthz`` says of the store; and that on SQLite (one server) nothing of that changes.

Replicas here are real Deployers (bot/assembly.py) or their real parts, each with its own data directory, on one
throwaway database (tests/postgres_support.py); time comes from a FakeClock where refreshing matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import FakeClock, deployer_from, eventually
from postgres_support import PostgresServer, raw_execute
from test_service import CONFIG as SERVICE_CONFIG
from test_service import make_revision

from bot.app import create_app
from bot.settings import Settings
from engine.adapters.agent_tokens import AgentTokens
from engine.core.errors import RevisionNotFound
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer
from engine.runtime.replicas import ALIVE_PERIODS, REFRESH_SECONDS, ReplicaRegistry, owned_groups
from engine.runtime.revisions import BundleDamaged, RevisionStore
from engine.store.bundle_records import CHUNK_BYTES
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore

TOKEN = "replica-test-token"


@pytest.fixture
async def database(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture
async def two_stores(database: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    first, second = await PostgresStore.open(database), await PostgresStore.open(database)
    yield first, second
    await first.close()
    await second.close()


def big_revision(root: Path, name: str, size: int) -> Path:
    """A revision whose bundle spans several database chunks (random bytes do not compress)."""
    path = make_revision(root, name, name)
    (path / "payload.bin").write_bytes(hashlib.shake_256(name.encode()).digest(size))
    return path


# -- revision bundles


async def test_a_bundle_added_on_one_replica_is_fetched_by_another_into_its_own_archive(
    two_stores: tuple[PostgresStore, PostgresStore], tmp_path: Path, fake_clock: FakeClock
) -> None:
    store_a, store_b = two_stores
    a = RevisionStore(store_a, tmp_path / "a" / "revisions", fake_clock, shared=store_a)
    b = RevisionStore(store_b, tmp_path / "b" / "revisions", fake_clock, shared=store_b)
    added = await a.add(big_revision(tmp_path, "rev-big", 3 * CHUNK_BYTES))
    assert not b.path(added.sha256).exists()

    fetched = await b.get(added.sha256)

    assert fetched.sha256 == added.sha256
    assert b.path(added.sha256).read_bytes() == a.path(added.sha256).read_bytes()
    assert stat.S_IMODE(b.path(added.sha256).stat().st_mode) == 0o600
    row = await store_b.get_bundle(added.sha256)
    assert row is not None and row["size"] == added.size and row["chunks"] > 1
    assert [p.name for p in b.directory.iterdir()] == [f"{added.sha256}.tar.gz"]  # no scratch file left


async def test_many_requests_for_a_missing_bundle_fetch_it_once(
    two_stores: tuple[PostgresStore, PostgresStore], tmp_path: Path, fake_clock: FakeClock
) -> None:
    store_a, store_b = two_stores
    a = RevisionStore(store_a, tmp_path / "a", fake_clock, shared=store_a)
    b = RevisionStore(store_b, tmp_path / "b", fake_clock, shared=store_b)
    added = await a.add(make_revision(tmp_path, "rev-a", "1"))
    reads: list[int] = []
    chunk = store_b.bundle_chunk

    async def counted(sha256: str, seq: int) -> bytes | None:
        reads.append(seq)
        return await chunk(sha256, seq)

    store_b.bundle_chunk = counted  # type: ignore[method-assign]
    assert await asyncio.gather(*(b.fetch(added.sha256) for _ in range(5))) == [True] * 5
    assert reads == [0]


async def test_a_damaged_copy_in_the_database_is_never_served(
    two_stores: tuple[PostgresStore, PostgresStore], tmp_path: Path, fake_clock: FakeClock
) -> None:
    store_a, store_b = two_stores
    a = RevisionStore(store_a, tmp_path / "a", fake_clock, shared=store_a)
    b = RevisionStore(store_b, tmp_path / "b", fake_clock, shared=store_b)
    added = await a.add(make_revision(tmp_path, "rev-a", "1"))
    await raw_execute(store_a, f"UPDATE revision_bundle_chunks SET data = 'x'::bytea WHERE sha256 = '{added.sha256}'")

    with pytest.raises(BundleDamaged) as refused:
        await b.fetch(added.sha256)

    assert refused.value.sha256 == added.sha256 and "hashes to" in refused.value.reason
    assert list(b.directory.iterdir()) == []


async def test_a_bundle_stored_nowhere_is_not_found(
    two_stores: tuple[PostgresStore, PostgresStore], tmp_path: Path, fake_clock: FakeClock
) -> None:
    b = RevisionStore(two_stores[1], tmp_path / "b", fake_clock, shared=two_stores[1])
    assert await b.fetch("0" * 64) is False
    with pytest.raises(RevisionNotFound):
        await b.get("0" * 64)


async def test_on_sqlite_bundles_stay_in_the_data_directory(tmp_path: Path, fake_clock: FakeClock) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        revisions = RevisionStore(store, tmp_path / "revisions", fake_clock)
        added = await revisions.add(make_revision(tmp_path, "rev-a", "1"))
        assert revisions.path(added.sha256).exists()
        assert await store.get_bundle(added.sha256) is None
    finally:
        await store.close()


# -- agent tokens


def _tokens(store: PostgresStore, clock: FakeClock, *, listen: bool = True) -> AgentTokens:
    return AgentTokens.in_store(store, clock, listen=store.listen if listen else None)


async def test_an_agent_token_issued_on_one_replica_is_accepted_by_another(
    two_stores: tuple[PostgresStore, PostgresStore], fake_clock: FakeClock
) -> None:
    a, b = _tokens(two_stores[0], fake_clock), _tokens(two_stores[1], fake_clock)
    await a.open()
    await b.open()
    try:
        token = await a.issue("edge-1")
        await eventually(lambda: b.authenticate(token) == "edge-1", "the other replica to accept the token")
        assert b.has("edge-1") and b.token_for("edge-1") == token  # what `deploybot agent-token` prints there too
    finally:
        await a.close()
        await b.close()


async def test_a_token_issued_before_its_notice_arrives_is_looked_up(
    two_stores: tuple[PostgresStore, PostgresStore], fake_clock: FakeClock
) -> None:
    a, b = _tokens(two_stores[0], fake_clock), _tokens(two_stores[1], fake_clock, listen=False)
    await a.open()
    await b.open()
    try:
        token = await a.issue("edge-2")
        assert b.authenticate(token) is None  # b hears nothing: the first request is refused (the agent retries) ...
        await eventually(lambda: b.authenticate(token) == "edge-2", "the lookup to learn the token")
        assert b.authenticate("dbt_not-a-token") is None
    finally:
        await a.close()
        await b.close()


async def test_a_token_revoked_on_one_replica_is_refused_by_every_replica(
    two_stores: tuple[PostgresStore, PostgresStore], fake_clock: FakeClock
) -> None:
    a, b = _tokens(two_stores[0], fake_clock), _tokens(two_stores[1], fake_clock)
    await a.open(["web-1"])
    await b.open(["web-1"])
    try:
        token = a.token_for("web-1")
        assert b.authenticate(token) == "web-1"
        assert await b.withdraw("web-1") is True
        assert b.authenticate(token) is None
        await eventually(lambda: a.authenticate(token) is None, "the issuing replica to refuse the revoked token")
        rotated = await a.issue("web-1", rotate=True)
        await eventually(lambda: b.authenticate(rotated) == "web-1", "the rotated token to be accepted")
        assert rotated != token
    finally:
        await a.close()
        await b.close()


async def test_a_rotation_by_the_synchronous_calls_reaches_the_database_in_order(
    two_stores: tuple[PostgresStore, PostgresStore], fake_clock: FakeClock
) -> None:
    """What POST /api/v1/agent-tokens with rotate does today: revoke_token, then token_for, without waiting."""
    a, b = _tokens(two_stores[0], fake_clock), _tokens(two_stores[1], fake_clock)
    await a.open(["web-1"])
    await b.open()
    try:
        old = a.token_for("web-1")
        assert a.revoke("web-1")
        new = a.token_for("web-1")
        await eventually(lambda: b.authenticate(new) == "web-1", "the other replica to accept the new token")
        assert b.authenticate(old) is None and a.token_for("web-1") == new
        assert [row["token"] for row in await two_stores[1].list_agent_tokens()] == [new]
    finally:
        await a.close()
        await b.close()


async def test_replicas_issuing_a_host_its_first_token_at_once_agree_on_one(
    two_stores: tuple[PostgresStore, PostgresStore], fake_clock: FakeClock
) -> None:
    a, b = _tokens(two_stores[0], fake_clock), _tokens(two_stores[1], fake_clock)
    try:
        await asyncio.gather(a.open(["web-1", "web-2"]), b.open(["web-2", "web-1"]))
        assert a.token_for("web-1") == b.token_for("web-1") and a.token_for("web-2") == b.token_for("web-2")
        rows = await two_stores[0].list_agent_tokens()
        assert [row["host"] for row in rows] == ["web-1", "web-2"]
    finally:
        await a.close()
        await b.close()


async def test_a_lost_notice_is_made_good_by_the_periodic_refresh(
    two_stores: tuple[PostgresStore, PostgresStore], fake_clock: FakeClock
) -> None:
    a = _tokens(two_stores[0], fake_clock)
    b = AgentTokens.in_store(two_stores[1], fake_clock, refresh_seconds=30)  # hears no notice at all
    await a.open(["web-1"])
    await b.open()
    try:
        token = a.token_for("web-1")
        assert b.authenticate(token) == "web-1"
        assert await a.withdraw("web-1")
        assert b.authenticate(token) == "web-1"  # the revocation's notice never reached b ...
        await fake_clock.advance(30)
        await eventually(lambda: b.authenticate(token) is None, "the refresh to drop the revoked token")
    finally:
        await a.close()
        await b.close()


async def test_on_sqlite_agent_tokens_stay_in_the_0600_file(tmp_path: Path) -> None:
    deployer = await deployer_from(SERVICE_CONFIG % {"heartbeat": 60}, tmp_path)
    try:
        token = deployer.fleet.token_for("s1")
        file = tmp_path / "var" / "agent-tokens.json"
        assert json.loads(file.read_text())["s1"] == token
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert await deployer.store.list_agent_tokens() == []  # type: ignore[attr-defined]
    finally:
        await deployer.close()


# -- replicas, through the doors


async def _replica(url: str, workdir: Path) -> Deployer:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "rev-a").exists():
        make_revision(workdir, "rev-a", "1")
    return await deployer_from(SERVICE_CONFIG % {"heartbeat": 60} + f"store:\n  url: {url}\n", workdir)


async def _client(deployer: Deployer, data_dir: Path) -> TestClient[web.Request, web.Application]:
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=data_dir)
    client = TestClient(TestServer(create_app(settings, deployer=deployer), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_an_agent_downloads_through_a_replica_a_bundle_another_one_stored(database: str, tmp_path: Path) -> None:
    """Replica A takes the deployment and its bundle; the agent of s1 asks replica B (which never saw either) with the
    token A issued: B fetches the bundle from the database and serves it."""
    first = await _replica(database, tmp_path / "a")
    second = await _replica(database, tmp_path / "b")
    client = await _client(second, tmp_path / "b" / "var")
    try:
        started = await first.start(DeployRequest("app", "staging"))
        sha = started["revision"]["sha256"]
        await eventually(lambda: _queued_for(first, "s1"), "s1's first command to be queued")
        token = first.fleet.token_for("s1")
        assert not second.revisions.path(sha).exists()

        async with client.get(f"/agent/v1/bundles/{sha}", headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.read()
            assert response.status == 200, body
        async with client.get(f"/agent/v1/bundles/{sha}", headers={"Authorization": "Bearer dbt_nobody"}) as refused:
            assert refused.status == 401
    finally:
        await client.close()
        await second.close()
        await first.close()
    assert hashlib.sha256(body).hexdigest() == sha
    assert body == first.revisions.path(sha).read_bytes()


async def _queued_for(deployer: Deployer, host: str) -> bool:
    return bool(await deployer.store.list_commands(host=host))


async def test_replicas_are_listed_alive_until_one_stops_refreshing(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    clock_a, clock_b = FakeClock(), FakeClock()  # b's time stands still: it refreshes no more (as if killed)
    a = ReplicaRegistry(
        two_stores[0], clock_a, replica_id="a", url="http://127.0.0.1:1", version="1", refresh_seconds=5
    )
    b = ReplicaRegistry(
        two_stores[1], clock_b, replica_id="b", url="http://127.0.0.1:2", version="1", refresh_seconds=5
    )
    await a.start()
    await b.start()
    try:
        listed = {r["id"]: r for r in await a.replicas()}
        assert {(i, r["alive"], r["url"], r["this"]) for i, r in listed.items()} == {
            ("a", True, "http://127.0.0.1:1", True),
            ("b", True, "http://127.0.0.1:2", False),
        }
        for _ in range(ALIVE_PERIODS + 1):
            await clock_a.advance(REFRESH_SECONDS)
        listed = {r["id"]: r for r in await a.replicas()}
        assert (listed["a"]["alive"], listed["b"]["alive"]) == (True, False)
        assert listed["a"]["last_seen"] == clock_a.now()  # a refreshed its row on each period
    finally:
        await b.close()
        await a.close()
    assert await two_stores[0].list_replicas() == []  # a stopped replica removes its row


def test_what_a_replica_owns_is_its_unexpired_leases() -> None:
    leases = [
        {"group_name": "web-prod", "owner": "a", "generation": 3, "expires_at": 110.0},
        {"group_name": "api-prod", "owner": "a", "generation": 1, "expires_at": 90.0},  # expired
        {"group_name": "web-staging", "owner": "b", "generation": 7, "expires_at": 120.0},
        {"group_name": "api-staging", "owner": "b", "generation": 2, "expires_at": 130.0, "held": False},  # released
    ]
    assert owned_groups(leases, "a", 100.0) == [{"group": "web-prod", "generation": 3, "expires_at": 110.0}]
    assert owned_groups(leases, "b", 100.0) == [{"group": "web-staging", "generation": 7, "expires_at": 120.0}]


async def test_healthz_reports_the_store_and_answers_503_once_it_is_gone(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database()
    deployer = await _replica(url, tmp_path)
    client = await _client(deployer, tmp_path / "var")
    try:
        async with client.get("/healthz") as response:
            healthy = (response.status, await response.json())
        async with client.get("/api/v1/replicas", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            replicas = (response.status, await response.json())
        admin = await asyncpg.connect(postgres_server.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()
        async with client.get("/healthz") as response:
            gone = (response.status, await response.json())
    finally:
        await client.close()
        await deployer.close()
    status, body = healthy
    assert status == 200 and body["ok"] is True and body["version"]
    assert body["store"]["reachable"] is True and body["store"]["backend"] == "postgresql"
    assert body["store"]["migrations"]["latest"] == (await _latest_migration())
    assert body["replica"]["id"] == deployer.replica.replica_id  # type: ignore[attr-defined]
    assert replicas[0] == 200 and [r["id"] for r in replicas[1]["replicas"]] == [body["replica"]["id"]]
    status, body = gone
    assert status == 503 and body["ok"] is False
    assert body["store"]["reachable"] is False and body["store"]["backend"] == "postgresql" and body["store"]["error"]


async def _latest_migration() -> str:
    from engine.store import pg_migrations

    return list(pg_migrations.SCRIPTS)[-1]


async def test_healthz_and_replicas_on_sqlite_show_the_one_server(tmp_path: Path) -> None:
    deployer = await deployer_from(SERVICE_CONFIG % {"heartbeat": 60}, tmp_path)
    client = await _client(deployer, tmp_path / "var")
    try:
        async with client.get("/healthz") as response:
            health = (response.status, await response.json())
        async with client.get("/api/v1/replicas", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            listed = await response.json()
    finally:
        await client.close()
        await deployer.close()
    status, body = health
    assert status == 200 and body["ok"] is True and body["version"]  # the fields clients relied on, kept
    assert body["store"] == {
        "backend": "sqlite",
        "reachable": True,
        "migrations": {"applied": len(await _sqlite_migrations(tmp_path)), "latest": (await _latest_migration())},
    }
    assert [(r["alive"], r["this"]) for r in listed["replicas"]] == [(True, True)]


async def _sqlite_migrations(tmp_path: Path) -> list[str]:
    store = await SqliteStore.open(tmp_path / "var" / "deploybot.db")
    try:
        return await store.applied_migrations()
    finally:
        await store.close()


def test_deploybot_replicas_says_what_each_owns_and_how_long_its_lease_has_left() -> None:
    from bot.cli.replicas_cmd import owns_text

    owns = [{"group": "shop-prod", "generation": 3, "expires_at": 107.4}, {"group": "web", "expires_at": 90.0}]
    assert owns_text(owns, 100.0) == "shop-prod (lease 7 s), web (lease 0 s)"
    assert owns_text([], 100.0) == "-"
    assert owns_text(None, 100.0) == "n/a (no group leases)"


async def test_a_plan_on_a_replica_without_the_bundle_finds_it_stored(database: str, tmp_path: Path) -> None:
    """Replica A stored the revision; a plan naming it on replica B (which never saw the bundle) says it is stored,
    as a deployment there would find it, and B has it from then on."""
    first = await _replica(database, tmp_path / "a")
    second = await _replica(database, tmp_path / "b")
    try:
        revision = await first.revisions.add(tmp_path / "a" / "rev-a")
        sha = revision.sha256
        assert not second.revisions.path(sha).exists()
        plan = await second.plan(DeployRequest("app", "staging", revision=f"sha256:{sha}"))
        assert (plan["revision"]["sha256"], plan["revision"]["stored"]) == (sha, True), plan["revision"]
        assert second.revisions.path(sha).read_bytes() == first.revisions.path(sha).read_bytes()
    finally:
        await second.close()
        await first.close()
