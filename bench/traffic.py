"""Traffic under load (DESIGN §5): no failed request through HAProxy during an in-place OneAtATime deployment and a
blue/green linear one followed by a rollback; the observed new-version share at each step; the rollback time.

The example app (examples/hello) runs on 4 local hosts behind the HAProxy that ``deploybot serve`` starts. A steady
load (threads with keep-alive connections, bounded in rate and time) records every answer; each answer names the
version that served it, which is how the share per step is measured.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rich.console import Console

from bench.figures import Figure
from bench.server import BenchServer, free_port

if TYPE_CHECKING:
    from bench.scenarios import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"
LOAD_RATE = 250.0
STEP_SECONDS = 4.0  # linear 20 % every STEP_SECONDS
SHARE_TARGET_PP = 1.0
ROLLBACK_TARGET_MS = 200.0


class Load:
    """``rate`` requests per second from a few keep-alive threads; answers as (time, status, body)."""

    def __init__(self, url: str, rate: float, threads: int = 5, max_seconds: float = 180) -> None:
        self.parts = urlsplit(url)
        self.interval = threads / rate
        self.max_seconds = max_seconds
        self.results: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + self.max_seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                connection = connection or http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=5)
                connection.request("GET", "/")
                response = connection.getresponse()
                record = (time.monotonic(), response.status, response.read().decode(errors="replace"))
            except (OSError, http.client.HTTPException):
                record = (time.monotonic(), 0, "")
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.results.append(record)
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def failed(self) -> int:
        return sum(1 for _, status, _ in self.results if status != 200)

    def rate(self) -> float:
        if len(self.results) < 2:
            return 0.0
        return len(self.results) / (self.results[-1][0] - self.results[0][0])


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
        with Load(url, LOAD_RATE) as load:
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
        with Load(url, LOAD_RATE) as load:
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
        workdir = Path(tempfile.mkdtemp(prefix=f"deploybot-bench-traffic-{name}-"))
        try:
            figures += scenario(workdir, settings.console)
        finally:
            if not settings.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return figures
