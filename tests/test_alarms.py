"""Alarm sources: the pure sliding window, HAProxy statistics of the green servers, the HTTP probe, AlarmSet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import test_haproxy
from aiohttp import web
from test_haproxy import StackFactory, free_port, spread

from engine.adapters.alarms import (
    AlarmSample,
    AlarmSet,
    HAProxyStatsAlarm,
    HttpProbeAlarm,
    WindowStats,
    breaches,
    window_stats,
)
from engine.adapters.haproxy.runtime import HAProxyRuntime
from engine.core.errors import AdapterError

# The real HAProxy + aiohttp backends fixtures of test_haproxy.py, shared rather than copied.
run_dir = test_haproxy.run_dir
stack = test_haproxy.stack


def samples(*rows: tuple[float, int, int, float]) -> list[AlarmSample]:
    return [AlarmSample(*row) for row in rows]


# -- the pure window ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "now", "window", "expected"),
    [
        pytest.param([], 10, 60, WindowStats(0, 0, None), id="no samples"),
        pytest.param(samples((0, 100, 5, 10)), 0, 60, WindowStats(0, 0, None), id="one sample is only a baseline"),
        pytest.param(samples((0, 100, 0, 10), (10, 200, 20, 30)), 10, 60, WindowStats(100, 20, 30.0), id="two samples"),
        pytest.param(
            samples((0, 0, 0, 0), (50, 1000, 500, 100), (70, 1100, 510, 10), (90, 1300, 510, 40)),
            90,
            30,
            WindowStats(300, 10, 30.0),  # baseline is t=50 (newest at or before 90-30); rtime 10·100 + 40·200
            id="old errors slide out",
        ),
        pytest.param(
            samples((0, 5000, 900, 10), (10, 40, 4, 20), (20, 140, 4, 20)),
            20,
            60,
            WindowStats(100, 0, 20.0),
            id="counter reset starts over",
        ),
        pytest.param(
            samples((0, 100, 0, 10), (10, 100, 0, 10)), 10, 60, WindowStats(0, 0, None), id="no requests, no mean"
        ),
        pytest.param(
            samples((0, 100, 0, 10), (10, 200, 50, 10), (99, 9999, 9999, 999)),
            10,
            60,
            WindowStats(100, 50, 10.0),
            id="samples after now are ignored",
        ),
    ],
)
def test_window_stats(history: list[AlarmSample], now: float, window: float, expected: WindowStats) -> None:
    assert window_stats(history, now=now, window_seconds=window) == expected


@pytest.mark.parametrize(
    ("stats", "limits", "expected"),
    [
        (WindowStats(100, 12, 50), (0.05, None, 20), ("haproxy:web 5xx rate 12.0% > 5.0%",)),
        (WindowStats(100, 5, 50), (0.05, None, 20), ()),
        (WindowStats(10, 10, 50), (0.05, None, 20), ()),  # too few requests to judge
        (WindowStats(100, 0, 812.4), (0.05, 500, 20), ("haproxy:web response time 812 ms > 500 ms",)),
        (
            WindowStats(100, 50, 900),
            (0.05, 500, 1),
            ("haproxy:web 5xx rate 50.0% > 5.0%", "haproxy:web response time 900 ms > 500 ms"),
        ),
        (WindowStats(100, 50, 900), (None, None, 1), ()),
    ],
)
def test_breaches(
    stats: WindowStats, limits: tuple[float | None, float | None, int], expected: tuple[str, ...]
) -> None:
    max_rate, max_ms, min_requests = limits
    found = breaches(
        stats, label="haproxy:web", max_5xx_rate=max_rate, max_response_ms=max_ms, min_requests=min_requests
    )
    assert found == expected


# -- HAProxy statistics of the green servers ---------------------------------------------------------------------


async def test_5xx_alarm_fires_only_when_the_replacement_answers_500(stack: StackFactory) -> None:
    s = await stack(["blue0", "green0", "green1"])
    alarm = HAProxyStatsAlarm(
        s.runtime, "web", ["green0", "green1"], max_5xx_rate=0.05, min_requests=20, name="web-green"
    )
    assert await alarm.firing() == ()  # the baseline
    await spread(s.url, 300)
    assert await alarm.firing() == ()  # healthy
    s.backends["green1"].status = 500
    answers = await spread(s.url, 300)
    assert answers["HTTP 500"] == 100
    fired = await alarm.firing()
    assert len(fired) == 1 and fired[0].startswith("haproxy:web-green 5xx rate ")
    rate = float(fired[0].split()[3].rstrip("%"))
    assert 24 <= rate <= 26  # 100 of the greens' 400 requests since the baseline


async def test_5xx_on_the_original_fleet_does_not_fire_the_green_alarm(stack: StackFactory) -> None:
    s = await stack(["blue0", "green0"])
    alarm = HAProxyStatsAlarm(s.runtime, "web", ["green0"], max_5xx_rate=0.05, min_requests=20)
    await alarm.firing()
    s.backends["blue0"].status = 500
    await spread(s.url, 200)
    assert await alarm.firing() == ()


async def test_response_time_alarm(stack: StackFactory) -> None:
    s = await stack(["green0"])
    alarm = HAProxyStatsAlarm(s.runtime, "web", ["green0"], max_5xx_rate=None, max_response_ms=20, min_requests=10)
    await alarm.firing()
    s.backends["green0"].delay = 0.05
    await spread(s.url, 40, concurrency=20)
    fired = await alarm.firing()
    assert len(fired) == 1 and "response time" in fired[0]
    assert int(fired[0].split()[3]) >= 40


async def test_stats_alarm_cannot_tell_without_haproxy_or_server(stack: StackFactory, run_dir: Path) -> None:
    s = await stack(["blue0"])
    with pytest.raises(AdapterError, match="no server green9"):
        await HAProxyStatsAlarm(s.runtime, "web", ["green9"]).firing()
    dead = HAProxyStatsAlarm(HAProxyRuntime(run_dir / "absent.sock"), "web", ["blue0"])
    with pytest.raises(AdapterError, match="socket missing"):
        await dead.firing()


# -- the HTTP probe ----------------------------------------------------------------------------------------------


@pytest.fixture
async def probed() -> AsyncIterator[tuple[str, Callable[[int], None]]]:
    status = {"code": 200}

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="probe", status=status["code"])

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/health", lambda code: status.update(code=code)
    await runner.cleanup()


async def test_http_probe_fires_on_an_unexpected_status(probed: tuple[str, Callable[[int], None]]) -> None:
    url, set_status = probed
    alarm = HttpProbeAlarm(url, expect_status=200, timeout=2.0, name="hello")
    assert await alarm.firing() == ()
    set_status(503)
    assert await alarm.firing() == ("probe:hello answered 503, expected 200",)


async def test_http_probe_without_an_answer_cannot_tell() -> None:
    alarm = HttpProbeAlarm(f"http://127.0.0.1:{free_port()}/health", timeout=1.0)
    with pytest.raises(AdapterError) as caught:
        await alarm.firing()
    assert caught.value.component == "http-probe"


# -- AlarmSet: the AlarmSource port ------------------------------------------------------------------------------


class Fixed:
    def __init__(self, answer: tuple[str, ...] | AdapterError) -> None:
        self.answer = answer

    async def firing(self) -> tuple[str, ...]:
        if isinstance(self.answer, AdapterError):
            raise self.answer
        return self.answer


QUIET = Fixed(())
LOUD = Fixed(("haproxy:web 5xx rate 50.0% > 5.0%",))
BROKEN = Fixed(AdapterError("haproxy", "socket missing"))


@pytest.mark.parametrize(
    ("checks", "asked", "expected"),
    [
        ({"a": QUIET, "b": QUIET}, ["a", "b"], ()),
        ({"a": QUIET, "b": LOUD}, ["a", "b"], ("b",)),
        ({"a": BROKEN, "b": LOUD}, ["a", "b"], ("b",)),  # a firing alarm wins over an unreadable one
        ({"a": LOUD}, [], ()),
        ({"a": BROKEN, "b": QUIET}, ["a", "b"], AdapterError),
        ({"a": QUIET}, ["a", "missing"], AdapterError),
    ],
)
async def test_alarm_set(checks: dict[str, Fixed], asked: list[str], expected: object) -> None:
    alarms = AlarmSet(checks)
    wanted = [{"name": name} for name in asked]
    if expected is AdapterError:
        with pytest.raises(AdapterError):
            await alarms.firing(wanted)
    else:
        assert await alarms.firing(wanted) == expected


async def test_alarm_set_keeps_the_details_of_what_fired() -> None:
    alarms = AlarmSet({"web-5xx": LOUD})
    assert await alarms.firing([{"name": "web-5xx"}]) == ("web-5xx",)
    assert alarms.details["web-5xx"] == ("haproxy:web 5xx rate 50.0% > 5.0%",)
