"""Jinja2 rendering for the pages, autoescaped: script output is shown verbatim and must never become markup."""

from __future__ import annotations

import time
from typing import Any

import jinja2
from aiohttp import web

from engine import FINAL_STATUSES

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bot.pages", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def duration(started: float | None, ended: float | None) -> str:
    """``1m 05s`` style; a running step counts up to now, a step that never started shows nothing."""
    if started is None:
        return ""
    seconds = max(0.0, (ended if ended is not None else time.time()) - started)
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def timestamp(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) if value is not None else ""


DAY = 86400.0


def seconds_text(seconds: float | None) -> str:
    """``n/a``, ``45s``, ``12m``, ``3.5h``, ``2.1d``: a median duration at a glance."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < DAY:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / DAY:.1f}d"


def rate_text(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.0f}%"


_ENV.filters["timestamp"] = timestamp
_ENV.globals["duration"] = duration
_ENV.globals["FINAL_STATUSES"] = FINAL_STATUSES
_ENV.globals["seconds_text"] = seconds_text
_ENV.globals["rate_text"] = rate_text


def render_text(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def render(template: str, *, status: int = 200, **context: Any) -> web.Response:
    return web.Response(text=render_text(template, **context), status=status, content_type="text/html")


def grid_columns(document: dict[str, Any]) -> list[str]:
    """Lifecycle event names in the order hosts run them (hosts of a blue/green pair run different ones)."""
    names: list[str] = []
    for target in document["targets"]:
        for event in target["events"]:
            if event["name"] not in names:
                names.append(event["name"])
    return names


def row_cells(target: dict[str, Any], columns: list[str]) -> list[dict[str, Any] | None]:
    by_name = {e["name"]: e for e in target["events"]}
    return [by_name.get(name) for name in columns]


_ENV.globals["grid_columns"] = grid_columns
_ENV.globals["row_cells"] = row_cells
