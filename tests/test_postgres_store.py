"""The PostgreSQL store: its migrations, what the database enforces, several servers on one database, the config that
points deploybot at it. Every record mixin's behaviour also runs here against both stores (``store`` is parametrized
by tests/postgres_support.py), beside tests/test_store.py and tests/test_intent_records.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from conftest import HANG_GUARD, deployer_from, engine_config, eventually, free_port
from postgres_support import AnyStore, Opener, PostgresServer, integrity_errors, raw_execute
from sqlite_utils import Database
from test_service import CONFIG as SERVICE_CONFIG
from test_service import ScriptedFleet, make_revision, never_fails, wait_final

from bot.assembly import open_store
from engine.core.errors import ConfigError
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer
from engine.store import pg_migrations
from engine.store.command_records import COMMANDS_QUEUED
from engine.store.migrations import MIGRATIONS
from engine.store.postgres import PostgresStore, PostgresUnusable, numbered, shown_url
from engine.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


@pytest.fixture
async def store(store_database: Opener) -> AsyncIterator[AnyStore]:
    opened = await store_database.open()
    yield opened
    await opened.close()


@pytest.fixture
async def pg(postgres_server: PostgresServer) -> AsyncIterator[PostgresStore]:
    opened = await PostgresStore.open(postgres_server.new_database())
    yield opened
    await opened.close()


# -- migrations


def test_every_sqlite_migration_has_a_postgresql_script_under_the_same_name() -> None:
    """Fails when a migration is added to engine/store/migrations.py without its twin in pg_migrations.py."""
    sqlite_names = [migration.name for migration in MIGRATIONS.pending(Database(memory=True))]
    assert list(pg_migrations.SCRIPTS) == sqlite_names


async def test_replicas_starting_together_migrate_once(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(3)))
    try:
        for opened in stores:
            assert await opened.applied_migrations() == list(pg_migrations.SCRIPTS)
        again = await PostgresStore.open(url)  # reopening applies nothing
        await again.close()
        conn = await asyncpg.connect(url)
        try:
            count = await conn.fetchval(f"SELECT count(*) FROM {pg_migrations.MIGRATIONS_TABLE}")
        finally:
            await conn.close()
        assert count == len(pg_migrations.SCRIPTS)
    finally:
        for opened in stores:
            await opened.close()


async def test_the_commands_are_indexed_as_on_sqlite(postgres_server: PostgresServer) -> None:
    """The twin of test_store's index test: migration 0013 gives PostgreSQL the same indexes as SQLite, partial on
    the open statuses, and the statements that use them find their rows through them, not the table."""
    url = postgres_server.new_database()
    store = await PostgresStore.open(url)
    try:
        await store.create_deployment(
            {"id": "d-1", "application": "shop", "environment": "staging", "group_name": "shop-staging",
             "status": "InProgress", "created_at": 1.0, "revision_sha256": "abc"}
        )  # fmt: skip
        await store.enqueue_command_runs([("web-1", "d-1", ["Install", "AfterInstall"], {})], at=1.0)
        assert await store.host_uses_revision("web-1", "abc")
        assert [c["host"] for c in await store.open_commands("Pending")] == ["web-1", "web-1"]
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        definitions = {
            row["indexname"]: row["indexdef"]
            for row in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        }
        await conn.execute("SET enable_seqscan = off")  # an empty table: ask which index could serve, not the cost
        plans = {
            name: "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {sql}"))
            for name, sql in {
                "pending": "SELECT id FROM host_commands WHERE host = 'web-1' AND status = 'Pending' AND id > 0",
                "in_progress": "SELECT id FROM host_commands WHERE status = 'InProgress' AND host IN ('web-1')",
                "monitor": "SELECT id, host FROM host_commands WHERE status = 'Pending'",
            }.items()
        }
    finally:
        await conn.close()
    assert definitions["host_commands_pending"].endswith("(host, id) WHERE (status = 'Pending'::text)")
    assert definitions["host_commands_in_progress"].endswith("(host, id) WHERE (status = 'InProgress'::text)")
    assert definitions["host_commands_by_deployment"].endswith("(deployment_id, host)")
    assert definitions["deployments_by_revision"].endswith("(revision_sha256)")
    assert not {"host_commands_queue", "host_commands_by_status"} & set(definitions)
    assert "host_commands_pending" in plans["pending"] and "host_commands_pending" in plans["monitor"], plans
    assert "host_commands_in_progress" in plans["in_progress"], plans


# -- what the database enforces


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE event_log SET kind = 'rewritten'",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
        "UPDATE approvals SET decision = 'approved'",
        "DELETE FROM approvals",
    ],
)
async def test_the_database_refuses_to_rewrite_the_log_and_approvals(pg: PostgresStore, statement: str) -> None:
    await pg.append_log("deployment.created", at=T0, actor="alice", deployment_id="d-1", data={"n": 1})
    await pg.add_approval(
        "d-1", application="shop", environment="prod", revision_sha256="a" * 64, actor="bob", decision="rejected",
        created_at=T0,
    )  # fmt: skip
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await raw_execute(pg, statement)
    assert [(e["kind"], e["data"]) for e in await pg.read_log()] == [("deployment.created", {"n": 1})]
    assert [a["decision"] for a in await pg.list_approvals()] == ["rejected"]


async def test_names_sort_byte_by_byte_whatever_the_database_locale(postgres_server: PostgresServer) -> None:
    """As on SQLite: a database made with an English collation (where "web-10" sorts before "web1" and case is
    ignored first) still lists agents and locks in byte order (the schema's text columns are COLLATE "C")."""
    names = ["web1", "Web-2", "web-10", "web_3", "web-2"]
    async with await PostgresStore.open(postgres_server.new_database(icu_locale="en-US")) as english:
        for name in names:
            await english.upsert_agent(name, last_seen=T0)
            await english.put_lock(name, "prod", owner="alice", created_at=T0)
        assert [a["name"] for a in await english.list_agents()] == sorted(names)
        assert [lock["application"] for lock in await english.list_locks()] == sorted(names)


async def test_a_nul_character_is_stored_as_the_replacement_character(pg: PostgresStore) -> None:
    await pg.upsert_target_event("d-1", "web-1", "Install", log_tail="binary\x00output")
    [event] = await pg.list_target_events("d-1")
    assert event["log_tail"] == "binary\ufffdoutput"
    # also inside the arrays a batch of rows is written with (a step's rows: one upsert for all)
    await pg.save_progress("d-1", [{"target": f"web-{n}", "event": "Install", "log_tail": "a\x00b"} for n in (2, 3)])
    assert {e["log_tail"] for e in await pg.list_target_events("d-1")} == {"binary\ufffdoutput", "a\ufffdb"}


# -- several servers on one database


async def test_claims_from_two_servers_never_hand_one_command_twice(store_database: Opener) -> None:
    async with await store_database.open() as a, await store_database.open() as b:
        ids = [await a.enqueue_command("web-1", f"d-{i % 3}", "Install", None, at=T0) for i in range(40)]
        claims = await asyncio.gather(
            *(s.claim_next_command("web-1", at=T0, with_run=i % 2 == 0) for i in range(30) for s in (a, b))
        )
        handed_out = [c["id"] for c in claims if c is not None]
        assert sorted(handed_out) == ids  # every command once, none twice
        assert claims.count(None) == 20
        assert await a.list_commands(status="Pending") == []


async def test_steps_and_claims_from_two_servers_never_hand_one_command_twice(store_database: Opener) -> None:
    """Two servers' steps hand runs to the parked polls of the same hosts while agents' claims arrive at both: on
    PostgreSQL a step claims all its hosts in one statement, passing over a row another transaction holds (as a
    claim of its own does); no command is handed out twice, and none is lost."""
    hosts = [f"web-{n}" for n in range(40)]
    async with await store_database.open() as a, await store_database.open() as b:
        for host in hosts:
            await a.enqueue_command_runs([(host, "d-0", ["Install", "AfterInstall"], {})], at=T0)
        steps = [
            server.enqueue_command_runs(
                [(host, deployment_id, ["Install", "AfterInstall"], {}) for host in hosts],
                at=T0,
                hand_to=dict.fromkeys(hosts, True),
            )
            for server, deployment_id in ((a, "d-1"), (b, "d-2"))
        ]
        claims = [server.claim_next_command(host, at=T0, with_run=True) for host in hosts for server in (a, b)]
        done = await asyncio.gather(*steps, *claims)
        handed_out = [row["id"] for _, claimed in done[:2] for row in claimed.values()]
        handed_out += [row["id"] for row in done[2:] if row is not None]
        assert len(handed_out) == len(set(handed_out))  # none twice
        in_progress = {c["id"] for c in await a.list_commands(status="InProgress", payload=False)}
        assert in_progress == set(handed_out)  # each claimed row was handed to someone


async def test_two_servers_queueing_the_same_event_queue_it_once(store_database: Opener) -> None:
    async with await store_database.open() as a, await store_database.open() as b:
        await asyncio.gather(
            *(s.enqueue_command_once("web-1", "d-1", "Install", {"n": 1}, at=T0) for _ in range(10) for s in (a, b))
        )
        runs = [("web-2", "d-1", ["BeforeInstall", "Install"], None)]
        await asyncio.gather(*(s.enqueue_command_runs(runs, at=T0) for _ in range(10) for s in (a, b)))
        queued = [(c["host"], c["event"]) for c in await a.list_commands()]
    assert sorted(queued) == [("web-1", "Install"), ("web-2", "BeforeInstall"), ("web-2", "Install")]


async def test_another_server_hears_that_a_command_was_queued(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    async with await PostgresStore.open(url) as queueing, await PostgresStore.open(url) as polling:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await polling.listen(COMMANDS_QUEUED, heard.put_nowait)
        await queueing.enqueue_command_once("web-1", "d-1", "Install", None, at=T0)
        await queueing.enqueue_command_once("web-1", "d-1", "Install", None, at=T0)  # there already: no news
        await queueing.enqueue_command_runs([("web-2", "d-1", ["Install"], None)], at=T0)
        assert await asyncio.wait_for(heard.get(), HANG_GUARD) == "web-1"
        assert await asyncio.wait_for(heard.get(), HANG_GUARD) == "web-2"
        assert heard.empty()


# -- opening, and what the operator is told


async def test_an_unreachable_database_is_one_line_for_the_operator() -> None:
    url = f"postgresql://deploybot@127.0.0.1:{free_port()}/deploybot"
    with pytest.raises(PostgresUnusable, match=r"^cannot use the PostgreSQL database postgresql://deploybot@127") as e:
        await PostgresStore.open(url)
    assert "check store.url" in str(e.value) and "\n" not in str(e.value)


async def test_a_missing_database_is_named(postgres_server: PostgresServer) -> None:
    with pytest.raises(PostgresUnusable, match="does not exist"):
        await PostgresStore.open(postgres_server.url("no_such_database"))


async def test_a_closed_store_refuses_calls(pg: PostgresStore) -> None:
    await pg.close()
    await pg.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pg.get_deployment("d-1")


def test_a_password_is_never_shown() -> None:
    assert shown_url("postgresql://bot:s3cret@db:5432/deploy") == "postgresql://bot:***@db:5432/deploy"
    assert shown_url("postgresql://bot@db/deploy") == "postgresql://bot@db/deploy"


def test_placeholders_are_numbered_outside_quotes() -> None:
    assert numbered("SELECT '?' FROM t WHERE a = ? AND \"b?\" IN (?, ?)") == (
        "SELECT '?' FROM t WHERE a = $1 AND \"b?\" IN ($2, $3)"
    )


# -- the config and the composition root


def test_the_store_section_names_a_postgresql_database(tmp_path: Path) -> None:
    config = engine_config("store:\n  url: postgresql://bot@db:5432/deploy\n  password_env: DEPLOYBOT_DB\n", tmp_path)
    assert config.store is not None
    assert (config.store.url, config.store.password_env) == ("postgresql://bot@db:5432/deploy", "DEPLOYBOT_DB")
    assert engine_config("", tmp_path).store is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("url: postgresql://bot:s3cret@db/deploy", "the URL holds a password, which must not be in the config file"),
        ("url: mysql://bot@db/deploy", "expected a postgresql://USER@HOST:PORT/DATABASE URL"),
        ("url: postgresql://bot@db:99999/deploy", "bad PostgreSQL URL"),
        ("password_env: X", "missing required key 'url'"),
        ("{url: 'postgresql://bot@db/deploy', password_env: 'NOT A NAME'}", "bad environment variable name"),
        ("{url: 'postgresql://bot@db/deploy', pasword: x}", "pasword"),
    ],
)
def test_a_bad_store_section_is_refused_with_its_position(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        engine_config(f"store:\n  {section}\n" if not section.startswith("{") else f"store: {section}\n", tmp_path)
    assert "s3cret" not in str(refused.value)
    assert "test.yml:" in str(refused.value)


async def test_open_store_picks_postgresql_when_the_config_names_it(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.new_database()
    monkeypatch.setenv("DEPLOYBOT_DB", "unused-with-trust-auth")
    config = engine_config(f"store:\n  url: {url}\n  password_env: DEPLOYBOT_DB\n", tmp_path)
    opened = await open_store(config, tmp_path)
    try:
        assert isinstance(opened, PostgresStore)
    finally:
        await opened.close()
    default = await open_store(engine_config("", tmp_path), tmp_path)
    try:
        assert isinstance(default, SqliteStore) and default.path == tmp_path / "deploybot.db"
    finally:
        await default.close()
    monkeypatch.delenv("DEPLOYBOT_DB")
    with pytest.raises(PostgresUnusable, match=r"store\.password_env names DEPLOYBOT_DB, which is not set"):
        await open_store(config, tmp_path)


async def _pg_deployer(url: str, workdir: Path) -> Deployer:
    return await deployer_from(SERVICE_CONFIG % {"heartbeat": 60} + f"store:\n  url: {url}\n", workdir)


async def test_a_deployment_and_its_rollback_run_on_postgresql(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The Deployer with its real runner and fleet over PostgresStore (test_service.py's scripted agents): a good
    deployment, a failing one, and the automatic rollback to the good revision."""
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    deployer = await _pg_deployer(postgres_server.new_database(), tmp_path)
    sha_b: list[str] = []

    def fail_b_on_p2(host: str, event: str, sha: str) -> str | None:
        failing = sha_b and sha == sha_b[0] and host == "p2" and event == "ValidateService"
        return "health check failed" if failing else None

    agents = ScriptedFleet(deployer, ["p1", "p2", "p3", "p4"], fail_b_on_p2)
    try:
        assert isinstance(deployer.store, PostgresStore)
        assert not (tmp_path / "var" / "deploybot.db").exists()  # no SQLite file beside it
        good = await wait_final(deployer, (await deployer.start(DeployRequest("app", "production")))["id"], HANG_GUARD)
        b = await deployer.start(DeployRequest("app", "production", revision="rev-b"))
        sha_b.append(b["revision"]["sha256"])
        failed = await wait_final(deployer, b["id"], HANG_GUARD)
        await eventually(lambda: _rolled_back_by(deployer, b["id"]), "the rollback to start")
        rollback = await wait_final(deployer, (await deployer.get(b["id"]))["rollback"]["by"], HANG_GUARD)
        log = [e["kind"] for e in await deployer.store.read_log(deployment_id=good["id"])]
    finally:
        await agents.close()
        await deployer.close()
    assert good["status"] == "Succeeded"
    assert all(e["status"] == "Succeeded" and e["log_tail"] for t in good["targets"] for e in t["events"])
    assert (log[0], log[-1]) == ("deployment.requested", "deployment.finished")
    assert failed["status"] == "Failed" and failed["error"]["code"] == "HEALTH_CONSTRAINTS"
    assert [t["status"] for t in failed["targets"]] == ["Succeeded", "Failed", "Skipped", "Skipped"]
    assert rollback["status"] == "Succeeded" and rollback["revision"]["sha256"] == good["revision"]["sha256"]


async def _rolled_back_by(deployer: Deployer, deployment_id: str) -> bool:
    return bool((await deployer.get(deployment_id))["rollback"]["by"])


async def test_a_restarted_server_resumes_from_postgresql(postgres_server: PostgresServer, tmp_path: Path) -> None:
    make_revision(tmp_path, "rev-a", "1")
    url = postgres_server.new_database()
    first = await _pg_deployer(url, tmp_path)
    started = await first.start(DeployRequest("app", "staging"))
    await eventually(lambda: _pending(first, 2), "both hosts' first commands to be queued")
    await first.close()  # the server goes away mid-deployment

    second = await _pg_deployer(url, tmp_path)
    agents = ScriptedFleet(second, ["s1", "s2"], never_fails)
    try:
        doc = await wait_final(second, started["id"], HANG_GUARD)
        log = [e["kind"] for e in await second.store.read_log(deployment_id=started["id"])]
        commands = [(c["host"], c["event"]) for c in await second.store.list_commands(deployment_id=started["id"])]
    finally:
        await agents.close()
        await second.close()
    assert doc["status"] == "Succeeded"
    assert "deployment.resumed" in log
    assert len(commands) == len(set(commands)) == 14  # 7 events on each of 2 hosts, nothing dispatched twice


async def _pending(deployer: Deployer, count: int) -> bool:
    return len(await deployer.store.list_commands(status="Pending")) >= count


# -- every record mixin, on both stores


async def test_approvals_are_listed_by_revision_and_deployment(store: AnyStore) -> None:
    common = {"application": "shop", "environment": "prod", "created_at": T0}
    first = await store.add_approval("d-1", revision_sha256="a" * 64, actor="bob", decision="approved", **common)
    await store.add_approval("d-2", revision_sha256="b" * 64, actor="eve", decision="rejected", reason="no", **common)
    assert first >= 1
    assert [a["actor"] for a in await store.list_approvals(revision_sha256="a" * 64)] == ["bob"]
    assert [a["reason"] for a in await store.list_approvals(deployment_id="d-2")] == ["no"]
    assert len(await store.list_approvals(application="shop")) == 2


async def test_api_tokens_by_user_revoked_once_and_kept(store: AnyStore) -> None:
    row = {"name": "ci", "created_at": T0}
    assert await store.insert_api_token("t-1", user="alice", token_sha256="1" * 64, **row)
    assert not await store.insert_api_token("t-2", user="bob", token_sha256="1" * 64, **row)  # same hash
    assert await store.insert_api_token("t-3", user="bob", token_sha256="3" * 64, **row)
    assert [t["id"] for t in await store.list_api_tokens(user="bob")] == ["t-3"]
    assert (await store.api_token_by_hash("1" * 64))["user"] == "alice"
    await store.touch_api_token("t-1", at=T0 + 5)
    await store.touch_api_token("t-1", at=T0 + 1)  # never backwards
    assert (await store.get_api_token("t-1"))["last_used_at"] == T0 + 5
    assert (await store.revoke_api_token("t-1", at=T0 + 9))["revoked_at"] == T0 + 9
    assert (await store.revoke_api_token("t-1", at=T0 + 10))["revoked_at"] == T0 + 9
    with pytest.raises(integrity_errors(), match="never deleted"):
        await raw_execute(store, "DELETE FROM api_tokens")
    with pytest.raises(integrity_errors(), match="keeps its identity"):
        await raw_execute(store, "UPDATE api_tokens SET \"user\" = 'mallory'")


async def test_hook_executions_are_added_once_and_moved_by_one(store: AnyStore) -> None:
    await store.create_deployment(
        {"id": "d-1", "application": "a", "environment": "e", "group_name": "g", "status": "Succeeded",
         "created_at": T0}
    )  # fmt: skip
    key = {"deployment_id": "d-2", "target": "fn:live", "event": "BeforeAllowTraffic", "function": "check"}
    _, added = await store.add_hook_execution("x-1", state="invoking", at=T0, **key)
    again, added_again = await store.add_hook_execution("x-2", state="invoking", at=T0 + 1, **key)
    assert (added, added_again, again["execution_id"]) == (True, False, "x-1")
    await store.add_hook_execution("x-3", **(key | {"deployment_id": "d-1"}), state="waiting", at=T0)
    moves = await asyncio.gather(
        *(store.move_hook_execution("x-1", "reported", at=T0 + 2, only_from=["invoking"], status="Succeeded")
          for _ in range(4))
    )  # fmt: skip
    assert sum(m is not None for m in moves) == 1
    assert await store.move_hook_execution("x-1", "stopped", at=T0, only_from=[]) is None
    assert [e["execution_id"] for e in await store.list_hook_executions(running_only=True)] == ["x-1"]
    assert [e["execution_id"] for e in await store.list_hook_executions(states=["waiting"])] == ["x-3"]


async def test_registry_rows_upsert_and_keep_what_is_not_given(store: AnyStore) -> None:
    location = {"s3": {"bucket": "b", "key": "k"}}
    first = await store.upsert_registered_revision(
        "shop", "k1", location, sha256="a" * 64, description="one", registered_at=T0, used_at=None
    )
    again = await store.upsert_registered_revision(
        "shop", "k1", location, sha256=None, description=None, registered_at=T0 + 1, used_at=T0 + 2
    )
    assert first["location"] == location
    assert (again["revision_sha256"], again["description"], again["first_used_at"]) == ("a" * 64, "one", T0 + 2)
    instance = await store.register_onprem_instance("web-9", iam_arn=None, tags={"role": "web"}, at=T0)
    assert instance["tags"] == {"role": "web"}
    assert (await store.deregister_onprem_instance("web-9", at=T0 + 1))["deregistered_at"] == T0 + 1
    assert (await store.register_onprem_instance("web-9", iam_arn="arn", tags={}, at=T0 + 2))["deregistered_at"] is None
    assert (await store.set_onprem_tags("web-9", {"az": "b"}))["tags"] == {"az": "b"}
    await store.insert_api_config("Half", "Server", {"minimumHealthyHosts": {"type": "FLEET_PERCENT"}}, at=T0)
    assert [(c["name"], c["definition"]) for c in await store.list_api_configs()] == [
        ("Half", {"minimumHealthyHosts": {"type": "FLEET_PERCENT"}})
    ]
    await store.delete_api_config("Half")
    assert await store.list_api_configs() == []


async def test_api_applications_and_groups(store: AnyStore) -> None:
    app = await store.insert_api_application("app-1", "shop", "Server", tags={"team": "web"}, at=T0)
    assert (app["name"], app["tags"]) == ("shop", {"team": "web"})
    assert (await store.rename_api_application("app-1", "store"))["name"] == "store"
    group = await store.insert_api_group("store-prod", "app-1", {"hosts": ["web-1"]}, tags={}, at=T0)
    assert group["definition"] == {"hosts": ["web-1"]}
    updated = await store.update_api_group("store-prod", new_name="store-live", definition={"hosts": []})
    assert updated is not None and updated["name"] == "store-live"
    assert (await store.set_api_group_tags("store-live", {"a": "b"}))["tags"] == {"a": "b"}
    with pytest.raises(integrity_errors()):
        await store.insert_api_application("app-2", "store", "Server", tags={}, at=T0)  # names are unique
    await store.delete_api_application("app-1")
    assert (await store.list_api_applications(), await store.list_api_groups()) == ([], [])


async def test_queued_runs_are_handed_on_and_a_failure_cancels_the_rest(store: AnyStore) -> None:
    runs = [("web-1", "d-1", ["BeforeInstall", "Install", "AfterInstall"], {"n": 1})]
    existing, claimed = await store.enqueue_command_runs(runs, at=T0, hand_to={"web-1": True})
    assert existing == [None]
    first = claimed["web-1"]
    assert first["event"] == "BeforeInstall" and [t["event"] for t in first["then"]] == ["Install", "AfterInstall"]
    [(command, finished, went_on)] = await store.finish_commands(
        [(first["id"], "web-1", "Succeeded", {"ok": True}, first["then"][0]["id"])], at=T0 + 1
    )
    assert command is not None and finished and went_on
    assert await store.complete_command(first["then"][0]["id"], "Failed", {"code": 1}, at=T0 + 2, host="web-1")
    statuses = [c["status"] for c in await store.list_commands(host="web-1")]
    assert statuses == ["Succeeded", "Failed", "Cancelled"]
    assert await store.host_uses_revision("web-1", "a" * 64) is False
    assert await store.release_command(first["id"]) is False
