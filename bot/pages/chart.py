"""The traffic chart of a deployment page (pure): weight on the new side over time, one step per completed shift,
with vertical marks where an alarm stopped the deployment and where traffic was rolled back.

Everything comes from the deployment JSON and its event log: ``traffic.shifted`` (one per completed canary/linear
step), ``traffic.rerouted`` (a rollback put traffic back on the original fleet), ``rollback.triggered`` and the
deployment's ``ALARM_ACTIVE`` error. The geometry is computed here, so the template only draws and tests can check
numbers instead of parsing SVG.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 560, 120  # the plot area; the SVG adds margins for the labels around it
MARGIN_LEFT, MARGIN_TOP, MARGIN_RIGHT, MARGIN_BOTTOM = 44, 18, 30, 26
LABEL_GAP = 40  # marks of one kind closer than this (px) share one label
ALARM_ERROR = "ALARM_ACTIVE"
ALARM_TRIGGER = "DEPLOYMENT_STOP_ON_ALARM"


class MarkKind(enum.StrEnum):
    ALARM = "alarm"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Mark:
    at: float
    kind: MarkKind
    label: str


@dataclass(frozen=True, slots=True)
class TrafficChart:
    """``points``: (time, percent) in time order, from the start (0 %) to now or the end (the current weight)."""

    points: tuple[tuple[float, int], ...]
    marks: tuple[Mark, ...]

    @property
    def start(self) -> float:
        return self.points[0][0]

    @property
    def end(self) -> float:
        return self.points[-1][0]


@dataclass(frozen=True, slots=True)
class PlacedStep:
    x: float
    y: float
    percent: int


@dataclass(frozen=True, slots=True)
class PlacedMark:
    x: float
    kind: str
    label: str
    labelled: bool = True  # False when the same kind of mark was just labelled next to it


@dataclass(frozen=True, slots=True)
class ChartView:
    """What chart.html draws, in plot coordinates (origin top-left of the plot area)."""

    path: str
    steps: tuple[PlacedStep, ...]
    marks: tuple[PlacedMark, ...]
    seconds: float  # the span of the time axis
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    top: int = MARGIN_TOP
    outer_width: int = MARGIN_LEFT + WIDTH + MARGIN_RIGHT
    outer_height: int = MARGIN_TOP + HEIGHT + MARGIN_BOTTOM

    @property
    def percents(self) -> str:
        return ",".join(str(s.percent) for s in self.steps)


def _percent(entry: Mapping[str, Any]) -> int | None:
    data = entry.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("percent"), int | float):
        return int(data["percent"])
    return None


def traffic_chart(document: Mapping[str, Any], log: Sequence[Mapping[str, Any]], *, now: float) -> TrafficChart | None:
    """The chart of a deployment that moves traffic (``traffic`` is not null); None for one that does not."""
    traffic = document.get("traffic")
    if traffic is None:
        return None
    start = document.get("started_at") or document.get("created_at")
    points: list[tuple[float, int]] = [(float(start), 0)] if start is not None else []
    marks: list[Mark] = []
    for entry in log:
        kind, at = str(entry.get("kind", "")), float(entry["at"])
        percent = _percent(entry)
        if kind.startswith("traffic.") and percent is not None:
            points.append((at, percent))
        if kind == "traffic.rerouted":
            marks.append(Mark(at, MarkKind.ROLLBACK, f"traffic rerouted to the original fleet ({percent}%)"))
        elif kind == "rollback.triggered":
            data = entry.get("data")
            trigger = data.get("trigger", "manual") if isinstance(data, Mapping) else "manual"
            marks.append(Mark(at, MarkKind.ROLLBACK, f"rollback triggered ({trigger})"))
    error = document.get("error") or {}
    if error.get("code") == ALARM_ERROR:
        alarm_at = document.get("ended_at") or now
        marks.append(Mark(float(alarm_at), MarkKind.ALARM, str(error.get("message") or "alarm")))
    if not points:
        return None
    points.sort(key=lambda p: p[0])
    end = max([float(document.get("ended_at") or now), points[-1][0], *(m.at for m in marks)])
    points.append((end, int(traffic.get("percent", points[-1][1]))))
    return TrafficChart(tuple(points), tuple(sorted(marks, key=lambda m: m.at)))


def _x(at: float, start: float, span: float, width: int) -> float:
    return round((at - start) / span * width, 1)


def _y(percent: int, height: int) -> float:
    return round(height - percent / 100 * height, 1)


def traffic_svg_path(points: Sequence[tuple[float, int]], width: int = WIDTH, height: int = HEIGHT) -> str:
    """A step line of weight over time, scaled into a ``width`` x ``height`` box (y grows downwards)."""
    if len(points) < 2:
        return ""
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0
    parts: list[str] = []
    last_y: float | None = None
    for at, percent in points:
        x, y = _x(at, t0, span, width), _y(percent, height)
        parts.append(f"M{x},{y}" if last_y is None else f"L{x},{last_y} L{x},{y}")
        last_y = y
    return " ".join(parts)


def chart_view(chart: TrafficChart, width: int = WIDTH, height: int = HEIGHT) -> ChartView:
    """Place the chart in the plot box: the step line, a dot per weight change, a vertical line per mark."""
    start, span = chart.start, (chart.end - chart.start) or 1.0
    steps: list[PlacedStep] = []
    for index, (at, percent) in enumerate(chart.points[:-1]):
        if index == 0 or percent != chart.points[index - 1][1]:
            steps.append(PlacedStep(_x(at, start, span, width), _y(percent, height), percent))
    marks: list[PlacedMark] = []
    last_labelled: dict[str, float] = {}
    for mark in chart.marks:
        x, kind = _x(mark.at, start, span, width), str(mark.kind)
        labelled = kind not in last_labelled or x - last_labelled[kind] >= LABEL_GAP
        if labelled:
            last_labelled[kind] = x
        marks.append(PlacedMark(x, kind, mark.label, labelled))
    path = traffic_svg_path(chart.points, width, height)
    return ChartView(path, tuple(steps), tuple(marks), round(chart.end - start, 1))
