"""How ``deploybot serve`` and ``deploybot agent`` write their logs: text lines (the default) or JSON objects.

``--log-format json`` (or ``DEPLOYBOT_LOG_FORMAT=json``) is for log pipelines: each line is an object with ``time``
(ISO 8601, UTC), ``level``, ``logger``, ``message`` and, when known, the fields saying what the line is about:
``deployment``, ``application``, ``environment``, ``deployment_group``, ``host``, ``event``, ``actor``,
``request_id``; an exception is the ``exception`` field (its traceback as text), never extra lines.

Where the fields come from: the doors give theirs here (the HTTP middleware opens a ``request_scope`` with the
``request_id``, then ``annotate`` adds the ``actor`` once the API token is checked, or the agent API's ``host``;
``bind`` gives fields to a block of code); the engine binds its own in engine/core/log_context.py
(the runner: the deployment's names; the agent: its host, the command's deployment and event), which the
composition root hands to ``configure`` as a context source (bot/ reads engine internals only there). Fields given
with ``log.info(..., extra={...})`` are printed too, and anything JSON cannot hold is printed as its ``str``.

The text format stays as it was: the fields are for machines, and a person reading a terminal has the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import json
import logging
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, TextIO

FORMAT_VARIABLE = "DEPLOYBOT_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "X-Request-Id"
FIELDS = ("deployment", "application", "environment", "deployment_group", "host", "event", "actor", "request_id")
"""What a line is about, in the order a JSON line prints them (after time, level, logger and message)."""

ContextSource = Callable[[], Mapping[str, str]]
_HANDLER_NAME = "deploybot"

_NONE: Mapping[str, str] = MappingProxyType({})
_door_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("deploybot_door_fields", default=_NONE)

# What every LogRecord has of its own: anything else on a record came from ``extra=`` or a context source.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add ``fields`` (None left out, others as text) to the log lines of the code run inside and of the tasks it
    creates; the previous fields are back on leaving."""
    given = {name: str(value) for name, value in fields.items() if value is not None}
    token = _door_fields.set(MappingProxyType({**_door_fields.get(), **given}))
    try:
        yield
    finally:
        _door_fields.reset(token)


_GIVEN_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclasses.dataclass(slots=True)
class _Request:
    """The fields of the HTTP request being handled, which ``annotate`` adds to as its middlewares learn who is
    asking (so that even the outer middleware's error line names them), and the task handling it: the fields are
    that task's lines' only. A task the request starts (a deployment's runner) outlives it and goes on to other
    work (the next deployment of the group's queue), which the request's id and caller would misname."""

    task: object
    fields: dict[str, str]


_request: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("deploybot_request", default=None)


def _current_task() -> object:
    import asyncio  # loaded by then wherever a request is handled; `deploybot --help` never needs it

    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop running
        return None


def _this_request() -> dict[str, str] | None:
    scope = _request.get()
    return scope.fields if scope is not None and scope.task is _current_task() else None


def request_id(given: str | None) -> str:
    """A request's id: the caller's ``X-Request-Id`` when it is a plain token of at most 128 characters (a proxy's
    or load balancer's id joins their logs to ours), else a new one.

    A new one is 128 bits of ``random`` (seeded from the OS once), as 32 hex digits like a uuid4's: it names a
    request in the logs and is no secret, and ``uuid4`` asks the OS for its bytes on every request (a syscall that
    lets the store's thread take the interpreter in the middle of the request)."""
    if given and _GIVEN_REQUEST_ID.fullmatch(given):
        return given
    return f"{random.getrandbits(128):032x}"


@contextlib.contextmanager
def request_scope(given: str | None) -> Iterator[str]:
    """The log fields of one HTTP request, starting with its ``request_id`` (see ``request_id``), which it yields.
    Inside a request already in scope (a sub-application's middleware runs inside the main one's) it is that one."""
    fields = _this_request()
    if fields is not None:
        yield fields["request_id"]
        return
    fields = {"request_id": request_id(given)}
    token = _request.set(_Request(_current_task(), fields))
    try:
        yield fields["request_id"]
    finally:
        _request.reset(token)


def annotate(**fields: object) -> None:
    """Name what a request's middleware has just learnt (``actor``, ``host``) on every later line of the request,
    including the error line its outer middleware writes; outside a request, nothing."""
    current = _this_request()
    if current is not None:
        current.update({name: str(value) for name, value in fields.items() if value is not None})


def door_fields() -> Mapping[str, str]:
    """The fields the doors gave: the current request's (in the task handling it), then the ones bound with
    ``bind`` (which follow the code into the tasks it starts)."""
    request = _this_request()
    bound = _door_fields.get()
    return {**request, **bound} if request else bound


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a field given with ``extra=`` wins). Never drops a record."""

    def __init__(self, sources: Iterable[ContextSource] = ()) -> None:
        super().__init__()
        self.sources = (door_fields, *sources)

    def filter(self, record: logging.LogRecord) -> bool:
        for source in self.sources:
            for name, value in source().items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        given = vars(record)
        document.update((name, given[name]) for name in FIELDS if given.get(name) is not None)
        for name, value in given.items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_") and name not in document:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def _utc(created: float) -> str:
    """``2026-12-03T13:09:37.123Z``: ISO 8601 in UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_format(given: str | None, environ: Mapping[str, str]) -> str:
    """``--log-format`` when given, else $DEPLOYBOT_LOG_FORMAT, else text; ValueError for a format we do not know."""
    from bot.settings import choice

    return choice(given, environ, option="--log-format", variable=FORMAT_VARIABLE, choices=FORMATS, what="a log format")


def configure(
    format_name: str,
    *,
    level: int = logging.INFO,
    sources: Iterable[ContextSource] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """The root logger writes to ``stream`` (stderr) in ``format_name``, with the bound fields of ``sources`` (and
    the doors') on each JSON line. A second call replaces the handler of the first (no line is written twice);
    handlers someone else added (a test's log capture) are left alone."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if format_name == "json":
        handler.setFormatter(JsonFormatter())
        handler.addFilter(ContextFilter(sources))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
