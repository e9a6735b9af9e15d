"""Per-user API tokens through the real door: bot.app on 127.0.0.1 (port 0) over a real Deployer and its SQLite
file, time on a FakeClock; and the ``deploybot token`` commands against that server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import FakeClock, deployer_from
from test_service import make_revision

from bot.app import create_app
from bot.cli import main
from bot.http import parse_duration
from bot.settings import Settings, ensure_api_token_file
from engine.runtime.deployer import Deployer
from engine.runtime.tokens import SESSION_SECONDS, ApiTokens, TokenRefusal, token_digest
from engine.store.sqlite import SqliteStore

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
ADMINS_ONLY = "only admins may administer deploybot (server.admins)"  # engine.core.policy's rule
TOKEN_FIELDS = {"id", "user", "name", "status", "created_at", "expires_at", "revoked_at", "last_used_at"}


@dataclass
class Door:
    client: TestClient[Any, Any]
    deployer: Deployer
    clock: FakeClock
    boot: str  # the bootstrap token (var/api-token)
    url: str

    async def call(self, method: str, path: str, *, token: str, status: int, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        async with self.client.request(method, "/api/v1" + path, headers=headers, **kwargs) as response:
            body = await response.json()
            assert response.status == status, body
            if status == 401:
                body["www_authenticate"] = response.headers["WWW-Authenticate"]
            return body

    async def create(self, user: str, *, token: str | None = None, **body: Any) -> dict[str, Any]:
        made: dict[str, Any] = await self.call(
            "POST", "/tokens", token=token or self.boot, json={"user": user, **body}, status=201
        )
        return made


@contextlib.asynccontextmanager
async def serving(settings: Settings, deployer: Deployer) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    """One run of the server's app (a start registers the bootstrap tokens; a new one is a restart)."""
    server = TestServer(create_app(settings, deployer=deployer), host="127.0.0.1", port=0)
    async with TestClient(server) as client:
        yield client, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def workdir(tmp_path: Path) -> Path:
    make_revision(tmp_path, "rev-a", "1")
    return tmp_path


@pytest.fixture
async def deployer(workdir: Path) -> AsyncIterator[Deployer]:
    opened = await deployer_from(CONFIG, workdir, clock=FakeClock(tick=0.001))  # distinct, ordered timestamps
    yield opened
    await opened.close()


@pytest.fixture
def settings(workdir: Path) -> Settings:
    settings = Settings.from_env({}, data_dir=workdir / "var")
    ensure_api_token_file(settings.api_token_file)  # as `deploybot serve` does
    return settings


@pytest.fixture
async def door(deployer: Deployer, settings: Settings) -> AsyncIterator[Door]:
    assert isinstance(deployer.clock, FakeClock)
    boot = settings.api_token_file.read_text().strip()
    async with serving(settings, deployer) as (client, url):
        yield Door(client, deployer, deployer.clock, boot, url)


# ---------------------------------------------------------------------------------------------------- who asks


async def test_a_forged_actor_header_changes_nothing(door: Door) -> None:
    alice = (await door.create("alice"))["token"]
    forged = {"X-Deploybot-Actor": "root"}
    lock = {"application": "app", "environment": "staging", "reason": "audit"}
    assert (await door.call("POST", "/locks", token=alice, json=lock, headers=forged, status=201))["owner"] == "alice"
    # root is an admin: a forged name would have been allowed to freeze; alice's token is not.
    freeze = {"application": "*", "reason": "x"}
    refused = await door.call("POST", "/locks", token=alice, json=freeze, headers=forged, status=403)
    assert (refused["actor"], refused["rule"]) == ("alice", "only admins may freeze deployments (server.admins)")
    await door.call("DELETE", "/locks", token=alice, json=lock, headers=forged, status=200)
    request = {"application": "app", "environment": "staging"}
    started = await door.call("POST", "/deployments", token=alice, json=request, headers=forged, status=201)
    assert started["created_by"] == "alice"
    log = await door.call("GET", f"/deployments/{started['id']}/log", token=alice, status=200)
    assert {e["actor"] for e in log if e["kind"] == "deployment.requested"} == {"alice"}
    audit = await door.deployer.store.read_log()
    assert [(e["kind"], e["actor"]) for e in audit if e["kind"].startswith("lock.")] == [
        ("lock.set", "alice"),
        ("lock.released", "alice"),
    ]
    assert "root" not in {e["actor"] for e in audit}


async def test_create_use_revoke_and_the_next_request_is_401_revoked(door: Door) -> None:
    made = await door.create("alice", name="laptop")
    assert made["token"].startswith("dbt_") and len(made["token"]) == 4 + 43
    assert made["id"].startswith("tok-") and len(made["id"]) == 14
    assert (made["user"], made["name"], made["status"], made["expires_at"]) == ("alice", "laptop", "active", None)
    await door.call("GET", "/applications", token=made["token"], status=200)

    revoked = await door.call("DELETE", f"/tokens/{made['id']}", token=door.boot, status=200)
    assert (revoked["status"], revoked["revoked_at"] is not None) == ("revoked", True)
    refused = await door.call("GET", "/applications", token=made["token"], status=401)
    assert (refused["error"], refused["reason"]) == ("Unauthorized", "revoked")
    assert refused["message"].startswith(f"revoked: API token {made['id']} was revoked at ")
    assert refused["www_authenticate"] == (
        'Bearer realm="deploybot", error="invalid_token", error_description="revoked"'
    )
    again = await door.call("DELETE", f"/tokens/{made['id']}", token=door.boot, status=200)
    assert again["revoked_at"] == revoked["revoked_at"]  # the first revocation stays
    missing = await door.call("DELETE", "/tokens/tok-nosuchthing", token=door.boot, status=404)
    assert (missing["error"], missing["token_id"]) == ("TokenNotFound", "tok-nosuchthing")
    kinds = [(e["kind"], e["actor"], e["data"]) for e in await door.deployer.store.read_log()]
    mine = [k for k in kinds if k[0].startswith("token.") and k[2]["user"] == "alice"]
    assert [(kind, actor) for kind, actor, _ in mine] == [
        ("token.created", "deploybot-admin"),
        ("token.revoked", "deploybot-admin"),
    ]


async def test_a_revocation_by_another_server_on_the_same_store_counts_at_once(door: Door, workdir: Path) -> None:
    alice = await door.create("alice")
    await door.call("GET", "/hosts", token=alice["token"], status=200)
    other = await SqliteStore.open(workdir / "var" / "deploybot.db")  # a second server's connection
    try:
        await ApiTokens(other, FakeClock()).revoke(alice["id"], actor="root")
    finally:
        await other.close()
    assert (await door.call("GET", "/hosts", token=alice["token"], status=401))["reason"] == "revoked"


async def test_an_expired_token_is_401_expired(door: Door) -> None:
    made = await door.create("alice", expires_in="1h")
    assert made["expires_at"] == pytest.approx(door.clock.now() + 3600, abs=1)
    door.clock.jump(3599)
    await door.call("GET", "/queue", token=made["token"], status=200)
    door.clock.jump(1)
    refused = await door.call("GET", "/queue", token=made["token"], status=401)
    assert refused["reason"] == "expired" and refused["message"].startswith(f"expired: API token {made['id']} expired")
    listed = await door.call("GET", "/tokens?user=alice", token=door.boot, status=200)
    assert [t["status"] for t in listed["tokens"]] == ["expired"]


@pytest.mark.parametrize(
    ("token", "reason"), [("dbt_not-a-token", "unknown token"), ("x" * 5000, "unknown token"), ("", "missing")]
)
async def test_unknown_and_missing_tokens_say_so(door: Door, token: str, reason: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with door.client.get("/api/v1/applications", headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["reason"] == reason
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="deploybot"')


# ---------------------------------------------------------------------------------------------------- secrets


async def test_the_store_never_holds_a_token_and_the_list_shows_no_secret(door: Door, workdir: Path) -> None:
    made = await door.create("alice", name="ci", expires_in=86400)
    await door.call("GET", "/applications", token=made["token"], status=200)
    listed = await door.call("GET", "/tokens", token=door.boot, status=200)
    assert [(t["user"], t["name"]) for t in listed["tokens"]] == [("deploybot-admin", "bootstrap"), ("alice", "ci")]
    assert all(set(t) == TOKEN_FIELDS for t in listed["tokens"])
    assert listed["tokens"][1]["last_used_at"] is not None
    async with door.client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {door.boot}"}) as response:
        text = await response.text()
    for secret in (made["token"], door.boot):
        assert secret not in text and token_digest(secret) not in text

    files = sorted((workdir / "var").glob("deploybot.db*"))
    assert files and files[0].name == "deploybot.db"
    for path in files:  # the database and its WAL, as they are on disk
        data = path.read_bytes()
        assert made["token"].encode() not in data and door.boot.encode() not in data
    with contextlib.closing(sqlite3.connect(workdir / "var" / "deploybot.db")) as conn:
        stored = conn.execute("SELECT token_sha256 FROM api_tokens WHERE id = ?", (made["id"],)).fetchone()
        assert stored == (hashlib.sha256(made["token"].encode()).hexdigest(),)
        with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
            conn.execute("DELETE FROM api_tokens")
        with pytest.raises(sqlite3.IntegrityError, match="keeps its identity"):
            conn.execute("UPDATE api_tokens SET user = 'root'")


# ---------------------------------------------------------------------------------------------------- who may


async def test_only_admins_manage_tokens_and_bodies_are_checked(door: Door) -> None:
    alice = (await door.create("alice"))["token"]
    for method, path in (("POST", "/tokens"), ("GET", "/tokens"), ("DELETE", "/tokens/tok-x")):
        refused = await door.call(method, path, token=alice, json={"user": "bob"}, status=403)
        assert refused["message"] == f"alice may not administer deploybot on *: {ADMINS_ONLY}"
        assert refused["rule"] == ADMINS_ONLY
    root = (await door.create("root"))["token"]
    assert (await door.create("bob", token=root))["user"] == "bob"  # server.admins may

    for body, message in [
        ({}, "'user' is required"),
        ({"user": "two words"}, "'user' must be at most 100 printable characters, no spaces"),
        ({"user": "deploybot-admin"}, "deploybot-admin is reserved for the bootstrap token"),
        ({"user": "bob", "expires_in": "soon"}, "'expires_in': expected seconds, or a duration"),
        ({"user": "bob", "expires_in": -5}, "'expires_in': expected seconds"),
        ({"user": "bob", "expires_in": True}, "'expires_in': expected seconds"),
        ({"user": "bob", "name": 7}, "'name' must be a non-empty string"),
    ]:
        answer = await door.call("POST", "/tokens", token=root, json=body, status=400)
        assert message in answer["message"], body
        assert answer["usage"].startswith("POST /api/v1/tokens")


async def test_with_a_users_section_tokens_are_only_for_declared_users(workdir: Path, settings: Settings) -> None:
    deployer = await deployer_from("users: {alice: {}, root: {}}\n" + CONFIG, workdir, clock=FakeClock())
    try:
        boot = {"Authorization": f"Bearer {settings.api_token_file.read_text().strip()}"}
        async with serving(settings, deployer) as (client, _):
            refused = await client.post("/api/v1/tokens", json={"user": "mallory"}, headers=boot)
            assert refused.status == 400
            assert (await refused.json())["message"] == "'mallory' is not a declared user (users: alice, root)"
            assert (await client.post("/api/v1/tokens", json={"user": "alice"}, headers=boot)).status == 201
    finally:
        await deployer.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("1w2d", 9 * 86400), ("3600", 3600), (60, 60), (1.5, 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1", "d", "5x", "3d 4h", "1e999", None, False, 40 * 365 * 86400])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---------------------------------------------------------------------------------------------------- the engine


async def test_token_rows_keep_their_first_revocation_and_latest_use(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        clock = FakeClock()
        tokens = ApiTokens(store, clock)
        made, plaintext = await tokens.create("alice", name="laptop", expires_in=None, actor="root")
        assert not await store.insert_api_token(
            "tok-other00000", user="bob", name="x", token_sha256=token_digest(plaintext), created_at=clock.now()
        )  # a known hash is never registered again, under any id
        assert (await tokens.authenticate(plaintext)).user == "alice"
        clock.jump(30)
        await tokens.authenticate(plaintext)  # used again within TOUCH_EVERY: no write
        [row] = await tokens.list()
        assert row.last_used_at == clock.start
        clock.jump(60)
        await tokens.authenticate(plaintext)
        assert (await tokens.list())[0].last_used_at == clock.start + 90
        await store.touch_api_token(made.id, at=clock.start)  # never backwards
        assert (await tokens.list())[0].last_used_at == clock.start + 90

        first = await tokens.revoke(made.id, actor="root")
        clock.jump(5)
        assert (await tokens.revoke(made.id, actor="root")).revoked_at == first.revoked_at
        log = [(e["kind"], e["actor"]) for e in await store.read_log()]
        assert log == [("token.created", "root"), ("token.revoked", "root")]
        for user, name, expires_in in (("deploybot-admin", "x", None), ("a b", "x", None), ("bob", "", None)):
            with pytest.raises(ValueError):
                await tokens.create(user, name=name, expires_in=expires_in)
        with pytest.raises(ValueError):
            await tokens.create("bob", name="x", expires_in=0)
    finally:
        await store.close()


async def test_a_page_session_ends_with_its_token_or_after_a_week(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        clock = FakeClock()
        tokens = ApiTokens(store, clock)
        made, plaintext = await tokens.create("alice", name="browser", expires_in=30 * 86400)
        session = (await tokens.start_session(plaintext)).session
        assert session is not None and session.startswith(made.id + ".") and plaintext not in session
        assert (await tokens.resume_session(session)).user == "alice"
        clock.jump(SESSION_SECONDS)
        assert (await tokens.resume_session(session)).refusal is TokenRefusal.SESSION_ENDED
        fresh = (await tokens.start_session(plaintext)).session
        assert fresh is not None and (await tokens.resume_session(fresh)).ok
        await tokens.revoke(made.id)
        assert (await tokens.resume_session(fresh)).refusal is TokenRefusal.REVOKED
        assert (await tokens.start_session(plaintext)).session is None
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------------------- bootstrap


async def test_bootstrap_registers_once_a_revocation_sticks_and_rotation_retires_the_old_one(
    deployer: Deployer, settings: Settings
) -> None:
    first = settings.api_token_file.read_text().strip()
    assert first.startswith("dbt_")
    async with serving(settings, deployer) as (client, _):
        answer = await client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {first}"})
        [boot] = (await answer.json())["tokens"]
        assert (boot["user"], boot["name"], boot["status"]) == ("deploybot-admin", "bootstrap", "active")
    async with serving(settings, deployer) as (client, _):  # a restart registers nothing new
        assert [t.id for t in await deployer.tokens.list()] == [boot["id"]]
        await deployer.tokens.revoke(boot["id"])
        refused = await client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {first}"})
        assert refused.status == 401 and (await refused.json())["reason"] == "revoked"
    async with serving(settings, deployer) as (client, _):  # the file still holds it: still refused
        refused = await client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {first}"})
        assert refused.status == 401 and (await refused.json())["reason"] == "revoked"

    clock = deployer.clock
    assert isinstance(clock, FakeClock)
    clock.jump(60)
    settings.api_token_file.unlink()  # rotation: a new file, then a restart
    ensure_api_token_file(settings.api_token_file)
    second = settings.api_token_file.read_text().strip()
    async with serving(settings, deployer) as (client, _):
        assert (await client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {second}"})).status == 200
    clock.jump(60)
    settings.api_token_file.write_text("dbt_third\n")
    async with serving(settings, deployer) as (client, _):  # the old value is revoked automatically
        refused = await client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {second}"})
        assert refused.status == 401 and (await refused.json())["reason"] == "revoked"
        assert (await client.get("/api/v1/hosts", headers={"Authorization": "Bearer dbt_third"})).status == 200
    statuses = [(t.name, t.refusal(deployer.clock.now())) for t in await deployer.tokens.list()]
    assert statuses == [("bootstrap", TokenRefusal.REVOKED), ("bootstrap", TokenRefusal.REVOKED), ("bootstrap", None)]


async def test_the_env_token_is_a_bootstrap_token_too(deployer: Deployer, workdir: Path) -> None:
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": "dbt_from-env"}, data_dir=workdir / "var")
    async with serving(settings, deployer) as (client, _):
        created = await client.post(
            "/api/v1/tokens", json={"user": "alice"}, headers={"Authorization": "Bearer dbt_from-env"}
        )
        assert created.status == 201 and created.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(door: Door, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], workdir: Path) -> Any:
    monkeypatch.chdir(workdir)  # var/api-token is here: the CLI finds the bootstrap token like the README's

    async def run(*argv: str, token: str | None = None) -> tuple[int, str, str]:
        if token is None:
            monkeypatch.delenv("DEPLOYBOT_TOKEN", raising=False)
        else:
            monkeypatch.setenv("DEPLOYBOT_TOKEN", token)
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--server", door.url])
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_cli_token_create_list_revoke(door: Door, cli: Any) -> None:
    code, out, err = await cli("token", "create", "alice", "--expires", "30d", "--name", "laptop")
    assert code == 0, err
    token = out.strip()
    assert token.startswith("dbt_") and out == token + "\n"
    assert "created tok-" in err and "of alice (laptop, active, expires " in err and "only time" in err
    assert token not in err

    code, out, err = await cli("token", "create", "bob", "--json")
    assert code == 0, err
    bob = json.loads(out)
    assert (bob["user"], bob["name"], bob["expires_at"], bob["token"][:4]) == ("bob", "default", None, "dbt_")

    code, out, err = await cli("token", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [t["user"] for t in listed] == ["deploybot-admin", "alice", "bob"]
    assert token not in out and bob["token"] not in out and all(set(t) == TOKEN_FIELDS for t in listed)
    code, out, _ = await cli("token", "list", "--user", "alice")
    assert code == 0 and "laptop" in out and "active" in out and "bob" not in out and token not in out
    alice_id = listed[1]["id"]

    code, out, err = await cli("status", token=token)  # alice's token works for alice
    assert code == 0, err
    code, out, err = await cli("token", "list", token=token)
    assert code == 1 and "error: alice may not administer deploybot on *: only admins may administer deploybot" in err

    code, out, err = await cli("token", "revoke", alice_id)
    assert code == 0 and out.strip() == f"revoked {alice_id} of alice (laptop)"
    code, _, err = await cli("status", token=token)
    assert code == 1 and f"error: bad API token: revoked: API token {alice_id} was revoked at " in err
    assert "(looked in $DEPLOYBOT_TOKEN)" in err
    code, _, err = await cli("token", "revoke", "tok-nosuchthing")
    assert code == 1 and "error: no API token with id 'tok-nosuchthing'" in err


async def test_cli_token_usage_errors_exit_2(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli("token", "create", "alice", "--expires", "soon")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: deploybot token create") and "expected seconds, or a duration" in err
    with pytest.raises(SystemExit) as exited:
        await cli("token", "revoke")
    assert exited.value.code == 2
    assert main(["token"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: deploybot token") and "name an action" in err


async def test_servers_sharing_a_store_never_retire_each_others_bootstrap_token(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "shared.db")  # the rule is the store's; PostgreSQL runs the same SQL
    try:
        clock = FakeClock()
        first, second = ApiTokens(store, clock), ApiTokens(store, clock)  # two replicas, each with its own file
        await first.register_bootstrap({"dbt_first-1"}, source="a:/srv/one")
        started = await second.register_bootstrap({"dbt_second-1"}, source="b:/srv/two")
        assert started.revoked == ()  # the second's start leaves the first's token alone
        assert (await first.authenticate("dbt_first-1")).ok and (await second.authenticate("dbt_second-1")).ok
        rotated = await first.register_bootstrap({"dbt_first-2"}, source="a:/srv/one")
        assert [t.name for t in rotated.revoked] == ["bootstrap@a:/srv/one"]  # only its own old value
        assert (await first.authenticate("dbt_first-1")).refusal is TokenRefusal.REVOKED
        assert (await second.authenticate("dbt_second-1")).ok
    finally:
        await store.close()
