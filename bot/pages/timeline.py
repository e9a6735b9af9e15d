"""The timeline of a deployment page (pure): one row per host, one bar per lifecycle event over time, colored by
outcome, with a time axis.

The bars come from the deployment document's targets, which are the store's per-target event records: each event
has ``started_at`` (set when the host started it) and ``ended_at`` (set with its result). A running event is drawn up
to ``now``; an event that never started (Pending, or Skipped by the deployment before it ran) has no place in time
and is not drawn. At most ``max_rows`` hosts are drawn; the rest are counted (``hidden_hosts``) so the page can say
"and K more hosts" instead of drawing thousands of rows.

As with the traffic chart, the geometry is computed here and the template only draws: tests check numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WIDTH = 560  # the plot area, as wide as the traffic chart's
ROW_HEIGHT, BAR_HEIGHT = 16, 10
LABEL_WIDTH = 110  # host names, left of the plot
MARGIN_TOP, MARGIN_RIGHT, MARGIN_BOTTOM = 6, 30, 26
MAX_ROWS = 200
MIN_BAR_WIDTH = 1.5  # an event of a few milliseconds is still visible
MAX_LABEL_CHARS = 18
MAX_TICKS = 6
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)

# The outcome a bar is colored by (the template's classes and legend), from the event's status.
OUTCOMES: Mapping[str, str] = {
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Skipped": "skipped",
    "InProgress": "running",
    "Unknown": "unknown",
}


@dataclass(frozen=True, slots=True)
class Bar:
    """One lifecycle event of one host, in plot coordinates (x from the left of the plot)."""

    x: float
    width: float
    event: str
    status: str
    outcome: str
    seconds: float

    @property
    def title(self) -> str:
        """The hover text (the SVG ``<title>``): what ran, how it ended, how long it took."""
        return f"{self.event}: {self.status} ({_seconds_text(self.seconds)})"


@dataclass(frozen=True, slots=True)
class Row:
    host: str
    label: str  # the host name, shortened to fit the label column
    y: float
    status: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class TimelineView:
    """What timeline.html draws. ``rows`` in the document's host order; ``hidden_hosts`` were not drawn."""

    rows: tuple[Row, ...]
    ticks: tuple[Tick, ...]
    seconds: float  # the span of the time axis
    hidden_hosts: int = 0
    width: int = WIDTH
    left: int = LABEL_WIDTH
    top: int = MARGIN_TOP
    row_height: int = ROW_HEIGHT
    bar_height: int = BAR_HEIGHT

    @property
    def height(self) -> int:
        return len(self.rows) * self.row_height

    @property
    def outer_width(self) -> int:
        return self.left + self.width + MARGIN_RIGHT

    @property
    def outer_height(self) -> int:
        return self.top + self.height + MARGIN_BOTTOM

    @property
    def bar_offset(self) -> float:
        return (self.row_height - self.bar_height) / 2


def _seconds_text(seconds: float) -> str:
    """``0.4s``, ``12s``, ``2m 05s``, ``1h 02m``: short enough for an axis label."""
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def tick_step(span: float, max_ticks: int = MAX_TICKS) -> int:
    """The smallest round step (seconds) that puts at most ``max_ticks`` intervals on an axis ``span`` long."""
    for step in TICK_STEPS:
        if span / step <= max_ticks:
            return step
    return TICK_STEPS[-1] * (int(span / (TICK_STEPS[-1] * max_ticks)) + 1)


def _time(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _span(targets: Sequence[Mapping[str, Any]], now: float, ended_at: float | None) -> tuple[float, float] | None:
    starts: list[float] = []
    ends: list[float] = []
    for target in targets:
        for event in target.get("events", []):
            started = _time(event.get("started_at"))
            if started is None:
                continue
            starts.append(started)
            ended = _time(event.get("ended_at"))
            ends.append(ended if ended is not None else max(now, started))
    if not starts:
        return None
    end = max(ends)
    if ended_at is not None:
        end = max(end, ended_at)
    return min(starts), end


def timeline_layout(
    targets: Sequence[Mapping[str, Any]],
    *,
    now: float,
    ended_at: float | None = None,
    width: int = WIDTH,
    max_rows: int = MAX_ROWS,
) -> TimelineView | None:
    """Rows, bars and axis ticks from the document's ``targets`` (``[{"name", "status", "events": [{"name",
    "status", "started_at", "ended_at"}]}]``); None while no host has started an event. A running event (no
    ``ended_at``) reaches ``now``; the axis runs from the first start to the last end (or ``ended_at``, the
    deployment's end, when later)."""
    span = _span(targets, now, ended_at)
    if span is None:
        return None
    start, end = span
    seconds = end - start
    scale = width / (seconds or 1.0)
    rows: list[Row] = []
    for index, target in enumerate(targets[:max_rows]):
        bars: list[Bar] = []
        for event in target.get("events", []):
            started = _time(event.get("started_at"))
            if started is None:
                continue
            ended = _time(event.get("ended_at"))
            finish = ended if ended is not None else max(now, started)
            x = round((started - start) * scale, 1)
            bar_width = max(MIN_BAR_WIDTH, round((finish - started) * scale, 1))
            status = str(event.get("status", ""))
            outcome = OUTCOMES.get(status, "unknown")
            bars.append(Bar(x, bar_width, str(event["name"]), status, outcome, round(finish - started, 3)))
        name = str(target["name"])
        label = name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"
        rows.append(Row(name, label, float(index * ROW_HEIGHT), str(target.get("status", "")), tuple(bars)))
    step = tick_step(seconds)
    ticks = tuple(Tick(round(at * scale, 1), _seconds_text(at)) for at in range(0, int(seconds) + 1, step)) or (
        Tick(0.0, "0s"),
    )
    return TimelineView(tuple(rows), ticks, round(seconds, 3), max(0, len(targets) - max_rows), width)
