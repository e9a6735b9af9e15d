"""FakeSlack: a local aiohttp server playing Slack's Web API (``POST /api/<method>``) and ``response_url``s.

It records every call (method, JSON/form payload, Authorization header, monotonic time) so tests assert on the
real Block Kit payloads the bot sent. ``rate_limit_once(method, retry_after)`` makes the next call of that method
answer HTTP 429 with ``Retry-After``, as Slack does. ``go_down()`` is an outage: every Web API call answers HTTP 503
(recorded, with ``_answered``), or with ``refuse=True`` the port stops accepting connections; ``come_back()`` ends
it. ``answered()`` are the calls Slack really took. It runs on the test's event loop (``async with``) or, for a bot
running in another process, on its own thread (``start_in_thread``).

Socket Mode, as Slack plays it: ``apps.connections.open`` with an app-level token (``xapp-…``; any other token is
answered ``not_allowed_token_type``) answers a one-time ``ws://`` URL on this server; the websocket says ``hello``,
then carries the envelopes a test sends (``send_envelope``, or ``send_envelope_from_thread`` when the fake runs on
its own thread) and records each acknowledgement by its ``envelope_id`` (``acks``); ``ask_to_reconnect`` sends
Slack's ``disconnect``. ``sockets`` are the connections in order, each with the close code the bot's client closed
it with (1000 for a clean close).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

CHANNELS = {"#deploys": "C0DEPLOYS", "deploys": "C0DEPLOYS"}
SOCKET_PATH = "/socket-mode"
APP_ID = "A0APP"


@dataclass
class Call:
    method: str
    payload: dict[str, Any]
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Socket:
    """One Socket Mode connection from the bot: the app token its URL was issued to, and how the bot closed it
    (``closed_with``: the websocket close code; None while open, or when the fake closed it first)."""

    app_token: str
    ws: web.WebSocketResponse
    closed_with: int | None = None
    closed_by_fake: bool = False

    @property
    def open(self) -> bool:
        return not self.ws.closed


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.responses: list[tuple[str, dict[str, Any]]] = []  # (response_url path id, JSON body)
        self._rate_limited: dict[str, int] = {}
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.unavailable = False  # every Web API call answers 503
        self._held: asyncio.Event | None = None  # set: every Web API call and response_url POST waits for it (hold)
        self.waiting = 0  # calls held unanswered right now
        self._refusing = False  # the port is closed
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        # Socket Mode
        self._tickets: dict[str, str] = {}  # one-time ticket of an issued URL -> the app token it was issued to
        self.sockets: list[Socket] = []
        self.envelopes: list[dict[str, Any]] = []  # what was sent down the socket, in order
        self.acks: dict[str, dict[str, Any]] = {}  # envelope_id -> the bot's acknowledgement

    # -- what tests use --------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "cmd") -> str:
        return f"http://127.0.0.1:{self.port}/response/{name}"

    def rate_limit_once(self, method: str, retry_after: int = 1) -> None:
        self._rate_limited[method] = retry_after

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def taken(self, method: str) -> list[Call]:
        """The calls of ``method`` Slack really took (not answered 429 or 503)."""
        return [c for c in self.of(method) if "_answered" not in c.payload]

    def messages(self) -> list[Call]:
        """Every chat.postMessage and chat.update, in order."""
        return [c for c in self.calls if c.method in ("chat.postMessage", "chat.update")]

    # -- Socket Mode -----------------------------------------------------------------------------------------

    def socket(self) -> Socket | None:
        """The newest open Socket Mode connection."""
        return next((s for s in reversed(self.sockets) if s.open), None)

    async def send_envelope(self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool = False) -> str:
        """Send ``payload`` down the newest open socket as Slack does (``kind``: ``slash_commands``,
        ``interactive``, ``events_api``); its ``envelope_id``, under which ``acks`` will hold the answer."""
        socket = self.socket()
        if socket is None:
            raise AssertionError("no open Socket Mode connection")
        envelope = {
            "envelope_id": str(uuid.uuid4()),
            "type": kind,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        self.envelopes.append(envelope)
        await socket.ws.send_str(json.dumps(envelope))
        return str(envelope["envelope_id"])

    async def ask_to_reconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's ``disconnect`` message on the newest socket: the client is to open a new connection (Slack sends
        it before it closes a connection for maintenance, and every few hours)."""
        socket = self.socket()
        if socket is None:
            raise AssertionError("no open Socket Mode connection")
        await socket.ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}})

    def send_envelope_from_thread(
        self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool = False
    ) -> str:
        """``send_envelope`` from another thread, when the fake runs on its own (``start_in_thread``)."""
        assert self._loop is not None, "the fake runs on the caller's loop: await send_envelope"
        sent = self.send_envelope(kind, payload, accepts_response_payload=accepts_response_payload)
        return asyncio.run_coroutine_threadsafe(sent, self._loop).result(10)

    async def _connections_open(self, call: Call) -> web.Response:
        token = (call.authorization or "").removeprefix("Bearer ") or str(call.payload.get("token") or "")
        if not token.startswith("xapp-"):
            return web.json_response({"ok": False, "error": "not_allowed_token_type"})
        ticket = uuid.uuid4().hex
        self._tickets[ticket] = token
        return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.port}{SOCKET_PATH}?ticket={ticket}"})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        token = self._tickets.pop(request.query.get("ticket", ""), None)
        if token is None:  # Slack's URLs are for one connection
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        socket = Socket(token, ws)
        self.sockets.append(socket)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": sum(1 for s in self.sockets if s.open),
                "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                "connection_info": {"app_id": APP_ID},
            }
        )
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                answer = json.loads(message.data)
                if isinstance(answer, dict) and "envelope_id" in answer:
                    self.acks[str(answer["envelope_id"])] = answer
        if not socket.closed_by_fake:
            socket.closed_with = ws.close_code
        return ws

    async def _close_sockets(self, _app: web.Application) -> None:
        for socket in self.sockets:
            if socket.open:
                socket.closed_by_fake = True
                await socket.ws.close(code=WSCloseCode.GOING_AWAY)

    # -- holding every answer --------------------------------------------------------------------------------

    def hold(self) -> None:
        """From now on every Web API call and response_url POST is recorded and then left unanswered until
        ``release``. Whatever the bot answers meanwhile did not wait on Slack: that is how a test shows an ack is
        quick on any machine, with no stopwatch (an ack that waited on Slack would hang, and the test's guard fail)."""
        self._held = asyncio.Event()

    def release(self) -> None:
        """Answer every held call, and hold none from now on (callable from the test's thread or loop)."""
        held, self._held = self._held, None
        if held is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(held.set)
        else:
            held.set()

    async def _wait_if_held(self) -> None:
        held = self._held
        if held is not None:
            self.waiting += 1
            try:
                await held.wait()
            finally:
                self.waiting -= 1

    # -- outages ---------------------------------------------------------------------------------------------

    async def go_down(self, *, refuse: bool = False) -> None:
        """An outage: 503 for every Web API call, or (``refuse``) no connections at all."""
        if refuse:
            assert self._site is not None
            await self._site.stop()
            self._refusing = True
        else:
            self.unavailable = True

    async def come_back(self) -> None:
        self.unavailable = False
        if self._refusing:
            self._refusing = False
            assert self._runner is not None
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()

    # -- the server ------------------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)  # a few Web API methods are GETs
        app.router.add_post("/response/{name}", self._response)
        app.router.add_get(SOCKET_PATH, self._socket)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def _payload(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            return dict(request.query)
        if request.content_type == "application/json":
            return dict(await request.json())
        form = dict(await request.post())
        for key in ("blocks", "attachments", "view"):
            if isinstance(form.get(key), str):
                form[key] = json.loads(str(form[key]))
        return {k: v for k, v in form.items() if isinstance(v, str | list | dict)}

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        payload = await self._payload(request)
        self.calls.append(Call(method, payload, request.headers.get("Authorization")))
        await self._wait_if_held()
        if self.unavailable:
            self.calls[-1].payload["_answered"] = 503
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        retry_after = self._rate_limited.pop(method, None)
        if retry_after is not None:
            self.calls[-1].payload["_answered"] = 429
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(retry_after)}
            )
        if method == "apps.connections.open":
            return await self._connections_open(self.calls[-1])
        if method == "auth.test":
            return web.json_response(
                {"ok": True, "team_id": "T0TEAM", "user_id": "U0BOT", "bot_id": "B0BOT", "url": "https://x.slack.com/"}
            )
        if method == "chat.postMessage":
            channel = CHANNELS.get(str(payload.get("channel")), str(payload.get("channel")))
            ts = f"1700000000.{next(self._ts):06d}"
            return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts}})
        if method == "chat.update":
            return web.json_response({"ok": True, "channel": payload.get("channel"), "ts": payload.get("ts")})
        if method == "chat.postEphemeral":
            return web.json_response({"ok": True, "message_ts": "1700000000.999999"})
        if method == "users.info":
            user = str(payload.get("user"))
            return web.json_response({"ok": True, "user": {"id": user, "name": user.lower()}})
        return web.json_response({"ok": True})

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append((request.match_info["name"], dict(await request.json())))
        await self._wait_if_held()
        return web.json_response({"ok": True})

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Slack did not start")

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
