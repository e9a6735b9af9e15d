"""A swarm of simulated agents in one process, for measuring the server alone (bench/swarm.py) and its replicas.

Theory of operation: 1,000 real agents are 1,000 processes (each ~40 MiB), which a 2-core machine cannot run beside
the server it is measuring. On the wire, though, an agent is little: its own token, a heartbeat every few seconds
naming the command it holds, a long poll (``GET /agent/v1/commands/next``) and one result POST per event (``?next=``
lets the answer carry the host's next command). The swarm is exactly that, for every host, in one process on uvloop
with the agent's own HTTP client (engine/http11.py) and one pool of connections (on Python's loop with aiohttp's
client, the swarm's own CPU per event was as large as the server's at 1,000 hosts, on the same 2 cores, and grew
with the hosts; bench/floor.py uses the same client and loop): real HTTP against the real ``deploybot serve`` (its
``/agent/v1`` endpoints, the tokens it issued in ``agent-tokens.json``), but every event Succeeds the moment it
arrives and nothing is downloaded or run (DownloadBundle included). What the deployment then costs is the server's:
HTTP, state machine, SQLite, dispatch. The swarm speaks the "runs" capability (``engine.core.agent_protocol``) when
``runs`` is set: a command that carries ``then`` is answered event by event with ``?then=``; a server that does not
offer runs hands out one event at a time, as to an agent of the previous version.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvloop

from engine.http11 import HttpClient

LAST_EVENT = "ValidateService"  # the bench's group is in place, without a load balancer
NEXT_WAIT = 0.25  # what the real agent asks for (engine.agent.client.NEXT_WAIT)
HEARTBEAT_SECONDS = 5.0  # the real agent's default
POLL_SECONDS = 25.0
RETRY_PAUSE = 0.5
START_SPREAD_S = 0.002  # one simulated agent starts every 2 ms: 2,000 connect within 4 s, not in one burst


@dataclass
class _Host:
    name: str
    headers: dict[str, str]
    running: int | None = None  # what its heartbeats name: the command it holds until the server has the result


@dataclass
class SwarmCounts:
    """What the swarm did; read from the bench's thread while the swarm's loop runs (plain ints and dicts)."""

    requests: int = 0
    errors: int = 0
    events: Counter[str] = field(default_factory=Counter)  # deployment id -> events answered
    done: Counter[str] = field(default_factory=Counter)  # deployment id -> hosts that answered LAST_EVENT
    beats: Counter[str] = field(default_factory=Counter)  # host -> heartbeats sent
    last_error: str = ""


class Swarm:
    """``tokens`` (host -> agent token) as simulated agents of ``url``, on their own event loop in a thread."""

    def __init__(
        self, url: str, tokens: Mapping[str, str], *, runs: bool = True, heartbeat_seconds: float = HEARTBEAT_SECONDS
    ) -> None:
        self.url = url
        self.heartbeat_seconds = heartbeat_seconds
        self.tokens = dict(tokens)
        self.runs = runs
        self.counts = SwarmCounts()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._session: HttpClient | None = None
        self._agents: list[asyncio.Task[None]] = []
        self._beating: frozenset[str] | None = None  # the hosts that send their heartbeats; None: every host
        self._thread = threading.Thread(target=self._run, name="bench-swarm", daemon=True)
        self._started = threading.Event()

    def __enter__(self) -> Swarm:
        self._thread.start()
        self._started.wait(10)
        return self

    def add(self, tokens: Mapping[str, str]) -> None:
        """More simulated agents (host -> agent token), started on the swarm's loop like the first ones."""
        assert self._loop is not None, "the swarm is not running"
        self.tokens |= tokens
        asyncio.run_coroutine_threadsafe(self._start_agents(dict(tokens)), self._loop).result(60)

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(30)

    def _run(self) -> None:
        # uvloop, as the server runs on: Python's loop made the swarm's own CPU grow past the server's at 1,000 hosts.
        uvloop.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._session = HttpClient(self.url, user_agent="deploybot-bench-swarm")
        self._started.set()
        try:
            await self._start_agents(self.tokens)
            await self._stopping.wait()
            for agent in self._agents:
                agent.cancel()
            await asyncio.gather(*self._agents, return_exceptions=True)
        finally:
            await self._session.close()

    def beat_only(self, names: Iterable[str] | None) -> None:
        """From now on only ``names`` (None: every host) send their heartbeats; the others skip theirs (a first one
        still goes out, to come online). While a size smaller than the fleet is timed, the hosts outside it keep still,
        so that its deployment has the background of a fleet its size, not the whole fleet's: a thousand agents'
        heartbeats took 6-10 % of a core, a tenth of a 50-host deployment's CPU."""
        self._beating = None if names is None else frozenset(names)

    async def _start_agents(self, tokens: Mapping[str, str]) -> None:
        assert self._session is not None
        for name, token in sorted(tokens.items()):
            host = _Host(name, {"Authorization": f"Bearer {token}"})
            self._agents.append(asyncio.create_task(self._agent(self._session, host)))
            await asyncio.sleep(START_SPREAD_S)

    # -- one simulated agent -----------------------------------------------------------------------------------

    async def _agent(self, session: HttpClient, host: _Host) -> None:
        heartbeats = asyncio.create_task(self._heartbeats(session, host))
        try:
            command: dict[str, Any] | None = None
            while True:
                if command is None:
                    command = await self._poll(session, host)
                else:
                    command = await self._answer(session, host, command)
        finally:
            heartbeats.cancel()

    async def _heartbeats(self, session: HttpClient, host: _Host) -> None:
        first = True
        while True:
            if first or self._beating is None or host.name in self._beating:
                body: dict[str, Any] = {"tags": {"role": "bench"}, "version": "bench-swarm"}
                body["running_command"] = host.running
                if self.runs:
                    body["capabilities"] = ["runs"]
                await self._request(session, "POST", "/agent/v1/heartbeat", host, body)
                self.counts.beats[host.name] += 1
            # The first right away (to come online); then every heartbeat_seconds, spread like agents started apart.
            await asyncio.sleep(self.heartbeat_seconds * (random.random() if first else 1.0))
            first = False

    async def _poll(self, session: HttpClient, host: _Host) -> dict[str, Any] | None:
        query = f"?wait={POLL_SECONDS:g}" + ("&runs=1" if self.runs else "")
        status, answer = await self._request(session, "GET", "/agent/v1/commands/next" + query, host)
        if status not in (200, 204):
            await asyncio.sleep(RETRY_PAUSE)  # refused (a 4xx): ask again later, as the agent does
        return _command_in(answer) if status == 200 else None

    async def _answer(self, session: HttpClient, host: _Host, command: dict[str, Any]) -> dict[str, Any] | None:
        """Succeed ``command`` (and the run behind it, if any) at once; the next command if the answer has one."""
        steps: list[tuple[int, str]] = [(int(command["id"]), str(command["event"]))]
        steps += [(int(step["id"]), str(step["event"])) for step in command.get("then") or ()]
        deployment = str(command["deployment_id"])
        for index, (command_id, event) in enumerate(steps):
            host.running = command_id
            now = time.time()
            result = {"status": "Succeeded", "error_code": 0, "message": "", "log_tail": ""}
            result |= {"started_at": now, "ended_at": now}
            last = index == len(steps) - 1
            if last:
                query = f"?next={NEXT_WAIT:g}" + ("&runs=1" if self.runs else "")
            else:
                query = f"?then={steps[index + 1][0]}"
            status, answer = await self._request(
                session, "POST", f"/agent/v1/commands/{command_id}/result{query}", host, result
            )
            host.running = None
            if status >= 300:
                return None
            self._count(deployment, event)
            if not last and (not isinstance(answer, dict) or answer.get("stop") is not False):
                return None  # the server says not to run the rest (stopped, or the command is gone): poll
            if last:
                return _command_in(answer)
        return None

    def _count(self, deployment: str, event: str) -> None:
        self.counts.events[deployment] += 1
        if event == LAST_EVENT:
            self.counts.done[deployment] += 1

    async def _request(
        self, session: HttpClient, method: str, path: str, host: _Host, body: object = None
    ) -> tuple[int, Any]:
        """One request, retried on network errors and 5xx like the agent does; (status, JSON answer or None)."""
        while True:
            self.counts.requests += 1
            try:
                response = await session.request(
                    method, path, json_body=body, headers=host.headers, total=POLL_SECONDS + 15, connect=10
                )
                if response.status < 500:
                    if response.status >= 400:
                        self._error(f"{method} {path}: HTTP {response.status} {response.body[:200]!r}")
                    return response.status, response.json()
                self._error(f"{method} {path}: HTTP {response.status}")
            except (OSError, TimeoutError) as exc:
                self._error(f"{method} {path}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(RETRY_PAUSE)

    def _error(self, what: str) -> None:
        self.counts.errors += 1
        self.counts.last_error = what


def _command_in(answer: Any) -> dict[str, Any] | None:
    command = answer.get("command") if isinstance(answer, dict) else None
    return command if isinstance(command, dict) else None
