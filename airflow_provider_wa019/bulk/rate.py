"""The bulk send's rate limit: at most N sends *start* in any one-second window."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from numbers import Real
from typing import Any

__all__ = ["SlidingWindowRateLimiter"]

#: Longest single sleep of :meth:`SlidingWindowRateLimiter.acquire_async`, so a stop is seen soon.
_ASYNC_SLICE = 0.25


class SlidingWindowRateLimiter:
    """At most ``rate_per_second`` starts in any window of one second (sliding, not per calendar
    second). Thread-safe; :meth:`acquire` blocks a thread, :meth:`acquire_async` awaits on an
    event loop, and both book from the same window.

    A rate of 1 or more allows ``floor(rate)`` starts per second; a rate below 1 allows one start
    per ``1 / rate`` seconds.
    """

    def __init__(self, rate_per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        # inf would overflow int() below and nan never compares: neither is a rate.
        if not _is_positive_number(rate_per_second):
            raise ValueError(f"rate_per_second must be a finite number > 0, got {rate_per_second!r}")
        if rate_per_second >= 1:
            self.limit, self.window = int(rate_per_second), 1.0
        else:
            self.limit, self.window = 1, 1.0 / rate_per_second
        self._clock = clock
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def _book(self) -> float:
        """Book a start now and return 0, or return how long until one is allowed."""
        with self._lock:
            now = self._clock()
            while self._starts and now - self._starts[0] >= self.window:
                self._starts.popleft()
            if len(self._starts) < self.limit:
                self._starts.append(now)
                return 0.0
            # Never 0 when refused: a clock that has not moved must still mean "wait".
            return max(self._starts[0] + self.window - now, 1e-6)

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a start is allowed and book it; False if ``stop`` was set meanwhile."""
        while True:
            delay = self._book()
            if not delay:
                return True
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return False

    async def acquire_async(self, stopped: Callable[[], bool] = lambda: False) -> bool:
        """Wait (on the running event loop) until a start is allowed and book it; False once
        ``stopped()`` is true. ``stopped`` is checked at least every 0.25 s while waiting."""
        while True:
            if stopped():
                return False
            delay = self._book()
            if not delay:
                return True
            await asyncio.sleep(min(delay, _ASYNC_SLICE))


def _is_positive_number(value: Any) -> bool:
    # bool is an int to Python, but True is no meant rate.
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
