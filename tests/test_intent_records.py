"""The intents table: one row per key, atomic compare-and-move, history that cannot be rewritten; on both stores
(SQLite and PostgreSQL: the ``store_database`` fixture of tests/postgres_support.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from postgres_support import AnyStore, Opener, integrity_errors, raw_execute

from engine import OPEN_INTENT_STATES, IntentState


@pytest.fixture
async def store(store_database: Opener) -> AsyncIterator[AnyStore]:
    opened = await store_database.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_key_is_taken_once_and_the_replay_sees_the_first(store: AnyStore) -> None:
    first, added = await store.add_intent("slack:T1", source="slack", kind="command", payload={"text": "a"}, at=1.0)
    again, added_again = await store.add_intent(
        "slack:T1", source="slack", kind="command", payload={"text": "b"}, at=2.0
    )
    assert (added, added_again) == (True, False)
    assert again == first
    assert again["payload"] == {"text": "a"} and again["state"] == "pending" and again["created_at"] == 1.0


async def test_two_racing_moves_have_one_winner(store: AnyStore) -> None:
    await store.add_intent("click:1", source="slack", kind="click", payload={}, at=1.0)
    moves = await asyncio.gather(
        *(store.move_intent("click:1", "running", at=2.0, only_from=["pending"]) for _ in range(5))
    )
    assert sum(m is not None for m in moves) == 1


async def test_a_move_records_outcome_attempts_and_when_to_look_again(store: AnyStore) -> None:
    await store.add_intent("merge:a", source="github", kind="merge", payload={}, at=1.0, scope="web/staging")
    moved = await store.move_intent(
        "merge:a", "waiting", at=5.0, outcome={"why": "checks pending"}, not_before=20.0, attempt=True
    )
    assert moved is not None
    assert (moved["state"], moved["outcome"], moved["not_before"], moved["attempts"]) == (
        "waiting",
        {"why": "checks pending"},
        20.0,
        1,
    )
    assert await store.move_intent("merge:a", "done", at=6.0, only_from=["pending"]) is None
    assert await store.move_intent("nope", "done", at=6.0) is None


async def test_listing_follows_arrival_order_and_filters(store: AnyStore) -> None:
    for n, scope in enumerate(["web/staging", "api/staging", "web/staging"]):
        await store.add_intent(f"merge:{n}", source="github", kind="merge", payload={"n": n}, at=n, scope=scope)
    await store.move_intent("merge:0", "superseded", at=9.0)
    web = await store.list_intents(scope="web/staging")
    assert [r["key"] for r in web] == ["merge:0", "merge:2"]
    still_open = await store.list_intents(source="github", states=OPEN_INTENT_STATES)
    assert [r["key"] for r in still_open] == ["merge:1", "merge:2"]
    assert IntentState.SUPERSEDED not in OPEN_INTENT_STATES


async def test_what_was_asked_cannot_be_rewritten(store: AnyStore) -> None:
    await store.add_intent("k", source="api", kind="request", payload={}, at=1.0, actor="alice")
    with pytest.raises(integrity_errors(), match="keeps what was asked"):
        await raw_execute(store, "UPDATE intents SET actor = 'mallory' WHERE key = 'k'")
    with pytest.raises(integrity_errors(), match=r"(?i)check"):
        await raw_execute(store, "UPDATE intents SET state = 'maybe' WHERE key = 'k'")
    assert (await store.get_intent("k"))["actor"] == "alice"


async def test_two_servers_racing_to_move_one_intent_have_one_winner(store_database: Opener) -> None:
    """The compare-and-set holds across connections (two servers on one database), not only on one store's own."""
    async with await store_database.open() as first, await store_database.open() as second:
        for n in range(20):
            await first.add_intent(f"click:{n}", source="slack", kind="click", payload={}, at=1.0)
        moves = await asyncio.gather(
            *(
                server.move_intent(f"click:{n}", "running", at=2.0, only_from=["pending"])
                for n in range(20)
                for server in (first, second, first, second)
            )
        )
    for n in range(20):
        assert sum(m is not None for m in moves[4 * n : 4 * n + 4]) == 1, f"click:{n}"
