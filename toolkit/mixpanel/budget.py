"""Client-side rate budgets: each Mixpanel API's hourly, per-second and concurrency limits, kept before a
request leaves, so Mixpanel's 429s stay the exception.

Mixpanel's limits (docs: reference/rate-limits): Raw Event Export 60 queries/hour, 3/second, 100 concurrent;
the Query API (Engage, cohorts list) 60 queries/hour, 5 concurrent (3/second is stated for it too, and
kept). Every attempt counts, retries included. The hour is a sliding window of request start times; those
times can be saved with a pull's state, so a pull every 15 minutes keeps the hourly budget across processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)
HOUR = 3600.0
SECOND = 1.1              # the per-second window, with a margin: requests started 1 s apart can arrive closer
NOTICE_AFTER = 2.0        # waits longer than this are said (a warning), shorter ones are only logged


@dataclass(frozen=True)
class Limits:
    per_hour: int
    per_second: int
    concurrent: int

    def describe(self) -> str:
        return f"{self.per_hour} queries/hour, {self.per_second}/second, {self.concurrent} at once"


EXPORT = Limits(per_hour=60, per_second=3, concurrent=100)
QUERY = Limits(per_hour=60, per_second=3, concurrent=5)


def format_wait(seconds: float) -> str:
    """'45s', '12m 30s', '1h 0m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {rest}s"
    return f"{minutes // 60}h {minutes % 60}m"


class Budget:
    """One API's budget. ``with budget.slot():`` around each request: waits (saying how long) until the
    request fits the hour, the second and the concurrency limit, then records its start.

    ``clock`` and ``sleep`` are wall time by default (start times are saved across processes); tests pass
    a fake pair. ``on_wait(seconds, reason)`` hears of every wait (the pull's progress bar shows it)."""

    def __init__(self, name: str, limits: Limits, *, history: Iterable[float] = (),
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 on_wait: Callable[[float, str], None] | None = None):
        self.name, self.limits = name, limits
        self._clock, self._sleep = clock, sleep
        self.on_wait = on_wait
        now = clock()
        self._starts: deque[float] = deque(sorted(t for t in history if now - HOUR < t <= now))
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(limits.concurrent)

    def history(self) -> list[float]:
        """Start times within the last hour (to save with the pull's state)."""
        with self._lock:
            self._forget(self._clock())
            return list(self._starts)

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` (Mixpanel said 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def wait_time(self) -> tuple[float, str]:
        """How long until one more request fits, and which limit holds it back (0 and "" when none)."""
        with self._lock:
            return self._wait_time(self._clock())

    def _forget(self, now: float) -> None:
        while self._starts and self._starts[0] <= now - HOUR:
            self._starts.popleft()

    def _wait_time(self, now: float) -> tuple[float, str]:
        self._forget(now)
        waits = [(self._paused_until - now, "Mixpanel asked to slow down (429)")]
        limits = self.limits
        if len(self._starts) >= limits.per_hour:
            oldest = self._starts[len(self._starts) - limits.per_hour]
            waits.append((oldest + HOUR - now, f"{limits.per_hour} queries/hour used"))
        if len(self._starts) >= limits.per_second:
            recent = self._starts[len(self._starts) - limits.per_second]
            waits.append((recent + SECOND - now, f"{limits.per_second} queries/second"))
        wait, reason = max(waits)
        return (wait, reason) if wait > 0 else (0.0, "")

    @contextmanager
    def slot(self) -> Iterator[None]:
        self._slots.acquire()
        try:
            while True:
                with self._lock:
                    now = self._clock()
                    wait, reason = self._wait_time(now)
                    if wait <= 0:
                        self._starts.append(now)
                        break
                self._say(wait, reason)
                self._sleep(wait)
            yield
        finally:
            self._slots.release()

    def _say(self, wait: float, reason: str) -> None:
        text = f"Mixpanel {self.name} API: {reason} ({self.limits.describe()}); waiting {format_wait(wait)}"
        if wait >= NOTICE_AFTER:
            log.warning(text)
        else:
            log.debug(text)
        if self.on_wait is not None:
            self.on_wait(wait, text)
