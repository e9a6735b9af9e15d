"""deploybot's HTTP/1.1 client, for the agent and the CLI: answers parsed by httptools (llhttp, the C parser of
Node.js, as uvicorn uses it) as they arrive on an asyncio Protocol (I/O).

Why not aiohttp: the agent makes four kinds of request to one server (a long poll, result POSTs, heartbeats,
bundle downloads) and runs on every host, idle nearly all the time; every CLI command is a fresh interpreter. aiohttp's
client costs ~12 MiB of resident memory and 0.15-0.2 s of CPU to import, per agent and per command.
Why not h11 over asyncio streams, which this client was until now: h11 parses in Python. Each lifecycle event of each
host is a result POST the agent waits on; with h11 and streams a POST cost the agent 0.43-0.48 ms of CPU here and its
round trip took 0.65 ms, with httptools on a Protocol 0.16 and 0.35 ms (aiohttp's client: 0.33 and 0.59 ms;
``python -m bench --only client``). httptools also imports in 7 ms where h11 took 37.

Theory of operation:
  - One server, so one pool of keep-alive connections: a request takes an idle connection (or opens one) and puts
    it back when the answer was read to its end and both sides keep it open. Requests run concurrently on separate
    connections (the heartbeat task never waits behind a long poll).
  - A request goes out in one write when its body is bytes (its head and a small body in one segment: the server
    wakes once for it). The head is written here (``_head``): a method, a target, and headers whose names are
    tokens and whose values hold no CR, LF or NUL; anything else is refused before a byte is sent.
  - The answer is fed to the parser as it arrives (``data_received``); its status, its body in pieces and its end
    come back as parser callbacks. An informational answer (1xx) before the real one is skipped. A body that has
    neither a length nor chunks ends with the connection, as HTTP/1.1 says; every other answer must end as its
    length or last chunk says, or the connection "ended in the middle of the answer".
  - A reused connection may have been closed by the server while idle (it cannot tell us before we write). When a
    reused connection fails before the first byte of an answer, the request is sent once more on a new connection;
    every agent request may be repeated (results and heartbeats are idempotent on the server).
  - Timeouts: ``connect`` bounds opening a connection (TCP and TLS), ``total`` the whole exchange, ``read`` each
    wait for more of the answer (a download or an upload of any size, a long poll), and each wait to write more of
    a file body.
  - Bodies: JSON, or bytes or a file of a given content type; a file is sent in pieces (never read whole), from
    where it stood when the request began (so the one resend sends it all again), each after the previous one has
    left (the transport's write buffer is bounded: ``pause_writing``/``resume_writing``).
  - TLS: the given context verifies the certificate and the server's name; a refusal surfaces as
    ``ssl.SSLCertVerificationError`` for the caller to treat as fatal.
  - Timeouts use ``asyncio.timeout``, never ``wait_for``: on Python 3.11 ``wait_for`` loses a cancellation that
    arrives as the awaited step ends (a failed TLS handshake returned its error to a cancelled heartbeat task, which
    then ran on forever and kept the agent from exiting).
  - Failures are ``OSError`` (refused, reset, a closed connection, a broken answer: ``ProtocolBroken``) or
    ``TimeoutError``; an HTTP status is never an exception. A connection whose exchange failed or was cancelled is
    closed, never reused, and so is one that received bytes no request asked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import httptools

_READ_SIZE = 256 * 1024
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one for every request: json.dumps would build one per call
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\0]")
_FORBIDDEN_IN_TARGET = re.compile(r"[\s\0]")


class ProtocolBroken(ConnectionError):
    """The server's bytes were not valid HTTP/1.1, or the connection ended mid-answer (also: a request this client
    will not send, such as a header value holding a line break)."""


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


def _discard(data: bytes) -> None:
    return None


class _Answer:
    """The parser's callbacks for one answer: its status, its body's pieces (to ``on_data``) and its end."""

    def __init__(self, on_data: Callable[[bytes], object], on_status: Callable[[int], None] | None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.on_data = on_data
        self.on_status = on_status
        self.status: int | None = None
        self.informational = False  # a 1xx answer is being read: the real one follows it
        self.delimited = False  # by a length or chunks; else the body runs until the connection ends
        self.complete = False
        self.keep_alive = False  # both sides keep the connection open after it
        self.stray = False  # more arrived after it: no request asked for that
        self.received = 0  # bytes of it so far

    def forget(self) -> None:
        """Drop the caller's callbacks: the answer is whole, and nothing more of it is passed on."""
        self.on_data = _discard
        self.on_status = None

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer behind the first: bytes no request asked for
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_headers_complete(self) -> None:
        if self.stray:
            return
        code = self.parser.get_status_code()
        self.informational = 100 <= code < 200
        if self.informational:
            self.delimited = False
            return
        self.status = code
        if self.on_status is not None:
            self.on_status(code)

    def on_body(self, body: bytes) -> None:
        if not self.informational and not self.stray:
            self.on_data(body)

    def on_message_complete(self) -> None:
        if self.informational or self.stray:
            self.informational = False
            return
        self.keep_alive = self.parser.should_keep_alive()  # read now: the parser forgets it once this returns
        self.complete = True


class _Connection(asyncio.Protocol):
    """One connection to the server, answering one request at a time (see the module docstring)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: _Answer | None = None  # of the request in flight, or of the last one
        self.ended = False  # the server closed its side, or the connection was lost
        self.failure: Exception | None = None  # why it ended, when an error did (reset, a broken answer)
        self._progress: asyncio.Future[None] | None = None  # woken by any news of the answer
        self._writable: asyncio.Future[None] | None = None  # while writing is paused
        self._paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's is not).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.complete:  # bytes no request asked for: this connection is not reused
            self.close()
            return
        answer.received += len(data)
        try:
            answer.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolBroken("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolBroken(f"a broken HTTP answer: {exc}"))
        if answer.stray:  # a second answer came with this one
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self._end(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)
        self._paused = False
        self._release(self._writable)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._release(self._writable)

    # -- the client's side

    @property
    def reusable(self) -> bool:
        answer = self.answer
        return (
            answer is not None
            and answer.complete
            and answer.keep_alive
            and not self.ended
            and self.transport is not None
            and not self.transport.is_closing()
        )

    async def send(self, data: bytes, write_timeout: float | None = None) -> None:
        """Write ``data`` with one write, then wait (at most ``write_timeout``) until the transport's buffer is low
        enough to take more."""
        if self.ended or self.transport is None or self.transport.is_closing():
            raise ConnectionEnded("the server closed the connection")
        self.transport.write(data)
        while self._paused and not self.ended:
            self._writable = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(write_timeout):
                await self._writable
        if self.ended:
            raise self.failure if isinstance(self.failure, OSError) else ConnectionEnded("the connection ended")

    def expect(self, on_data: Callable[[bytes], object], on_status: Callable[[int], None] | None = None) -> _Answer:
        """Read what arrives from now on as the answer to the request about to be sent."""
        self.answer = _Answer(on_data, on_status)
        return self.answer

    async def answered(self, read_timeout: float | None) -> int:
        """Wait until the answer is whole (each wait for more at most ``read_timeout``); its status."""
        answer = self.answer
        assert answer is not None
        while True:
            if answer.complete:
                assert answer.status is not None
                return answer.status
            if self.failure is not None:
                raise self.failure
            if self.ended:
                if answer.status is not None and not answer.delimited:
                    answer.complete = True  # its body ran until the connection ended, as it said it would
                    continue
                if not answer.received:
                    raise ConnectionEnded("the server closed the connection without answering")
                raise ConnectionEnded("the connection ended in the middle of the answer")
            self._progress = asyncio.get_running_loop().create_future()
            if read_timeout is None:
                await self._progress
            else:
                async with asyncio.timeout(read_timeout):
                    await self._progress

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, failure: Exception) -> None:
        if self.failure is None:
            self.failure = failure
        self.ended = True
        self.close()

    def _end(self, exc: Exception | None) -> None:
        if exc is not None and self.failure is None:
            self.failure = exc
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._release(self._progress)

    @staticmethod
    def _release(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


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
        payload: _Body = _COMPACT.encode(json_body).encode() if json_body is not None else b""
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
        head = self._head(method, self._prefix + path, body, content_type, headers)
        while True:
            connection, reused = await self._connection(connect)
            answer = connection.expect(on_data, on_status)
            try:
                try:
                    if isinstance(body, _FileBody):
                        await connection.send(head, read_timeout)
                        async for piece in body.pieces():
                            await connection.send(piece, read_timeout)
                    else:
                        await connection.send(head + body, read_timeout)
                except OSError:
                    if answer.status is None:
                        raise
                    # The server answered before taking the whole body (a refusal, say): that answer is the one.
                status = await connection.answered(read_timeout)
            except OSError as exc:
                connection.close()
                if reused and answer.status is None and not isinstance(exc, ssl.SSLError):
                    continue  # the server closed it while idle: once more on a new connection
                raise
            except BaseException:
                connection.close()
                raise
            if connection.reusable:
                answer.forget()  # an idle connection keeps nothing of its caller's (a body, a sink)
                self._idle.append(connection)
            else:
                connection.close()
            return status

    def _head(self, method: str, target: str, body: _Body, content_type: str, headers: Mapping[str, str]) -> bytes:
        """The request line and headers, ending in the blank line; ProtocolBroken for one that cannot be sent."""
        fields = [("Host", self._host_header), ("User-Agent", self._user_agent), ("Accept-Encoding", "identity")]
        length = body.size if isinstance(body, _FileBody) else len(body)
        if length or isinstance(body, _FileBody):
            fields += [("Content-Type", content_type), ("Content-Length", str(length))]
        elif method in ("POST", "PUT", "DELETE"):
            fields.append(("Content-Length", "0"))
        fields += [(name, value) for name, value in headers.items() if name.lower() != "user-agent"]
        if not _TOKEN.fullmatch(method) or not target or _FORBIDDEN_IN_TARGET.search(target):
            raise ProtocolBroken(f"cannot send the request {method} {target!r}")
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in fields:
            if not _TOKEN.fullmatch(name) or _FORBIDDEN_IN_VALUE.search(value):
                raise ProtocolBroken(f"cannot send the header {name!r}: its name or value is not valid HTTP")
            lines.append(f"{name}: {value}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        except UnicodeEncodeError:
            raise ProtocolBroken(f"cannot send {method} {target!r}: its target or a header is not ASCII") from None

    async def _connection(self, connect: float) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(
            _Connection, self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None
        )
        async with asyncio.timeout(connect):
            _, connection = await opening
        return connection, False
