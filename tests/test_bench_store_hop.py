"""bench/store_hop.py: each way runs every call of every round, and a round's figure is its CPU time per call."""

from __future__ import annotations

import time

import pytest

from bench import store_hop


async def test_each_round_times_both_ways_over_all_their_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[int] = []
    clock = iter(range(1000))

    def counted(value: int) -> int:
        called.append(value)
        return value

    monkeypatch.setattr(store_hop, "_nothing", counted)
    monkeypatch.setattr(time, "process_time", lambda: float(next(clock)))  # each reading one "second" on

    ours, theirs = await store_hop._per_call_us(rounds=3, calls=4)

    assert len(called) == (3 + 1) * 2 * 4  # a warm-up of each way, then 3 rounds of each, 4 calls apiece
    assert ours == theirs == [1e6 / 4] * 3  # one reading before and one after each way: 1 s over 4 calls
