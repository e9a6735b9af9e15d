"""Steady HTTP load on one URL, bounded in rate and duration: the bench's traffic scenario and the traffic tests
use this one generator, so what the tests assert is what the bench measures.

A few threads each keep one keep-alive connection (a fresh one after a failure) and record every answer as
(monotonic time, status or 0 for a connection failure, body), and beside it when the request was sent: an answer's
own time is taken when its thread next holds the GIL, which can be after a moment another thread recorded, so "what
was asked after X" is told by the send time. Each answer's wall-clock time is kept too, to set against times another
process logged: the two clocks' difference is not constant (NTP steps it, a paused VM stops the monotonic clock).
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit


class Load:
    def __init__(self, url: str, *, rate: float = 200.0, threads: int = 4, max_seconds: float = 120.0) -> None:
        self.parts = urlsplit(url)
        self.host = self.parts.hostname or "127.0.0.1"
        self.interval = threads / rate
        self.max_seconds = max_seconds
        self.results: list[tuple[float, int, str]] = []
        self.sent: list[float] = []  # when each request of ``results`` was sent, in the same order
        self.sent_wall: list[float] = []  # the same, by the wall clock
        self.wall: list[float] = []  # when each answer of ``results`` came, by the wall clock, in the same order
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + self.max_seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            sent, sent_wall = time.monotonic(), time.time()
            try:
                connection = connection or http.client.HTTPConnection(self.host, self.parts.port, timeout=5)
                connection.request("GET", self.parts.path or "/")
                response = connection.getresponse()
                record = (time.monotonic(), response.status, response.read().decode(errors="replace"))
            except (OSError, http.client.HTTPException):
                record = (time.monotonic(), 0, "")
                if connection is not None:
                    connection.close()
                connection = None
            wall = time.time()
            with self._lock:
                self.results.append(record)
                self.sent.append(sent)
                self.sent_wall.append(sent_wall)
                self.wall.append(wall)
                self._answered.notify_all()
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]

    def failed(self) -> int:
        return len(self.failures())

    def rate(self) -> float:
        """Answers per second actually achieved."""
        if len(self.results) < 2:
            return 0.0
        return len(self.results) / (self.results[-1][0] - self.results[0][0])

    def bodies_after(self, moment: float) -> list[str]:
        return [body for at, status, body in self.results if at > moment and status == 200]

    def bodies_between_wall(self, start: float, end: float) -> list[str]:
        """The bodies of the 200 answers that came between two wall-clock times (say, two moments a server logged)."""
        with self._lock:
            pairs = list(zip(self.wall, self.results, strict=True))
        return [body for wall, (_, status, body) in pairs if start < wall < end and status == 200]

    def sent_after(self, moment: float) -> list[tuple[int, str]]:
        """(status, body) of the requests sent after ``moment`` (one in flight then may still be answered later)."""
        with self._lock:
            pairs = list(zip(self.sent, self.results, strict=True))
        return [(status, body) for sent, (_, status, body) in pairs if sent > moment]

    def sent_after_wall(self, moment: float) -> list[tuple[int, str]]:
        """``sent_after`` for a wall-clock ``moment`` (one another process logged)."""
        with self._lock:
            pairs = list(zip(self.sent_wall, self.results, strict=True))
        return [(status, body) for sent, (_, status, body) in pairs if sent > moment]

    def wait_answered_after(self, moment: float, count: int, *, timeout: float = 60.0) -> None:
        """Until ``count`` requests sent after ``moment`` were answered 200 (a condition, not a time window: a slow
        machine only makes it take longer); TimeoutError after ``timeout`` seconds or once the load has ended."""

        def enough() -> bool:
            return (
                sum(
                    1
                    for sent, (_, status, _) in zip(self.sent, self.results, strict=True)
                    if sent > moment and status == 200
                )
                >= count
            )

        deadline = time.monotonic() + timeout
        with self._answered:
            while not enough():
                left = deadline - time.monotonic()
                if left <= 0 or not any(thread.is_alive() for thread in self._threads):
                    raise TimeoutError(f"fewer than {count} requests sent after {moment:.3f} were answered 200")
                self._answered.wait(min(left, 0.5))

    def bodies_sent_after(self, moment: float) -> list[str]:
        return [body for status, body in self.sent_after(moment) if status == 200]
