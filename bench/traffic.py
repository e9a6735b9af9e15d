"""Traffic under load (DESIGN §5): no failed request through HAProxy during an in-place OneAtATime deployment and a
blue/green linear one followed by a rollback; the observed new-version share at each step; the rollback time.

The example app (examples/hello) runs on 4 local hosts behind the HAProxy that ``deploybot serve`` starts. A steady
load (threads with keep-alive connections, bounded in rate and time) records every answer; each answer names the
version that served it, which is how the share per step is measured.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from bench.figures import Figure
from bench.load import Load
from bench.server import BenchServer, free_port
from bench.settings import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"
LOAD_RATE = 250.0
STEP_SECONDS = 4.0  # linear 20 % every STEP_SECONDS
SHARE_TARGET_PP = 1.0
ROLLBACK_TARGET_MS = 200.0


def _revision(workdir: Path, version: str) -> Path:
    path = workdir / f"hello-{version}"
    shutil.copytree(EXAMPLE, path)
    (path / "VERSION").write_text(version + "\n")
    return path


def _config(lb_port: int, group: str) -> str:
    hosts = "\n".join(f"  - {{name: web-{i}, local: true, port: {free_port()}}}" for i in range(1, 5))
    return f"""server: {{data_dir: var}}
deployment_configs:
  Linear20:
    compute_platform: server
    traffic_routing: {{type: TimeBasedLinear, percentage: 20, interval_minutes: {STEP_SECONDS / 60}}}
hosts:
{hosts}
applications:
  bench:
    platform: server
    revision: {EXAMPLE}
    environments: [prod]
    deployment_groups:
      prod:
        targets: {{hosts: [web-1, web-2, web-3, web-4]}}
        load_balancer: {{type: haproxy, port: {lb_port}, health_check: /health, deregistration_delay: 2}}
{group}
"""


@contextlib.contextmanager
def _server(workdir: Path, group: str) -> Iterator[tuple[BenchServer, str]]:
    lb = free_port()
    with BenchServer(workdir, _config(lb, group)) as server:
        server.wait_agents_online(4)
        yield server, f"http://127.0.0.1:{lb}/"


def in_place(workdir: Path, console: Console) -> list[Figure]:
    group = "        deployment_config: CodeDeployDefault.OneAtATime"
    with _server(workdir, group) as (server, url):
        server.wait_final(server.deploy(_revision(workdir, "1.0.0"))[1])
        with Load(url, rate=LOAD_RATE, threads=5, max_seconds=180) as load:
            time.sleep(1)
            doc = server.wait_final(server.deploy(_revision(workdir, "2.0.0"))[1], timeout=180)
            time.sleep(1)
    seconds = float(doc["ended_at"]) - float(doc["created_at"])
    console.print(f"  in-place: {len(load.results)} requests at {load.rate():.0f} req/s, {load.failed()} failed")
    return [
        Figure("in-place OneAtATime under load: failed requests", load.failed(), "req", 0, f"{load.rate():.0f} req/s"),
        Figure("in-place OneAtATime, 4 hosts behind HAProxy", seconds, "s", None, "drain + deploy + health, per host"),
    ]


def blue_green(workdir: Path, console: Console) -> list[Figure]:
    group = """        deployment_type: blue-green
        deployment_config: CodeDeployDefault.AllAtOnce
        traffic_config: Linear20
        blue_green: {termination_wait_minutes: 1}"""
    with _server(workdir, group) as (server, url):
        server.wait_final(server.deploy(_revision(workdir, "1.0.0"))[1])
        with Load(url, rate=LOAD_RATE, threads=5, max_seconds=180) as load:
            time.sleep(1)
            _, deployment_id = server.deploy(_revision(workdir, "2.0.0"))
            steps: list[tuple[float, int]] = []  # (monotonic time the percent was first seen, percent)
            while True:
                _, doc = server.api("GET", f"/deployments/{deployment_id}")
                percent = (doc.get("traffic") or {}).get("percent", 0)
                if not steps or steps[-1][1] != percent:
                    steps.append((time.monotonic(), percent))
                if doc["status"] in ("Baking", "Succeeded", "Failed", "Stopped"):
                    break
                time.sleep(0.02)
            time.sleep(1)
            requested = time.monotonic()
            status, stopped = server.api("POST", f"/deployments/{deployment_id}/stop", {"rollback": True})
            answered = time.monotonic()
            time.sleep(1.5)
        _, log = server.api("GET", f"/deployments/{deployment_id}/log")
    if status != 200 or stopped["status"] != "Stopped":
        raise AssertionError(f"rollback answered {status}: {stopped}")
    reroute_ms = next(e["data"]["milliseconds"] for e in log if e["kind"] == "traffic.rerouted")
    back = _first_all_old(load.results, requested)
    figures = [
        Figure("blue/green linear + rollback: failed requests", load.failed(), "req", 0, f"{load.rate():.0f} req/s"),
        Figure("rollback: weights back on the original fleet", reroute_ms, "ms", ROLLBACK_TARGET_MS, "HAProxy API"),
        Figure("rollback: stop request answered", (answered - requested) * 1000, "ms", None, "POST .../stop"),
        Figure("rollback: last new-version answer after request", back, "ms", ROLLBACK_TARGET_MS, "seen by clients"),
    ]
    worst = 0.0
    for (start, percent), (end, _) in itertools.pairwise(steps):
        if percent in (0, 100):
            continue
        window = [b for at, s, b in load.results if start + 0.2 < at < end - 0.05 and s == 200]
        if len(window) < 50:
            continue
        share = 100 * sum("hello 2.0.0" in b for b in window) / len(window)
        worst = max(worst, abs(share - percent))
        console.print(f"  step {percent:3d} %: observed {share:5.1f} % of {len(window)} answers")
    figures.append(Figure("traffic share, worst step error", worst, "pp", SHARE_TARGET_PP, "observed vs configured"))
    return figures


def _first_all_old(results: list[tuple[float, int, str]], requested: float) -> float:
    """Milliseconds from the rollback request to the last answer served by the new version."""
    last_new = max((at for at, s, b in results if at >= requested and "hello 2.0.0" in b), default=requested)
    return (last_new - requested) * 1000


def traffic(settings: Settings) -> list[Figure]:
    figures: list[Figure] = []
    for name, scenario in (("in-place", in_place), ("blue-green", blue_green)):
        with settings.scenario_dir(f"traffic-{name}") as workdir:
            figures += scenario(workdir, settings.console)
    return figures
