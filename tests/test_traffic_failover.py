"""Issue 18 end to end: a real ``deploybot serve``, its real HAProxy, real agents running the example app, and the
bench's steady load generator. Three blue/green deployments of a 2+2 pool under a 20 % canary:

1. 1.0.0 lands on web-3/web-4 (the pool's first deployment);
2. 2.0.0 lands on web-1/web-2: at every step the percentage deploybot reports is the one HAProxy's weights hold,
   and the share of requests the new half answers matches it;
3. 3.0.0 goes to web-3/web-4, whose 1.0.0 processes HAProxy has seen UP all along, and web-4's new process fails its
   health check once ValidateService has passed. It is never weighted: no request reaches 3.0.0, none fails, the
   original half (2.0.0) serves everything, and the rollback is the reroute: no host is reinstalled.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import yaml
from e2e_support import DeploybotServer, Load, free_port
from test_e2e_traffic import NO_ALARMS, config, revision, servers, start

from engine.adapters.haproxy.runtime import AdminState, HAProxyRuntime

__all__ = ["servers"]  # the fixture, shared with test_e2e_traffic.py

CANARY = """  FailoverCanary:
    compute_platform: server
    traffic_routing: {type: TimeBasedCanary, percentage: 20, interval_minutes: 0.05}"""  # 20 % for 3 s, then all
GROUP = NO_ALARMS.format(traffic="FailoverCanary", termination=0)
NEW_HALF, OLD_HALF = ("web-1", "web-2"), ("web-3", "web-4")


def breaking_revision(tmp_path: Path, version: str, host: str) -> Path:
    """The example app, plus a BeforeAllowTraffic hook that makes ``host``'s new process fail /health after its
    ValidateService passed: a process that goes bad between the deploy and the traffic."""
    path = revision(tmp_path, version)
    script = path / "scripts" / "break_health.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f'if [[ "$DEPLOYBOT_HOST" == "{host}" ]]; then touch "${{DEPLOYBOT_PREFIX:-}}/opt/hello/fail-health"; fi\n'
    )
    script.chmod(0o755)
    appspec = yaml.safe_load((path / "appspec.yml").read_text())
    appspec["hooks"]["BeforeAllowTraffic"] = [{"location": "scripts/break_health.sh", "timeout": 30}]
    (path / "appspec.yml").write_text(yaml.safe_dump(appspec))
    return path


def read_back(server: DeploybotServer, replacement: tuple[str, ...]) -> Fraction:
    """The share of new requests HAProxy's weights give ``replacement`` right now (ready servers only)."""
    runtime = HAProxyRuntime(server.data_dir / "haproxy" / "haproxy.sock")
    states = asyncio.run(runtime.server_states("hello-prod"))
    weights = {name: s.weight for name, s in states.items() if s.admin is AdminState.READY}
    return Fraction(100 * sum(weights.get(h, 0) for h in replacement), sum(weights.values()))


def share(load: Load, version: str, start: float, end: float) -> tuple[float, int]:
    """The percentage of the answers between wall-clock ``start`` and ``end`` that came from ``version``, and how
    many. The server logs wall-clock times, so the load's answers are matched by theirs: converting through the
    monotonic clock with an offset taken at import failed in CI when the two clocks moved some 17 s apart."""
    window = load.bodies_between_wall(start, end)
    assert window, f"no answer between {start:.3f} and {end:.3f}"
    return 100 * sum(f"hello {version} " in body for body in window) / len(window), len(window)


def test_reported_weights_are_haproxys_and_an_unhealthy_replacement_never_gets_traffic(servers, tmp_path) -> None:
    lb = free_port()
    server = start(servers, config(4, lb, GROUP, extra_configs=CANARY))
    first = server.deploy_promoted("hello", "prod", revision(tmp_path, "1.0.0"))
    assert first["status"] == "Succeeded", first["error"]

    with Load(f"http://127.0.0.1:{lb}/", rate=200) as load:
        good = server.deploy("hello", "prod", revision(tmp_path, "2.0.0"))
        at_20 = server.wait_for(good["id"], lambda d: (d["traffic"] or {}).get("percent") == 20)
        assert read_back(server, NEW_HALF) == 20  # what deploybot reports is what HAProxy holds
        done = server.wait_final(good["id"], timeout=90)
        assert done["status"] == "Succeeded" and done["traffic"]["percent"] == 100
        assert read_back(server, NEW_HALF) == 100
    assert at_20["status"] == "InProgress"
    _, log = server.api("GET", f"/api/v1/deployments/{good['id']}/log")
    shifted = [(e["data"]["percent"], e["at"]) for e in log if e["kind"] == "traffic.shifted"]
    assert [percent for percent, _ in shifted] == [20, 100]
    canary_share, answered = share(load, "2.0.0", shifted[0][1], shifted[1][1])  # between the two shifts
    print(f"canary 20 %: observed {canary_share:.2f} % of {answered} answers; failed {load.failed()} of all")
    assert abs(canary_share - 20) <= 2
    assert load.failures() == []

    with Load(f"http://127.0.0.1:{lb}/", rate=200, max_seconds=600) as load:
        bad = server.deploy("hello", "prod", breaking_revision(tmp_path, "3.0.0", "web-4"))
        doc = server.wait_final(bad["id"], timeout=90)
        failed_at = time.monotonic()
        rollback_id = server.wait_for(bad["id"], lambda d: d["rollback"]["by"])["rollback"]["by"]
        rollback = server.wait_final(rollback_id, timeout=90)
        assert read_back(server, NEW_HALF) == 100  # 2.0.0's half holds every weight
        load.wait_answered_after(failed_at, 20)  # the fleet goes on serving after the failure
    answers_3 = [body for _, status, body in load.results if "hello 3.0.0" in body]
    print(f"failing replacement: {len(load.results)} requests, {load.failed()} failed, {len(answers_3)} from 3.0.0")
    assert doc["status"] == "Failed" and doc["traffic"]["percent"] == 0
    assert "traffic shift failed" in doc["error"]["message"] and "web-4" in doc["error"]["message"]
    assert answers_3 == []  # 0 requests answered by the failing host, or by its healthy sibling
    assert load.failures() == []
    assert all("hello 2.0.0" in body for body in load.bodies_after(0))  # the original half served 100 %
    assert len(load.bodies_sent_after(failed_at)) >= 20

    _, log = server.api("GET", f"/api/v1/deployments/{bad['id']}/log")
    assert [e["data"]["rerouted"] for e in log if e["kind"] == "rollback.triggered"] == [True]
    assert [e["data"]["verified"] for e in log if e["kind"] == "traffic.rerouted"] == [True]
    assert "traffic.shifted" not in {e["kind"] for e in log}
    # the rollback is the reroute: allow/block-traffic hooks only, nothing installed anywhere
    assert rollback["status"] == "Succeeded" and "traffic rerouted" in rollback["description"]
    events = {t["name"]: [e["name"] for e in t["events"]] for t in rollback["targets"]}
    assert set(events) == set(NEW_HALF + OLD_HALF)
    assert all("Install" not in names and "ApplicationStart" not in names for names in events.values())
    assert all(events[h][1] == "AllowTraffic" for h in NEW_HALF)
    assert all(events[h][1] == "BlockTraffic" for h in OLD_HALF)
