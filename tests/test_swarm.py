"""bench/swarm.py against a real `deploybot serve`: its simulated agents deploy, and what it counts is true.

The swarm is the bench's stand-in for 1,000 agents; these check it on three hosts, in both protocol modes (one event
per command, as an agent of the previous version; and runs of events, which the current agent asks for).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.server import BenchServer, fleet_config, host_names
from bench.swarm import Swarm, run_swarm


@pytest.mark.parametrize("runs", [False, True], ids=["one-event-at-a-time", "runs"])
def test_the_swarm_deploys_every_host_and_counts_each_event_once(tmp_path: Path, runs: bool) -> None:
    run = run_swarm(tmp_path, 3, runs=runs, timeout=60)
    assert run.errors == 0
    assert run.host_events == run.server_events == 3 * 7  # ApplicationStop ... ValidateService on each host
    assert run.wall_s > 0 and run.server_cpu_s > 0
    assert 0 < run.rss_mib <= run.peak_rss_mib


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
