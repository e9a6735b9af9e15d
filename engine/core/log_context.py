"""What a log line is about, as fields: the engine binds them where it knows them, the log formatter reads them.

A deployment's runner binds ``deployment``, ``application``, ``environment``, ``deployment_group`` and ``actor``
(who asked for it) around its loop; the agent binds ``host`` for its whole run and ``deployment`` and ``event``
around each command. The fields live in a ``contextvars.ContextVar``, so they follow the code into the tasks it
creates (asyncio copies the context into each new task) and never leak into another deployment's lines. Nothing
is written anywhere here: bot/logs.py's filter copies ``current()`` onto each log record, and its JSON formatter
prints them.

Fields are names, never secrets: bind identifiers only (a token or a hook's environment must not go through here).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from types import MappingProxyType

ENGINE_FIELDS = ("deployment", "application", "environment", "deployment_group", "host", "event", "actor")
"""The fields the engine binds (the doors give ``request_id``, the API's ``actor`` and the agent API's ``host``)."""

_NONE: Mapping[str, str] = MappingProxyType({})
_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("deploybot_log_fields", default=_NONE)


@contextlib.contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add ``fields`` (None values left out, others as text) to every log line of the code run inside, and of the
    tasks it creates; the previous fields are back on leaving."""
    given = {name: str(value) for name, value in fields.items() if value is not None}
    token = _fields.set(MappingProxyType({**_fields.get(), **given}))
    try:
        yield
    finally:
        _fields.reset(token)


def current() -> Mapping[str, str]:
    """The fields bound here (read-only)."""
    return _fields.get()
