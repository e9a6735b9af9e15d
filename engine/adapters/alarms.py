"""Alarms the server platform can watch without CloudWatch: HAProxy's own statistics, and an HTTP probe.

CodeDeploy stops a deployment when one of its CloudWatch alarms is in ALARM. On-premises the equivalent signals are
the 5xx rate and the response time HAProxy measures for the green (replacement) servers, and whether a URL still
answers. The sliding-window maths is pure (``window_stats`` / ``breaches``): HAProxy's counters only grow, so each
poll adds a sample of cumulative totals and the window's figures are differences between samples.

Every source answers "these conditions are breached" (possibly none) or raises ``AdapterError`` when it cannot tell;
whether "cannot tell" stops the deployment is the group's ``ignore_poll_alarm_failure`` (runner's business).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import aiohttp

from engine.adapters.clock import SystemClock
from engine.adapters.haproxy.runtime import HAProxyRuntime
from engine.core.errors import AdapterError
from engine.ports import Clock


@dataclass(frozen=True, slots=True)
class AlarmSample:
    """Cumulative counters at time ``at`` (monotonic seconds); ``response_ms`` is HAProxy's recent mean."""

    at: float
    requests: int
    errors_5xx: int
    response_ms: float


@dataclass(frozen=True, slots=True)
class WindowStats:
    requests: int
    errors_5xx: int
    mean_response_ms: float | None  # None when no request was answered in the window

    @property
    def error_rate(self) -> float | None:
        return self.errors_5xx / self.requests if self.requests else None


def window_stats(samples: Sequence[AlarmSample], *, now: float, window_seconds: float) -> WindowStats:
    """Requests, 5xx and mean response time over the last ``window_seconds`` before ``now`` (pure).

    The baseline is the newest sample at or before ``now - window_seconds`` (else the oldest one), so the window
    covers at least ``window_seconds`` when history allows, and at most one polling interval more. A counter that
    goes down means HAProxy restarted: only the samples since then count. The mean response time weights each
    sample's ``response_ms`` by the requests answered since the previous sample.
    """
    ordered = sorted((s for s in samples if s.at <= now), key=lambda s: s.at)
    for i in range(len(ordered) - 1, 0, -1):
        newer, older = ordered[i], ordered[i - 1]
        if newer.requests < older.requests or newer.errors_5xx < older.errors_5xx:
            ordered = ordered[i:]
            break
    cutoff = now - window_seconds
    start = max((i for i, s in enumerate(ordered) if s.at <= cutoff), default=0)
    span = ordered[start:]
    if len(span) < 2:
        return WindowStats(0, 0, None)
    requests = span[-1].requests - span[0].requests
    weighted = sum((b.requests - a.requests) * b.response_ms for a, b in pairwise(span))
    return WindowStats(
        requests=requests,
        errors_5xx=span[-1].errors_5xx - span[0].errors_5xx,
        mean_response_ms=weighted / requests if requests else None,
    )


def breaches(
    stats: WindowStats,
    *,
    label: str,
    max_5xx_rate: float | None,
    max_response_ms: float | None,
    min_requests: int,
) -> tuple[str, ...]:
    """The breached conditions in words (pure); nothing is judged on fewer than ``min_requests`` requests."""
    if stats.requests < max(min_requests, 1):
        return ()
    found: list[str] = []
    rate = stats.error_rate
    if max_5xx_rate is not None and rate is not None and rate > max_5xx_rate:
        found.append(f"{label} 5xx rate {rate:.1%} > {max_5xx_rate:.1%}")
    mean = stats.mean_response_ms
    if max_response_ms is not None and mean is not None and mean > max_response_ms:
        found.append(f"{label} response time {mean:.0f} ms > {max_response_ms:g} ms")
    return tuple(found)


class HAProxyStatsAlarm:
    """The replacement servers' 5xx rate and mean response time, from HAProxy's statistics, over a sliding window.

    ``servers`` are HAProxy server names (``haproxy_name(host)``). Each ``firing()`` polls once and adds a sample;
    the first call only sets the baseline (nothing can be judged from one sample), so poll from the first shift.
    HAProxy's ``rtime`` is itself a mean over each server's last 1024 requests, so the response time is smoothed.
    """

    def __init__(
        self,
        runtime: HAProxyRuntime,
        backend: str,
        servers: Sequence[str],
        *,
        max_5xx_rate: float | None = 0.05,  # a fraction: 0.05 is 5 %
        max_response_ms: float | None = None,
        window_seconds: float = 60.0,
        min_requests: int = 20,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.backend = backend
        self.servers = tuple(servers)
        self.max_5xx_rate = max_5xx_rate
        self.max_response_ms = max_response_ms
        self.window_seconds = window_seconds
        self.min_requests = min_requests
        self.clock: Clock = clock or SystemClock()
        self.label = f"haproxy:{name or backend}"
        self.samples: list[AlarmSample] = []
        self._last_requests: dict[str, int] = {}

    async def sample(self) -> AlarmSample:
        states = await self.runtime.server_states(self.backend)
        missing = [s for s in self.servers if s not in states]
        if missing:
            raise AdapterError("haproxy", f"backend {self.backend} has no server {', '.join(missing)}")
        chosen = [states[s] for s in self.servers]
        # Mean of the servers' recent response times, weighted by what each answered since the previous poll.
        fresh = {s.name: s.requests - self._last_requests.get(s.name, s.requests) for s in chosen}
        weights = {name: max(n, 0) for name, n in fresh.items()}
        if not any(weights.values()):
            weights = {s.name: 1 for s in chosen if s.requests}
        total_weight = sum(weights.values())
        response_ms = sum(s.response_ms * weights.get(s.name, 0) for s in chosen) / total_weight if total_weight else 0
        self._last_requests = {s.name: s.requests for s in chosen}
        return AlarmSample(
            at=self.clock.monotonic(),
            requests=sum(s.requests for s in chosen),
            errors_5xx=sum(s.responses_5xx for s in chosen),
            response_ms=response_ms,
        )

    async def firing(self) -> tuple[str, ...]:
        """Names of the breached conditions, e.g. ``"haproxy:web 5xx rate 12.0% > 5.0%"``; () when all is well."""
        current = await self.sample()
        self.samples.append(current)
        stats = window_stats(self.samples, now=current.at, window_seconds=self.window_seconds)
        cutoff = current.at - self.window_seconds
        baseline = max((i for i, s in enumerate(self.samples) if s.at <= cutoff), default=0)
        del self.samples[:baseline]  # older samples can never be a baseline again
        return breaches(
            stats,
            label=self.label,
            max_5xx_rate=self.max_5xx_rate,
            max_response_ms=self.max_response_ms,
            min_requests=self.min_requests,
        )


class HttpProbeAlarm:
    """Fires when ``url`` answers with another status than ``expect_status``; no answer at all cannot tell."""

    def __init__(self, url: str, *, expect_status: int = 200, timeout: float = 2.0, name: str | None = None) -> None:
        self.url = url
        self.expect_status = expect_status
        self.timeout = timeout
        self.label = f"probe:{name or url}"

    async def firing(self) -> tuple[str, ...]:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.get(self.url, allow_redirects=False) as response,
            ):
                status = response.status
        except TimeoutError:
            raise AdapterError("http-probe", f"{self.url}: no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise AdapterError("http-probe", f"{self.url}: {exc or type(exc).__name__}") from None
        if status != self.expect_status:
            return (f"{self.label} answered {status}, expected {self.expect_status}",)
        return ()


class AlarmCheck(Protocol):
    async def firing(self) -> tuple[str, ...]: ...


class AlarmSet:
    """An ``AlarmSource`` over named checks: the group's configured alarm names select which checks run."""

    def __init__(self, checks: Mapping[str, AlarmCheck]) -> None:
        self.checks = dict(checks)
        self.details: dict[str, tuple[str, ...]] = {}  # last breached conditions per alarm name, for messages

    async def firing(self, alarms: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        """Names of the given alarms that fire. A firing alarm wins over another one that cannot be read."""
        names = [str(alarm["name"]) for alarm in alarms]
        known = [n for n in names if n in self.checks]
        results = await asyncio.gather(*(self.checks[n].firing() for n in known), return_exceptions=True)
        problems = [f"{n}: no such alarm" for n in names if n not in self.checks]
        fired: list[str] = []
        for name, result in zip(known, results, strict=True):
            if isinstance(result, AdapterError):
                problems.append(f"{name}: {result}")
            elif isinstance(result, BaseException):
                raise result
            else:
                self.details[name] = result
                if result:
                    fired.append(name)
        if fired:
            return tuple(fired)
        if problems:
            raise AdapterError("alarms", "; ".join(problems))
        return ()
