"""The floor under the swarm's "server CPU per host-event": what the same requests cost a server that does nothing else.

A bare aiohttp server (this Python, this machine, the event loop deploybot's server runs on, no deploybot code)
takes each simulated host's 7 result POSTs, one after another as an agent running its events sends them, from the
same number of hosts at once. Two floors:

- ``http``: the handler reads the JSON body and answers ``{"ok": true, "stop": false}``;
- ``http+write``: it also records the result in an SQLite table (WAL, ``synchronous=NORMAL``, one transaction per
  result on one store thread, as deploybot's store runs): one read, two writes, a commit.

deploybot does more per event than either (tokens, the engine's step, persisting the deployment, heartbeats, long
polls), so its figure can only approach these; a target below the second floor is out of reach for any server built
this way on this machine. ``python -m bench.floor serve PORT DB MODE`` is the server; ``measure`` drives it.

``round_trip_ms`` is the floor under one event's latency instead: one host's result POSTs one after another, each
answered after its commit (``http+write``), sent with the agent's own HTTP client. An agent waits that long between
two events of a run at the very least (it starts the next one only once the server has recorded the last one).
Back to back, that is the floor of a server kept busy. An agent's POSTs are not back to back: each comes after an
event, during which the server has nothing to do, and a process that has been idle is slower to answer (on this
2-core VM, the same POST took 1.2 ms back to back, 1.4 ms after a 2 ms pause and 2.3 ms after 20 ms). So
``round_trip_ms(..., pause_ms=...)`` also measures it at an agent's pace: each POST after a pause as long as an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.phases import stat_times

if TYPE_CHECKING:
    from aiohttp import web

    from engine.http11 import HttpClient

EVENTS_PER_HOST = 7  # ApplicationStop .. ValidateService: one result POST each
MODES = ("http", "http+write")
_READY = "floor server ready"


@dataclass(frozen=True)
class Floor:
    mode: str
    hosts: int
    requests: int
    server_cpu_s: float
    wall_s: float

    @property
    def cpu_per_request_ms(self) -> float:
        return self.server_cpu_s / self.requests * 1000

    @property
    def per_host_ms(self) -> float:
        return self.wall_s / self.hosts * 1000


def results_store(db_path: str) -> tuple[ThreadPoolExecutor, Callable[[int, str], None]]:
    """A floor server's store: its one thread, and what records a result there (WAL, ``synchronous=NORMAL``, one
    transaction per result: one read, two writes, a commit)."""
    store = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-store")
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, status TEXT, result TEXT)")

    def record(command_id: int, text: str) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("SELECT id, status FROM results WHERE id = ?", (command_id,)).fetchall()
        db.execute("INSERT OR REPLACE INTO results VALUES (?, 'Succeeded', ?)", (command_id, text))
        db.execute("UPDATE results SET status = 'InProgress' WHERE id = ?", (command_id + 1,))
        db.execute("COMMIT")

    return store, record


def _serve(port: int, db_path: str, mode: str) -> None:
    from aiohttp import web

    store, record = results_store(db_path)

    async def result(request: web.Request) -> web.Response:
        text = await request.text()
        await request.json()
        if mode == "http+write":
            command_id = int(request.match_info["id"])
            await asyncio.get_running_loop().run_in_executor(store, record, command_id, text)
        return web.json_response({"ok": True, "stop": False})

    app = web.Application()
    app.router.add_post("/agent/v1/commands/{id:\\d+}/result", result)
    serve_app(app, port, _READY)


def serve_app(app: web.Application, port: int, ready: str) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until the process is killed, printing ``ready`` once it listens; on the
    event loop deploybot's server would run on here (bot/event_loop.py), which a floor must not do without."""
    import os

    from aiohttp import web

    from bot.event_loop import event_loop, run

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(ready, flush=True)
        await asyncio.Event().wait()

    run(main(), event_loop(None, os.environ))


_HEADERS = {"Authorization": "Bearer floor"}


def _result_body() -> dict[str, object]:
    """What an agent POSTs for an event that succeeded."""
    now = time.time()
    return {"status": "Succeeded", "error_code": 0, "message": "", "log_tail": "", "started_at": now, "ended_at": now}


def _result_path(command: int) -> str:
    """The result POST of ``command``, the next one of its run after it (as an agent running a run sends it)."""
    return f"/agent/v1/commands/{command}/result?then={command + 1}"


async def _hosts(client: HttpClient, hosts: int) -> None:
    """``hosts`` hosts at once, each sending its events' result POSTs one after another (the swarm's client)."""
    body = _result_body()

    async def host(index: int) -> None:
        for event in range(EVENTS_PER_HOST):
            path = _result_path(index * EVENTS_PER_HOST + event)
            response = await client.request("POST", path, json_body=body, headers=_HEADERS)
            response.json()
            if response.status != 200:
                raise RuntimeError(f"floor server answered {response.status}")

    await asyncio.gather(*(host(index) for index in range(hosts)))


@contextlib.contextmanager
def floor_server(workdir: Path, mode: str, port: int) -> Iterator[tuple[str, int]]:
    """The floor server in a process of its own, until the block ends: (its URL, its pid)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench.floor", "serve", str(port), str(workdir / f"floor-{mode}.db"), mode]
    cwd = Path(__file__).resolve().parent.parent
    with subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if _READY not in line:
                raise RuntimeError(f"the floor server did not start: {line}{server.stdout.read()}")
            yield f"http://127.0.0.1:{port}", server.pid
        finally:
            server.kill()


def measure(
    workdir: Path, sizes: Sequence[int], free_port: Callable[[], int], rounds: int = 1
) -> dict[int, dict[str, list[Floor]]]:
    """Both floors' servers side by side (each on a port ``free_port`` gives as it starts), warmed up, then ``rounds``
    rounds of every size's result POSTs (``sizes``: hosts at once) to each: in a round every size and both modes in
    turn, the order reversed every other round, so that the machine's drift weighs alike on each; CPU from /proc.
    Returns size -> mode -> the rounds' floors."""
    with contextlib.ExitStack() as servers:
        running = {mode: servers.enter_context(floor_server(workdir, mode, free_port())) for mode in MODES}
        import uvloop  # the swarm's loop, as deploybot's server and the floor server run on

        return uvloop.run(_measure(running, sizes, rounds))


async def _measure(
    running: dict[str, tuple[str, int]], sizes: Sequence[int], rounds: int
) -> dict[int, dict[str, list[Floor]]]:
    """Each host keeps its connection from the warm-up on, as the swarm's simulated agents do (the same client, on
    the same loop: what is left over the floor is the server's); a smaller size is the first of the hosts."""
    from engine.http11 import HttpClient

    measured: dict[int, dict[str, list[Floor]]] = {hosts: {mode: [] for mode in MODES} for hosts in sizes}
    turns = [(hosts, mode) for hosts in sizes for mode in MODES]
    clients = {mode: HttpClient(url, user_agent="deploybot-bench-floor") for mode, (url, _) in running.items()}
    try:
        for client in clients.values():
            await _hosts(client, max(sizes))  # warm-up: imports, a connection for every host
        for index in range(rounds):
            for hosts, mode in turns if index % 2 == 0 else turns[::-1]:
                pid = running[mode][1]
                before, started = stat_times(pid)[0], time.perf_counter()
                await _hosts(clients[mode], hosts)
                wall, cpu = time.perf_counter() - started, stat_times(pid)[0] - before
                measured[hosts][mode].append(Floor(mode, hosts, hosts * EVENTS_PER_HOST, cpu, wall))
    finally:
        for client in clients.values():
            await client.close()
    return measured


ROUND_TRIPS = 300  # result POSTs per measure of ``round_trip_ms``: about a third of a second


def round_trip_ms(
    url: str,
    requests: int = ROUND_TRIPS,
    *,
    pause_ms: float = 0.0,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> float:
    """The median milliseconds of one result POST, sent one after another by the agent's own client to the floor
    server at ``url`` (``floor_server``): the first tenth are a warm-up, not counted. With ``pause_ms``, each POST
    waits that long first (``pause``, in seconds), as an agent's waits for its event to run."""
    from engine.http11 import HttpClient

    async def post_all() -> list[float]:
        body = _result_body()
        client = HttpClient(url)
        took = []
        try:
            for command in range(requests):
                if pause_ms > 0:
                    await pause(pause_ms / 1000)
                started = time.perf_counter()
                response = await client.request("POST", _result_path(command), json_body=body, headers=_HEADERS)
                response.json()
                took.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"floor server answered {response.status}")
        finally:
            await client.close()
        return took[requests // 10 :]

    return statistics.median(asyncio.run(post_all()))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "serve" or sys.argv[4] not in MODES:
        sys.exit(f"usage: python -m bench.floor serve PORT DB {{{','.join(MODES)}}}")
    _serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
