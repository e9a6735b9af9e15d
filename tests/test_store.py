"""The store's behaviour, against both stores: every test taking ``store`` or ``store_database`` runs once on a real
SQLite file and once on a real PostgreSQL database (tests/postgres_support.py). SQLite's own matters (the file, WAL,
its one thread, the event loop during a slow write) are tested on SQLite alone, PostgreSQL's in
tests/test_postgres_store.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HANG_GUARD
from postgres_support import AnyStore, Opener, PostgresServer, integrity_errors, raw_execute, raw_rows
from sqlite_utils import Database

from engine.ports import StepWrite
from engine.store.migrations import MIGRATIONS
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


@pytest.fixture
async def store(store_database: Opener) -> AsyncIterator[AnyStore]:
    opened = await store_database.open()
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


def deployment(id: str, **overrides: Any) -> dict[str, Any]:
    record = {
        "id": id,
        "application": "shop",
        "environment": "staging",
        "group_name": "shop-staging",
        "status": "Created",
        "created_at": T0,
    }
    return record | overrides


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection: what another process (or a careless human) would see."""
    return sqlite3.connect(path)


# -- schema and file


MIGRATION_NAMES = [migration.name for migration in MIGRATIONS.pending(Database(memory=True))]  # every one, in order


async def test_open_creates_parent_dirs_and_migrations_are_idempotent_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "var" / "nested" / "state.db"
    first = await SqliteStore.open(path)
    assert await first.applied_migrations() == MIGRATION_NAMES
    await first.put_revision("a" * 64, source="dir", commit=None, size=1, created_at=T0)
    await first.close()

    for _ in range(2):
        again = await SqliteStore.open(path)
        assert await again.applied_migrations() == MIGRATION_NAMES
        assert await again.get_revision("a" * 64) is not None
        await again.close()
    with raw(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone() == (len(MIGRATION_NAMES),)


async def test_wal_mode_is_enabled_and_persists_in_the_file(sqlite_store: SqliteStore) -> None:
    assert await sqlite_store.journal_mode() == "wal"
    await sqlite_store.append_log("opened", at=T0, actor="test")
    assert sqlite_store.path.with_name("state.db-wal").exists()
    with raw(sqlite_store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE event_log SET kind = 'rewritten'",
        "DELETE FROM event_log",
        "DELETE FROM event_log WHERE id = 1",
    ],
)
async def test_event_log_rejects_update_and_delete(store: AnyStore, statement: str) -> None:
    await store.append_log("deployment.created", at=T0, actor="alice", deployment_id="d-1", data={"n": 1})
    with pytest.raises(integrity_errors(), match="append-only"):
        await raw_execute(store, statement)
    [entry] = await store.read_log()
    assert (entry["kind"], entry["data"]) == ("deployment.created", {"n": 1})


async def test_closed_store_refuses_calls(store_database: Opener) -> None:
    closed = await store_database.open()
    await closed.close()
    await closed.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await closed.get_deployment("d-1")


# -- threading and the event loop


async def test_only_the_store_thread_touches_the_connection(tmp_path: Path) -> None:
    seen: set[int] = set()
    statements: list[str] = []

    def on_statement(sql: str) -> None:
        seen.add(threading.get_ident())
        statements.append(sql)

    async with await SqliteStore.open(tmp_path / "state.db", on_statement=on_statement) as traced:
        await traced.put_revision("b" * 64, source="git:main", commit="abc", size=10, created_at=T0)
        await traced.create_deployment(deployment("d-1"))
        await traced.update_deployment("d-1", status="InProgress", state={"batch": 0})
        await traced.upsert_target_event("d-1", "web-1", "BeforeInstall", seq=1, status="Succeeded")
        command_id = await traced.enqueue_command("web-1", "d-1", "BeforeInstall", {"x": 1}, at=T0)
        await asyncio.gather(*(traced.claim_next_command("web-1", at=T0) for _ in range(5)))
        await traced.complete_command(command_id, "Succeeded", {}, at=T0)
        await traced.append_log("x", at=T0, actor="test")
        await traced.upsert_agent("web-1", last_seen=T0)
        await traced.put_lock("shop", "prod", owner="alice", created_at=T0)
        await traced.list_deployments()
        await traced.read_log()
        thread = traced.thread_ident

    assert len(statements) > 20
    assert seen == {thread}
    assert thread != threading.get_ident()


async def test_event_loop_keeps_running_during_a_slow_batch_write(tmp_path: Path) -> None:
    """The store thread stops halfway through a 2000-row batch until the event loop has run other work (timers and
    this coroutine). Were SQL run on the loop's thread, nothing could run meanwhile and the hold would give up."""
    loop = asyncio.get_running_loop()
    armed = threading.Event()
    halfway = asyncio.Event()
    resume = threading.Event()
    inserts = itertools.count(1)
    held: list[tuple[bool, int]] = []  # (resumed by the loop, thread)

    def slow_disk(sql: str) -> None:  # runs on the store thread for every statement, one per row of the batch
        if armed.is_set() and sql.startswith("INSERT") and next(inserts) == 1000:
            loop.call_soon_threadsafe(halfway.set)
            held.append((resume.wait(HANG_GUARD), threading.get_ident()))

    async with await SqliteStore.open(tmp_path / "state.db", on_statement=slow_disk) as slow_store:
        entries = [{"kind": "tick", "at": T0 + i, "actor": "bench", "data": {"i": i}} for i in range(2000)]
        armed.set()
        writing = asyncio.ensure_future(slow_store.append_logs(entries))
        await asyncio.wait_for(halfway.wait(), HANG_GUARD)
        for _ in range(20):  # timers keep firing while the batch is half written
            await asyncio.sleep(0.001)
        assert not writing.done()
        resume.set()
        ids = await asyncio.wait_for(writing, HANG_GUARD)

        assert ids == list(range(1, 2001))
        assert len(await slow_store.read_log(limit=5000)) == 2000
        assert held == [(True, slow_store.thread_ident)]
    assert slow_store.thread_ident != threading.get_ident()


# -- host command queue


async def test_concurrent_claims_hand_out_each_command_exactly_once(store: AnyStore) -> None:
    mine = [await store.enqueue_command("web-1", "d-1", "Install", {"n": i}, at=T0 + i) for i in range(20)]
    others = [await store.enqueue_command("web-2", "d-1", "Install", {"n": i}, at=T0) for i in range(5)]

    claims = await asyncio.gather(*(store.claim_next_command("web-1", at=T0 + 100) for _ in range(50)))

    handed_out = [c["id"] for c in claims if c is not None]
    assert sorted(handed_out) == mine
    assert claims.count(None) == 30
    assert all(c["status"] == "InProgress" and c["claimed_at"] == T0 + 100 for c in claims if c)
    assert [c["id"] for c in await store.list_commands(host="web-2", status="Pending")] == others


async def test_claims_from_two_connections_on_one_file_never_double_hand_out(store_database: Opener) -> None:
    async with await store_database.open() as a, await store_database.open() as b:
        ids = [await a.enqueue_command("web-1", "d-1", "Install", None, at=T0) for _ in range(30)]
        claims = await asyncio.gather(*(s.claim_next_command("web-1", at=T0) for _ in range(25) for s in (a, b)))
    handed_out = [c["id"] for c in claims if c is not None]
    assert sorted(handed_out) == ids


async def test_commands_of_one_host_are_invisible_to_another(store: AnyStore) -> None:
    command_id = await store.enqueue_command("web-1", "d-1", "Install", {"secret": "web-1 only"}, at=T0)
    assert await store.claim_next_command("web-2", at=T0) is None
    assert await store.list_commands(host="web-2") == []
    claimed = await store.claim_next_command("web-1", at=T0)
    assert claimed is not None and claimed["id"] == command_id
    assert await store.complete_command(command_id, "Succeeded", {}, at=T0, host="web-2") is False
    assert (await store.get_command(command_id))["status"] == "InProgress"


async def test_complete_command_is_idempotent(store: AnyStore) -> None:
    command_id = await store.enqueue_command("web-1", "d-1", "AfterInstall", None, at=T0)
    await store.claim_next_command("web-1", at=T0 + 1)

    assert await store.complete_command(command_id, "Failed", {"error_code": 4}, at=T0 + 2, host="web-1")
    assert not await store.complete_command(command_id, "Succeeded", {"error_code": 0}, at=T0 + 3)
    assert not await store.complete_command(9999, "Succeeded", None, at=T0)

    finished = await store.get_command(command_id)
    assert (finished["status"], finished["result"], finished["finished_at"]) == (
        "Failed",
        {"error_code": 4},
        T0 + 2,
    )
    assert await store.claim_next_command("web-1", at=T0 + 4) is None
    with pytest.raises(ValueError, match="InProgress"):
        await store.complete_command(command_id, "InProgress", None, at=T0)


async def test_cancel_commands_cancels_only_pending_ones_of_that_deployment(store: AnyStore) -> None:
    running = await store.enqueue_command("web-1", "d-1", "Install", None, at=T0)
    await store.claim_next_command("web-1", at=T0)
    pending = [await store.enqueue_command(h, "d-1", "Install", None, at=T0) for h in ("web-1", "web-2")]
    other = await store.enqueue_command("web-1", "d-2", "Install", None, at=T0)

    assert await store.cancel_commands("d-1", at=T0 + 5) == 2
    assert await store.cancel_commands("d-1", at=T0 + 6) == 0

    status = {c["id"]: (c["status"], c["finished_at"]) for c in await store.list_commands()}
    assert status[running] == ("InProgress", None)
    assert [status[i] for i in pending] == [("Cancelled", T0 + 5)] * 2
    assert status[other] == ("Pending", None)
    assert [c["id"] for c in await store.list_commands(deployment_id="d-1", status="Cancelled")] == pending


# -- revisions, deployments, target events, log


async def test_revisions_are_stored_once_per_sha(store: AnyStore) -> None:
    spec = {"files": [{"source": "/", "destination": "/srv/app"}], "hooks": {"BeforeInstall": []}}
    assert await store.put_revision("c" * 64, source="dir:a", commit=None, size=5, created_at=T0, appspec=spec)
    assert not await store.put_revision("c" * 64, source="dir:b", commit="x", size=5, created_at=T0 + 1)
    await store.put_revision("d" * 64, source="git:main", commit="abc", size=7, created_at=T0 + 2, platform="ecs")

    assert [r["sha256"] for r in await store.list_revisions(10)] == ["d" * 64, "c" * 64]
    assert await store.list_revisions(1) == [await store.get_revision("d" * 64)]
    kept = await store.get_revision("c" * 64)
    assert (kept["source"], kept["appspec"], kept["platform"]) == ("dir:a", spec, "server")
    assert await store.get_revision("e" * 64) is None


async def test_json_columns_round_trip(store: AnyStore) -> None:
    request = {
        "revision": {"source": "git:main"},
        "hosts": ["web-1", "web-2"],
        "dry": False,
        "n": 1.5,
        "x": None,
    }
    state = {"batches": [["web-1"], ["web-2"]], "traffic": {"green": 20}, "note": "déjà ✓"}
    await store.create_deployment(deployment("d-1", request=request, state=state))
    assert await store.get_deployment("d-1") == deployment("d-1", request=request, state=state) | {
        k: None
        for k in ("revision_sha256", "config_name", "deployment_type", "created_by", "started_at", "ended_at",
                  "error_code", "error_message", "rollback_of", "rolled_back_by", "description", "wind_up")
    }  # fmt: skip

    assert await store.update_deployment("d-1", state={"batches": []}, status="InProgress", started_at=T0 + 1)
    updated = await store.get_deployment("d-1")
    assert (updated["state"], updated["request"], updated["status"]) == (
        {"batches": []},
        request,
        "InProgress",
    )

    await store.upsert_agent("web-1", last_seen=T0, tags={"role": "web", "az": "a"})
    assert (await store.get_agent("web-1"))["tags"] == {"role": "web", "az": "a"}
    command_id = await store.enqueue_command("web-1", "d-1", "Install", {"spec": request}, at=T0)
    assert (await store.get_command(command_id))["payload"] == {"spec": request}
    await store.append_log("k", at=T0, actor="a", data={"list": [1, {"b": True}]})
    assert (await store.read_log())[0]["data"] == {"list": [1, {"b": True}]}


async def test_a_deployment_and_its_first_log_entry_are_written_together_or_not_at_all(store: AnyStore) -> None:
    requested = {"kind": "deployment.requested", "at": T0, "actor": "ana", "data": {"group": "shop-staging"}}
    await store.create_deployment(deployment("d-1"), log=requested)
    assert await store.get_deployment("d-1") is not None
    entries = await store.read_log(deployment_id="d-1")
    assert [(e["kind"], e["actor"], e["at"], e["data"]) for e in entries] == [
        ("deployment.requested", "ana", T0, {"group": "shop-staging"})
    ]
    with pytest.raises(integrity_errors()):  # the same id again: neither the row nor its entry is written
        await store.create_deployment(deployment("d-1", status="Queued"), log=requested | {"actor": "bob"})
    assert [e["actor"] for e in await store.read_log(deployment_id="d-1")] == ["ana"]
    assert (await store.get_deployment("d-1"))["status"] == "Created"


async def test_update_deployment_rejects_unknown_columns_and_reports_missing_rows(store: AnyStore) -> None:
    with pytest.raises(ValueError, match="colour"):
        await store.create_deployment(deployment("d-1", colour="blue"))
    await store.create_deployment(deployment("d-1"))
    with pytest.raises(integrity_errors()):
        await store.create_deployment(deployment("d-1"))
    with pytest.raises(ValueError, match="colour"):
        await store.update_deployment("d-1", colour="blue")
    assert await store.update_deployment("nope", status="Failed") is False
    assert await store.update_deployment("d-1") is True


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["d-5", "d-4", "d-3", "d-2", "d-1"]),
        ({"newest_first": False}, ["d-1", "d-2", "d-3", "d-4", "d-5"]),
        ({"limit": 2}, ["d-5", "d-4"]),
        ({"limit": None}, ["d-5", "d-4", "d-3", "d-2", "d-1"]),
        ({"application": "blog"}, ["d-5"]),
        ({"environment": "production"}, ["d-4", "d-3"]),
        ({"application": "shop", "environment": "staging"}, ["d-2", "d-1"]),
        ({"group_name": "shop-production"}, ["d-4", "d-3"]),
        ({"status": "Succeeded"}, ["d-3", "d-1"]),
        ({"status": ["Failed", "InProgress"]}, ["d-5", "d-4", "d-2"]),
        ({"status": []}, []),
        ({"application": "shop", "status": "Failed", "environment": "production"}, ["d-4"]),
        ({"application": "nope"}, []),
    ],
)
async def test_list_deployments_filters(store: AnyStore, filters: dict[str, Any], expected: list[str]) -> None:
    rows = [
        ("d-1", "shop", "staging", "Succeeded"),
        ("d-2", "shop", "staging", "Failed"),
        ("d-3", "shop", "production", "Succeeded"),
        ("d-4", "shop", "production", "Failed"),
        ("d-5", "blog", "staging", "InProgress"),
    ]
    for i, (id, app, env, status) in enumerate(rows):
        await store.create_deployment(
            deployment(
                id,
                application=app,
                environment=env,
                group_name=f"{app}-{env}",
                status=status,
                created_at=T0 + i,
            )
        )
    assert [d["id"] for d in await store.list_deployments(**filters)] == expected


async def test_last_successful_and_unfinished_deployments(store: AnyStore) -> None:
    statuses = ["Succeeded", "Succeeded", "Failed", "Queued", "InProgress", "Stopped", "WaitingApproval"]
    for i, status in enumerate(statuses):
        ended = T0 + i + 0.5 if status in {"Succeeded", "Failed", "Stopped"} else None
        await store.create_deployment(deployment(f"d-{i}", status=status, created_at=T0 + i, ended_at=ended))
    await store.create_deployment(deployment("x-1", group_name="other", status="Failed", created_at=T0))

    assert (await store.last_successful("shop-staging"))["id"] == "d-1"
    assert await store.last_successful("other") is None
    assert [d["id"] for d in await store.unfinished_deployments()] == ["d-3", "d-4", "d-6"]


async def test_a_wind_up_is_owed_from_the_final_write_until_the_end_is_logged(store: AnyStore) -> None:
    owed = [{"command": "Finish", "status": "Failed", "error_code": "HEALTH_CONSTRAINTS", "message": "boom"}]
    for number, group in enumerate(["shop-staging", "shop-staging", "other"]):
        await store.create_deployment(deployment(f"d-{number}", group_name=group, created_at=T0 + number))
        await store.save_progress(f"d-{number}", [], status="Failed", ended_at=T0 + 9, wind_up=owed)
    assert (await store.get_deployment("d-0"))["wind_up"] == owed
    assert [d["id"] for d in await store.owing_wind_up()] == ["d-0", "d-1", "d-2"]
    assert [d["id"] for d in await store.owing_wind_up("shop-staging")] == ["d-0", "d-1"]
    assert await store.unfinished_deployments() == []  # ended: not resumed as a deployment in flight

    await store.wound_up("d-0", log={"kind": "deployment.finished", "at": T0 + 10, "actor": "deploybot", "data": {}})
    assert [d["id"] for d in await store.owing_wind_up("shop-staging")] == ["d-1"]
    assert (await store.get_deployment("d-0"))["wind_up"] is None
    assert [(e["kind"], e["deployment_id"]) for e in await store.read_log(deployment_id="d-0")] == [
        ("deployment.finished", "d-0")
    ]


async def test_target_events_upsert_changes_only_given_fields_and_list_in_order(store: AnyStore) -> None:
    for target in ("web-2", "web-1"):
        for seq, event in enumerate(["ApplicationStop", "DownloadBundle", "BeforeInstall"]):
            await store.upsert_target_event("d-1", target, event, seq=seq)
    await store.upsert_target_event("d-1", "web-1", "BeforeInstall", status="InProgress", started_at=T0)
    await store.upsert_target_event(
        "d-1", "web-1", "BeforeInstall", status="Failed", ended_at=T0 + 2, error_code=4, log_tail="boom\n"
    )
    await store.upsert_target_event("d-1", "web-1", "BeforeInstall")  # no fields: a no-op, not an error
    await store.upsert_target_event("d-2", "web-1", "Install", seq=0)

    events = await store.list_target_events("d-1")
    assert [(e["target"], e["event"]) for e in events] == [
        ("web-1", "ApplicationStop"), ("web-1", "DownloadBundle"), ("web-1", "BeforeInstall"),
        ("web-2", "ApplicationStop"), ("web-2", "DownloadBundle"), ("web-2", "BeforeInstall"),
    ]  # fmt: skip
    failed = events[2]
    assert {k: failed[k] for k in ("seq", "status", "started_at", "ended_at", "error_code", "log_tail")} == {
        "seq": 2, "status": "Failed", "started_at": T0, "ended_at": T0 + 2, "error_code": 4,
        "log_tail": "boom\n",
    }  # fmt: skip
    assert events[0]["status"] == "Pending"
    with pytest.raises(ValueError, match="colour"):
        await store.upsert_target_event("d-1", "web-1", "Install", colour="red")


async def test_a_deployments_view_is_its_row_its_events_and_its_revision_read_together(store: AnyStore) -> None:
    await store.put_revision("f" * 64, source="dir:a", commit="abc", size=7, created_at=T0)
    await store.create_deployment(deployment("d-1", revision_sha256="f" * 64))
    await store.create_deployment(deployment("d-2", revision_sha256="0" * 64))  # its revision is not stored
    for seq, event in enumerate(["ApplicationStop", "DownloadBundle"]):
        await store.upsert_target_event("d-1", "web-1", event, seq=seq, status="Succeeded")
    await store.upsert_target_event("d-2", "web-1", "Install", seq=0)

    view = await store.get_deployment_view("d-1")
    assert view is not None
    assert view.deployment == await store.get_deployment("d-1")
    assert view.target_events == await store.list_target_events("d-1")
    assert [e["event"] for e in view.target_events] == ["ApplicationStop", "DownloadBundle"]
    assert view.revision == await store.get_revision("f" * 64) and view.revision is not None
    other = await store.get_deployment_view("d-2")
    assert other is not None and other.revision is None and [e["event"] for e in other.target_events] == ["Install"]
    assert await store.get_deployment_view("d-404") is None


async def test_read_log_pages_and_filters(store: AnyStore) -> None:
    ids = [
        await store.append_log("e", at=T0 + i, actor="bot", deployment_id=f"d-{i % 2}", data={"i": i}) for i in range(6)
    ]
    assert ids == sorted(ids)
    assert [e["data"]["i"] for e in await store.read_log()] == [0, 1, 2, 3, 4, 5]
    assert [e["data"]["i"] for e in await store.read_log(after_id=ids[2], limit=2)] == [3, 4]
    assert [e["data"]["i"] for e in await store.read_log(deployment_id="d-1")] == [1, 3, 5]
    assert [e["data"]["i"] for e in await store.read_log(deployment_id="d-0", after_id=ids[0])] == [2, 4]
    assert (await store.read_log(limit=1))[0] | {"id": 0} == {
        "id": 0, "deployment_id": "d-0", "at": T0, "actor": "bot", "kind": "e", "data": {"i": 0}
    }  # fmt: skip


# -- agents, locks, deliveries


async def test_upsert_agent_keeps_fields_that_are_not_given(store: AnyStore) -> None:
    await store.upsert_agent("web-2", last_seen=T0, tags={"role": "web"}, version="0.1.0", state="Idle")
    await store.upsert_agent("web-2", last_seen=T0 + 5)
    await store.upsert_agent("web-1", last_seen=T0 + 6, state="Busy")
    assert await store.get_agent("web-2") == {
        "name": "web-2", "tags": {"role": "web"}, "version": "0.1.0", "last_seen": T0 + 5, "state": "Idle"
    }  # fmt: skip
    assert [a["name"] for a in await store.list_agents()] == ["web-1", "web-2"]
    assert await store.get_agent("web-3") is None


async def test_many_agents_are_read_in_one_trip_whatever_their_number(store: AnyStore) -> None:
    """A group's start checks all its hosts' agents: one read, chunked past 500 names (the parameter limits)."""
    names = [f"web-{n:04d}" for n in range(1, 1201)]
    await store.record_heartbeats([(name, T0 + i, None, None, "online") for i, name in enumerate(names)])
    asked = [*names[::-1], "web-0001", "db-1"]  # any order, a name twice, one that never sent a heartbeat

    rows = await store.get_agents(asked)

    assert sorted(row["name"] for row in rows) == names  # each once; none for db-1
    assert {row["name"]: row["last_seen"] for row in rows}["web-1200"] == T0 + 1199
    assert await store.get_agents([]) == []


async def test_heartbeats_are_recorded_together_with_their_hosts_claims(store: AnyStore) -> None:
    await store.upsert_agent("web-1", last_seen=T0, tags={"role": "web"}, version="0.1.0")
    held = await store.enqueue_command("web-1", "d-1", "Install", {"big": "payload"}, at=T0)
    await store.enqueue_command("web-1", "d-1", "AfterInstall", None, at=T0)  # Pending: not a claim
    elsewhere = await store.enqueue_command("web-3", "d-1", "Install", None, at=T0)
    assert (await store.claim_next_command("web-1", at=T0 + 1))["id"] == held
    assert (await store.claim_next_command("web-3", at=T0 + 1))["id"] == elsewhere

    claims = await store.record_heartbeats(
        [("web-1", T0 + 5, None, None, "online"), ("web-2", T0 + 6, {"role": "db"}, "0.2.0", "online")]
    )
    assert [(c["id"], c["host"], c["claimed_at"]) for c in claims] == [(held, "web-1", T0 + 1)]  # not web-3's
    assert "payload" not in claims[0]
    assert await store.get_agent("web-1") == {
        "name": "web-1", "tags": {"role": "web"}, "version": "0.1.0", "last_seen": T0 + 5, "state": "online"
    }  # fmt: skip
    assert (await store.get_agent("web-2"))["tags"] == {"role": "db"}

    # One agent twice in a batch (PostgreSQL writes a batch by one upsert, which may not touch a row twice): as one
    # by one, the later beat's time and state, and the tags and version the earlier one gave and the later left out.
    await store.record_heartbeats(
        [("web-2", T0 + 7, {"role": "cache"}, "0.3.0", "online"), ("web-2", T0 + 8, None, None, "busy")]
    )
    assert await store.get_agent("web-2") == {
        "name": "web-2", "tags": {"role": "cache"}, "version": "0.3.0", "last_seen": T0 + 8, "state": "busy"
    }  # fmt: skip


async def test_open_commands_can_be_listed_without_their_payload(store: AnyStore) -> None:
    first = await store.enqueue_command("web-1", "d-1", "Install", {"big": "payload"}, at=T0)
    second = await store.enqueue_command("web-2", "d-1", "Install", {"big": "payload"}, at=T0)
    assert (await store.claim_next_command("web-2", at=T0 + 1))["id"] == second

    heads = await store.list_commands(status=["InProgress", "Pending"], payload=False)
    assert [(c["id"], c["host"], c["deployment_id"], c["event"], c["status"]) for c in heads] == [
        (first, "web-1", "d-1", "Install", "Pending"),
        (second, "web-2", "d-1", "Install", "InProgress"),
    ]
    assert all("payload" not in c and "result" not in c for c in heads)
    assert (await store.list_commands(host="web-1"))[0]["payload"] == {"big": "payload"}
    # the heartbeat monitor's read: id and host alone, per status
    assert await store.open_commands("Pending") == [{"id": first, "host": "web-1"}]
    assert await store.open_commands("InProgress") == [{"id": second, "host": "web-2"}]


async def test_every_read_and_write_of_the_commands_goes_through_an_index_not_the_history(tmp_path: Path) -> None:
    """``host_commands`` keeps every command ever queued. Each statement a command's life runs (queued, claimed with
    its run, finished, cancelled, released; the heartbeats' claims, the monitor's rounds, the hosts page's list, a
    bundle's check, a replica's read-back) finds its rows through an index: a search, or the scan of a partial index
    of open commands, never the table. A batch of heartbeats finds its own hosts' claims by host, not every
    InProgress command of a 1,000-host deployment (migration 0013)."""
    statements: list[str] = []
    async with await SqliteStore.open(tmp_path / "state.db", on_statement=statements.append) as traced:
        await traced.create_deployment(deployment("d-1", status="InProgress", revision_sha256="abc"))
        await traced.enqueue_command_runs([("web-1", "d-old", ["Install"], {})], at=T0)
        statements.clear()
        await traced.enqueue_command_runs(
            [("web-1", "d-1", ["BeforeInstall", "Install", "AfterInstall"], {}), ("web-2", "d-1", ["Install"], {})],
            at=T0,
            hand_to={"web-2": True},
        )
        await traced.enqueue_command_once("web-2", "d-1", "Install", {}, at=T0)
        claimed = await traced.claim_next_command("web-1", at=T0, with_run=True)
        assert claimed is not None and claimed["event"] == "Install"  # d-old's, queued first
        first = await traced.claim_next_command("web-1", at=T0, with_run=True)
        assert first is not None and [step["event"] for step in first["then"]] == ["Install", "AfterInstall"]
        reports = [(first["id"], "web-1", "Succeeded", {}, first["then"][0]["id"])]
        [(_, _, go_on)] = await traced.finish_commands(reports, at=T0 + 1)
        assert go_on
        await traced.finish_commands([(first["then"][0]["id"], "web-1", "Failed", {}, None)], at=T0 + 2)
        assert await traced.release_command(claimed["id"])
        await traced.record_heartbeats([("web-1", T0, {}, "1", "online"), ("web-2", T0, {}, "1", "online")])
        assert [c["host"] for c in await traced.open_commands("Pending")] == ["web-1"]
        assert [c["host"] for c in await traced.open_commands("InProgress")] == ["web-2"]
        assert [c["host"] for c in await traced.list_commands(status="InProgress", payload=False)] == ["web-2"]
        assert await traced.host_uses_revision("web-1", "abc")
        assert not await traced.host_uses_revision("web-9", "abc")
        assert len(await traced.finished_commands("d-1")) == 2
        assert await traced.complete_command(claimed["id"], "Cancelled", None, at=T0 + 3)
        await traced.cancel_commands("d-1", at=T0 + 3)

    touching = {sql for sql in statements if "host_commands" in sql and not sql.startswith(("BEGIN", "COMMIT"))}
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        plans = {sql: [str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")] for sql in touching}
    reads = [plan for plan in plans.values() if plan]  # an INSERT has no plan
    assert len(reads) >= 14, plans
    for sql, plan in plans.items():
        for step in plan:
            if step.startswith("SCAN host_commands"):  # a scan is only ever of the open commands' partial indexes
                assert step.endswith(("INDEX host_commands_pending", "INDEX host_commands_in_progress")), (sql, plan)
            if step.startswith("SCAN deployments"):
                raise AssertionError((sql, plan))
    heartbeat_claims = [p for sql, p in plans.items() if "status = 'InProgress' AND host IN" in sql]
    assert heartbeat_claims == [["SEARCH host_commands USING INDEX host_commands_in_progress (host=?)"]]


async def test_the_indexes_of_open_commands_are_partial_and_the_deployments_index_has_no_status(tmp_path: Path) -> None:
    """Migration 0013: a claim moves a command from one partial index to the other and a finish drops it, so both stay
    the size of the queue; the index of a deployment's commands has no status, which a claim or a finish leaves alone.
    Whether a host ever had a revision starts from the revision's deployments."""
    await (await SqliteStore.open(tmp_path / "state.db")).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        definitions = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    assert definitions["host_commands_pending"].endswith("(host, id) WHERE status = 'Pending'")
    assert definitions["host_commands_in_progress"].endswith("(host, id) WHERE status = 'InProgress'")
    assert definitions["host_commands_by_deployment"].endswith("(deployment_id, host)")
    assert definitions["deployments_by_revision"].endswith("(revision_sha256)")
    assert not {"host_commands_queue", "host_commands_by_status"} & set(definitions)


async def test_a_runs_spec_is_stored_once_and_every_command_of_it_is_read_with_it(store: AnyStore) -> None:
    """A run's commands share the deployment's spec: its first command keeps it and the others name that one
    (migration 0014), so a claim or a finish rewrites a row without it. Whoever reads a command gets its spec: a
    later command handed out by itself (its claimant was gone), ``get_command``, ``list_commands``."""
    spec = {"deployment_id": "d-1", "revision": {"sha256": "ab" * 32}, "hooks": ["x" * 300]}
    events = ["BeforeInstall", "Install", "AfterInstall"]
    await store.enqueue_command_runs([("web-1", "d-1", events, spec), ("web-2", "d-1", events, spec)], at=T0)

    rows = await raw_rows(store, "SELECT id, host, payload, run_head FROM host_commands ORDER BY id")
    for host in ("web-1", "web-2"):  # each host's in id order (the hosts' may interleave: PostgreSQL queues together)
        its = [row for row in rows if row["host"] == host]
        assert [row["payload"] is None for row in its] == [False, True, True]
        assert [row["run_head"] for row in its] == [None, its[0]["id"], its[0]["id"]]

    listed = await store.list_commands(deployment_id="d-1")
    assert [c["payload"] for c in listed] == [spec] * 6 and all("run_head" not in c for c in listed)
    pending = await store.list_commands(host="web-2", status="Pending")  # the run's head among them or not
    assert [c["payload"] for c in pending] == [spec] * 3
    later = next(row["id"] for row in rows if row["host"] == "web-1" and row["run_head"] is not None)
    got = await store.get_command(later)
    assert got is not None and got["payload"] == spec and "run_head" not in got

    first = await store.claim_next_command("web-1", at=T0, with_run=True)
    assert first is not None and first["payload"] == spec and [s["event"] for s in first["then"]] == events[1:]
    [(_, _, go_on)] = await store.finish_commands([(first["id"], "web-1", "Succeeded", {}, later)], at=T0 + 1)
    assert go_on
    assert await store.release_command(later)  # its claimant never got it: handed out again, by itself
    again = await store.claim_next_command("web-1", at=T0 + 2, with_run=True)
    assert again is not None and again["id"] == later and again["payload"] == spec and "run_head" not in again


async def test_a_run_is_queued_up_to_the_first_event_its_host_already_has_in_that_deployment(store: AnyStore) -> None:
    """Commands run in id order, so nothing is queued behind an event already there; what the host has in another
    deployment, or had cancelled, does not count. A run whose first event is there queues nothing and returns it."""
    events = ["BeforeInstall", "Install", "AfterInstall"]
    await store.enqueue_command_runs([("web-1", "d-old", events, {"n": 0})], at=T0)
    await store.enqueue_command_once("web-1", "d-1", "AfterInstall", {"n": 1}, at=T0)
    cancelled = await store.enqueue_command("web-1", "d-1", "Install", {"n": 1}, at=T0)
    await store.complete_command(cancelled, "Cancelled", None, at=T0)

    existing, _ = await store.enqueue_command_runs([("web-1", "d-1", events, {"n": 2})], at=T0 + 1)
    assert existing == [None]
    queued = [(c["event"], c["status"]) for c in await store.list_commands(host="web-1", deployment_id="d-1")]
    assert queued == [("AfterInstall", "Pending"), ("Install", "Cancelled"), ("BeforeInstall", "Pending"),
                      ("Install", "Pending")]  # fmt: skip

    first = (await store.list_commands(host="web-1", deployment_id="d-1", status="Pending"))[1]
    assert await store.complete_command(first["id"], "Succeeded", {"ok": 1}, at=T0 + 2)
    again, _ = await store.enqueue_command_runs([("web-1", "d-1", events, {"n": 3})], at=T0 + 3)
    assert again[0] is not None and again[0]["id"] == first["id"] and again[0]["result"] == {"ok": 1}
    assert len(await store.list_commands(host="web-1", deployment_id="d-1")) == 4  # nothing more was queued


async def test_a_step_is_written_in_the_transaction_that_queues_its_runs(store: AnyStore) -> None:
    """The runner's step and the commands it decided on: one transaction, so the step is stored before an agent can
    see its commands, and neither lands without the other."""
    await store.create_deployment(deployment("d-1", status="Created"))
    row = {"target": "web-1", "event": "ApplicationStop", "status": "InProgress", "seq": 1}
    step = StepWrite("d-1", [row], {"status": "InProgress", "state": {"step": 1}})

    existing, _ = await store.enqueue_command_runs(
        [("web-1", "d-1", ["ApplicationStop", "Install"], {})], at=T0, step=step
    )

    assert existing == [None]
    stored = await store.get_deployment("d-1")
    assert stored is not None and (stored["status"], stored["state"]) == ("InProgress", {"step": 1})
    assert [(r["target"], r["event"], r["status"]) for r in await store.list_target_events("d-1")] == [
        ("web-1", "ApplicationStop", "InProgress")
    ]
    assert [c["event"] for c in await store.list_commands(deployment_id="d-1")] == ["ApplicationStop", "Install"]

    # A queueing that fails part-way (a payload that is not JSON) leaves no trace of its step either.
    later = StepWrite("d-1", [], {"status": "Failed", "state": {"step": 2}})
    with pytest.raises(TypeError):
        await store.enqueue_command_runs([("web-2", "d-1", ["Install"], {"x": object()})], at=T0, step=later)
    stored = await store.get_deployment("d-1")
    assert stored is not None and (stored["status"], stored["state"]) == ("InProgress", {"step": 1})
    assert len(await store.list_commands(deployment_id="d-1")) == 2

    # With nothing to queue, the step is written alone.
    await store.enqueue_command_runs([], at=T0, step=StepWrite("d-1", [], {"state": {"step": 3}}))
    stored = await store.get_deployment("d-1")
    assert stored is not None and stored["state"] == {"step": 3}


async def test_a_hosts_commands_of_a_deployment_are_found_without_reading_its_other_deployments(
    tmp_path: Path,
) -> None:
    """Queueing a stage reads each host's commands of that deployment: through the index led by deployment and host,
    not the host's whole history (which grows with every deployment; migration 0011). The run handed over with a
    claim is read from the host's Pending commands after it (the queue's index): what is still to run, never what
    ran before."""
    statements: list[str] = []
    async with await SqliteStore.open(tmp_path / "state.db", on_statement=statements.append) as traced:
        events = ["BeforeInstall", "Install", "AfterInstall"]
        await traced.enqueue_command_runs([("web-1", "d-old", events, {})], at=T0)
        statements.clear()
        await traced.enqueue_command_runs([("web-1", "d-1", events, {})], at=T0, hand_to={"web-1": True})
        await traced.enqueue_command_runs([("web-1", "d-1", events, {})], at=T0)  # the first event is there now
        reads = {sql for sql in statements if sql.lstrip().upper().startswith("SELECT")}

    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        plans = {
            sql: " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", (1,) * sql.count("?")))
            for sql in reads
        }
    assert len(plans) == 3, plans  # what is there, the first event's command, the rest of the run handed over
    pending_after = [sql for sql in plans if "status = 'Pending' AND id >" in sql]
    assert len(pending_after) == 1, plans
    assert "host_commands_pending (host=? AND id>?)" in plans.pop(pending_after[0])
    for sql, plan in plans.items():
        assert "host_commands_by_deployment (deployment_id=? AND host=?" in plan, (sql, plan)


async def test_a_report_of_a_command_whose_head_is_known_finishes_it_in_one_statement(tmp_path: Path) -> None:
    """The fleet knows the heads of the commands it handed out (they never change): a report that finishes one is
    its UPDATE alone; a repeat, or a head that names another host, is read as without one."""
    statements: list[str] = []
    async with await SqliteStore.open(tmp_path / "state.db", on_statement=statements.append) as traced:
        first = await traced.enqueue_command("web-1", "d-1", "Install", {"n": 1}, at=T0)
        head = {"id": first, "host": "web-1", "deployment_id": "d-1", "event": "Install"}
        statements.clear()
        [(command, finished, _)] = await traced.finish_commands(
            [(first, "web-1", "Succeeded", {"ok": 1}, None)], at=T0 + 1, heads={first: head}
        )
        assert (command, finished) == (head, True)
        assert [sql.split()[0] for sql in statements] == ["BEGIN", "UPDATE", "COMMIT"]

        [(again, finished_again, _)] = await traced.finish_commands(
            [(first, "web-1", "Failed", None, None)], at=T0 + 2, heads={first: head}
        )
        assert again is not None and again["event"] == "Install" and finished_again is False  # a repeat
        [(other, _, _)] = await traced.finish_commands(
            [(first, "web-2", "Succeeded", None, None)], at=T0 + 2, heads={first: {**head, "host": "web-2"}}
        )
        assert other is None  # web-1's command, whatever the head said
        [stored] = await traced.list_commands(host="web-1")
        assert (stored["status"], stored["result"], stored["finished_at"]) == ("Succeeded", {"ok": 1}, T0 + 1)


async def test_a_batch_of_reports_is_recorded_as_one_by_one_with_one_statement_for_its_finishes_and_one_for_its_claims(
    store: AnyStore,
) -> None:
    """600 hosts report the first event of their run together, as a burst of result POSTs is written (Fleet's
    batches): each report comes out as it would alone, across the 500 rows of one statement, and with the cases
    read one by one among them: a repeat in the same batch, a command the fleet did not hand out (no head), another
    host's command, a failure (which cancels the rest of its run and claims nothing)."""
    hosts = [f"web-{n}" for n in range(1, 601)]
    await store.enqueue_command_runs([(host, "d-1", ["Install", "AfterInstall"], {}) for host in hosts], at=T0)
    firsts = {host: await store.claim_next_command(host, at=T0, with_run=True) for host in hosts}
    heads = {
        c["id"]: {"id": c["id"], "host": host, "deployment_id": "d-1", "event": "Install"}
        for host, c in firsts.items()
        if c is not None and host != "web-2"  # web-2's was handed out by another server
    }

    def report(host: str, status: str = "Succeeded", *, by: str | None = None) -> Any:
        first = firsts[host]
        assert first is not None
        return (first["id"], by or host, status, {"from": host}, first["then"][0]["id"])

    reports = [report(host) for host in hosts if host not in ("web-3", "web-4")]
    reports += [report("web-1"), report("web-3", "Failed"), report("web-4", by="web-5")]
    outcomes = await store.finish_commands(reports, at=T0 + 1, heads=heads)

    assert len(outcomes) == len(reports)
    for (command_id, host, *_), (command, finished, went_on) in zip(reports[:598], outcomes, strict=False):
        assert command is not None and (command["id"], command["host"], finished, went_on) == (
            command_id,
            host,
            True,
            True,
        )
    (again, finished, went_on), (failed, failed_finished, failed_went_on), (stranger, _, _) = outcomes[598:]
    assert again is not None and again["id"] == firsts["web-1"]["id"] and (finished, went_on) == (False, False)
    assert failed is not None and (failed_finished, failed_went_on) == (True, False)
    assert stranger is None  # web-4's command, reported by web-5
    commands = {(c["host"], c["event"]): c for c in await store.list_commands(deployment_id="d-1")}
    assert commands[("web-1", "Install")]["result"] == {"from": "web-1"}  # the first report of it, not the repeat
    assert commands[("web-2", "AfterInstall")]["status"] == "InProgress"  # claimed though its head was not known
    assert commands[("web-3", "Install")]["status"] == "Failed"
    assert commands[("web-3", "AfterInstall")]["status"] == "Cancelled"
    assert (commands[("web-4", "Install")]["status"], commands[("web-4", "AfterInstall")]["status"]) == (
        "InProgress",
        "Pending",
    )
    assert sum(c["status"] == "Succeeded" for c in commands.values()) == 598
    assert sum(c["status"] == "InProgress" for c in commands.values()) == 598 + 1  # the claims, and web-4's first


async def test_on_postgresql_a_batch_of_reports_costs_a_statement_per_500_finishes_and_500_claims(
    postgres_server: PostgresServer,
) -> None:
    """Each statement is a round trip to PostgreSQL: 1,000 reports written together are 4 UPDATEs, not 2,000 (on
    SQLite, where a statement is a call into the library, they stay one each: ``SqlAccess._values``), and the pool
    adds no reset query of its own when it takes the connection back."""
    statements: list[str] = []
    store = await PostgresStore.open(postgres_server.new_database(), on_statement=statements.append)
    try:
        hosts = [f"web-{n}" for n in range(1, 1001)]
        await store.enqueue_command_runs([(host, "d-1", ["Install", "AfterInstall"], {}) for host in hosts], at=T0)
        firsts = [await store.claim_next_command(host, at=T0, with_run=True) for host in hosts]
        heads = {c["id"]: {"id": c["id"], "host": c["host"], "deployment_id": "d-1"} for c in firsts if c}
        reports = [(c["id"], c["host"], "Succeeded", {}, c["then"][0]["id"]) for c in firsts if c]
        statements.clear()
        outcomes = await store.finish_commands(reports, at=T0 + 1, heads=heads)
        assert len(outcomes) == 1000 and all(finished and went_on for _, finished, went_on in outcomes)
        assert [sql.split()[0] for sql in statements if "host_commands" in sql] == ["UPDATE"] * 4
        assert not [sql for sql in statements if "RESET ALL" in sql]  # the pool takes a connection back as it is
    finally:
        await store.close()


async def test_locks_put_replace_delete(store: AnyStore) -> None:
    await store.put_lock("shop", "production", owner="alice", created_at=T0, reason="freeze")
    await store.put_lock("blog", "staging", owner="bob", created_at=T0, expires_at=T0 + 60)
    await store.put_lock("shop", "production", owner="carol", created_at=T0 + 1)

    assert await store.get_lock("shop", "production") == {
        "application": "shop", "environment": "production", "owner": "carol", "reason": None,
        "created_at": T0 + 1, "expires_at": None,
    }  # fmt: skip
    assert [(x["application"], x["environment"]) for x in await store.list_locks()] == [
        ("blog", "staging"),
        ("shop", "production"),
    ]
    assert await store.delete_lock("shop", "production") is True
    assert await store.delete_lock("shop", "production") is False
    assert await store.get_lock("shop", "production") is None


async def test_record_delivery_deduplicates(store: AnyStore) -> None:
    assert await store.record_delivery("gh-1", "github", T0) is True
    assert await store.record_delivery("gh-1", "github", T0 + 1) is False
    assert await store.record_delivery("gh-2", "github", T0 + 1) is True


async def test_reopening_after_close_keeps_every_kind_of_data(store_database: Opener) -> None:
    async with await store_database.open() as first:
        await first.put_revision("f" * 64, source="dir", commit=None, size=3, created_at=T0)
        await first.create_deployment(deployment("d-1", state={"step": 3}))
        await first.upsert_target_event("d-1", "web-1", "Install", seq=4, status="Succeeded")
        await first.append_log("deployment.created", at=T0, actor="alice", deployment_id="d-1")
        command_id = await first.enqueue_command("web-1", "d-1", "Install", {"a": 1}, at=T0)
        await first.upsert_agent("web-1", last_seen=T0, tags={"role": "web"})
        await first.put_lock("shop", "production", owner="alice", created_at=T0)
        await first.record_delivery("gh-1", "github", T0)

    async with await store_database.open() as second:
        assert (await second.get_revision("f" * 64))["size"] == 3
        assert (await second.get_deployment("d-1"))["state"] == {"step": 3}
        assert [e["seq"] for e in await second.list_target_events("d-1")] == [4]
        assert [e["kind"] for e in await second.read_log(deployment_id="d-1")] == ["deployment.created"]
        assert (await second.claim_next_command("web-1", at=T0))["id"] == command_id
        assert (await second.get_agent("web-1"))["tags"] == {"role": "web"}
        assert (await second.get_lock("shop", "production"))["owner"] == "alice"
        assert await second.record_delivery("gh-1", "github", T0) is False
        assert await second.append_log("later", at=T0, actor="bob") == 2


async def test_save_progress_writes_target_events_and_the_deployment_in_one_go(store: AnyStore) -> None:
    await store.create_deployment(
        {
            "id": "d-p",
            "application": "a",
            "environment": "e",
            "group_name": "g",
            "revision_sha256": "0" * 64,
            "status": "InProgress",
            "created_at": T0,
        }
    )
    rows = [{"target": "web-1", "event": "Install", "status": "Succeeded", "seq": 3, "message": "ok"}]
    assert await store.save_progress("d-p", rows, status="Succeeded", state={"x": 1}) is True
    assert (await store.get_deployment("d-p"))["state"] == {"x": 1}
    assert [(r["target"], r["event"], r["message"]) for r in await store.list_target_events("d-p")] == [
        ("web-1", "Install", "ok")
    ]
    assert await store.save_progress("d-missing", [], status="Failed") is False


async def test_on_postgresql_a_steps_runs_are_queued_by_a_statement_per_place_in_the_run(
    postgres_server: PostgresServer,
) -> None:
    """1,000 hosts' runs of three events: what the hosts have queued read by one statement per 500 hosts, then their
    first events inserted, then their second, then their third (a run's commands must be in id order), not 4,000
    statements; each host is then handed its run in order, one host that had its first event queued already
    returns it and queues nothing."""
    statements: list[str] = []
    store = await PostgresStore.open(postgres_server.new_database(), on_statement=statements.append)
    try:
        hosts = [f"web-{n}" for n in range(1, 1001)]
        events = ["BeforeInstall", "Install", "AfterInstall"]
        await store.enqueue_command_once("web-7", "d-1", "BeforeInstall", {"n": 0}, at=T0)
        statements.clear()
        existing, _ = await store.enqueue_command_runs([(host, "d-1", events, {"n": 1}) for host in hosts], at=T0)
        writes = [sql.split()[0] for sql in statements if "host_commands" in sql]
        assert writes == ["SELECT"] * 3 + ["INSERT"] * 6  # the third read: web-7's command, there already
        assert [row is not None for row in existing] == [host == "web-7" for host in hosts]
        for host in ("web-1", "web-500", "web-501", "web-1000"):
            first = await store.claim_next_command(host, at=T0, with_run=True)
            assert first is not None and first["payload"] == {"n": 1}
            assert [first["event"], *(step["event"] for step in first["then"])] == events
    finally:
        await store.close()


async def test_a_steps_parked_hosts_are_each_handed_their_oldest_pending_command_with_its_run(store: AnyStore) -> None:
    """The claims made for parked long polls in the transaction that queues a step's runs give each host what a claim
    of its own would (PostgreSQL claims 603 hosts by a statement per 500, SQLite one by one): its oldest Pending
    command, a run's later command with its run's payload, the rest of the run only when asked for, and whether
    anything else of the host waits behind the run."""
    events = ["BeforeInstall", "Install", "AfterInstall"]
    await store.enqueue_command_runs([("web-older", "d-0", ["Install"], {"n": 0})], at=T0)
    await store.enqueue_command_runs([("web-later", "d-0", ["Install", "AfterInstall"], {"n": 0})], at=T0)
    handed_alone = await store.claim_next_command("web-later", at=T0)  # its run's next command is left Pending
    assert handed_alone is not None and handed_alone["event"] == "Install"
    hosts = [f"web-{n:03d}" for n in range(600)]
    hand_to = {host: True for host in [*hosts, "web-older", "web-later"]} | {"web-plain": False, "web-idle": True}
    runs = [(host, "d-1", events, {"n": 1}) for host in [*hosts, "web-older", "web-later", "web-plain"]]

    _, claimed = await store.enqueue_command_runs(runs, at=T0 + 1, hand_to=hand_to)

    assert set(claimed) == {*hosts, "web-older", "web-later", "web-plain"}  # web-idle got no run
    for host in hosts:
        row = claimed[host]
        assert (row["event"], row["status"], row["payload"], row["claimed_at"]) == (
            "BeforeInstall",
            "InProgress",
            {"n": 1},
            T0 + 1,
        )
        assert [step["event"] for step in row["then"]] == ["Install", "AfterInstall"] and row["run_ends_queue"]
    older, later, plain = claimed["web-older"], claimed["web-later"], claimed["web-plain"]
    assert (older["deployment_id"], older["event"], older["then"], older["run_ends_queue"]) == (
        "d-0",
        "Install",
        [],
        False,
    )
    assert (later["deployment_id"], later["event"], later["payload"], later["then"]) == (
        "d-0",
        "AfterInstall",
        {"n": 0},
        [],
    )
    assert (plain["event"], "then" in plain, plain["payload"]) == ("BeforeInstall", False, {"n": 1})
    rest = [c for c in await store.list_commands(host="web-000", payload=False) if c["status"] == "Pending"]
    assert [c["id"] for c in rest] == [step["id"] for step in claimed["web-000"]["then"]]


async def test_a_parked_host_is_handed_its_runs_first_command_alone_once_the_database_has_statistics(
    store: AnyStore,
) -> None:
    """With statistics on host_commands (ANALYZE, which autovacuum runs on a live database), PostgreSQL planned the
    step's batched claim so that it picked again for each Pending row: it claimed the whole run and handed the poll
    its last command (a replica takeover test failed so twice). Each parked host gets its run's first command,
    and the rest of the run stays Pending."""
    events = ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall", "ValidateService"]
    await raw_execute(store, "ANALYZE host_commands")

    _, claimed = await store.enqueue_command_runs(
        [("web-1", "d-1", events, {"n": 1}), ("web-2", "d-1", events, {"n": 1})],
        at=T0,
        hand_to={"web-1": True, "web-2": True},
    )

    for host in ("web-1", "web-2"):
        assert claimed[host]["event"] == "ApplicationStop"
        assert [step["event"] for step in claimed[host]["then"]] == events[1:]
        statuses = [c["status"] for c in await store.list_commands(host=host, payload=False)]
        assert statuses == ["InProgress"] + ["Pending"] * 5


async def test_on_postgresql_a_steps_parked_hosts_are_claimed_by_a_statement_per_500(
    postgres_server: PostgresServer,
) -> None:
    """1,000 parked hosts handed their runs in the step's transaction: 2 claiming UPDATEs and 2 reads of the rest of
    their runs, not 2,000 statements (each a round trip to PostgreSQL)."""
    statements: list[str] = []
    store = await PostgresStore.open(postgres_server.new_database(), on_statement=statements.append)
    try:
        hosts = [f"web-{n}" for n in range(1, 1001)]
        runs = [(host, "d-1", ["Install", "AfterInstall"], {}) for host in hosts]
        queued = len(statements)
        _, claimed = await store.enqueue_command_runs(runs, at=T0, hand_to=dict.fromkeys(hosts, True))
        assert len(claimed) == 1000 and all(row["then"] for row in claimed.values())
        claims = [sql.split()[0] for sql in statements[queued:] if "host_commands" in sql and "INSERT" not in sql]
        # What is there; the claims (an UPDATE after its WITH of the picks); the rest of the runs.
        assert claims == ["SELECT"] * 2 + ["WITH"] * 2 + ["SELECT"] * 2
    finally:
        await store.close()


async def test_a_steps_rows_of_one_event_and_of_other_columns_leave_what_they_would_one_by_one(store: AnyStore) -> None:
    """A step writes the rows its quiet steps left unwritten too: one event's can come twice (marked in progress,
    then its result), and rows give different columns. PostgreSQL writes them by one upsert per set of columns
    (``target_event_upserts``), SQLite one by one: both leave the same rows."""
    await store.create_deployment(deployment("d-s", status="InProgress"))
    await store.save_progress("d-s", [{"target": "web-1", "event": "Install", "status": "Succeeded", "message": "old"}])
    rows = [
        {"target": "web-1", "event": "Install", "status": "InProgress", "started_at": T0},  # over the stored row
        {"target": "web-1", "event": "Install", "status": "Failed", "ended_at": T0 + 1, "error_code": 1},
        {"target": "web-2", "event": "Install", "status": "InProgress", "started_at": T0, "seq": 4},
        {"target": "web-2", "event": "Install", "status": "Succeeded", "ended_at": T0 + 2, "message": "ok"},
        {"target": "web-3", "event": "AfterInstall", "status": "Pending", "seq": 5},  # the same columns twice
        {"target": "web-3", "event": "AfterInstall", "status": "Skipped", "seq": 5},
        *({"target": f"web-{n}", "event": "Install", "status": "Succeeded", "seq": 4} for n in range(4, 604)),
    ]
    assert await store.save_progress("d-s", rows, status="InProgress") is True
    stored = {(r["target"], r["event"]): r for r in await store.list_target_events("d-s")}
    assert len(stored) == 603
    picked = ("status", "seq", "started_at", "ended_at", "error_code", "message")
    assert [stored[("web-1", "Install")][c] for c in picked] == ["Failed", 0, T0, T0 + 1, 1, "old"]
    assert [stored[("web-2", "Install")][c] for c in picked] == ["Succeeded", 4, T0, T0 + 2, None, "ok"]
    assert [stored[("web-3", "AfterInstall")][c] for c in picked] == ["Skipped", 5, None, None, None, None]
    assert {stored[(f"web-{n}", "Install")]["status"] for n in range(4, 604)} == {"Succeeded"}


async def test_enqueue_command_once_and_finish_command(store: AnyStore) -> None:
    assert await store.enqueue_command_once("web-1", "d-1", "Install", {"n": 1}, at=T0) is None
    existing = await store.enqueue_command_once("web-1", "d-1", "Install", {"n": 2}, at=T0)
    assert existing is not None and "payload" not in existing and existing["status"] == "Pending"
    assert len(await store.list_commands(host="web-1")) == 1
    assert await store.finish_command(existing["id"], "web-2", "Succeeded", {"ok": 1}, at=T0) == (None, False)
    head, finished = await store.finish_command(existing["id"], "web-1", "Succeeded", {"ok": 1}, at=T0)
    assert finished and head is not None and head["event"] == "Install"
    assert (await store.finish_command(existing["id"], "web-1", "Failed", None, at=T0))[1] is False
    again = await store.enqueue_command_once("web-1", "d-1", "Install", None, at=T0)
    assert again is not None and again["result"] == {"ok": 1}
