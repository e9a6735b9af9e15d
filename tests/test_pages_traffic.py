"""The traffic chart on real canary deployments: ``deploybot serve`` with real agents running the example app behind
a real HAProxy, an HTTP probe alarm the test flips, and the pages read over HTTP as a browser would get them."""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DeploybotServer, free_port, keep_workdir, short_workdir

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make installs it)")


class Probe:
    """A health endpoint whose answer the test sets; the deployment group's alarm polls it."""

    def __init__(self) -> None:
        self.status = 200
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(probe.status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config(probe_url: str) -> str:
    hosts = "\n".join(f"  - {{name: web-{i}, local: true, port: {free_port()}}}" for i in range(1, 5))
    return f"""server: {{data_dir: var, heartbeat_timeout: 30}}
deployment_configs:
  ChartCanary:
    compute_platform: server
    traffic_routing: {{type: TimeBasedCanary, percentage: 20, interval_minutes: 0.03}}
hosts:
{hosts}
applications:
  hello:
    platform: server
    revision: {EXAMPLE}
    environments: [prod]
    deployment_groups:
      prod:
        targets: {{hosts: [web-1, web-2, web-3, web-4]}}
        load_balancer: {{type: haproxy, port: {free_port()}, health_check: /health, deregistration_delay: 0.2}}
        deployment_type: blue-green
        deployment_config: CodeDeployDefault.AllAtOnce
        traffic_config: ChartCanary
        blue_green: {{termination_wait_minutes: 0}}
        auto_rollback: {{enabled: true, events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]}}
        alarms:
          enabled: true
          poll_seconds: 0.2
          alarms: [{{name: probe, type: http, url: '{probe_url}'}}]
"""


def revision(tmp_path: Path, version: str) -> Path:
    path = tmp_path / f"hello-{version}"
    shutil.copytree(EXAMPLE, path)
    (path / "VERSION").write_text(version + "\n")
    return path


@pytest.fixture
def probe() -> Iterator[Probe]:
    running = Probe()
    yield running
    running.close()


@pytest.fixture
def server(probe: Probe, tmp_path: Path) -> Iterator[DeploybotServer]:
    # A short directory: HAProxy's stats socket is in the data directory, and tmp_path is too long for it under xdist.
    running = DeploybotServer(short_workdir(), config(probe.url))
    try:
        running.start()
        yield running
    finally:
        running.cleanup()
        keep_workdir(running, tmp_path / "server")


def get(server: DeploybotServer, path: str) -> HTTPResponse:
    token = (server.data_dir / "api-token").read_text().strip()
    request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"})
    response: HTTPResponse = urllib.request.urlopen(request, timeout=10)
    assert response.status == 200
    return response


def page(server: DeploybotServer, deployment_id: str) -> str:
    with get(server, f"/deployments/{deployment_id}") as response:
        return str(response.read().decode())


def first_update(server: DeploybotServer, deployment_id: str) -> dict[str, Any]:
    """The first Server-Sent Event of a running deployment's page (``after=0``: it comes at once)."""
    with get(server, f"/deployments/{deployment_id}/events?after=0") as response:
        for raw in response:
            if raw.startswith(b"data: "):
                return dict(json.loads(raw.removeprefix(b"data: ")))
    raise AssertionError("the stream ended without an update")


def chart(html: str) -> dict[str, str]:
    """The chart's summary attributes: ``data-steps`` (weights after each shift) and ``data-marks``."""
    match = re.search(r'<svg id="traffic-svg"[^>]*data-steps="([^"]*)"\s+data-marks="([^"]*)"', html)
    assert match, html
    return {"steps": match.group(1), "marks": match.group(2)}


def test_canary_chart_steps_then_alarm_and_rollback_marks(server: DeploybotServer, probe: Probe, tmp_path) -> None:
    first = server.deploy("hello", "prod", revision(tmp_path, "1.0.0"))
    server.wait_for(first["id"], lambda d: (d["traffic"] or {}).get("percent") == 20)
    live = page(server, first["id"])  # mid-canary: the chart so far, and the page streams the rest
    assert chart(live) == {"steps": "0,20", "marks": ""} and "EventSource" in live
    assert server.wait_final(first["id"])["status"] == "Succeeded"
    done = page(server, first["id"])
    assert chart(done) == {"steps": "0,20,100", "marks": ""}
    assert re.findall(r'class="step" data-percent="(\d+)"', done) == ["0", "20", "100"]
    assert done.count('data-kind="traffic.shifted"') == 2  # one event-log line per completed shift, in words:
    assert "traffic 20% → new side" in done and "traffic 100% → new side" in done
    assert 'id="timeline-svg"' in done  # the timeline next to the chart
    assert "EventSource" not in done

    bad = server.deploy("hello", "prod", revision(tmp_path, "2.0.0"))
    server.wait_for(bad["id"], lambda d: (d["traffic"] or {}).get("percent") == 20)
    update = first_update(server, bad["id"])  # what a live page gets pushed: the chart so far
    assert update["status"] == "InProgress" and chart(update["chart"])["steps"] == "0,20", update
    probe.status = 500  # the canary "breaks": the alarm fires, traffic goes back, a rollback follows
    stopped = server.wait_final(bad["id"])
    probe.status = 200
    assert stopped["status"] == "Stopped" and stopped["error"]["code"] == "ALARM_ACTIVE", stopped
    rollback_id = server.wait_for(bad["id"], lambda d: d["rollback"]["by"])["rollback"]["by"]
    assert server.wait_final(rollback_id)["status"] == "Succeeded"
    html = page(server, bad["id"])
    summary = chart(html)
    assert summary["steps"] == "0,20,0", summary  # back to the original fleet
    assert summary["marks"].split(",") == ["alarm", "rollback", "rollback"]  # stop, reroute, rollback deployment
    assert "alarm: alarm probe" in html  # the mark's tooltip says which alarm
    xs = [
        float(x)
        for x in re.findall(
            r'class="mark mark-\w+" data-kind="\w+">\s*<title>[^<]*</title>\s*<line x1="([\d.]+)"', html
        )
    ]
    step_20 = float(re.search(r'<g class="step" data-percent="20">\s*<circle cx="([\d.]+)"', html).group(1))
    assert len(xs) == 3 and all(x >= step_20 for x in xs)  # every mark after the canary step
