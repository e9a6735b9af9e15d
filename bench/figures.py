"""A measured figure, its target, and the one table and JSON file every scenario's figures end up in."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Figure:
    """One number. ``target`` is an upper bound (every §5 target is "at most"); None marks context, not a verdict."""

    name: str
    value: float
    unit: str
    target: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.value <= self.target

    def to_json(self) -> dict[str, object]:
        value = round(self.value, 4)
        return {"name": self.name, "value": value, "unit": self.unit, "target": self.target, "ok": self.ok}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], unit: str) -> str:
    """``range LOW-HIGH`` of ``values``, in the table's number style: the figure's spread next to its median."""
    return f"range {_number(min(values), unit)}-{_number(max(values), unit)}"


def percentile(values: Sequence[float], p: int) -> float:
    """Inclusive percentile (p in 1..99): with 20 samples p90 lies between the 18th and 19th smallest."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _number(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 1 else f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "µs":
        return f"{value:.1f} µs"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:g} {unit}".strip()


def render(figures: Sequence[Figure], console: Console) -> None:
    table = Table(title="deploybot benchmarks (DESIGN §5)", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("value/target", justify="right")
    table.add_column("verdict")
    table.add_column("note", style="dim")
    for figure in figures:
        if figure.target is None:
            target = ratio = ""
            verdict = "[dim]info[/dim]"
        else:
            target = "≤ " + _number(figure.target, figure.unit)
            ratio = f"{figure.value / figure.target:.2f}" if figure.target else ""
            verdict = "[green]met[/green]" if figure.ok else "[red]MISSED[/red]"
        table.add_row(figure.name, _number(figure.value, figure.unit), target, ratio, verdict, figure.note)
    console.print(table)


def write_json(figures: Sequence[Figure], path: Path) -> None:
    path.write_text(json.dumps([figure.to_json() for figure in figures], indent=2) + "\n")
