"""bench/swarm.py and its simulated agents (bench/simulated_agents.py) against a real `deploybot serve`: they deploy,
and what they count is true.

The swarm is the bench's stand-in for 1,000 agents; these check it on three hosts, in both protocol modes (one event
per command, as an agent of the previous version; and runs of events, which the current agent asks for).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench.server import BenchServer, fleet_config, host_names
from bench.settings import Settings
from bench.simulated_agents import Swarm
from bench.swarm import CPU_PER_EVENT_TARGET_MS, FLAT, run_swarm, swarm


@pytest.mark.parametrize("runs", [False, True], ids=["one-event-at-a-time", "runs"])
def test_the_swarm_deploys_every_host_and_counts_each_event_once(tmp_path: Path, runs: bool) -> None:
    measured = run_swarm(tmp_path, (3,), runs=runs, timeout=60, idle_s=0.1)
    (run,) = measured[3]
    assert run.errors == 0
    assert run.host_events == run.server_events == 3 * 7  # ApplicationStop ... ValidateService on each host
    assert run.wall_s > 0 and run.server_cpu_s > 0
    assert 0 < run.rss_mib <= run.peak_rss_mib
    assert run.idle_cpu_share is not None and 0 <= run.idle_cpu_share < 2  # of one core: the server has two threads


def test_a_swarm_agent_with_a_wrong_token_is_refused_and_counted(tmp_path: Path) -> None:
    names = host_names(1)
    with BenchServer(tmp_path, fleet_config(names, local=False), hosts=names) as server:
        with Swarm(server.url, {names[0]: "not-a-token"}) as swarm:
            deadline = time.monotonic() + 30
            while swarm.counts.errors < 2 and time.monotonic() < deadline:  # its first heartbeat and poll: 401s
                time.sleep(0.01)
        assert swarm.counts.errors >= 2
        assert "HTTP 401" in swarm.counts.last_error
        assert sum(swarm.counts.events.values()) == 0


def test_hosts_left_out_of_beat_only_send_their_first_heartbeat_and_no_other(tmp_path: Path) -> None:
    names = host_names(2)
    with BenchServer(tmp_path, fleet_config(names, local=False), hosts=names) as server:
        tokens = json.loads((server.data_dir / "agent-tokens.json").read_text())
        with Swarm(server.url, {}, heartbeat_seconds=0.02) as swarm:
            swarm.beat_only(names[:1])
            swarm.add({name: tokens[name] for name in names})
            server.wait_agents_online(2)  # the first heartbeat of each
            deadline = time.monotonic() + 30
            while swarm.counts.beats[names[0]] < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert swarm.counts.beats[names[0]] >= 5
            assert swarm.counts.beats[names[1]] == 1
            swarm.beat_only(None)
            while swarm.counts.beats[names[1]] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert swarm.counts.beats[names[1]] >= 2
            assert swarm.counts.errors == 0


def test_sizes_share_one_server_and_take_turns_round_by_round(tmp_path: Path) -> None:
    measured = run_swarm(tmp_path, (3, 2), rounds=2, timeout=60, idle_s=0.1)
    assert list(measured) == [2, 3]  # the smallest first, whatever order they were asked in
    for hosts, runs in measured.items():
        assert [(run.hosts, run.host_events, run.server_events, run.errors) for run in runs] == [
            (hosts, hosts * 7, hosts * 7, 0)
        ] * 2
        assert runs[0].idle_cpu_share is not None  # with this many agents online, before any deployment
    # The fleet came online size by size: having 3 online took longer than having the first 2.
    assert 0 < measured[2][0].online_s < measured[3][0].online_s
    # Round by round, every size in turn, the order reversed every other round: 2, 3, then 3, 2.
    in_order = sorted((run.created_at, run.hosts) for runs in measured.values() for run in runs)
    assert [hosts for _, hosts in in_order] == [2, 3, 3, 2]


def test_each_swarm_size_is_a_median_of_its_rounds_and_its_growth_is_read_against_the_smallest_round_by_round() -> None:
    output = io.StringIO()
    settings = Settings(Console(file=output, width=300), swarm_hosts=(2, 3), swarm_rounds=3, swarm_idle_s=0.1)
    figures = {figure.name: figure for figure in swarm(settings)}
    printed = output.getvalue()
    assert "2 simulated hosts, 3 deployments" in printed and "3 simulated hosts, 3 deployments" in printed
    assert "0 errors" in printed and "floor (http+write), 3 hosts x 7 result POSTs, 3 rounds" in printed
    for hosts in (2, 3):
        assert "median of 3 deployments" in figures[f"swarm {hosts}: server CPU per host-event"].note
        assert figures[f"swarm {hosts}: server CPU per host-event"].target == CPU_PER_EVENT_TARGET_MS
    growth = figures["swarm 3: time per host over 2 hosts'"]
    assert (growth.unit, growth.target) == ("x", FLAT)
    assert growth.note.startswith("per round, range ")
    low, high = (
        float(bound.rstrip("x")) for bound in growth.note.split(";")[0].removeprefix("per round, range ").split("-")
    )
    assert low <= growth.value <= high  # the median of the rounds' own ratios lies within their range
    assert "bare aiohttp: " in growth.note and "CPU per host-event: server " in growth.note and "swarm " in growth.note
    assert "swarm 2: time per host over 2 hosts'" not in figures
    assert figures["swarm 3: server CPU, agents idle"].unit == "%" and "3 idle agents: the server used" in printed
    assert "swarm 2: server RSS (peak)" not in figures  # one server holds every size: its RSS is the largest's
    assert figures["swarm 3: server RSS (peak)"].unit == "MiB" and "the server, 3 hosts configured: RSS" in printed
