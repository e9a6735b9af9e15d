"""The floor under a whole deployment: real agents against a server that does nothing but the protocol.

``bench.floor`` measures the floor under one round trip; this measures it under the figures DESIGN §5 sets targets
for: 20 hosts at once or one after another against the plain script, one host's orchestration. A bare aiohttp
server (no deploybot code) speaks the agent protocol, and real ``deploybot agent`` processes, with their executor,
crash journal and HTTP client, run an in-place deployment against it:

- ``POST /deploy?hosts=N[&sequential=1]`` (the bench's): the deployment is created, each host's seven lifecycle
  events queued as one run (the next host's only once the one before has finished, with ``sequential``); it is
  answered once the last result is recorded, with the server's times (created, ended) and each event's as its
  agent reported it;
- ``GET /agent/v1/commands/next``: the long poll, answered with the host's run (its first command, ``then`` the
  rest) as soon as there is one. An agent's token is its host's name: nothing is checked;
- ``POST /agent/v1/commands/{id}/result``: each result recorded in SQLite (``bench.floor.results_store``: one
  transaction on one store thread, as deploybot's store runs) before it is answered ``{"ok": true, "stop": false}``;
- the heartbeat and the bundle download, answered at once.

What is left between such a deployment and the plain script is what any server must cost with this protocol and
this agent: one answered round trip per event, the agents' records and the executor's CodeDeploy rules (the
previous install undone, its records kept). deploybot's own time over this floor is its server's doing.
The agents are started as ``deploybot serve`` starts its local ones (bot/localfleet.py: forked from one warm
interpreter), so that they cost what the agents of the deployments they are compared with cost. With ``minimal``,
bench/minimal_agent.py's agents take their place: what is then left over the plain script is the protocol alone.
``python -m bench.agent_floor serve PORT DB BUNDLE`` is the server, ``python -m bench.agent_floor agents URL DIR N``
runs the agents until its input closes; ``AgentFloor`` starts both.
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
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.floor import results_store, serve_app
from bench.minimal_agent import READY as MINIMAL_READY
from engine.core.lifecycle import SERVER_INSTALL_EVENTS

EVENTS = tuple(str(event) for event in SERVER_INSTALL_EVENTS)  # in place, without a load balancer
_READY = "agent floor server ready"


def host_name(index: int) -> str:
    """The floor's hosts are ``floor-1`` .. ``floor-N``; a deployment of N hosts takes the first N."""
    return f"floor-{index}"


@dataclass(frozen=True)
class FloorDeployment:
    """One deployment against the floor server: the server's times, and each host's events as its agent reported
    them (``{"name": host, "events": [{"event", "started_at", "ended_at"}, ...]}``)."""

    created_at: float
    ended_at: float
    targets: tuple[dict[str, Any], ...]

    @property
    def duration(self) -> float:
        return self.ended_at - self.created_at

    def as_document(self) -> dict[str, Any]:
        """Shaped as deploybot's deployment document where ``bench.phases`` reads it."""
        return {"targets": list(self.targets)}


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
    queued: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)  # per host: the run waiting for its poll
    arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)  # per host: set when a run is queued
    # The deployment under way: its runs by host, the hosts still to hand theirs (one after another), the last
    # command of each run, the agents' results, and its end.
    current: dict[str, Any] = {}

    def hand(host: str) -> None:
        deployment_id, run = current["id"], current["runs"][host]
        first = {**run[0], "deployment_id": deployment_id, "spec": _spec(deployment_id, sha256, size)}
        queued[host].append({**first, "then": run[1:]})
        arrived[host].set()

    async def deploy(request: web.Request) -> web.Response:
        created_at = time.time()
        hosts = [host_name(index) for index in range(1, int(request.query.get("hosts", "1")) + 1)]
        runs = {host: [{"id": next(ids), "event": event} for event in EVENTS] for host in hosts}
        ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        current.clear()
        current.update(id=f"d-floor-{next(deployments)}", runs=runs, ended=ended, results={})
        current.update(last={run[-1]["id"]: host for host, run in runs.items()}, left=set(hosts))
        sequential = request.query.get("sequential") == "1"
        current["later"] = hosts[1:] if sequential else []
        for host in hosts[:1] if sequential else hosts:
            hand(host)
        try:
            ended_at = await ended
        except RuntimeError as failed:  # the bench reports why, not a bare 500
            return web.json_response({"error": str(failed)}, status=502)
        results = current["results"]
        targets = [
            {"name": host, "events": [{"event": c["event"], **_times(results[c["id"]])} for c in runs[host]]}
            for host in hosts
        ]
        return web.json_response({"created_at": created_at, "ended_at": ended_at, "targets": targets})

    async def next_command(request: web.Request) -> web.Response:
        host = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(float(request.query.get("wait", "25"))):
                while not queued[host]:
                    arrived[host].clear()
                    await arrived[host].wait()
        if not queued[host]:
            return web.Response(status=204)
        return web.json_response({"command": queued[host].pop(0)})

    async def result(request: web.Request) -> web.Response:
        text = await request.text()
        body = json.loads(text)
        command_id = int(request.match_info["id"])
        await asyncio.get_running_loop().run_in_executor(store, record, command_id, text)
        current["results"][command_id] = body
        failed = body.get("status") != "Succeeded"
        finished = current["last"].get(command_id)
        if failed and not current["ended"].done():  # the bench's deployment fails, and says why
            current["ended"].set_exception(RuntimeError(f"command {command_id} failed on the agent: {text}"))
        elif finished is not None:
            current["left"].discard(finished)
            if current["later"]:
                hand(current["later"].pop(0))
            elif not current["left"]:
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


def _run_agents(server_url: str, workdir: Path, hosts: int) -> None:
    """The floor's agents, ``floor-1`` .. ``floor-N``, run as a local fleet until standard input closes. An agent's
    token is its host's name (the floor server tells hosts by it)."""
    from bot.localfleet import AgentProcess, LocalFleet, write_token_file

    agents = []
    for index in range(1, hosts + 1):
        host = host_name(index)
        token_file = write_token_file(workdir / "tokens", host, host)
        root = workdir / "agents" / host
        argv = [sys.executable, "-m", "bot", "agent", "--server", server_url, "--name", host]
        argv += ["--token-file", str(token_file), "--root", str(root), "--prefix", str(workdir / "hosts" / host)]
        agents.append(AgentProcess(host, tuple(argv), root / "agent.log"))  # its pid files go beside the log

    async def main() -> None:
        fleet = LocalFleet(agents)
        await fleet.start()
        print(_READY, flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await fleet.stop()

    asyncio.run(main())


def _times(result: dict[str, Any]) -> dict[str, Any]:
    return {"started_at": result["started_at"], "ended_at": result["ended_at"]}


class AgentFloor:
    """``with AgentFloor(workdir, bundle, port, hosts=N) as floor:`` the floor server and N real agents polling it
    (``floor-1`` .. ``floor-N``); ``floor.deploy(hosts)`` runs one deployment of the first ``hosts`` and returns it.
    ``minimal=True``: bench/minimal_agent.py's agents instead of ours (one process per host all the same), the floor
    of the protocol itself."""

    def __init__(self, workdir: Path, bundle: Path, port: int, *, hosts: int = 1, minimal: bool = False) -> None:
        self.workdir, self.bundle, self.port, self.hosts, self.minimal = workdir, bundle, port, hosts, minimal
        # The server, then the agents; and whether the process stops when its input closes (the agents do).
        self._processes: list[tuple[subprocess.Popen[str], bool]] = []

    def __enter__(self) -> AgentFloor:
        self.workdir.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "bench.agent_floor", "serve", str(self.port), str(self.workdir / "floor.db")]
        self._start([*argv, str(self.bundle)], stops_on_eof=False)
        if not self.minimal:
            agents = [sys.executable, "-m", "bench.agent_floor", "agents", url, str(self.workdir), str(self.hosts)]
            self._start(agents, stops_on_eof=True)
            return self
        for index in range(1, self.hosts + 1):
            host = host_name(index)
            root = self.workdir / "minimal" / host
            agent = [sys.executable, "-m", "bench.minimal_agent", url, host, str(root), str(self.bundle)]
            self._start(agent, stops_on_eof=True, ready=MINIMAL_READY)
        return self

    def _start(self, argv: list[str], *, stops_on_eof: bool, ready: str = _READY) -> None:
        """Start a process of the floor and wait until it says it is ready."""
        cwd = Path(__file__).resolve().parent.parent
        process = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._processes.append((process, stops_on_eof))
        assert process.stdout is not None
        line = process.stdout.readline()
        if ready not in line:
            self.__exit__()
            raise RuntimeError(f"{' '.join(argv[1:4])} did not start: {line}{process.stdout.read()}")

    def deploy(self, hosts: int = 1, *, sequential: bool = False, timeout: float = 120.0) -> FloorDeployment:
        """One deployment of the first ``hosts``, at once or (``sequential``) one after another, once their agents
        have run it (their first polls included: the agents may still be starting)."""
        import urllib.error
        import urllib.request

        if not 1 <= hosts <= self.hosts:
            raise ValueError(f"the floor has {self.hosts} host(s), not {hosts}")
        query = f"hosts={hosts}" + ("&sequential=1" if sequential else "")
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/deploy?{query}", method="POST", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"the floor's deployment failed ({error.code}): {error.read().decode()}") from None
        return FloorDeployment(float(body["created_at"]), float(body["ended_at"]), tuple(body["targets"]))

    def __exit__(self, *exc_info: object) -> None:
        for process, stops_on_eof in reversed(self._processes):  # the agents first, then the server
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            if not stops_on_eof:
                process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        self._processes.clear()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        _serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == "agents":
        _run_agents(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: python -m bench.agent_floor serve PORT DB BUNDLE | agents URL DIR N")
