"""Traffic with real parts: ``deploybot serve`` starts a real HAProxy, real agents run the example app, and a steady
load goes through HAProxy while deployments drain, shift, get stopped by alarms and roll back."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import DeploybotServer, Load, event, free_port, keep_workdir, short_workdir

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make installs it)")


def revision(tmp_path: Path, version: str, *markers: str) -> Path:
    path = tmp_path / f"hello-{version}"
    shutil.copytree(EXAMPLE, path)
    (path / "VERSION").write_text(version + "\n")
    for marker in markers:
        (path / "app" / marker).touch()
    return path


def config(hosts: int, lb_port: int, group: str, *, extra_configs: str = "") -> str:
    host_lines = "\n".join(f"  - {{name: web-{i}, local: true, port: {free_port()}}}" for i in range(1, hosts + 1))
    targets = ", ".join(f"web-{i}" for i in range(1, hosts + 1))
    return f"""server: {{data_dir: var, heartbeat_timeout: 30}}
deployment_configs:
  QuickCanary:
    compute_platform: server
    traffic_routing: {{type: TimeBasedCanary, percentage: 20, interval_minutes: 0.1}}
  QuickLinear:
    compute_platform: server
    traffic_routing: {{type: TimeBasedLinear, percentage: 25, interval_minutes: 0.04}}
{extra_configs}
hosts:
{host_lines}
applications:
  hello:
    platform: server
    revision: {EXAMPLE}
    environments: [prod]
    deployment_groups:
      prod:
        targets: {{hosts: [{targets}]}}
        load_balancer: {{type: haproxy, port: {lb_port}, health_check: /health, deregistration_delay: 2}}
{group}
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[DeploybotServer]]:
    started: list[DeploybotServer] = []
    yield started
    for index, server in enumerate(started):
        server.cleanup()
        keep_workdir(server, tmp_path / f"server-{index}")


def start(servers: list[DeploybotServer], text: str) -> DeploybotServer:
    """A running server in a short directory of its own (HAProxy's stats socket is in its data directory: tmp_path
    is too long for it under pytest-xdist); the ``servers`` fixture stops it and moves the directory into
    tmp_path."""
    server = DeploybotServer(short_workdir(), text)
    servers.append(server)
    server.start()
    return server


def deploy_and_wait(server: DeploybotServer, source: Path, timeout: float = 90) -> dict:
    return server.wait_final(server.deploy("hello", "prod", source)["id"], timeout=timeout)


BLUE_GREEN = """        deployment_type: blue-green
        deployment_config: CodeDeployDefault.AllAtOnce
        traffic_config: {traffic}
        auto_rollback:
          enabled: true
          events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM, DEPLOYMENT_STOP_ON_REQUEST]
        blue_green: {{termination_wait_minutes: {termination}}}
        alarms:
          enabled: true
          poll_seconds: 0.25
          alarms: [{{name: green-5xx, type: haproxy, max_5xx_percent: 5, window_seconds: 10, min_requests: 5}}]"""


def test_in_place_one_at_a_time_drains_each_host_and_loses_no_request(servers, tmp_path) -> None:
    lb = free_port()
    group = "        deployment_config: CodeDeployDefault.OneAtATime"
    server = start(servers, config(3, lb, group))
    assert deploy_and_wait(server, revision(tmp_path, "1.0.0"))["status"] == "Succeeded"
    with Load(f"http://127.0.0.1:{lb}/", rate=200) as load:
        time.sleep(1)
        doc = deploy_and_wait(server, revision(tmp_path, "2.0.0"))
        time.sleep(1)
    assert doc["status"] == "Succeeded", doc
    names = [e["name"] for e in doc["targets"][0]["events"]]
    assert names[:3] == ["BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic"]
    assert names[-3:] == ["BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
    for target in doc["targets"]:  # each host was drained before it stopped, and let back in only once it was up
        block, allow = event(doc, target["name"], "BlockTraffic"), event(doc, target["name"], "AllowTraffic")
        assert block["ended_at"] <= event(doc, target["name"], "ApplicationStop")["started_at"]
        assert allow["started_at"] >= event(doc, target["name"], "ValidateService")["ended_at"]
    assert len(load.results) > 400
    assert load.failures() == []
    assert all("hello 2.0.0" in body for body in load.bodies_after(load.results[-1][0] - 0.5))


def test_canary_with_failing_green_is_stopped_by_the_alarm_and_rerouted(servers, tmp_path) -> None:
    lb = free_port()
    server = start(servers, config(4, lb, BLUE_GREEN.format(traffic="QuickCanary", termination=0)))
    first = server.deploy_promoted("hello", "prod", revision(tmp_path, "1.0.0"))
    assert first["status"] == "Succeeded"
    with Load(f"http://127.0.0.1:{lb}/", rate=200) as load:
        bad = server.deploy("hello", "prod", revision(tmp_path, "2.0.0", "fail-requests"))
        doc = server.wait_final(bad["id"], timeout=60)
        rollback = server.wait_final(server.wait_for(bad["id"], lambda d: d["rollback"]["by"])["rollback"]["by"])
        time.sleep(1)
    assert doc["status"] == "Stopped"
    assert doc["error"]["code"] == "ALARM_ACTIVE"
    assert "green-5xx" in doc["error"]["message"] and "5xx rate" in doc["error"]["message"]
    assert doc["traffic"]["percent"] == 0
    assert rollback["status"] == "Succeeded"
    assert rollback["revision"]["sha256"] == first["revision"]["sha256"]
    assert "traffic rerouted" in rollback["description"]
    assert {t["name"] for t in rollback["targets"]} == {"web-1", "web-2", "web-3", "web-4"}
    _, log = server.api("GET", f"/api/v1/deployments/{bad['id']}/log")
    reroute = next(e for e in log if e["kind"] == "traffic.rerouted")  # how long it took: `make bench` (traffic)
    assert reroute["at"] <= rollback["created_at"]  # traffic went back first, not with the rollback's hosts
    errors = load.failures()
    assert errors, "the broken canary should have been seen failing before the alarm fired"
    # Nothing asked once traffic was back on the original failed. "Stopped" is stored a moment before that (the
    # reroute is owed from that write on, rule 2), so the moment is the reroute's own entry, logged once it is done.
    after = load.sent_after_wall(float(reroute["at"]))
    assert after and all(status == 200 and "hello 1.0.0" in body for status, body in after), after


def test_linear_shift_paused_resumed_and_promoted(servers, tmp_path) -> None:
    lb = free_port()
    server = start(servers, config(2, lb, BLUE_GREEN.format(traffic="QuickLinear", termination=0)))
    assert server.deploy_promoted("hello", "prod", revision(tmp_path, "1.0.0"))["status"] == "Succeeded"
    started = server.deploy("hello", "prod", revision(tmp_path, "2.0.0"))
    server.wait_for(started["id"], lambda d: (d["traffic"] or {}).get("percent") == 25)
    status, paused = server.api("POST", f"/api/v1/deployments/{started['id']}/pause")
    assert status == 200, paused
    time.sleep(0.04 * 60 * 2)  # two whole intervals
    held = server.deployment(started["id"])
    assert held["paused"] and held["traffic"]["percent"] == 25 and held["status"] == "InProgress"
    server.api("POST", f"/api/v1/deployments/{started['id']}/resume")
    server.wait_for(started["id"], lambda d: d["traffic"]["percent"] >= 50)
    server.api("POST", f"/api/v1/deployments/{started['id']}/promote")
    done = server.wait_final(started["id"])
    assert done["status"] == "Succeeded" and done["traffic"]["percent"] == 100
    # A green host's events are listed stage by stage: its install, then what allowed traffic to it.
    green = [[e["name"] for e in t["events"]] for t in done["targets"] if "Install" in str(t["events"])]
    assert green and all(n[n.index("ValidateService") + 1 :] == [e for e in n if "AllowTraffic" in e] for n in green)
    with Load(f"http://127.0.0.1:{lb}/", rate=100, max_seconds=1) as load:
        time.sleep(0.5)
    assert load.results and all("hello 2.0.0" in b for _, _, b in load.results)


def test_rollback_during_the_termination_wait_has_rerouted_by_the_time_the_stop_is_answered(servers, tmp_path) -> None:
    lb = free_port()
    server = start(servers, config(2, lb, BLUE_GREEN.format(traffic="CodeDeployDefault.ECSAllAtOnce", termination=0.5)))
    first = server.deploy("hello", "prod", revision(tmp_path, "1.0.0"))
    server.wait_for(first["id"], lambda d: d["status"] == "Baking")
    # Setup only: the first deployment's original fleet is released now, not after its 30 s wait.
    assert server.api("POST", f"/api/v1/deployments/{first['id']}/continue")[0] == 200
    assert server.wait_final(first["id"])["status"] == "Succeeded"
    started = server.deploy("hello", "prod", revision(tmp_path, "2.0.0"))
    server.wait_for(started["id"], lambda d: d["status"] == "Baking")
    with Load(f"http://127.0.0.1:{lb}/", rate=200) as load:
        time.sleep(0.5)
        requested = time.monotonic()
        status, doc = server.api("POST", f"/api/v1/deployments/{started['id']}/stop", {"rollback": True})
        answered = time.monotonic()
        time.sleep(0.5)
    assert status == 200 and doc["status"] == "Stopped"
    # The reroute is part of the stop, not left to the rollback deployment: by the answer, traffic is back (below).
    # How quick it is (milliseconds) is measured by `make bench`, not asserted on this machine's clock.
    _, log = server.api("GET", f"/api/v1/deployments/{started['id']}/log")
    kinds = [e["kind"] for e in log]
    assert "traffic.rerouted" in kinds
    assert [(round(at - requested, 3), st) for at, st, _ in load.failures()] == []
    after = load.bodies_sent_after(answered)
    assert after and all("hello 1.0.0" in b for b in after), [b for b in after if "1.0.0" not in b]
    assert any("hello 2.0.0" in b for _, _, b in load.results if _ < requested)


NO_ALARMS = BLUE_GREEN.split("        alarms:")[0].rstrip()


@pytest.mark.parametrize(
    ("breakage", "alarms", "status", "message"),
    [
        ("socket missing", False, "Failed", "traffic shift failed: haproxy:"),
        ("haproxy killed", False, "Failed", "traffic shift failed: haproxy:"),
        # reference §7.2: with ignore_poll_alarm_failure false, unreadable alarms stop the deployment
        ("socket missing", True, "Stopped", "alarm state unreadable"),
    ],
)
def test_haproxy_gone_fails_clearly_and_leaves_traffic(servers, tmp_path, breakage, alarms, status, message) -> None:
    lb = free_port()
    group = (BLUE_GREEN if alarms else NO_ALARMS).format(traffic="QuickCanary", termination=0)
    server = start(servers, config(2, lb, group))
    assert server.deploy_promoted("hello", "prod", revision(tmp_path, "1.0.0"))["status"] == "Succeeded"
    slow = revision(tmp_path, "2.0.0")
    hooks = (slow / "scripts" / "before_install.sh").read_text()
    (slow / "scripts" / "before_install.sh").write_text(hooks + "\nsleep 1\n")
    started = server.deploy("hello", "prod", slow)
    # Started, so its alarms were read before it began: what breaks now breaks a deployment under way.
    server.wait_for(started["id"], lambda d: d["status"] == "InProgress")
    run_dir = server.data_dir / "haproxy"
    if breakage == "socket missing":
        (run_dir / "haproxy.sock").unlink()
    else:
        os.kill(int((run_dir / "haproxy.pid").read_text()), signal.SIGKILL)
    doc = server.wait_final(started["id"])
    assert doc["status"] == status, doc["error"]
    assert message in doc["error"]["message"] and "haproxy" in doc["error"]["message"]
    assert doc["traffic"]["percent"] == 0
    if breakage == "socket missing":  # HAProxy still runs with the weights it had: all on the original fleet
        with Load(f"http://127.0.0.1:{lb}/", rate=100, max_seconds=1) as load:
            time.sleep(0.5)
        assert load.results and all("hello 1.0.0" in b for _, _, b in load.results)
