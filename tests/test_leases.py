"""Group leases: the pure rules (engine/core/leases.py), table-tested, and the store's statements and fencing
(engine/store/lease_records.py) on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import FakeClock, eventually
from postgres_support import Opener

from engine.core.leases import (
    Lease,
    LeaseLost,
    is_expired,
    lapsed,
    may_take,
    next_generation,
    renew_interval,
)
from engine.ports import StepWrite

T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("holder", "expires_at", "replica", "now", "expected"),
    [
        (None, None, "a", T0, True),  # never taken
        ("a", T0 + 10, "a", T0, True),  # its own
        ("b", T0 + 10, "a", T0, False),  # another's, live
        ("b", T0 + 10, "a", T0 + 9.999, False),
        ("b", T0 + 10, "a", T0 + 10, True),  # expired at its expiry
        ("b", 0.0, "a", T0, True),  # released
    ],
)
def test_who_may_take_a_lease(
    holder: str | None, expires_at: float | None, replica: str, now: float, expected: bool
) -> None:
    assert may_take(holder, expires_at, replica, now) is expected


@pytest.mark.parametrize(
    ("generation", "expected"),
    [(None, 1), (1, 2), (41, 42)],
)
def test_every_take_is_a_new_generation(generation: int | None, expected: int) -> None:
    assert next_generation(generation) == expected


@pytest.mark.parametrize(
    ("renewed_at", "lease_seconds", "now", "lost"),
    [
        (100.0, 10.0, 100.0, False),
        (100.0, 10.0, 109.9, False),
        (100.0, 10.0, 110.0, True),  # a whole lease time without a renewal: another may hold it
        (100.0, 1.0, 105.0, True),
    ],
)
def test_when_a_holder_must_consider_its_lease_lost(
    renewed_at: float, lease_seconds: float, now: float, lost: bool
) -> None:
    assert lapsed(renewed_at, lease_seconds, now) is lost


@pytest.mark.parametrize(("lease_seconds", "interval"), [(10.0, 10.0 / 3), (3.0, 1.0), (1.0, 1.0 / 3)])
def test_renewals_come_every_third_of_the_lease(lease_seconds: float, interval: float) -> None:
    assert renew_interval(lease_seconds) == pytest.approx(interval)


@pytest.mark.parametrize(("expires_at", "now", "expired"), [(T0, T0 - 1, False), (T0, T0, True), (0.0, T0, True)])
def test_expiry(expires_at: float, now: float, expired: bool) -> None:
    assert is_expired(expires_at, now) is expired


# -- the store ----------------------------------------------------------------------------------------------------


async def test_a_lease_is_taken_once_renewed_and_released_keeping_generations_growing(
    store_database: Opener,
) -> None:
    store = await store_database.open()
    try:
        first = await store.acquire_lease("web-prod", "a", seconds=10, now=T0)
        assert first is not None and (first.owner, first.generation) == ("a", 1)
        renewed = await store.renew_lease(first, seconds=10, now=T0 + 3)
        assert renewed is not None and renewed.generation == 1
        assert await store.release_lease(first)
        again = await store.acquire_lease("web-prod", "b", seconds=10, now=T0 + 4)
        assert again is not None and (again.owner, again.generation) == ("b", 2)
        assert await store.renew_lease(first, seconds=10, now=T0 + 5) is None  # a's tenure is over
        assert not await store.release_lease(first)
        [row] = await store.list_leases(now=T0 + 5)
        assert (row["group_name"], row["owner"], row["generation"], row["held"]) == ("web-prod", "b", 2, True)
    finally:
        await store.close()


async def test_a_fenced_write_of_a_lost_tenure_is_refused_and_leaves_nothing(store_database: Opener) -> None:
    store = await store_database.open()
    try:
        await store.create_deployment(
            {
                "id": "d-FENCED001",
                "application": "web",
                "environment": "prod",
                "group_name": "web-prod",
                "status": "InProgress",
                "revision_sha256": "a" * 64,
                "config_name": "OneAtATime",
                "deployment_type": "IN_PLACE",
                "created_by": "alice",
                "created_at": T0,
                "description": "",
                "state": {},
            }
        )
        lease = await store.acquire_lease("web-prod", "a", seconds=10, now=T0)
        assert lease is not None
        with store.fencing(lease):
            await store.append_log("deployment.note", at=T0, actor="deploybot", deployment_id="d-FENCED001")
            assert await store.enqueue_command_once("web-1", "d-FENCED001", "BeforeInstall", {}, at=T0) is None
        if store_database.kind == "sqlite":  # one server: its own next take is always allowed
            await store.acquire_lease("web-prod", "b", seconds=10, now=T0 + 1)
        else:
            await store.release_lease(lease)
            assert await store.acquire_lease("web-prod", "b", seconds=10, now=T0 + 1) is not None
        with store.fencing(lease):
            with pytest.raises(LeaseLost) as refused:
                await store.save_progress(
                    "d-FENCED001",
                    [{"target": "web-1", "event": "BeforeInstall", "status": "Succeeded"}],
                    status="Failed",
                )
            with pytest.raises(LeaseLost):
                await store.append_log("deployment.note", at=T0, actor="deploybot", deployment_id="d-FENCED001")
            with pytest.raises(LeaseLost):
                await store.enqueue_command_once("web-2", "d-FENCED001", "BeforeInstall", {}, at=T0)
            with pytest.raises(LeaseLost):
                await store.cancel_commands("d-FENCED001", at=T0)
            with pytest.raises(LeaseLost):  # a step and the runs it queues: neither
                await store.enqueue_command_runs(
                    [("web-3", "d-FENCED001", ["BeforeInstall"], {})],
                    at=T0,
                    step=StepWrite(
                        "d-FENCED001", [{"target": "web-3", "event": "BeforeInstall"}], {"status": "Failed"}
                    ),
                )
        assert (refused.value.group, refused.value.owner, refused.value.generation) == ("web-prod", "a", 1)
        row = await store.get_deployment("d-FENCED001")
        assert row is not None and row["status"] == "InProgress"
        assert await store.list_target_events("d-FENCED001") == []
        assert [e["kind"] for e in await store.read_log(deployment_id="d-FENCED001")] == ["deployment.note"]
        assert [(c["host"], c["status"]) for c in await store.list_commands(deployment_id="d-FENCED001")] == [
            ("web-1", "Pending")
        ]
        await store.append_log("unfenced", at=T0, actor="x")  # outside the block nothing is fenced
    finally:
        await store.close()


def _deployment(deployment_id: str, group: str, status: str) -> dict[str, object]:
    return {
        "id": deployment_id,
        "application": "web",
        "environment": group,
        "group_name": group,
        "status": status,
        "revision_sha256": "a" * 64,
        "config_name": "OneAtATime",
        "deployment_type": "IN_PLACE",
        "created_by": "alice",
        "created_at": T0,
        "description": "",
        "state": {},
    }


async def test_groups_with_work_are_listed_with_their_lease(store_database: Opener) -> None:
    store = await store_database.open()
    try:
        for number, (group, status) in enumerate(
            [("running", "InProgress"), ("queued", "Queued"), ("approval", "WaitingApproval"), ("done", "Succeeded")]
        ):
            await store.create_deployment(_deployment(f"d-GROUPS00{number}", group, status))
        await store.create_deployment(_deployment("d-GROUPS009", "ended", "Failed"))
        await store.update_deployment("d-GROUPS009", wind_up=[{"command": "Finish", "status": "Failed"}])
        held = await store.acquire_lease("running", "a", seconds=30, now=T0)
        assert held is not None
        rows = {row["group_name"]: row for row in await store.groups_to_take_over(now=T0)}
        # waiting for an approval or ended: no work for an owner, unless the end's wind-up is still owed
        assert sorted(rows) == ["ended", "queued", "running"]
        assert rows["queued"]["owner"] is None and rows["queued"]["free_in"] <= 0
        assert rows["running"]["owner"] == "a" and 0 < rows["running"]["free_in"] <= 30
    finally:
        await store.close()


async def test_two_replicas_racing_for_a_free_lease_get_one_each_generation(store_database: Opener) -> None:
    if store_database.kind == "sqlite":
        pytest.skip("one server per SQLite database: nobody races it")
    stores = [await store_database.open() for _ in range(2)]
    try:
        for round_ in range(20):
            group = f"group-{round_}"
            taken = await asyncio.gather(
                *(store.acquire_lease(group, f"replica-{i}", seconds=10, now=T0) for i, store in enumerate(stores))
            )
            winners = [lease for lease in taken if lease is not None]
            assert len(winners) == 1, taken
            assert winners[0].generation == 1
    finally:
        for store in stores:
            await store.close()


async def test_an_expired_lease_is_taken_over_by_the_database_clock(store_database: Opener) -> None:
    if store_database.kind == "sqlite":
        pytest.skip("the caller's clock judges on SQLite (one server)")
    store = await store_database.open()
    try:
        # The callers' clocks say nothing on PostgreSQL: a lease of 0.2 s is over 0.2 s later by the database's.
        first = await store.acquire_lease("web-prod", "a", seconds=0.2, now=0.0)
        assert first is not None
        assert await store.acquire_lease("web-prod", "b", seconds=10, now=T0 * 2) is None
        taken: list[Lease] = []

        async def take() -> bool:  # until the database's clock passes the expiry: there is no other clock to drive
            lease = await store.acquire_lease("web-prod", "b", seconds=10, now=0.0)
            taken.extend([lease] if lease is not None else [])
            return lease is not None

        await eventually(take, "b takes the expired lease")
        assert (taken[0].owner, taken[0].generation) == ("b", 2)
        assert await store.groups_to_take_over(now=0.0) == []  # no deployment: no work for anyone
    finally:
        await store.close()


async def test_a_dropped_listen_connection_is_reopened_and_says_so(store_database: Opener) -> None:
    if store_database.kind == "sqlite":
        pytest.skip("one server: nobody to listen to")
    import asyncpg

    from engine.store.postgres import LISTEN_APPLICATION

    store = await store_database.open()
    other = await store_database.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    reopened = asyncio.Event()
    try:
        await store.listen("deploybot_test", heard.put_nowait, reopened=reopened.set)
        await other.notify("deploybot_test", ["before"])
        assert await asyncio.wait_for(heard.get(), 10) == "before"
        conn = await asyncpg.connect(store.url)
        try:  # what a restarted server, a proxy or an idle timeout does to a connection
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()",
                LISTEN_APPLICATION,
            )
        finally:
            await conn.close()
        assert killed == 1
        await asyncio.wait_for(reopened.wait(), 30)  # the store looks once for what it may have missed
        await other.notify("deploybot_test", ["after"])
        assert await asyncio.wait_for(heard.get(), 10) == "after"
    finally:
        await other.close()
        await store.close()


async def test_a_listener_may_leave_out_what_its_own_store_notified_even_from_a_new_pool_connection(
    store_database: Opener,
) -> None:
    """A replica that recorded results delivered them as it did: hearing its own notice again would make it read
    back every result of the deployment once more (it did, after nearly every batch, until that was most of its
    work at 1,000 hosts). What other replicas say must still arrive, in order."""
    if store_database.kind == "sqlite":
        pytest.skip("one server: nobody to listen to")
    store = await store_database.open()
    other = await store_database.open()
    everything: asyncio.Queue[str] = asyncio.Queue()
    others_only: asyncio.Queue[str] = asyncio.Queue()
    try:
        await store.listen("deploybot_test", everything.put_nowait)
        await store.listen("deploybot_test", others_only.put_nowait, own=False)

        async def said(queue: asyncio.Queue[str]) -> list[str]:  # up to the last word, which another store says
            words = [await asyncio.wait_for(queue.get(), 10)]
            while words[-1] != "end":
                words.append(await asyncio.wait_for(queue.get(), 10))
            return words

        await store.notify("deploybot_test", ["mine"])
        await other.notify("deploybot_test", ["theirs"])
        await store._pool.expire_connections()  # the pool's connections replaced: their new backends are its own too
        await store.notify("deploybot_test", ["mine again"])
        await other.notify("deploybot_test", ["end"])
        assert await said(everything) == ["mine", "theirs", "mine again", "end"]
        assert await said(others_only) == ["theirs", "end"]
    finally:
        await other.close()
        await store.close()


async def test_the_keeper_loses_a_lease_taken_over_or_not_renewed_for_a_lease_time(tmp_path: Path) -> None:
    from engine.runtime.ownership import Ownership
    from engine.store.sqlite import SqliteStore

    clock = FakeClock()
    store = await SqliteStore.open(tmp_path / "state.db")
    other = await SqliteStore.open(tmp_path / "state.db")
    keeper = Ownership(store, clock, "replica-a", lease_seconds=10)
    try:
        assert keeper.interval == pytest.approx(10 / 3)
        first = await keeper.acquire("web-prod")
        assert first is not None and await keeper.acquire("web-prod") is first  # held: no second take
        assert await keeper.renew() == {}
        await other.acquire_lease("web-prod", "replica-b", seconds=10, now=clock.now())  # taken over meanwhile
        lost = await keeper.renew()
        assert list(lost) == ["web-prod"] and "another replica holds its lease" in lost["web-prod"]
        assert keeper.lease("web-prod") is None

        assert await keeper.acquire("web-api") is not None
        await store.close()  # the store out of reach: still held until a whole lease time went unrenewed
        await clock.advance(9)
        assert await keeper.renew() == {} and keeper.lease("web-api") is not None
        await clock.advance(1)
        lost = await keeper.renew()
        assert list(lost) == ["web-api"] and "could not be renewed for 10 s" in lost["web-api"]
    finally:
        await store.close()
        await other.close()


@pytest.mark.parametrize(("written", "seconds"), [("", 10.0), ("lease_seconds: 3", 3.0), ("lease_seconds: 2.5", 2.5)])
def test_the_lease_time_is_a_server_setting(written: str, seconds: float) -> None:
    from engine.core.config.parse import parse_config

    config = parse_config(f"server: {{{written}}}\n", filename="deploybot.yml")
    assert config.server.lease_seconds == seconds


def test_a_lease_time_under_a_second_is_refused() -> None:
    from engine.core.config.parse import parse_config
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("server: {lease_seconds: 0.2}\n", filename="deploybot.yml")
    assert [p.path for p in caught.value.problems] == ["server.lease_seconds"]
