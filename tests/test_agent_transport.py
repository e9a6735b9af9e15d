"""The agent's HTTP/1.1 client (engine/http11.py) against real servers: aiohttp's, and raw asyncio servers
that misbehave on purpose (close a kept-alive connection, stall, answer garbage)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from engine.http11 import ConnectionEnded, HttpClient, ProtocolBroken, _Connection


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (these tests send bodies only where they read them)."""
    return await reader.readuntil(b"\r\n\r\n")


def answer(body: bytes = b"ok", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def says_then_closes(sent: bytes) -> Handler:
    """A raw server's handler: it reads one request's head, sends ``sent`` and closes the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sent)
        await writer.drain()
        writer.close()

    return handler


async def test_requests_reuse_one_kept_alive_connection_and_carry_json_and_headers() -> None:
    peers: list[object] = []
    seen: list[tuple[str, object, str | None]] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.json() if request.can_read_body else None
        seen.append((request.path_qs, body, request.headers.get("Authorization")))
        return web.json_response({"got": body})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with aiohttp_server(app) as url:
        client = HttpClient(url)
        try:
            first = await client.request("POST", "/a?x=1", json_body={"n": 1}, headers={"Authorization": "Bearer t"})
            second = await client.request("GET", "/b")
        finally:
            await client.close()
    assert (first.status, first.json()) == (200, {"got": {"n": 1}})
    assert (second.status, second.json()) == (200, {"got": None})
    assert seen == [("/a?x=1", {"n": 1}, "Bearer t"), ("/b", None, None)]
    assert len(set(peers)) == 1  # the second request went over the first one's connection


def test_the_client_works_on_uvloop_as_well() -> None:
    """uvloop's transports are not asyncio.Transport subclasses; the client needs only what they do (the server runs
    on uvloop, bot/event_loop.py, and anything in it may use the client)."""
    uvloop.run(test_requests_reuse_one_kept_alive_connection_and_carry_json_and_headers())


async def test_concurrent_requests_each_get_a_connection() -> None:
    release = asyncio.Event()
    arrived = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            release.set()
        await release.wait()  # answers only once both requests are in: they cannot share one connection
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/{name}", slow)
    async with aiohttp_server(app) as url:
        client = HttpClient(url)
        try:
            one, two = await asyncio.gather(client.request("GET", "/one"), client.request("GET", "/two"))
        finally:
            await client.close()
    assert (one.text(), two.text()) == ("/one", "/two")


async def test_a_kept_alive_connection_the_server_closed_is_replaced_once() -> None:
    connections = 0

    async def first_answers_then_drops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        await read_request(reader)
        writer.write(answer(f"connection {number}".encode()))
        await writer.drain()
        if number == 1:
            await read_request(reader)  # the second request arrives on the kept-alive connection ...
            writer.close()  # ... and the server drops it without a word (as after its idle timeout)
            return
        writer.close()

    async with raw_server(first_answers_then_drops) as url:
        client = HttpClient(url)
        try:
            first = await client.request("GET", "/")
            second = await client.request("POST", "/result", json_body={"status": "Succeeded"})
        finally:
            await client.close()
    assert (first.text(), second.text()) == ("connection 1", "connection 2")
    assert connections == 2


async def test_a_new_connection_that_drops_is_an_error_not_a_resend() -> None:
    requests = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.close()

    async with raw_server(drop) as url:
        client = HttpClient(url)
        with pytest.raises(ConnectionEnded) as ended:  # the server hung up, nothing more
            await client.request("POST", "/result", json_body={})
        await client.close()
    assert isinstance(ended.value, ProtocolBroken) and requests == 1


async def test_a_file_body_is_sent_in_pieces_and_again_from_its_start_on_a_resend(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096 + b"end"  # 1 MiB and a bit: several pieces
    upload = tmp_path / "bundle.tar.gz"
    upload.write_bytes(b"skipped" + payload)
    received: list[tuple[str, str | None, bytes]] = []
    connections = 0

    async def store(request: web.Request) -> web.Response:
        received.append((request.content_type, request.headers.get("Content-Length"), await request.read()))
        return web.json_response({"size": len(received[-1][2])})

    async def first_drops_the_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await read_request(reader)
        lengths = [h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
        body = await reader.readexactly(int(lengths[0]) if lengths else 0)
        if connections == 1:
            writer.write(answer(b"first"))
            await writer.drain()
            await read_request(reader)  # the upload arrives on the kept-alive connection, which the server drops
            writer.close()
            return
        writer.write(answer(str(len(body)).encode() + b" " + body[-3:]))
        await writer.drain()
        writer.close()

    app = web.Application(client_max_size=4 * 1024**2)
    app.router.add_post("/revisions", store)
    async with aiohttp_server(app) as url:
        client = HttpClient(url)
        try:
            with upload.open("rb") as file:
                file.seek(len(b"skipped"))
                stored = await client.request("POST", "/revisions", body=file, content_type="application/gzip")
        finally:
            await client.close()
    assert (stored.status, stored.json()) == (200, {"size": len(payload)})
    assert received == [("application/gzip", str(len(payload)), payload)]

    async with raw_server(first_drops_the_second_request) as url:
        client = HttpClient(url)
        try:
            await client.request("GET", "/")
            with upload.open("rb") as file:
                file.seek(len(b"skipped"))
                again = await client.request("POST", "/revisions", body=file, content_type="application/gzip")
        finally:
            await client.close()
    assert again.text() == f"{len(payload)} end"  # sent whole on the new connection, from where the file stood
    assert connections == 2


@pytest.mark.parametrize(
    ("sent", "error", "match"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", ProtocolBroken, "broken HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ConnectionEnded, "in the middle of the answer"),
    ],
)
async def test_garbage_or_an_answer_cut_short_is_a_broken_answer_and_an_os_error(
    sent: bytes, error: type[ProtocolBroken], match: str
) -> None:
    async with raw_server(says_then_closes(sent)) as url:
        client = HttpClient(url)
        with pytest.raises(error, match=match) as raised:
            await client.request("GET", "/healthz")
        await client.close()
    assert isinstance(raised.value, OSError)


async def test_a_download_streams_a_200_and_returns_another_answers_body() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, arriving in several pieces

    async def bundle(request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] != "b":
            return web.json_response({"error": "no such bundle"}, status=404)
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(payload), 100_000):
            await response.write(payload[start : start + 100_000])
        return response

    app = web.Application()
    app.router.add_get("/bundles/{name}", bundle)
    async with aiohttp_server(app) as url:
        client = HttpClient(url)
        pieces: list[bytes] = []
        try:
            found = await client.download("/bundles/b", pieces.append)
            missing = await client.download("/bundles/x", pieces.append)
        finally:
            await client.close()
    assert found.status == 200 and b"".join(pieces) == payload and len(pieces) > 1
    assert missing.status == 404 and json.loads(missing.body) == {"error": "no such bundle"}


async def test_a_stalled_answer_ends_in_a_timeout() -> None:
    stalled = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        stalled.set()
        await reader.read()  # holds the connection open, sending nothing more, until the client goes
        writer.close()

    async with raw_server(stall) as url:
        client = HttpClient(url)
        with pytest.raises(TimeoutError):
            await client.download("/bundle", lambda _: None, read=0.2)
        with pytest.raises(TimeoutError):
            await client.request("GET", "/next", total=0.2)
        await client.close()
    assert stalled.is_set()


async def test_cancelling_a_waiting_request_cancels_it() -> None:
    asked = asyncio.Event()

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        asked.set()
        await reader.read()  # never answers
        writer.close()

    async with raw_server(never) as url:
        client = HttpClient(url)
        task = asyncio.create_task(client.request("GET", "/next", total=None))
        await asyncio.wait_for(asked.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()


def test_only_http_and_https_urls() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpClient("ftp://example.com")


class ScriptedTransport(asyncio.Transport):
    """A connection's transport that the test scripts: what is written is kept and handed to ``react``."""

    def __init__(self, react: Callable[[_Connection, bytes], None]) -> None:
        super().__init__()
        self.connection = _Connection()
        self.connection.connection_made(self)
        self.react = react
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))
        self.react(self.connection, bytes(data))

    def is_closing(self) -> bool:
        return self.connection.ended

    def close(self) -> None:
        return None


def client_over(transport: ScriptedTransport) -> HttpClient:
    """A client whose every request goes over ``transport``'s connection."""
    client = HttpClient("http://x")

    async def connection(connect: float) -> tuple[_Connection, bool]:
        return transport.connection, False

    client._connection = connection  # type: ignore[method-assign]
    return client


async def test_a_request_and_its_small_body_go_out_in_one_write() -> None:
    """One write, so one segment: the server wakes once per request, not once for the head and again for the body
    (a result POST is most of an agent's traffic)."""
    transport = ScriptedTransport(lambda connection, _: connection.data_received(answer(b"{}")))
    response = await client_over(transport).request("POST", "/r", json_body={"status": "Succeeded"})
    body = json.dumps({"status": "Succeeded"}, separators=(",", ":")).encode()
    assert response.status == 200 and len(transport.writes) == 1
    assert transport.writes[0].startswith(b"POST /r HTTP/1.1\r\n") and transport.writes[0].endswith(b"\r\n\r\n" + body)


async def test_an_informational_answer_is_skipped_and_a_body_may_run_until_the_connection_ends() -> None:
    sent = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    async with raw_server(says_then_closes(sent)) as url:
        client = HttpClient(url)
        try:
            response = await client.request("GET", "/")
        finally:
            await client.close()
    assert (response.status, response.text()) == (200, "all of it")


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/r", {"X-Token": "a\r\nX-Injected: 1"}), ("/r x", {}), ("/r", {"Bad Name": "v"}), ("/r", {"X": "caf\u00e9"})],
)
async def test_a_request_that_is_not_valid_http_is_refused_before_anything_is_sent(
    path: str, headers: dict[str, str]
) -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1024))
        writer.close()

    async with raw_server(record) as url:
        client = HttpClient(url)
        with pytest.raises(ProtocolBroken, match="cannot send"):
            await client.request("GET", path, headers=headers)
        await client.close()
    assert received == []  # not even a connection was opened


async def test_bytes_no_request_asked_for_make_the_connection_unusable() -> None:
    connections = 0

    async def answers_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(answer(b"one") + answer(b"unasked"))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await read_request(reader)
            writer.write(answer(b"two"))
            await writer.drain()
        writer.close()

    async with raw_server(answers_twice) as url:
        client = HttpClient(url)
        try:
            first = await client.request("GET", "/")
            await asyncio.sleep(0)  # let the unasked answer arrive
            second = await client.request("GET", "/")
        finally:
            await client.close()
    assert (first.text(), second.text()) == ("one", "one")
    assert connections == 2


async def test_an_answer_before_the_whole_body_was_taken_is_the_answer(tmp_path: Path) -> None:
    """A server may refuse an upload as soon as it has read the head (413, say) and close the connection: the write
    of the next piece then fails, and the refusal is what the caller gets, not that failure."""

    def refuse_and_reset(connection: _Connection, _: bytes) -> None:
        connection.data_received(answer(b"too large", "413 Payload Too Large"))
        connection.connection_lost(ConnectionResetError("reset by peer"))

    upload = tmp_path / "bundle.tar.gz"
    upload.write_bytes(b"x" * (3 * 256 * 1024))  # three pieces
    transport = ScriptedTransport(refuse_and_reset)
    with upload.open("rb") as file:
        refused = await client_over(transport).request("POST", "/revisions", body=file, content_type="application/gzip")
    assert (refused.status, refused.text()) == (413, "too large")
    assert len(transport.writes) == 1  # the head: nothing more was sent once the answer came
