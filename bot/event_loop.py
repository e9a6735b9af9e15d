"""Which event loop ``deploybot serve`` runs on: uvloop's by default, Python's own on request.

Most of the server's CPU per agent request is HTTP and the event loop around it (one result POST per lifecycle
event per host). uvloop runs the loop and the sockets' I/O in C on libuv: a bare aiohttp server took 0.125 ms of
CPU per result POST on it against 0.159 ms on Python's loop, and deploybot's server under the bench's swarm 3-10 %
less per host-event (docs/operations.md has the runs). One host's deployment is no faster: its time is the agent's.

``--event-loop asyncio`` or ``DEPLOYBOT_EVENT_LOOP=asyncio`` runs Python's loop instead, for an operator who meets
a difference between the two; the suite runs its servers on uvloop, and ``tests/test_event_loop.py`` a deployment
on each. The agent and the CLI stay on Python's loop: their time goes to hooks, files and single requests, and an
agent on uvloop ran each hook in about 7 ms against 2.2-2.7 on Python's loop (starting and reaping its process),
which made a one-host deployment 1.66x as long (20 interleaved pairs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

LOOPS = ("uvloop", "asyncio")
VARIABLE = "DEPLOYBOT_EVENT_LOOP"

T = TypeVar("T")


def event_loop(given: str | None, environ: Mapping[str, str]) -> str:
    """``--event-loop`` when given, else $DEPLOYBOT_EVENT_LOOP, else uvloop; ValueError for a loop we do not know."""
    from bot.settings import choice

    return choice(given, environ, option="--event-loop", variable=VARIABLE, choices=LOOPS, what="an event loop")


def running() -> str:
    """The name (one of ``LOOPS``) of the loop this coroutine runs on: what the server's banner says."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """``asyncio.run(main)`` on the loop named (see ``event_loop``)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
