"""bench/server.py's wait for a deployment's end, against a real `deploybot serve` with simulated agents
(bench/simulated_agents.py).

The overhead scenario waits for the server's own log line instead of asking for the deployment while it runs (a
request every 10 ms was up to a seventh of a one-host deployment's time); these check that the wait ends with the
deployment as stored, also when the line came before the wait began, and that a line that never comes is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.revisions import write_revision
from bench.server import BenchError, BenchServer, fleet_config, host_names
from bench.simulated_agents import Swarm


def test_the_logged_end_is_waited_for_and_the_deployment_read_once_it_is_stored(tmp_path: Path) -> None:
    names = host_names(2)
    revision = write_revision(tmp_path / "revision", hooks=False)
    with BenchServer(tmp_path / "server", fleet_config(names, local=False), hosts=names) as server:
        tokens = json.loads((server.data_dir / "agent-tokens.json").read_text())
        with Swarm(server.url, {name: tokens[name] for name in names}):
            server.wait_agents_online(2, timeout=60)
            since = len(server.output)
            _, first = server.deploy(revision)
            doc = server.wait_logged_end(first, since=since, timeout=60)
            assert doc["id"] == first and doc["status"] == "Succeeded" and doc["ended_at"] is not None
            assert {event["status"] for target in doc["targets"] for event in target["events"]} == {"Succeeded"}

            since = len(server.output)
            _, second = server.deploy(revision)
            ended = server.wait_final(second)  # the line is logged before this wait for it begins
            assert server.wait_logged_end(second, since=since, timeout=60)["ended_at"] == ended["ended_at"]

            # Another deployment's line does not end the wait: none is ever logged for this one.
            with pytest.raises(BenchError, match="no end logged"):
                server.wait_logged_end("d-NEVERMADE", since=since, timeout=0.2)
