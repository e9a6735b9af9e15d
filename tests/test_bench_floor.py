"""The bench's floors: under one event's round trip (bench/floor.py), under one host's whole deployment
(bench/agent_floor.py), and the one host's times (bench/phases.py) that `make bench` shows next to them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import agent_floor, floor, phases
from bench.agent_floor import AgentFloor
from bench.baseline import canonical_bundle
from bench.revisions import FILES, write_revision
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


def test_both_floors_are_measured_at_every_size_in_turn_every_round_and_each_post_is_recorded(tmp_path: Path) -> None:
    measured = floor.measure(tmp_path, (2, 3), free_port, rounds=2)
    assert list(measured) == [2, 3]
    for hosts, modes in measured.items():
        assert list(modes) == list(floor.MODES)
        for mode, rounds in modes.items():
            expected = (mode, hosts, hosts * floor.EVENTS_PER_HOST)
            assert [(run.mode, run.hosts, run.requests) for run in rounds] == [expected] * 2
            assert all(run.server_cpu_s > 0 and run.wall_s > 0 for run in rounds)
            assert rounds[0].per_host_ms == rounds[0].wall_s / hosts * 1000
    with sqlite3.connect(tmp_path / "floor-http+write.db") as db:  # 2 hosts are the first 2 of 3: the same commands
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 3 * floor.EVENTS_PER_HOST


def test_a_processs_own_cpu_is_read_to_the_microsecond_not_in_ticks_of_10_ms() -> None:
    burn = "import sys, time\nwhile time.process_time() < 0.0437: pass\nprint(time.process_time(), flush=True)\n"
    burn += "sys.stdin.readline()\n"
    with subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        reported = float(child.stdout.readline())  # the child is now blocked on its input: its CPU stands still
        own, _ = phases.stat_times(child.pid)
        child.stdin.close()
    assert reported <= own <= reported + 0.002  # /proc's ticks would say 0.04 or 0.05


def test_an_events_time_is_the_median_over_every_host_and_event() -> None:
    doc = {
        "targets": [
            {"name": "a", "events": [{"started_at": 0.0, "ended_at": 0.002}, {"started_at": 0.003, "ended_at": 0.006}]},
            {"name": "b", "events": [{"started_at": 0.0, "ended_at": 0.010}]},
        ]
    }
    assert round(phases.event_ms(doc), 6) == 3.0  # 2, 3 and 10 ms


def test_the_floor_at_an_agents_pace_pauses_before_every_post(tmp_path: Path) -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> None:  # instead of the wait itself: what matters is when the POSTs are sent
        pauses.append(seconds)

    with floor.floor_server(tmp_path, "http+write", free_port()) as (url, _):
        took = floor.round_trip_ms(url, requests=20, pause_ms=2.5, pause=pause)
    assert took > 0
    assert pauses == [0.0025] * 20
    with sqlite3.connect(tmp_path / "floor-http+write.db") as db:
        assert db.execute("SELECT count(*) FROM results WHERE status = 'Succeeded'").fetchone()[0] == 20


def _each_host_ran_its_events_in_turn(
    one: agent_floor.FloorDeployment, at_once: agent_floor.FloorDeployment, in_turn: agent_floor.FloorDeployment
) -> None:
    """Every host ran the seven events, each after the one before was answered, inside its deployment; ``in_turn``'s
    second host only after the first had finished."""
    for deployment in (one, at_once, in_turn):
        for target in deployment.targets:
            assert [event["event"] for event in target["events"]] == list(agent_floor.EVENTS)
            starts = [float(event["started_at"]) for event in target["events"]]
            ends = [float(event["ended_at"]) for event in target["events"]]
            assert deployment.created_at <= starts[0] and ends[-1] <= deployment.ended_at
            assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))  # one after another
    first, second = in_turn.targets
    assert float(first["events"][-1]["ended_at"]) <= float(second["events"][0]["started_at"])  # host after host


def test_the_agent_floor_runs_whole_deployments_on_real_agents_and_records_every_result(tmp_path: Path) -> None:
    revision = write_revision(tmp_path / "revision", hooks=True)
    bundle = canonical_bundle(revision, tmp_path / "bundle")
    with AgentFloor(tmp_path / "floor", bundle, free_port(), hosts=2) as floor_server:
        one = floor_server.deploy(1)
        at_once = floor_server.deploy(2)
        in_turn = floor_server.deploy(2, sequential=True)
        with pytest.raises(ValueError, match="2 host"):
            floor_server.deploy(3)
    assert [target["name"] for target in one.targets] == ["floor-1"]
    _each_host_ran_its_events_in_turn(one, at_once, in_turn)
    for deployment in (one, at_once, in_turn):
        assert deployment.duration > 0
        assert phases.between_events_ms(deployment.as_document()) >= 0
    with sqlite3.connect(tmp_path / "floor" / "floor.db") as db:  # every result committed before it was answered
        assert db.execute("SELECT count(*) FROM results WHERE result IS NOT NULL").fetchone()[0] == 5 * 7
    for host in ("floor-1", "floor-2"):  # each agent's executor installed the revision under its own prefix
        for source, destination in FILES:
            installed = tmp_path / "floor" / "hosts" / host / destination.lstrip("/") / Path(source).name
            assert installed.read_text() == (revision / source).read_text()


def test_the_minimal_agent_runs_the_same_deployments_with_the_plain_scripts_work_only(tmp_path: Path) -> None:
    revision = write_revision(tmp_path / "revision", hooks=True)
    bundle = canonical_bundle(revision, tmp_path / "bundle")
    with AgentFloor(tmp_path / "floor", bundle, free_port(), hosts=2, minimal=True) as floor_server:
        first = floor_server.deploy(1)
        at_once = floor_server.deploy(2)
        in_turn = floor_server.deploy(2, sequential=True)
    _each_host_ran_its_events_in_turn(first, at_once, in_turn)
    with sqlite3.connect(tmp_path / "floor" / "floor.db") as db:  # every event reported, and every one succeeded
        statuses = [row[0] for row in db.execute("SELECT json_extract(result, '$.status') FROM results")]
    assert statuses == ["Succeeded"] * 5 * 7
    for host in ("floor-1", "floor-2"):  # only the last deployment's directories are left, with the files copied
        (deployment_dir,) = (tmp_path / "floor" / "minimal" / host).iterdir()
        assert deployment_dir.name == "d-floor-3"
        for source, destination in FILES:
            installed = deployment_dir / "fs" / destination.lstrip("/") / Path(source).name
            assert installed.read_text() == (revision / source).read_text()


def test_each_events_median_is_taken_over_every_host_of_every_deployment_in_order() -> None:
    def deployment(*hosts: list[tuple[str, float | None, float | None]]) -> dict[str, object]:
        return {
            "targets": [
                {"events": [{"name": name, "started_at": start, "ended_at": end} for name, start, end in events]}
                for events in hosts
            ]
        }

    docs = [
        deployment([("Stop", 0.0, 0.001), ("Install", 0.002, 0.006)], [("Stop", 0.0, 0.003)]),
        deployment([("Stop", 0.0, 0.002), ("Traffic", None, None), ("Install", 0.002, 0.004)]),
    ]
    floor_doc = {"targets": [{"events": [{"event": "Stop", "started_at": 1.0, "ended_at": 1.005}]}]}
    medians = phases.event_medians_ms(docs)
    assert list(medians) == ["Stop", "Install"]  # an event that did not run on its host is no time
    assert [round(value, 6) for value in medians.values()] == [2.0, 3.0]
    assert {name: round(value, 6) for name, value in phases.event_medians_ms([floor_doc]).items()} == {"Stop": 5.0}
