"""The intents table: one row per key, atomic compare-and-move, history that cannot be rewritten."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import OPEN_INTENT_STATES, IntentState
from engine.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "state.db")
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_key_is_taken_once_and_the_replay_sees_the_first(store: SqliteStore) -> None:
    first, added = await store.add_intent("slack:T1", source="slack", kind="command", payload={"text": "a"}, at=1.0)
    again, added_again = await store.add_intent(
        "slack:T1", source="slack", kind="command", payload={"text": "b"}, at=2.0
    )
    assert (added, added_again) == (True, False)
    assert again == first
    assert again["payload"] == {"text": "a"} and again["state"] == "pending" and again["created_at"] == 1.0


async def test_two_racing_moves_have_one_winner(store: SqliteStore) -> None:
    await store.add_intent("click:1", source="slack", kind="click", payload={}, at=1.0)
    moves = await asyncio.gather(
        *(store.move_intent("click:1", "running", at=2.0, only_from=["pending"]) for _ in range(5))
    )
    assert sum(m is not None for m in moves) == 1


async def test_a_move_records_outcome_attempts_and_when_to_look_again(store: SqliteStore) -> None:
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


async def test_listing_follows_arrival_order_and_filters(store: SqliteStore) -> None:
    for n, scope in enumerate(["web/staging", "api/staging", "web/staging"]):
        await store.add_intent(f"merge:{n}", source="github", kind="merge", payload={"n": n}, at=n, scope=scope)
    await store.move_intent("merge:0", "superseded", at=9.0)
    web = await store.list_intents(scope="web/staging")
    assert [r["key"] for r in web] == ["merge:0", "merge:2"]
    still_open = await store.list_intents(source="github", states=OPEN_INTENT_STATES)
    assert [r["key"] for r in still_open] == ["merge:1", "merge:2"]
    assert IntentState.SUPERSEDED not in OPEN_INTENT_STATES


async def test_what_was_asked_cannot_be_rewritten(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    await store.add_intent("k", source="api", kind="request", payload={}, at=1.0, actor="alice")
    await store.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        with pytest.raises(sqlite3.IntegrityError, match="keeps what was asked"):
            conn.execute("UPDATE intents SET actor = 'mallory' WHERE key = 'k'")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE intents SET state = 'maybe' WHERE key = 'k'")
