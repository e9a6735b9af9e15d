"""bench/swarm.py against a real `deploybot serve`: its simulated agents deploy, and what it counts is true.

The swarm is the bench's stand-in for 1,000 agents; these check it on three hosts, in both protocol modes (one event
per command, as an agent of the previous version; and runs of events, which the current agent asks for).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench.server import BenchServer, fleet_config, host_names
from bench.settings import Settings
from bench.swarm import CPU_PER_EVENT_TARGET_MS, FLAT, Swarm, run_swarm, swarm


@pytest.mark.parametrize("runs", [False, True], ids=["one-event-at-a-time", "runs"])
def test_the_swarm_deploys_every_host_and_counts_each_event_once(tmp_path: Path, runs: bool) -> None:
    (run,) = run_swarm(tmp_path, 3, runs=runs, timeout=60, idle_s=0.1)
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


def test_each_swarm_size_is_a_median_of_its_rounds_and_its_growth_is_read_against_the_smallest() -> None:
    output = io.StringIO()
    settings = Settings(Console(file=output, width=300), swarm_hosts=(2, 3), swarm_rounds=2, swarm_idle_s=0.1)
    figures = {figure.name: figure for figure in swarm(settings)}
    printed = output.getvalue()
    assert "2 simulated hosts, 2 deployments" in printed and "3 simulated hosts, 2 deployments" in printed
    assert "0 errors" in printed and "floor (http+write), 3 hosts x 7 result POSTs, 2 rounds" in printed
    for hosts in (2, 3):
        assert "median of 2 deployments" in figures[f"swarm {hosts}: server CPU per host-event"].note
        assert figures[f"swarm {hosts}: server CPU per host-event"].target == CPU_PER_EVENT_TARGET_MS
    growth = figures["swarm 3: time per host over 2 hosts'"]
    per_host = figures["swarm 3: time per host"].value / figures["swarm 2: time per host"].value
    assert (growth.value, growth.unit, growth.target) == (pytest.approx(per_host), "x", FLAT)
    assert "bare aiohttp: " in growth.note and "CPU per host-event: server " in growth.note and "swarm " in growth.note
    assert "swarm 2: time per host over 2 hosts'" not in figures
    assert figures["swarm 3: server CPU, agents idle"].unit == "%" and "3 idle agents: the server used" in printed
