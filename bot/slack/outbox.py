"""When Slack does not answer: what the notifier owes it waits, and is retried with backoff until Slack is back.

A call that fails for a reason that may pass — the connection refused or reset, a timeout, an HTTP 5xx — marks an
``Outage``. Every thread worker then waits for the next try (``await outage.wait()``) and keeps what it had to post
(the parent message, its replies, the latest edit), so nothing is lost and nothing is posted twice. The wait
doubles with each failed try, from ``first`` up to ``longest`` seconds, and starts over once a call succeeds. Workers
that fail within the same wait do not double it again: one outage, one backoff.

Time comes from a ``Clock`` (the engine's clock by default), so tests move it instead of sleeping. After a restart
nothing of this is remembered: the notifier gives every deployment of the last day that has no thread one then
(``SlackNotifier.catch_up``).
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """The part of the engine's Clock the notifier uses (monotonic time and sleeping on it)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class Outage:
    def __init__(self, clock: Clock, *, first: float = 1.0, longest: float = 60.0) -> None:
        self.clock = clock
        self.first, self.longest = first, longest
        self.failures = 0  # tries that failed since Slack last answered
        self.retry_at: float | None = None  # monotonic time of the next try; None: Slack is answering

    @property
    def down(self) -> bool:
        return self.retry_at is not None

    def delay(self) -> float:
        """The wait after ``failures`` failed tries: first, 2 * first, 4 * first, ... at most ``longest``."""
        return float(min(self.first * 2 ** max(self.failures - 1, 0), self.longest))

    def failed(self) -> None:
        now = self.clock.monotonic()
        if self.retry_at is not None and now < self.retry_at:
            return  # already waiting out this failure
        self.failures += 1
        self.retry_at = now + self.delay()

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, None

    async def wait(self) -> None:
        """Until the next try is due (at once when Slack is answering)."""
        while self.retry_at is not None and (left := self.retry_at - self.clock.monotonic()) > 0:
            await self.clock.sleep(left)
