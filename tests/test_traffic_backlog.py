"""The hello example app's listen backlog holds a burst of connections the README's traffic demo can produce: they
all complete their handshake while the server is busy (here: not accepting at all), none waits on a SYN retry."""

from __future__ import annotations

import importlib.util
import socket
import sys
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

from conftest import HANG_GUARD

SERVER = Path(__file__).resolve().parent.parent / "examples" / "hello" / "app" / "server.py"
BURST = 100  # more than the stdlib default backlog of 5 lets through, fewer than the app's 128


def hello_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hello_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hello_server", module)
    spec.loader.exec_module(module)
    return module


def test_the_example_app_queues_a_burst_of_connections_it_is_too_busy_to_accept() -> None:
    hello = hello_module()
    assert hello.HelloServer.request_queue_size >= 128
    with hello.HelloServer(("127.0.0.1", 0), hello.HelloHandler) as server, ExitStack() as connections:
        port = server.server_address[1]
        for _ in range(BURST):  # nothing accepts: every connection must wait in the backlog, none be dropped
            # A dropped SYN would leave connect() waiting for its retry: the timeout only turns that into a failure.
            connections.enter_context(socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD / 10))
        accepted = 0
        server.socket.setblocking(False)
        while True:
            try:
                connection, _ = server.socket.accept()
            except BlockingIOError:
                break
            connection.close()
            accepted += 1
        assert accepted == BURST  # with the stdlib's backlog of 5, about 6 get in and the rest retry their SYN
