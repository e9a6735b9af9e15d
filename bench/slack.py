"""Slack acknowledgement latency: 50 concurrent, really signed ``/deploy`` slash commands against a real
``deploybot serve`` with Slack on; each request's time to its HTTP answer (the ack), p50 and p99 (DESIGN §5: 100 ms).

The Web API and the commands' ``response_url`` point at a small local sink (the server's follow-up work talks to
it after the ack, as it would to Slack). The mix is the commands people send most: status, where, history, plan.
Each burst first waits (up to ``QUIET_WAIT_S``) for other processes to use at most ``QUIET_SHARE`` of the machine:
the target is for a quiet run, and the traffic scenario before it leaves HAProxy and its load winding down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlencode

from aiohttp import ClientSession, TCPConnector, web
from slack_sdk.signature import SignatureVerifier

from bench import phases
from bench.figures import Figure, median, percentile
from bench.server import APPLICATION, ENVIRONMENT, BenchError, BenchServer, fleet_config, host_names
from bench.settings import QUIET_SHARE, QUIET_WAIT_S, Settings

ACK_TARGET_MS = 100.0
CONCURRENT = 50
ROUNDS = 4
SECRET = "bench-signing-secret"
TEXTS = (
    f"status {APPLICATION}",
    f"where {APPLICATION}",
    f"history {APPLICATION}",
    f"plan {APPLICATION} to {ENVIRONMENT}",
)


class _Sink:
    """Answers every Slack Web API call and response_url POST with ok, on its own thread."""

    def __init__(self) -> None:
        self.port = 0
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _ok(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        return web.json_response({"ok": True, "channel": "C0BENCH", "ts": "1.1"})

    def __enter__(self) -> _Sink:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._ok)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _signed_command(text: str, user: str, response_url: str) -> tuple[str, dict[str, str]]:
    body = urlencode(
        {
            "command": "/deploy",
            "text": text,
            "team_id": "T0BENCH",
            "channel_id": "C0BENCH",
            "user_id": user,
            "response_url": response_url,
            "trigger_id": f"{time.monotonic_ns()}.bench",  # each command is a new request (bot/slack/intents.py)
        }
    )
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    assert signature is not None  # only None without a signing secret
    headers = {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return body, headers


async def _burst(url: str, response_url: str, round_: int) -> list[float]:
    """CONCURRENT commands at once (distinct users, so none is a duplicate); milliseconds to each ack."""
    requests = [
        _signed_command(TEXTS[i % len(TEXTS)], f"U{round_:02d}{i:05d}", response_url) for i in range(CONCURRENT)
    ]
    async with ClientSession(connector=TCPConnector(limit=CONCURRENT)) as session:

        async def one(body: str, headers: dict[str, str]) -> float:
            started = time.perf_counter()
            async with session.post(url + "/slack/events", data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise BenchError(f"/slack/events answered {response.status}")
            return (time.perf_counter() - started) * 1000

        # Open the connections first, so the burst measures answering, not TCP handshakes.
        await asyncio.gather(*(session.get(url + "/healthz") for _ in range(CONCURRENT)))
        return list(await asyncio.gather(*(one(body, headers) for body, headers in requests)))


def slack_ack(settings: Settings) -> list[Figure]:
    console = settings.console
    with settings.scenario_dir("slack") as workdir, _Sink() as sink:
        api = f"http://127.0.0.1:{sink.port}/api/"
        names = host_names(1)
        server = BenchServer(workdir, fleet_config(names), hosts=names)
        with _environ(SLACK_BOT_TOKEN="xoxb-bench", SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=api), server:
            response_url = f"http://127.0.0.1:{sink.port}/response"
            asyncio.run(_burst(server.url, response_url, 0))  # warm-up, not counted
            latencies: list[float] = []
            noisy = 0
            for round_ in range(1, ROUNDS + 1):
                # The figure is for a quiet machine: what the traffic scenario left running is not ours.
                noisy += phases.wait_quiet(QUIET_SHARE, within=QUIET_WAIT_S) > QUIET_SHARE
                latencies += asyncio.run(_burst(server.url, response_url, round_))
                time.sleep(0.5)  # let the background work of the burst finish
    console.print(f"  {len(latencies)} acks ({ROUNDS} bursts of {CONCURRENT}), max {max(latencies):.1f} ms")
    if noisy:
        console.print(
            f"  {noisy} of {ROUNDS} bursts started with other processes above {QUIET_SHARE:.0%} of the machine"
        )
    note = f"{ROUNDS} bursts of {CONCURRENT} concurrent signed commands"
    return [
        Figure("Slack ack latency, p50", median(latencies), "ms", None, note),
        Figure("Slack ack latency, p99", percentile(latencies, 99), "ms", ACK_TARGET_MS, note),
    ]
