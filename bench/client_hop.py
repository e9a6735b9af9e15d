"""The agent's HTTP client: what one result POST costs it, engine/http11.py against aiohttp's client (issue 19).

Each lifecycle event of each host is a result POST the agent waits on before its next event, so the client's CPU is
spent on every host (on a 2-core machine running 20 agents at once, it is most of the deployment's CPU) and its
latency is in every gap between two events. The yardstick is aiohttp's client (C parser, the server already uses
aiohttp), which the agent does not use for its memory and import time (engine/http11.py). Both send the same result
body with the agent's headers to the floor's bare aiohttp server (bench/floor.py, ``http``: no deploybot code, in
its own process), one request after another on one kept-alive connection, in ``rounds`` interleaved rounds (the
order alternates). The figures are this process's CPU per request (the client alone: the server is another process)
and the wall time of one round trip, medians over the rounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench import floor
from bench.figures import Figure, median, spread
from bench.server import free_port
from bench.settings import Settings

ROUNDS = 7
REQUESTS = 1_000

Post = Callable[[int], Awaitable[int]]


async def _clients(url: str) -> tuple[Post, Post, Callable[[], Awaitable[None]]]:
    """(a POST through ours, a POST through aiohttp's, closing both); each returns the answer's status."""
    import aiohttp

    from engine.http11 import HttpClient

    body = floor._result_body()
    ours = HttpClient(url)
    session = aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=1))

    async def through_ours(command: int) -> int:
        response = await ours.request("POST", floor._result_path(command), json_body=body, headers=floor._HEADERS)
        response.json()
        return response.status

    async def through_aiohttp(command: int) -> int:
        async with session.post(floor._result_path(command), json=body, headers=floor._HEADERS) as response:
            await response.json()
            return response.status

    async def close() -> None:
        await ours.close()
        await session.close()

    return through_ours, through_aiohttp, close


async def per_request(
    ours: Post, theirs: Post, rounds: int, requests: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per way (``"ours"``, ``"aiohttp"``): (CPU µs per request, wall µs per round trip), one value per round."""
    results: dict[str, tuple[list[float], list[float]]] = {"ours": ([], []), "aiohttp": ([], [])}
    ways = [("ours", ours), ("aiohttp", theirs)]
    for _, post in ways:  # warm-up: the connections opened, the code paths run once
        for command in range(requests // 10):
            await post(command)
    for index in range(rounds):
        for name, post in ways if index % 2 == 0 else list(reversed(ways)):
            cpu, wall = time.process_time(), time.perf_counter()
            for command in range(requests):
                status = await post(command)
                if status != 200:
                    raise RuntimeError(f"the floor server answered {status}")
            results[name][0].append((time.process_time() - cpu) / requests * 1e6)
            results[name][1].append((time.perf_counter() - wall) / requests * 1e6)
    return results


def client_hop(settings: Settings) -> list[Figure]:
    console = settings.console

    async def run(url: str) -> dict[str, tuple[list[float], list[float]]]:
        ours, theirs, close = await _clients(url)
        try:
            return await per_request(ours, theirs, ROUNDS, REQUESTS)
        finally:
            await close()

    with settings.scenario_dir("client") as workdir, floor.floor_server(workdir, "http", free_port()) as (url, _):
        results = asyncio.run(run(url))
    for name, (cpu, wall) in results.items():
        console.print(f"  {name:8s} CPU per request (µs): {' '.join(f'{v:.0f}' for v in cpu)}")
        console.print(f"  {name:8s} round trip (µs):      {' '.join(f'{v:.0f}' for v in wall)}")
    (cpu, wall), (their_cpu, their_wall) = results["ours"], results["aiohttp"]
    ratios = [a / b for a, b in zip(cpu, their_cpu, strict=True)]
    note = f"{REQUESTS:,} result POSTs x {ROUNDS} interleaved rounds against a bare aiohttp server"
    return [
        Figure("agent's HTTP client: CPU per request", median(cpu), "µs", None, f"{note}; {spread(cpu, 'µs')}"),
        Figure("aiohttp's client: CPU per request", median(their_cpu), "µs", None, spread(their_cpu, "µs")),
        Figure("agent's client / aiohttp's, CPU", median(ratios), "x", None, f"per round; {spread(ratios, 'x')}"),
        Figure("agent's HTTP client: round trip", median(wall), "µs", None, spread(wall, "µs")),
        Figure("aiohttp's client: round trip", median(their_wall), "µs", None, spread(their_wall, "µs")),
    ]
