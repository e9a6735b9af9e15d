"""deploybot's HTTP/1.1 client, for the agent and the CLI: h11 (the sans-I/O protocol library httpx builds on) over
asyncio streams (I/O).

Why not aiohttp: the agent makes four kinds of request to one server (a long poll, result POSTs, heartbeats,
bundle downloads) and runs on every host, idle nearly all the time; every CLI command is a fresh interpreter. aiohttp's
client costs ~12 MiB of resident memory and 0.15-0.2 s of CPU to import, per agent and per command; this client
needs h11 and the standard library only.

Theory of operation:
  - One server, so one pool of keep-alive connections: a request takes an idle connection (or opens one) and puts
    it back when the answer was read to its end and both sides keep it open. Requests run concurrently on separate
    connections (the heartbeat task never waits behind a long poll).
  - A reused connection may have been closed by the server while idle (it cannot tell us before we write). When a
    reused connection fails before the first byte of an answer, the request is sent once more on a new connection;
    every agent request may be repeated (results and heartbeats are idempotent on the server).
  - Timeouts: ``connect`` bounds opening a connection (TCP and TLS), ``total`` the whole exchange, ``read`` each
    read (a download or an upload of any size, a long poll).
  - Bodies: JSON, or bytes or a file of a given content type; a file is sent in pieces (never read whole), from
    where it stood when the request began (so the one resend sends it all again).
  - TLS: the given context verifies the certificate and the server's name; a refusal surfaces as
    ``ssl.SSLCertVerificationError`` for the caller to treat as fatal.
  - Timeouts use ``asyncio.timeout``, never ``wait_for``: on Python 3.11 ``wait_for`` loses a cancellation that
    arrives as the awaited step ends (a failed TLS handshake returned its error to a cancelled heartbeat task, which
    then ran on forever and kept the agent from exiting).
  - Failures are ``OSError`` (refused, reset, a closed connection, a broken answer: ``ProtocolBroken``) or
    ``TimeoutError``; an HTTP status is never an exception.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

import h11

_READ_SIZE = 256 * 1024


class ProtocolBroken(ConnectionError):
    """The server's bytes were not valid HTTP/1.1, or the connection ended mid-answer."""


class ConnectionEnded(ProtocolBroken):
    """The server closed the connection before its answer was whole (or began)."""


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer (the body read to its end)."""

    status: int
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> object:
        """The body as JSON; None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = h11.Connection(h11.CLIENT)
        self.received = 0  # bytes of the current answer so far
        self.ended = False  # the server closed its side

    async def send(self, *events: h11.Event) -> None:
        """Write ``events`` with one write: a request's head and a small body go out in one segment, so the server
        wakes once for the request, not once for the head and again for the body."""
        data = b"".join(self.protocol.send(event) or b"" for event in events)
        if data:
            self.writer.write(data)
        await self.writer.drain()

    async def next_event(self, read_timeout: float | None = None) -> h11.Event:
        while True:
            try:
                event = self.protocol.next_event()
            except h11.RemoteProtocolError as exc:
                if self.ended and not self.received:
                    raise ConnectionEnded("the server closed the connection without answering") from None
                if self.ended:
                    raise ConnectionEnded("the connection ended in the middle of the answer") from None
                raise ProtocolBroken(f"a broken HTTP answer: {exc}") from None
            if event is h11.PAUSED:  # only after a whole answer, and we never read past one
                raise ProtocolBroken("the server sent more than one answer")
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)
                return event
            async with asyncio.timeout(read_timeout):
                data = await self.reader.read(_READ_SIZE)
            self.received += len(data)
            self.ended = not data
            self.protocol.receive_data(data)  # b"" marks the end of the stream

    @property
    def reusable(self) -> bool:
        return self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE

    def close(self) -> None:
        self.writer.close()


class _FileBody:
    """A request body read from a binary file in pieces, from where the file stood when the request began."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.start = file.tell()
        self.size = os.fstat(file.fileno()).st_size - self.start

    async def pieces(self) -> AsyncIterator[bytes]:
        """Read off the event loop: a bundle may be large, and its disk slow."""
        self.file.seek(self.start)
        left = self.size
        while left > 0:
            piece = await asyncio.to_thread(self.file.read, min(_READ_SIZE, left))
            if not piece:
                raise ProtocolBroken("the file being sent ended before its size")
            left -= len(piece)
            yield piece


_Body = bytes | _FileBody


class HttpClient:
    """Keep-alive HTTP/1.1 requests to one server (``base``: ``http[s]://host[:port]``)."""

    def __init__(self, base: str, *, tls: ssl.SSLContext | None = None, user_agent: str = "deploybot-agent") -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// server URL, got {base!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._host_header = parts.netloc.rpartition("@")[2]
        self._prefix = parts.path.rstrip("/")
        self._tls = (tls or ssl.create_default_context()) if self._https else None
        self._user_agent = user_agent
        self._idle: list[_Connection] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        body: bytes | BinaryIO | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] = {},
        total: float | None = 30.0,
        connect: float = 10.0,
        read: float | None = None,
    ) -> Response:
        """Send one request and read its whole answer (see the module docstring for timeouts and the one resend).
        The body is ``json_body`` as JSON, else ``body`` (bytes, or a binary file sent from where it stands) as
        ``content_type``."""
        payload: _Body = json.dumps(json_body, separators=(",", ":")).encode() if json_body is not None else b""
        if json_body is None and body is not None:
            payload = body if isinstance(body, bytes) else _FileBody(body)
        chunks: list[bytes] = []
        async with asyncio.timeout(total):
            status = await self._exchange(method, path, payload, content_type, headers, connect, chunks.append, read)
        return Response(status, b"".join(chunks))

    async def download(
        self,
        path: str,
        sink: Callable[[bytes], object],
        *,
        headers: Mapping[str, str] = {},
        connect: float = 10.0,
        read: float = 60.0,
    ) -> Response:
        """GET ``path``, passing each piece of a 200 answer's body to ``sink`` as it arrives (any other answer's
        body is returned instead); each read waits at most ``read`` seconds."""
        other: list[bytes] = []
        status = 0

        def route(data: bytes) -> None:
            (sink if status == 200 else other.append)(data)

        def seen(code: int) -> None:
            nonlocal status
            status = code

        await self._exchange("GET", path, b"", "", headers, connect, route, read, on_status=seen)
        return Response(status, b"".join(other))

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _exchange(
        self,
        method: str,
        path: str,
        body: _Body,
        content_type: str,
        headers: Mapping[str, str],
        connect: float,
        on_data: Callable[[bytes], object],
        read_timeout: float | None,
        *,
        on_status: Callable[[int], None] | None = None,
    ) -> int:
        while True:
            connection, reused = await self._connection(connect)
            status: int | None = None
            try:
                target = self._prefix + path
                head = self._request(method, target, body, content_type, headers)
                if isinstance(body, _FileBody):
                    await connection.send(head)
                    async for piece in body.pieces():
                        async with asyncio.timeout(read_timeout):
                            await connection.send(h11.Data(data=piece))
                    await connection.send(h11.EndOfMessage())
                else:
                    await connection.send(head, *self._body(body))
                event = await connection.next_event(read_timeout)
                while isinstance(event, h11.InformationalResponse):
                    event = await connection.next_event(read_timeout)
                if not isinstance(event, h11.Response):
                    raise ProtocolBroken(f"expected an HTTP answer, got {type(event).__name__}")
                status = event.status_code
                if on_status is not None:
                    on_status(status)
                while not isinstance(event := await connection.next_event(read_timeout), h11.EndOfMessage):
                    if isinstance(event, h11.Data):
                        on_data(bytes(event.data))
                    elif isinstance(event, h11.ConnectionClosed):
                        raise ConnectionEnded("the connection ended in the middle of the answer")
            except (OSError, h11.LocalProtocolError) as exc:
                connection.close()
                if reused and status is None and not isinstance(exc, ssl.SSLError):
                    continue  # the server closed it while idle: once more on a new connection
                if isinstance(exc, h11.LocalProtocolError):
                    raise ProtocolBroken(str(exc)) from None
                raise
            except BaseException:
                connection.close()
                raise
            if connection.reusable:
                connection.protocol.start_next_cycle()
                connection.received = 0
                self._idle.append(connection)
            else:
                connection.close()
            return status

    def _request(
        self, method: str, target: str, body: _Body, content_type: str, headers: Mapping[str, str]
    ) -> h11.Request:
        fields = [("Host", self._host_header), ("User-Agent", self._user_agent), ("Accept-Encoding", "identity")]
        length = body.size if isinstance(body, _FileBody) else len(body)
        if length or isinstance(body, _FileBody):
            fields += [("Content-Type", content_type), ("Content-Length", str(length))]
        elif method in ("POST", "PUT", "DELETE"):
            fields.append(("Content-Length", "0"))
        fields += [(name, value) for name, value in headers.items() if name.lower() != "user-agent"]
        return h11.Request(method=method, target=target, headers=fields)

    @staticmethod
    def _body(body: bytes) -> tuple[h11.Event, ...]:
        return (h11.Data(data=body), h11.EndOfMessage()) if body else (h11.EndOfMessage(),)

    async def _connection(self, connect: float) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection, True
            connection.close()
        opening = asyncio.open_connection(
            self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None
        )
        async with asyncio.timeout(connect):
            reader, writer = await opening
        return _Connection(reader, writer), False
