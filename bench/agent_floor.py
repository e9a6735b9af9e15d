"""The floor under one host's whole deployment: the real agent against a server that does nothing but the protocol.

``bench.floor`` measures the floor under one round trip; this measures it under the figure DESIGN §5 sets a target
for, "one host <= 15 ms of orchestration in all". A bare aiohttp server (no deploybot code) speaks the agent
protocol, and a real ``deploybot agent`` process, with its executor, its crash journal and its HTTP client, runs a
one-host in-place deployment against it:

- ``POST /deploy`` (the bench's): the deployment is created, its seven lifecycle events queued as one run; it is
  answered once the last result is recorded, with the server's times (created, ended) and the agent's per event;
- ``GET /agent/v1/commands/next``: the long poll, answered with the run (its first command, ``then`` the rest) as
  soon as there is one;
- ``POST /agent/v1/commands/{id}/result``: each result recorded in SQLite (``bench.floor.results_store``: one
  transaction on one store thread, as deploybot's store runs) before it is answered ``{"ok": true, "stop": false}``;
- the heartbeat and the bundle download, answered at once.

What is left between that deployment and the plain script is what any server must cost with this protocol and this
agent: one answered round trip per event, the agent's records and the executor's CodeDeploy rules (the previous
install undone, its records kept). deploybot's own time over this floor is its server's doing.
``python -m bench.agent_floor serve PORT DB BUNDLE`` is the server; ``AgentFloor`` starts it and the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.floor import results_store, serve_app
from engine.core.lifecycle import SERVER_INSTALL_EVENTS

EVENTS = tuple(str(event) for event in SERVER_INSTALL_EVENTS)  # in place, without a load balancer
HOST = "floor-1"
_READY = "agent floor server ready"
_TOKEN = "floor-agent-token"  # the floor server checks nothing: any agent may talk to it


@dataclass(frozen=True)
class FloorDeployment:
    """One deployment against the floor server: the server's times, and each event's as the agent reported it."""

    created_at: float
    ended_at: float
    events: tuple[dict[str, Any], ...]

    @property
    def duration_ms(self) -> float:
        return (self.ended_at - self.created_at) * 1000

    def as_document(self) -> dict[str, Any]:
        """Shaped as deploybot's deployment document where ``bench.phases`` reads it (one target)."""
        return {"targets": [{"name": HOST, "events": list(self.events)}]}


def _spec(deployment_id: str, sha256: str, size: int) -> dict[str, Any]:
    """What deploybot's server sends its agents for an in-place deployment of the bench's group."""
    return {
        "deployment_id": deployment_id,
        "application_name": "bench",
        "deployment_group_name": "bench-floor",
        "deployment_group_id": "bench-floor",
        "deployment_type": "IN_PLACE",
        "creator": "user",
        "revision": {
            "sha256": sha256,
            "url": f"/agent/v1/bundles/{sha256}",
            "size": size,
            "commit": None,
            "location": None,
        },
        "file_exists_behavior": "DISALLOW",
        "ignore_application_stop_failures": False,
        "appspec_filename": "appspec.yml",
        "ignore_alarms": False,
        "overrides": {},
    }


def _serve(port: int, db_path: str, bundle: str) -> None:
    from aiohttp import web

    store, record = results_store(db_path)
    data = Path(bundle).read_bytes()
    sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    ids = itertools.count(1)
    deployments = itertools.count(1)
    queued: list[dict[str, Any]] = []  # the run waiting for the agent's poll
    arrived = asyncio.Event()  # set when a run is queued
    # The deployment under way: its last command's id, when it was created, the agent's results, and its end.
    current: dict[str, Any] = {}

    async def deploy(request: web.Request) -> web.Response:
        created_at = time.time()
        deployment_id = f"d-floor-{next(deployments)}"
        commands = [{"id": next(ids), "event": event} for event in EVENTS]
        ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        current.clear()
        current.update(last=commands[-1]["id"], ended=ended, results={})
        first = {**commands[0], "deployment_id": deployment_id, "spec": _spec(deployment_id, sha256, size)}
        queued.append({**first, "then": commands[1:]})
        arrived.set()
        ended_at = await ended
        times = {c["id"]: current["results"][c["id"]] for c in commands}
        events = [{"event": c["event"], **{k: times[c["id"]][k] for k in ("started_at", "ended_at")}} for c in commands]
        return web.json_response({"created_at": created_at, "ended_at": ended_at, "events": events})

    async def next_command(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(float(request.query.get("wait", "25"))):
                while not queued:
                    arrived.clear()
                    await arrived.wait()
        if not queued:
            return web.Response(status=204)
        return web.json_response({"command": queued.pop(0)})

    async def result(request: web.Request) -> web.Response:
        text = await request.text()
        body = json.loads(text)
        command_id = int(request.match_info["id"])
        await asyncio.get_running_loop().run_in_executor(store, record, command_id, text)
        current["results"][command_id] = body
        failed = body.get("status") != "Succeeded"
        if failed and not current["ended"].done():  # the bench's deployment fails, and says why
            current["ended"].set_exception(RuntimeError(f"command {command_id} failed on the agent: {text}"))
        elif command_id == current.get("last"):
            current["ended"].set_result(time.time())
        if "then" in request.query:
            return web.json_response({"ok": True, "stop": failed})
        return web.json_response({"ok": True})

    async def heartbeat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def download(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(bundle)

    app = web.Application()
    app.router.add_post("/deploy", deploy)
    app.router.add_get("/agent/v1/commands/next", next_command)
    app.router.add_post("/agent/v1/commands/{id:\\d+}/result", result)
    app.router.add_post("/agent/v1/heartbeat", heartbeat)
    app.router.add_get("/agent/v1/bundles/{sha256:[0-9a-f]{64}}", download)
    serve_app(app, port, _READY)


class AgentFloor:
    """``with AgentFloor(workdir, bundle, port) as floor:`` the floor server and a real agent polling it;
    ``floor.deploy()`` runs one deployment and returns it."""

    def __init__(self, workdir: Path, bundle: Path, port: int) -> None:
        self.workdir, self.bundle, self.port = workdir, bundle, port
        self._processes: list[subprocess.Popen[str]] = []
        self._logs: list[IO[str]] = []

    def __enter__(self) -> AgentFloor:
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parent.parent
        argv = [sys.executable, "-m", "bench.agent_floor", "serve", str(self.port), str(self.workdir / "floor.db")]
        server = self._start([*argv, str(self.bundle)], root)
        assert server.stdout is not None
        line = server.stdout.readline()
        if _READY not in line:
            self.__exit__()
            raise RuntimeError(f"the agent floor server did not start: {line}{server.stdout.read()}")
        token_file = self.workdir / "agent-token"
        token_file.write_text(_TOKEN)
        token_file.chmod(0o600)
        agent = [sys.executable, "-m", "bot", "agent", "--server", f"http://127.0.0.1:{self.port}", "--name", HOST]
        agent += ["--token-file", str(token_file), "--root", str(self.workdir / "agent")]
        agent += ["--prefix", str(self.workdir / "host")]
        self._start(agent, root, log=self.workdir / "agent.log")
        return self

    def _start(self, argv: list[str], cwd: Path, *, log: Path | None = None) -> subprocess.Popen[str]:
        output: IO[str] | int = subprocess.PIPE
        if log is not None:
            output = open(log, "w")  # noqa: SIM115 (closed in __exit__, with the process)
            self._logs.append(output)
        process = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, text=True)
        self._processes.append(process)
        return process

    def deploy(self, timeout: float = 60.0) -> FloorDeployment:
        """One deployment, once the agent has run it (its first poll included: the agent may still be starting)."""
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/deploy", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = json.load(answer)
        return FloorDeployment(float(body["created_at"]), float(body["ended_at"]), tuple(body["events"]))

    def __exit__(self, *exc_info: object) -> None:
        for process in reversed(self._processes):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for log in self._logs:
            log.close()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "serve":
        sys.exit("usage: python -m bench.agent_floor serve PORT DB BUNDLE")
    _serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
