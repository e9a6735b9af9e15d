"""A lifetime as the API and the CLI read it (pure, so the CLI's parser needs no HTTP library)."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION_SECONDS = 10 * 365 * 86400
DURATION_FORMAT = "seconds, or a duration such as 90m, 12h, 30d, 1w2d"


def parse_duration(value: object) -> float:
    """Seconds from a JSON number or a text such as ``30d``, ``12h``, ``90m``, ``1w2d`` or ``3600`` (the API's and
    the CLI's one reading of a lifetime). ValueError, with words for the caller, when it is not a positive one."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if parts and "".join(number + unit for number, unit in parts) == text:
                seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected {DURATION_FORMAT}, got {value!r}")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"at most 10 years ({MAX_DURATION_SECONDS} seconds), got {value!r}")
    return seconds
