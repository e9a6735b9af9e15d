"""The bench's floor under one event's round trip (bench/floor.py) and the one host's time between events
(bench/phases.py) that `make bench` shows next to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench import floor, phases
from bench.server import free_port


def test_between_events_is_the_median_gap_from_one_events_end_to_the_next_ones_start() -> None:
    def events(*spans: tuple[float, float]) -> list[dict[str, float]]:
        return [{"started_at": start, "ended_at": end} for start, end in spans]

    doc = {
        "targets": [
            {"name": "a", "events": events((0.0, 1.0), (1.002, 2.0), (2.004, 3.0))},  # gaps 2 ms and 4 ms
            {"name": "b", "events": events((0.0, 1.0), (1.010, 2.0))},  # 10 ms; a host's first event has none
        ]
    }
    assert round(phases.between_events_ms(doc), 6) == 4.0


def test_the_floor_round_trip_answers_each_result_after_recording_it(tmp_path: Path) -> None:
    with floor.floor_server(tmp_path, "http+write", free_port()) as (url, _):
        took = floor.round_trip_ms(url, requests=40)
    assert took > 0
    with sqlite3.connect(tmp_path / "floor-http+write.db") as db:
        recorded = db.execute("SELECT count(*) FROM results WHERE status = 'Succeeded'").fetchone()[0]
    assert recorded == 40  # every POST was committed before it was answered
