"""Bootstrapping a group whose own HTTP probe alarm watches its load balancer: before the first deployment nothing
runs, so the probe gets 503 and blocks the start; ``--ignore-alarms`` then covers the whole deployment — it starts,
and the same alarm does not stop it a poll later. A real ``deploybot serve``, its HAProxy and real agents."""

from __future__ import annotations

from e2e_support import free_port
from test_e2e_traffic import config, revision, servers, start

__all__ = ["servers"]  # the fixture, shared with test_e2e_traffic.py

GROUP = """        deployment_type: blue-green
        deployment_config: CodeDeployDefault.AllAtOnce
        traffic_config: CodeDeployDefault.ECSAllAtOnce
        auto_rollback: {{enabled: true, events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]}}
        alarms:
          enabled: true
          poll_seconds: 0.1
          alarms: [{{name: lb-probe, type: http, url: "http://127.0.0.1:{lb}/health"}}]"""


def test_ignore_alarms_bootstraps_a_group_past_its_own_probe(servers, tmp_path) -> None:
    lb = free_port()
    server = start(servers, config(2, lb, GROUP.format(lb=lb)))
    source = revision(tmp_path, "1.0.0")

    blocked = server.wait_final(server.deploy("hello", "prod", source)["id"])
    assert (blocked["status"], blocked["error"]["code"]) == ("Stopped", "ALARM_ACTIVE")
    assert "lb-probe" in blocked["error"]["message"] and "--ignore-alarms" in blocked["error"]["message"]

    status, body = server.api(
        "POST",
        "/api/v1/deployments",
        {
            "application": "hello",
            "environment": "prod",
            "revision": server.upload(source, "hello"),
            "ignore_alarms": True,
        },
    )
    assert status == 201, body
    done = server.wait_final(body["id"], timeout=90)
    assert done["status"] == "Succeeded", done["error"]  # polled every 0.1 s while the probe answered 503
    _, log = server.api("GET", f"/api/v1/deployments/{body['id']}/log")
    kinds = [e["kind"] for e in log]
    assert "alarms.ignored" in kinds and "rollback.triggered" not in kinds
    assert "traffic.shifted" in kinds
