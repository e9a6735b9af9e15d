"""bench/client_hop.py: both clients send every request of every round, in alternating order, and a round's figures
are its CPU and wall time per request."""

from __future__ import annotations

import time

import pytest

from bench import client_hop


async def test_each_round_times_both_clients_over_all_their_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, int]] = []
    clock = iter(range(1000))
    monkeypatch.setattr(time, "process_time", lambda: float(next(clock)))  # each reading one "second" on
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)

    def client(name: str) -> client_hop.Post:
        async def post(command: int) -> int:
            sent.append((name, command))
            return 200

        return post

    results = await client_hop.per_request(client("ours"), client("aiohttp"), rounds=3, requests=10)

    assert sent[:2] == [("ours", 0), ("aiohttp", 0)]  # a warm-up of a tenth of the requests each
    order = [name for name, _ in sent[2::10]]  # the first request of each way of each round
    assert order == ["ours", "aiohttp", "aiohttp", "ours", "ours", "aiohttp"]  # the order alternates per round
    assert len(sent) == 2 * 1 + 3 * 2 * 10  # warm-ups of a tenth, then 3 rounds of 10 requests each way
    assert results["ours"] == results["aiohttp"] == ([1e6 / 10] * 3, [0.0] * 3)


async def test_an_answer_other_than_200_voids_the_figure() -> None:
    async def refused(command: int) -> int:
        return 401

    async def fine(command: int) -> int:
        return 200

    with pytest.raises(RuntimeError, match="answered 401"):
        await client_hop.per_request(fine, refused, rounds=1, requests=10)
